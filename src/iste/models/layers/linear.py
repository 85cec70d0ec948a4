"""``linear(x, w, b, relu=..., gelu=...)``: a Linear layer, through oneDNN's fused kernel for CPU
inference.

On CPU, ``F.linear`` goes to the BLAS GEMM (MKL in the PyTorch wheels), then a separate pass
adds nothing but the ReLU; oneDNN's ``linear + ReLU`` primitive (the one ``torch.compile``
uses on CPU) does both in one pass and, on the CPU measured (AMD EPYC, AVX-512), ran a
4096 x 256 x 256 layer 1.04-1.17x faster in float32 and 1.11-1.15x in bfloat16
(docs/performance.md). It is used only where it cannot change training: CPU tensors, autograd
off. Under CPU autocast it is fed the autocast dtype, as ``F.linear`` would be. The op is
private to PyTorch, so it is probed once against ``F.linear``; if it is missing or disagrees,
``F.linear`` is used everywhere. bfloat16 is probed on its own, as oneDNN has no bf16 kernel
on CPUs without AVX-512 (there ``F.linear`` computes it). The two differ only in the order
of floating-point sums (~1e-6 relative). The exact (erf) GELU is fused the same way (probed
separately; oneDNN's erf differs from PyTorch's by ~1e-6): measured ~3x faster than
``F.gelu(F.linear(...))`` on a 4096 x 256 x 256 layer, where the separate GELU pass costs
more than the matmul.

In float32 CPU *training* (autograd on, no autocast, not inside ``torch.compile``) the same
oneDNN kernel computes the forward product, the input's gradient (``grad @ W``) and the
weight's (``grad^T x``, both operands read transposed in place) (:class:`_OneDNNLinear`): the
same function and gradients up to the order of float sums. With the BLAS for the weight's
gradient it measured 1.0-1.7x faster than ``F.linear`` forward + backward on the layers of
SwinIR and of the ISTE decoders (docs/performance.md); the weight's gradient moved to oneDNN
in session 11: on the AMD CPU measured MKL's sgemm runs at 72-88 GFLOP/s a thread and
oneDNN's at up to ~200, SwinIR's four weight gradients of a layer took 22 ms against 31 ms
(batch 2, one thread) and a whole SwinIR ISTE training step ran 1.04x faster (median of 16
interleaved rounds, 0.87-1.18). Activations stay separate autograd operations there.
That holds where torch's BLAS is slow: MKL on an AMD CPU takes its generic path. On an Intel
CPU MKL runs at full speed and was the faster of the two (Xeon with AVX-512, one thread,
session 37: forward + both gradients of SwinIR's four linears 66 ms against 76 ms a layer, the
weight's gradient 1.1-1.4x, as MKL reads a transposed operand in place; SwinIR ISTE training
steps 0.96x the time, median of 7 interleaved pairs), so fp32 training there keeps
``F.linear`` (:func:`blas_trains_faster`).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from iste.runtime import cpu_vendor


def _probe_operands() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A small input (5, 2, 8), weight (3, 8) and bias (3,) to check the fused op against
    ``F.linear``: float32 whatever the process's default dtype (a float64 default made the
    check fail and turned the fused op off for the whole process)."""
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*shape, generator=gen, dtype=torch.float32)
               for shape in ((5, 2, 8), (3, 8), (3,)))
    return x, w, b


@functools.cache
def _fused_op():
    try:
        op = torch.ops.mkldnn._linear_pointwise
        x, w, b = _probe_operands()
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            ok = torch.allclose(op(x, w, b, "relu", [], ""), F.linear(x, w, b).relu(),
                                atol=1e-5, rtol=1e-5)
        return op if ok else None
    except (AttributeError, RuntimeError, TypeError):
        return None


@functools.cache
def _fused_takes(dtype: torch.dtype) -> bool:
    """Whether oneDNN's linear runs in ``dtype`` here. float32 wherever the op is in use;
    bfloat16 only where oneDNN has kernels for it: a CPU without AVX-512 (an AVX2-only AMD
    EPYC, for one) cannot create the primitive, and ``F.linear`` computes bf16 there."""
    op = _fused_op()
    if op is None or dtype not in (torch.float32, torch.bfloat16):
        return False
    if dtype == torch.float32:
        return True
    x, w, b = _probe_operands()
    # the reference in float32 too: the first call comes from inside the caller's autocast
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        try:
            out = op(x.to(dtype), w.to(dtype), b.to(dtype), "relu", [], "")
        except RuntimeError:
            return False
        return torch.allclose(out.float(), F.linear(x, w, b).relu(), atol=0.1, rtol=0.05)


