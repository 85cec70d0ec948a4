"""iste: arbitrary-scale super-resolution for histopathology (ISTE, LIIF, LTE).

The public API (:func:`load`, :func:`upscale`, :func:`upscale_to`, from :mod:`iste.api`) is
imported on first use: ``import iste`` itself does not load torch (about a second), so the
command line (``python -m iste``, the ``iste`` script) is running its own code, which turns
Ctrl-C into ``iste: interrupted``, while torch loads (:func:`iste.cli.main.main`).
"""

import sys as _sys

if _sys.platform == "win32":  # checked before any module that needs POSIX is imported
    raise ImportError(
        "iste runs on Linux and macOS, not on Windows itself: it needs POSIX file locks "
        "(fcntl), folder descriptors and signals (SIGHUP); on a Windows PC run it under WSL 2 "
        "(Windows Subsystem for Linux), where it installs and runs as on Linux")

from iste import runtime as _runtime  # noqa: E402

_runtime.startup()  # OpenMP wait policy and threads: before torch is imported (iste.runtime)

__version__ = "0.1.0"
__all__ = ["load", "upscale", "upscale_to", "__version__"]
_API = ("load", "upscale", "upscale_to")


def __getattr__(name: str):
    if name in _API:
        from iste import api

        return getattr(api, name)
    raise AttributeError(f"module 'iste' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
