"""``run.compile``: the training step's network through ``torch.compile``, or eager where
compilation is unavailable.

TorchInductor fuses the elementwise work around the matrix products (layer norms, GELU,
softmax, window partitions, drop path; forward and backward) into generated C++ (CPU) or
Triton (CUDA) kernels; the matrix products stay on MKL / oneDNN / cuBLAS. On the 2-core CPU of
docs/performance.md it made a SwinIR ISTE step ~1.15-1.2x faster in fp32, after a one-off
compilation of minutes (cached on disk: a later run with the same model compiles in seconds).
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import nn


@functools.cache
def compile_unavailable(device_type: str) -> str | None:
    """Why ``torch.compile`` cannot train on ``device_type`` here, or None when it can: a tiny
    function is compiled, run forward and backward (needs a C++ compiler on CPU, Triton on
    CUDA). Probed once per device type and process."""
    try:
        fn = torch.compile(lambda x: (x * 2 + 1).relu(), dynamic=False)
        x = torch.ones(4, device=device_type, requires_grad=True)
        fn(x).sum().backward()
        if x.grad is None or not bool((x.grad == 2).all()):
            return "the compiled probe gave a wrong gradient"
    except Exception as err:  # noqa: BLE001 - any failure means: train eagerly
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".strip()
    return None


def compiled_or_eager(net: nn.Module, device: torch.device, enabled: bool) -> nn.Module:
    """``torch.compile(net)`` when ``enabled`` and compilation works on ``device``; else
    ``net`` itself (with a warning when it was asked for). The compiled module shares
    ``net``'s parameters: checkpoints, the optimiser and validation keep using ``net``."""
    if not enabled:
        return net
    reason = compile_unavailable(device.type)
    if reason is not None:
        warnings.warn(f"run.compile: torch.compile is unavailable here ({reason}); "
                      "training eagerly", stacklevel=2)
        return net
    return torch.compile(net)
