"""How each method's published model is driven at evaluation time (its calling convention).

Every published model is a LIIF-family module built by its repository's registry; they differ
in how features are computed and how one chunk of queries is answered. Each registry entry
(:class:`iste.models.registry.PublishedCode`) names one :class:`CallingConvention`;
``iste bench`` (:mod:`iste.bench.published`) drives the published code through it.

Arguments follow our conventions (:mod:`iste.models.heads.base`): ``inp`` (B, 3, h, w)
normalised, ``coord`` (B, Q, 2) output pixel centres, ``cell`` (B, Q, 2) = 2 / output size;
``query`` returns (B, Q, 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class CallingConvention:
    """encode(model, inp): everything that depends only on the input, kept on the model
    (the published modules store their features as attributes); query(model, coord, cell)."""

    encode: Callable[[nn.Module, torch.Tensor], None]
    query: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _gen_feat(model: nn.Module, inp: torch.Tensor) -> None:
    model.gen_feat(inp)


def _gen_feat_with_input(model: nn.Module, inp: torch.Tensor) -> None:
    """LMI's queries read the input image from ``model.inp`` (set by its ``forward``)."""
    model.inp = inp
    model.gen_feat(inp)


def _query_rgb(model: nn.Module, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    return model.query_rgb(coord, cell)


def _query_texture(model: nn.Module, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    return model.query_texture(coord, cell)


def _query_scale(model: nn.Module, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """ITSRN takes ``scale`` = 1 / HR size where the others take the cell (2 / HR size)."""
    return model.query_rgb(coord, cell / 2)


def _clit_encode(model: nn.Module, inp: torch.Tensor) -> None:
    """CLIT's first stage (LIT): ``gen_feat()`` reads its state from attributes that
    ``chop_forward`` sets."""
    model.inp, model.prev_feat, model.im_idx, model.conv_idx = inp, None, 0, 0
    model.gen_feat()


def _clit_query(model: nn.Module, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """One stage's ``query_rgb``: no earlier stage's prediction, one cell (B, 2) per image."""
    model.prev_pred = None
    return model.query_rgb(coord, cell[:, 0])


LIIF_FAMILY = CallingConvention(_gen_feat, _query_rgb)
ISTE = CallingConvention(_gen_feat, _query_texture)
LMI = CallingConvention(_gen_feat_with_input, _query_rgb)
ITSRN = CallingConvention(_gen_feat, _query_scale)
CLIT = CallingConvention(_clit_encode, _clit_query)
