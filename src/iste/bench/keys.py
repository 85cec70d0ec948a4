"""What ISTE's STF key count costs: time, and PSNR against the HR and against 2304 keys.

On real H&E (the CMU test tiles, :func:`iste.slides.samples.cmu_test_images`), for each scale s:
``lr, hr = evaluation_pair(tile, s)`` (the evaluation protocol: LR floor(H / s), HR
round(floor(H / s) * s)), then ISTE
super-resolves ``lr`` with ``stf_keys`` = each count. PSNR (RGB, border shaved as in
evaluation) is averaged over the tiles, against the HR and against the output with the
reference count (the first of the list, 2304 by default), as the PSNR of the MSE pooled over
the tiles (inf when identical). Time is the total over the tiles of
the fastest of ``repeats`` passes. Precision rows compare bf16 with fp32 at the reference count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from iste.data.degrade import evaluation_pair
from iste.data import metrics
from iste.engine.frame import Frame
from iste.engine.image import upscale_to
from iste.engine.render import QueryOptions


@dataclass(frozen=True)
class KeyRow:
    scale: float
    stf_keys: int
    precision: str
    seconds: float
    psnr_hr: float  # mean over tiles, dB
    psnr_ref: float  # against the reference output, pooled MSE, dB (inf: identical)
    max_diff_ref: int  # largest |difference| in 8-bit levels against the reference output


def _run(model, pairs, scale: float, options: QueryOptions, repeats: int):
    best, outs = float("inf"), None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        outs = [_upscale(lr, scale, model, options) for lr, _ in pairs]
        best = min(best, time.perf_counter() - t0)
    return best, outs


def _pooled_psnr(outs, refs, scale: float) -> float:
    """PSNR of the mean squared error over all tiles (shaved); inf when all are identical."""
    mse = np.mean([np.mean((metrics.shave(o, scale).astype(np.float64)
                            - metrics.shave(r, scale).astype(np.float64)) ** 2)
                   for o, r in zip(outs, refs)])
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def _row(scale, keys, precision, seconds, outs, refs, pairs) -> KeyRow:
    psnr_hr = float(np.mean([metrics.psnr(o, hr, scale=scale) for o, (_, hr) in zip(outs, pairs)]))
    psnr_ref = _pooled_psnr(outs, refs, scale)
    diff = max(int(np.abs(o.astype(np.int16) - r.astype(np.int16)).max())
               for o, r in zip(outs, refs))
    return KeyRow(scale, keys, precision, seconds, psnr_hr, psnr_ref, diff)


def key_study(model: torch.nn.Module, tiles: list[np.ndarray], *, scales=(2.0, 3.3, 4.0),
              keys=(2304, 1024, 576, 256, 64), precisions=("bf16",), chunk: int | None = None,
              repeats: int = 1, log=print) -> list[KeyRow]:
    """Rows for every scale x key count (fp32), plus the other ``precisions`` at ``keys[0]``.

    tiles: uint8 (H, W, 3) HR images. Returns :class:`KeyRow` s, reference first per scale.
    """
    if not model.uses_key_set:
        raise ValueError("the key-count study needs an ISTE model (with STF)")
    rows = []
    for scale in scales:
        pairs = [evaluation_pair(t, scale) for t in tiles]
        _upscale(pairs[0][0], scale, model, QueryOptions(chunk=chunk, precision="fp32"))  # warm-up
        refs = None
        for k in keys:
            opts = QueryOptions(chunk=chunk, stf_keys=k, precision="fp32")
            seconds, outs = _run(model, pairs, scale, opts, repeats)
            refs = refs or outs
            rows.append(_row(scale, k, "fp32", seconds, outs, refs, pairs))
            log(f"keys x{scale:g} {k}: {rows[-1].psnr_hr:.3f} dB, {seconds:.1f} s")
        for precision in precisions:
            opts = QueryOptions(chunk=chunk, stf_keys=keys[0], precision=precision)
            seconds, outs = _run(model, pairs, scale, opts, repeats)
            rows.append(_row(scale, keys[0], precision, seconds, outs, refs, pairs))
            log(f"keys x{scale:g} {keys[0]} {precision}: {rows[-1].psnr_hr:.3f} dB, "
                f"{seconds:.1f} s")
    return rows


def key_timing(model: torch.nn.Module, lr: np.ndarray, *, scales=(2.0, 4.0),
               keys=(2304, 1024, 576, 256, 64), precision: str = "fp32",
               chunk: int | None = None, repeats: int = 1) -> list[dict]:
    """Seconds and output Mpx/s of ``model`` on one LR image (uint8) per scale x key count."""
    rows = []
    for scale in scales:
        _upscale(lr[:16, :16], scale, model, QueryOptions(chunk=chunk, precision=precision))
        for k in keys:
            opts = QueryOptions(chunk=chunk, stf_keys=k, precision=precision)
            seconds, outs = _run(model, [(lr, None)], scale, opts, repeats)
            mpx = outs[0].shape[0] * outs[0].shape[1] / 1e6
            rows.append({"scale": scale, "stf_keys": k, "precision": precision,
                         "seconds": seconds, "mpx_per_s": mpx / seconds})
    return rows


def _upscale(lr: np.ndarray, scale: float, model, options: QueryOptions) -> np.ndarray:
    """uint8 (h, w, 3) -> uint8 (round(h * s), round(w * s), 3)."""
    return upscale_to(lr, Frame.for_scale(lr.shape[:2], scale).out_hw, model, options=options)
