"""iste: arbitrary-scale super-resolution for histopathology (ISTE, LIIF, LTE)."""

from iste.api import load, upscale, upscale_to

__version__ = "0.1.0"
__all__ = ["load", "upscale", "upscale_to", "__version__"]
