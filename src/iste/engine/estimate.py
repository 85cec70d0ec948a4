"""How long a plain image's super-resolution will take on this machine, how much memory it
will need and how large its output will be, before it runs (``iste upscale IMAGE ...
--estimate``; slides have :mod:`iste.slides.estimate`).

A plain image is read whole and super-resolved in memory (:func:`iste.engine.budget.
super_resolve_to_uint8`): whole, or tile by tile where the whole pass would not fit. Its cost
per output pixel depends on the model, the scale and the options, not on the pixels, so a few
crops of the image (:data:`SAMPLE_CROPS`, spread over it, after one untimed warm-up crop) are
super-resolved to measure this machine's rate, and each result is encoded as the output's
format stores it to measure the bytes and seconds of the write per pixel. The projection:

    time   = output Mpx x (model seconds + encode seconds per Mpx of the crops)
    bytes  = output pixels x the crops' encoded bytes per pixel
    memory = the pass's own estimate (:func:`iste.engine.budget.plan_image`, whole or tiled,
             the input and output arrays included); the process's peak resident memory while
             the crops ran is reported beside it

The crops' detail stands for the image's (the encoded size follows it); the pass's estimate
is upper-bound-ish (:mod:`iste.engine.budget`). Nothing is written outside a temporary folder.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from iste.engine.budget import available_memory, plan_image, super_resolve_to_uint8
from iste.engine.image import in_source_kind
from iste.engine.render import QueryOptions
from iste.process_memory import peak_rss_during

__all__ = ["SAMPLE_CROPS", "CROP_OUTPUT_SIDE", "ImageEstimate", "estimate_image"]

SAMPLE_CROPS = 3
"""Crops timed per image, after one untimed warm-up crop."""

CROP_OUTPUT_SIDE = 256
"""Side of a timed crop's output in pixels (less where the image's output is smaller)."""


@dataclass(frozen=True)
class ImageEstimate:
    """What one plain image's job will do and need. Sizes (width, height); ``seconds`` the
    projected model and encoding time (reading the input is the caller's to add: it reads the
    image whole, as the job does); ``bytes_output`` the projected file size; ``memory`` the
    pass's estimated bytes, ``tiled`` whether it runs tile by tile; ``peak_rss`` (and on a GPU
    ``peak_device_memory``) the process's high-water mark while the crops ran, bytes or None;
    ``mpx_timed`` the output megapixels of the timed crops."""

    size: tuple[int, int]
    lr_size: tuple[int, int]
    scale: float
    seconds_model: float
    seconds_encode: float
    bytes_output: float
    memory: int
    tiled: bool
    peak_rss: int | None
    peak_device_memory: int | None
    crops: int
    mpx_timed: float

    @property
    def mpx(self) -> float:
        return self.size[0] * self.size[1] / 1e6

    @property
    def mpx_per_s(self) -> float:
        return self.mpx / self.seconds_model if self.seconds_model > 0 else float("inf")


def estimate_image(image: np.ndarray, out_hw: tuple[int, int], model: torch.nn.Module, *,
                   suffix: str, options: QueryOptions = QueryOptions(),
                   jpeg_quality: int = 95, gray: bool = False,
                   alpha: np.ndarray | None = None) -> ImageEstimate:
    """Project ``super_resolve_to_uint8(model, image, out_hw, options=options)`` and the
    output's write as ``suffix`` (".png", ".jpg", ".tif" ...), in the source's kind as the
    job writes it (:func:`iste.engine.image.in_source_kind`: ``gray``, ``alpha``).

    image: uint8 (h, w, 3) RGB, the job's input as it runs (deblocked where it would be).
    alpha: uint8 (h, w), the source's transparency, or None.

    Raises:
        ValueError: as the job would: the output is too large, or would not fit in memory
            even tile by tile (:func:`iste.engine.budget.plan_image`).
    """
    device = next(model.parameters()).device
    lr_hw, out_hw = tuple(image.shape[:2]), tuple(out_hw)
    plan = plan_image(model, lr_hw, out_hw, options=options, uint8_out=True,
                      budget=available_memory(device))  # an estimate, also for small images
    crops = _crops(lr_hw, out_hw, SAMPLE_CROPS + 1)
    warm, timed = crops[:1], crops[1:] or crops

    def run(which: list) -> tuple[float, list[np.ndarray]]:
        t0 = time.perf_counter()
        out = [super_resolve_to_uint8(model, image[y0:y1, x0:x1], hw, options=options)
               for (y0, y1, x0, x1), hw in which]
        return time.perf_counter() - t0, out

    def measure() -> tuple[float, list[np.ndarray]]:
        run(warm)
        return run(timed)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    (seconds, srs), peak_rss = peak_rss_during(measure)
    peak_device = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    timed_px = sum(sr.shape[0] * sr.shape[1] for sr in srs)
    # stored as the job stores them: a gray output is a third of the bytes of its RGB, an
    # alpha channel a quarter more
    stored = [in_source_kind(sr, gray, None if alpha is None else alpha[y0:y1, x0:x1])
              for sr, ((y0, y1, x0, x1), _) in zip(srs, timed)]
    encode_seconds, encoded_bytes = _encoded(stored, suffix, jpeg_quality)
    out_px = out_hw[0] * out_hw[1]
    return ImageEstimate(
        (out_hw[1], out_hw[0]), (lr_hw[1], lr_hw[0]), out_hw[1] / lr_hw[1],
        seconds * out_px / timed_px, encode_seconds * out_px / timed_px,
        encoded_bytes * out_px / timed_px, plan.estimate, plan.tiled, peak_rss, peak_device,
        len(timed), timed_px / 1e6)


def _crops(lr_hw: tuple[int, int], out_hw: tuple[int, int], n: int) -> list[tuple]:
    """``n`` crops ((y0, y1, x0, x1) of the input, their output (H, W)) spread along the
    image's diagonal, each of about :data:`CROP_OUTPUT_SIDE` output pixels a side (the whole
    image where it is smaller); the first is the centre's (the warm-up)."""
    scale_h, scale_w = out_hw[0] / lr_hw[0], out_hw[1] / lr_hw[1]
    side_h = min(lr_hw[0], max(1, round(CROP_OUTPUT_SIDE / scale_h)))
    side_w = min(lr_hw[1], max(1, round(CROP_OUTPUT_SIDE / scale_w)))
    out = []
    for f in [0.5, *np.linspace(0, 1, n - 1).tolist()][:n]:
        y0 = round(f * (lr_hw[0] - side_h))
        x0 = round(f * (lr_hw[1] - side_w))
        out.append(((y0, y0 + side_h, x0, x0 + side_w),
                    (round(side_h * scale_h), round(side_w * scale_w))))
    return out


def _encoded(srs: list[np.ndarray], suffix: str, jpeg_quality: int) -> tuple[float, float]:
    """(seconds, bytes) of writing the ``srs`` as files of ``suffix``, summed."""
    from iste.data.imagewrite import write_image

    seconds, size = 0.0, 0
    with tempfile.TemporaryDirectory(prefix="iste-estimate-") as tmp:
        for k, sr in enumerate(srs):
            path = Path(tmp) / f"crop{k}{suffix.lower()}"
            t0 = time.perf_counter()
            write_image(path, sr, jpeg_quality=jpeg_quality)
            seconds += time.perf_counter() - t0
            size += os.path.getsize(path)
    return seconds, float(size)
