"""iste: arbitrary-scale super-resolution for histopathology (ISTE, LIIF, LTE)."""

from iste.api import load, upscale

__version__ = "0.1.0"
__all__ = ["load", "upscale", "__version__"]
