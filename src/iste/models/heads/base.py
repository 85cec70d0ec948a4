"""What every super-resolution head offers: encode once, query coordinates many times.

Convention (shared by all heads; documented here once):
    inp: (B, 3, h, w) low-resolution image normalised to [-1, 1] (``(x - 0.5) / 0.5``).
    coord: (B, Q, 2) query positions in the output, in [-1, 1], (row, col) order.
    cell: (B, Q, 2) size of one output pixel, (2 / H_out, 2 / W_out).
    output: (B, Q, 3) RGB in the same normalised range as ``inp`` (not clamped).
``model(inp, coord, cell)`` follows the LIIF family's published tensor conventions, so a
converted published checkpoint gives the published model's output.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

Features = dict[str, Any]


class SRHead(nn.Module):
    """Base class: an encoder plus an implicit decoder queried at continuous coordinates."""

    encoder: nn.Module

    def encode(self, inp: torch.Tensor) -> Features:
        """Everything that depends only on the input: feature maps and per-pixel tables.

        The returned dict is passed back to :meth:`query`; nothing is cached on the module.
        """
        raise NotImplementedError

    def query(self, feats: Features, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """RGB at ``coord``: (B, Q, 2) -> (B, Q, 3)."""
        raise NotImplementedError

    def forward(self, inp: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        return self.query(self.encode(inp), coord, cell)


def scaled_cell(cell: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """The cell measured in low-resolution pixels: (B, Q, 2) * (h, w)."""
    return torch.stack([cell[..., 0] * hw[0], cell[..., 1] * hw[1]], -1)


def cell_layer(layer: nn.Module, cell: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``layer`` on the scaled cell in float32 (its output enters a sine, where bf16 would
    round the argument): (B, Q, out), or (B, 1, out) when ``cell`` is one cell broadcast to
    every query (stride 0, as the engine passes it), computed once."""
    if cell.shape[1] > 1 and cell.stride(1) == 0:
        cell = cell[:, :1]
    with torch.autocast(cell.device.type, enabled=False):
        return layer(scaled_cell(cell.float(), hw))
