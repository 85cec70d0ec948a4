"""``run.compile``: the fixed-shape part of the training step through ``torch.compile``, or
eager where compilation is unavailable.

TorchInductor fuses the elementwise work around the matrix products (layer norms, GELU,
softmax, window partitions, drop path; forward and backward) into generated C++ (CPU) or
Triton (CUDA) kernels; the matrix products stay on the BLAS / cuBLAS. The first step pays a
one-off compilation (minutes on a small CPU; cached on disk, so a later run of the same model
compiles in seconds). Measured in docs/performance.md.
"""

from __future__ import annotations

import contextlib
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


def compile_in_place(module: nn.Module, device: torch.device) -> bool:
    """Compile ``module``'s forward in place (``nn.Module.compile``: its parameters, names and
    state dict stay as they are) when compilation works on ``device``; else warn and leave it
    eager. Returns whether it was compiled."""
    reason = compile_unavailable(device.type)
    if reason is not None:
        warnings.warn(f"run.compile: torch.compile is unavailable here ({reason}); "
                      "training eagerly", stacklevel=2)
        return False
    module.compile()
    return True


def eager_while(compiled: bool):
    """A context in which compiled modules run their eager code when ``compiled`` (validation
    feeds other input sizes, which would each compile anew); a no-op otherwise."""
    return torch.compiler.set_stance("force_eager") if compiled else contextlib.nullcontext()