@functools.cache
def _fused_gelu_ok() -> bool:
    op = _fused_op()
    if op is None:
        return False
    try:
        x, w, b = _probe_operands()
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            return torch.allclose(op(x, w, b, "gelu", [], "none"), F.gelu(F.linear(x, w, b)),
                                  atol=1e-5, rtol=1e-5)
    except (RuntimeError, TypeError):
        return False


def flop_formulas() -> dict:
    """FLOP formulas of the oneDNN linear op that :func:`linear` calls, for
    ``torch.utils.flop_counter.FlopCounterMode(custom_mapping=...)`` (which counts aten's
    matmuls and convolutions but not this private op): 2 x out elements x in features.
    Empty where the op is not in use (then :func:`linear` calls ``F.linear``, which torch
    counts)."""
    if _fused_op() is None:
        return {}

    def formula(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * math.prod(out_shape) * w_shape[1]

    return {torch.ops.mkldnn._linear_pointwise: formula}


class _OneDNNLinear(torch.autograd.Function):
    """``F.linear`` for float32 CPU training: oneDNN for ``x W^T + b`` and for both gradients
    (the bias's is a sum). x: (..., in), weight (out, in) contiguous."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _fused_op()(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        rows = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _fused_op()(grad, weight.t().contiguous(), None, "none", [], "")
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(rows, x.reshape(-1, x.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = rows.sum(0)
        return grad_x, grad_w, grad_b


def _weight_grad(rows: torch.Tensor, x2d: torch.Tensor) -> torch.Tensor:
    """grad^T x for rows (M, out) and x2d (M, in): (out, in). The op reads its weight operand
    transposed in place for free but copies a transposed input first, so the narrower of the
    two is the input: ``(x^T grad)^T`` when out > in. The same products, the same bits; on
    SwinIR's layers (M = 4 608, one thread) qkv 180 -> 540 took 5.0 ms against 6.9, fc1
    180 -> 360 3.5 against 4.5 (docs/performance.md, session 12)."""
    if rows.shape[1] > x2d.shape[1]:
        return _fused_op()(x2d.t(), rows.t(), None, "none", [], "").t()
    return _fused_op()(rows.t(), x2d.t(), None, "none", [], "")


@functools.cache
def blas_trains_faster() -> bool:
    """Whether torch's BLAS computes fp32 training products faster than oneDNN here: MKL on an
    Intel CPU (module docstring). Elsewhere (MKL's generic path on other x86 CPUs, other BLAS
    libraries) training goes through oneDNN."""
    return torch.backends.mkl.is_available() and cpu_vendor() == "GenuineIntel"


def _trains_through_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and torch.is_grad_enabled() and x.dim() >= 2 and x.numel() > 0
            and x.dtype == torch.float32
            and weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling() and _fused_op() is not None
            and not blas_trains_faster())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
           relu: bool = False, gelu: bool = False) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, then ReLU if ``relu`` or the exact GELU if ``gelu``.
    x: (..., in) -> (..., out)."""
    if _trains_through_onednn(x, weight):
        out = _OneDNNLinear.apply(x.contiguous(), weight.contiguous(), bias)
        if gelu:
            return F.gelu(out)
        return out.relu() if relu else out  # not in place: the kernel's output is a view
    if x.device.type == "cpu" and not torch.is_grad_enabled():
        op = _fused_op()
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        if _fused_takes(dtype) and (not gelu or _fused_gelu_ok()):
            # a strided weight (a column slice) makes oneDNN reorder it at great cost
            x, weight = x.to(dtype), weight.to(dtype).contiguous()
            bias = None if bias is None else bias.to(dtype)
            if gelu:
                return op(x, weight, bias, "gelu", [], "none")
            return op(x, weight, bias, "relu" if relu else "none", [], "")
    out = F.linear(x, weight, bias)
    if gelu:
        return F.gelu(out)
    return out.relu_() if relu else out
