"""Whole images through the query engine: uint8 RGB in, RGB of an exact size out (uint8, or
the float prediction in [0, 1] that the evaluation scores).

The evaluation methods, training validation and benchmarks go through :func:`upscale_to`; the
public API (:func:`iste.upscale`, :func:`iste.upscale_to`: gray, alpha, batches) calls the
same :func:`iste.engine.budget.super_resolve_within_memory` itself.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from iste.data.tensors import rgb_to_tensor
from iste.engine.budget import super_resolve_to_uint8, super_resolve_within_memory
from iste.engine.render import QueryOptions

__all__ = ["upscale_to"]


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
