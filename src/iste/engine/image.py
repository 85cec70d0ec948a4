"""Whole images through the query engine: uint8 RGB in, RGB of an exact size out (uint8, or
the float prediction in [0, 1] that the evaluation scores).

The evaluation methods, training validation and benchmarks go through :func:`upscale_to`; the
public API (:func:`iste.upscale`, :func:`iste.upscale_to`: gray, alpha, batches) calls the
same :func:`iste.engine.budget.super_resolve_within_memory` itself. Gray images run as three
equal channels and come back as their mean (:func:`gray_mean`); an alpha channel is resized,
not super-resolved (:func:`resize_alpha`): both rules are the API's and ``iste upscale``'s.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from iste.data.tensors import rgb_to_tensor, unit_to_uint8
from iste.engine.budget import super_resolve_to_uint8, super_resolve_within_memory
from iste.engine.render import QueryOptions

__all__ = ["upscale_to", "resize_alpha", "resize_alpha_uint8", "gray_mean", "in_source_kind"]


def upscale_to(image: np.ndarray, out_hw: tuple[int, int], model: torch.nn.Module, *,
               options: QueryOptions = QueryOptions(), dtype: str = "uint8",
               progress: Callable[[int], None] | None = None) -> np.ndarray:
    """uint8 (h, w, 3) -> (H, W, 3) super-resolved to exactly ``out_hw`` = (H, W) (the
    evaluation protocol's HR size), on the model's device: uint8 (rounded), or with
    ``dtype="float32"`` the prediction clamped to [0, 1], not quantised; tile by tile when
    the whole-image pass would not fit in memory (:mod:`iste.engine.budget`)."""
    if dtype not in ("uint8", "float32"):
        raise ValueError(f"dtype must be 'uint8' or 'float32', got {dtype!r}")
    device = next(model.parameters()).device
    if dtype == "uint8":  # when tiled, uint8 tile by tile: no float input or output held
        return super_resolve_to_uint8(model, image, tuple(out_hw), options=options,
                                      progress=progress)
    sr = super_resolve_within_memory(model, rgb_to_tensor(image, device), tuple(out_hw),
                                     options=options, progress=progress)
    return sr[0].permute(1, 2, 0).float().cpu().numpy()


def resize_alpha(alpha: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """An alpha channel float (B, 1, h, w) in [0, 1] -> (B, 1, H, W) = ``out_hw``, resized
    bicubically with the model's pixel-centre geometry (``align_corners=False``) and clamped
    to [0, 1]: transparency is not the model's to sharpen."""
    out = F.interpolate(alpha, size=tuple(out_hw), mode="bicubic", align_corners=False)
    return out.clamp_(0, 1)


def resize_alpha_uint8(alpha: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """:func:`resize_alpha` of uint8 (h, w) -> uint8 (H, W), rounded as every 8-bit output
    (:func:`iste.data.tensors.unit_to_uint8`). Holds float copies of both (4 bytes a pixel)."""
    unit = torch.from_numpy(np.ascontiguousarray(alpha)).float().div_(255)[None, None]
    return unit_to_uint8(resize_alpha(unit, out_hw))[0, 0].numpy()


def gray_mean(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (H, W): the mean of the channels, rounded (a sum of three
    integers over 3 is never halfway); the output of a gray image, which ran as three equal
    channels (the model does not keep them equal). Holds 2 bytes a pixel besides the result."""
    total = rgb[..., 0].astype(np.uint16)
    total += rgb[..., 1]
    total += rgb[..., 2]
    total += 1
    total //= 3
    return total.astype(np.uint8)


def in_source_kind(sr: np.ndarray, gray: bool, alpha: np.ndarray | None) -> np.ndarray:
    """The SR of an image's RGB, uint8 (H, W, 3), in the source's kind, as its output stores
    it: gray (H, W) for a gray source (:func:`gray_mean`), with the source's ``alpha`` (h, w)
    resized (:func:`resize_alpha_uint8`) as the last channel where it has one."""
    if gray:
        sr = gray_mean(sr)
    if alpha is None:
        return sr
    channels = sr[..., None] if gray else sr
    return np.concatenate([channels, resize_alpha_uint8(alpha, sr.shape[:2])[..., None]],
                          axis=-1)
