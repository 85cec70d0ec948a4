"""Where and how computation runs: the device pick and torch's CPU threads.

Every package (engine, slides, eval, train, serve, cli) reads these from here; none of them
imports the public API module (:mod:`iste.api`) for it.
"""

from __future__ import annotations

import torch

__all__ = ["pick_device", "set_threads"]


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU. ValueError for a device name
    torch does not know or a CUDA device this machine does not have."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r} (cpu, cuda, cuda:N ...): {exc}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r}: no CUDA device here (torch {torch.__version__};"
                             " install the CUDA build of torch for a GPU)")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {device!r}: only {count} CUDA device(s) here")
    return dev


def set_threads(threads: int | None) -> None:
    """Apply ``--threads`` (torch's intra-op CPU threads) when given; it must be >= 1."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
