"""Fixed-scale networks in the engine: the scale check, padding to the network's alignment,
and tiles whose result equals the whole image's.

A fixed-scale network (:class:`~iste.models.fixed.base.FixedScaleSR`) upscales by its own
integer ``scale`` only: an output of exactly (scale h, scale w) pixels. Every path that runs a
model on an image (:func:`iste.engine.budget.super_resolve_within_memory`: the API, ``iste
upscale``, ``iste eval``, training validation; :mod:`iste.slides.pipeline`) checks the frame
with :func:`check_fixed_frame` before any work, so another scale is a one-line error; paths
that know the scale factor (:func:`iste.upscale`, ``iste upscale``) check it first with
:func:`check_fixed_scale`.

Tiles (:mod:`iste.engine.tiles` dispatches here): at an integer scale, output pixel i lies over
LR pixel i // scale, and depends on the LR pixels within the network's declared ``reach``. The
tile plan reads LR crops with a halo of ``reach`` (:func:`iste.engine.tiles.tile_geometry`),
starting at multiples of ``size_alignment``; :func:`render_fixed_tile` pads the crop by
reflection to a multiple of ``size_alignment``, runs ``sr`` and cuts the tile's pixels out.
Convolutional networks thus give tiles equal to the whole image (to float rounding); SwinIR's
declared reach is a cap (:data:`iste.models.fixed.swinir.SWIN_REACH_CAP`), and networks that
declare ``global_context`` give, per tile, the network's output on the tile's crop. Images run
whole whenever they fit in memory (:func:`iste.engine.budget.plan_image`).
"""

from __future__ import annotations

import torch

from iste.engine.render import autocast_for
from iste.models.encoders.swinir import pad_to_multiple
from iste.models.fixed.base import FixedScaleSR

__all__ = ["check_fixed_scale", "check_fixed_frame", "fixed_sr", "render_fixed_tile",
           "is_fixed_scale", "model_name"]


def is_fixed_scale(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a fixed-scale network (else an arbitrary-scale head)."""
    return isinstance(model, FixedScaleSR)


def model_name(model: FixedScaleSR) -> str:
    """e.g. "EDSR x2" (the label of its :class:`~iste.models.registry.FixedConfig`)."""
    return model.model_config.label


def _refuse(model: FixedScaleSR, what: str) -> ValueError:
    s = model.scale
    return ValueError(f"model {model_name(model)} is fixed-scale x{s}; it cannot upscale {what} "
                      f"(use -s {s}, a model trained for that scale, or an arbitrary-scale "
                      "model)")


def check_fixed_scale(model: torch.nn.Module, scale: float) -> None:
    """Refuse a scale factor other than a fixed-scale model's own (any scale passes for an
    arbitrary-scale model).

    Raises:
        ValueError: one line naming the model, its scale and the scale asked for.
    """
    if is_fixed_scale(model) and float(scale) != model.scale:
        asked = f"{float(scale):.4g}"
        if float(asked) == model.scale:  # float noise apart: the message must not say "by 2"
            asked = repr(float(scale))
        raise _refuse(model, f"by {asked}")


def check_fixed_frame(model: FixedScaleSR, lr_hw: tuple[int, int],
                      out_hw: tuple[int, int]) -> None:
    """Refuse an output that is not exactly ``model.scale`` times the input.

    Raises:
        ValueError: one line naming the model, its scale and the sizes asked for.
    """
    s = model.scale
    if tuple(out_hw) != (s * lr_hw[0], s * lr_hw[1]):
        raise _refuse(model, f"{lr_hw[1]} x {lr_hw[0]} px to {out_hw[1]} x {out_hw[0]} px")


def fixed_sr(model: FixedScaleSR, lr: torch.Tensor) -> torch.Tensor:
    """``model.sr`` on an input padded to the network's alignment, cropped back.

    lr: (B, 3, h, w) float in [0, 1] on the model's device.
    Returns (B, 3, scale h, scale w) float, not clamped.
    """
    h, w = lr.shape[-2:]
    padded = pad_to_multiple(lr, model.size_alignment) if model.size_alignment > 1 else lr
    s = model.scale
    return model.sr(padded)[..., :s * h, :s * w]


def render_fixed_tile(model: FixedScaleSR, lr_crop: torch.Tensor, lr_origin: tuple[int, int],
                      out_rows: range, out_cols: range, *,
                      precision: str = "fp32") -> torch.Tensor:
    """The output pixels ``out_rows`` x ``out_cols`` (global indices) from an LR crop starting
    at LR pixel ``lr_origin`` = (row, col) that covers them plus the network's reach;
    ``precision``: "fp32" or "bf16" (autocast, resolved by the caller).

    lr_crop: (B, 3, h, w) in [0, 1]. Returns (B, 3, len(out_rows), len(out_cols)) in [0, 1].
    """

    s = model.scale
    r0, c0 = out_rows.start - s * lr_origin[0], out_cols.start - s * lr_origin[1]
    if r0 < 0 or c0 < 0 or r0 + len(out_rows) > s * lr_crop.shape[-2] \
            or c0 + len(out_cols) > s * lr_crop.shape[-1]:
        raise ValueError(f"the LR crop at {lr_origin} of {tuple(lr_crop.shape[-2:])} does not "
                         f"cover output rows {out_rows} and columns {out_cols}")
    with torch.no_grad(), autocast_for(lr_crop.device, precision):
        sr = fixed_sr(model, lr_crop)
    return sr[..., r0:r0 + len(out_rows), c0:c0 + len(out_cols)].float().clamp_(0, 1)
