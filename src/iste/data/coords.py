"""Pixel-centre coordinates and cells, in the LIIF family's convention.

Convention:
    An image of H x W pixels covers the square [-1, 1]^2. Pixel (i, j) has its centre at
    (-1 + (2i + 1) / H, -1 + (2j + 1) / W). Coordinates are (row, col) pairs; functions that
    call ``grid_sample`` flip the last axis to (x, y) themselves.
    A query's ``cell`` is the size of one output pixel in the same units: (2 / H_out, 2 / W_out).
"""

from __future__ import annotations

import torch


def coord_axis(n: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Centres of ``n`` pixels along one axis: (n,) in (-1, 1).

    Computed as -1 + r + 2r * k with r = 1 / n, in ``dtype``, the same arithmetic as the
    published code, so that converted checkpoints see bit-identical coordinates.
    """
    r = 1.0 / n
    return -1 + r + (2 * r) * torch.arange(n, device=device, dtype=dtype)


def make_coord(shape: tuple[int, int], *, flatten: bool = True, device=None,
               dtype=torch.float32) -> torch.Tensor:
    """Pixel-centre coordinates of an H x W image.

    Returns:
        (H * W, 2) if ``flatten`` else (H, W, 2); (row, col) order, values in (-1, 1).
    """
    h, w = shape
    rows = coord_axis(h, device=device, dtype=dtype)
    cols = coord_axis(w, device=device, dtype=dtype)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1)
    return grid.reshape(-1, 2) if flatten else grid


def make_cell(out_shape: tuple[int, int], n: int, *, device=None,
              dtype=torch.float32) -> torch.Tensor:
    """The cell of every query of an output of ``out_shape``: (n, 2) filled with (2/H, 2/W)."""
    h, w = out_shape
    cell = torch.empty(n, 2, device=device, dtype=dtype)
    cell[:, 0] = 2 / h
    cell[:, 1] = 2 / w
    return cell


def normalize(img01: torch.Tensor) -> torch.Tensor:
    """Map an image in [0, 1] to the models' input range [-1, 1]: (x - 0.5) / 0.5."""
    return (img01 - 0.5) / 0.5


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize`: model output in [-1, 1] back to [0, 1] (not clamped)."""
    return x * 0.5 + 0.5
