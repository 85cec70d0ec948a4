"""iste: arbitrary-scale super-resolution for histopathology (ISTE, LIIF, LTE)."""

from iste import runtime as _runtime

_runtime.startup()  # OpenMP wait policy and threads: before torch is imported (iste.runtime)

from iste.api import load, upscale, upscale_to  # noqa: E402

try:
    _runtime.set_threads()  # ISTE_THREADS where OMP_NUM_THREADS was also set
except ValueError:
    pass  # an invalid ISTE_THREADS is refused where it is used: the CLI and iste.load()

__version__ = "0.1.0"
__all__ = ["load", "upscale", "upscale_to", "__version__"]
