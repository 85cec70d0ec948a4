"""``linear(x, w, b, relu=...)``: a Linear layer, through oneDNN's fused kernel for CPU inference.

On CPU, ``F.linear`` goes to the BLAS GEMM (MKL in the PyTorch wheels), then a separate pass
adds nothing but the ReLU; oneDNN's ``linear + ReLU`` primitive (the one ``torch.compile``
uses on CPU) does both in one pass and, on the CPU measured (AMD EPYC, AVX-512), ran a
4096 x 256 x 256 layer 1.04-1.17x faster in float32 and 1.11-1.15x in bfloat16
(docs/performance.md). It is used only where it cannot change training: CPU tensors, autograd
off. Under CPU autocast it is fed the autocast dtype, as ``F.linear`` would be. The op is
private to PyTorch, so it is probed once against ``F.linear``; if it is missing or disagrees,
``F.linear`` is used everywhere. The two differ only in the order of floating-point sums
(~1e-6 relative).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.cache
def _fused_op():
    try:
        op = torch.ops.mkldnn._linear_pointwise
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*shape, generator=gen) for shape in ((5, 2, 8), (3, 8), (3,)))
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            ok = torch.allclose(op(x, w, b, "relu", [], ""), F.linear(x, w, b).relu(),
                                atol=1e-5, rtol=1e-5)
        return op if ok else None
    except (AttributeError, RuntimeError, TypeError):
        return None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
           relu: bool = False) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, then ReLU if ``relu``. x: (..., in) -> (..., out)."""
    if x.device.type == "cpu" and not torch.is_grad_enabled():
        op = _fused_op()
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        if op is not None and dtype in (torch.float32, torch.bfloat16):
            # a strided weight (a column slice) makes oneDNN reorder it at great cost
            x, weight = x.to(dtype), weight.to(dtype).contiguous()
            bias = None if bias is None else bias.to(dtype)
            return op(x, weight, bias, "relu" if relu else "none", [], "")
    out = F.linear(x, weight, bias)
    return out.relu_() if relu else out
