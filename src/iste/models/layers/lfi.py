"""Local Feature Interactor (LFI): attention of every pixel over its 3 x 3 neighbourhood."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

TokenLayout = Literal["tokens", "published"]


class LocalFeatureInteractor(nn.Module):
    """Per-pixel multi-head attention over 10 key/value tokens (paper Eq. 2).

    For pixel j the tokens are the mean of its 3 x 3 window (reflection padding at the border)
    followed by the 9 window vectors. ``q, q' = split(W_qk f_j)``; ``k, v = split(W_kv token)``;
    per head the logits are ``(q d^-1/2) . k`` for the 10 tokens plus one "self" logit
    ``sum(q * q')`` that carries no value; softmax over the 11; output ``sum weight * v`` over the
    10 tokens, heads concatenated, then a C -> C projection. There is no residual connection.

    ``layout="published"`` reproduces the published code, function and gradients:

    - it reads each pixel's window, stored channel-major as (C, 9), as 9 rows of C values (so
      each "token" mixes channels and positions);
    - it builds the windows through numpy, which detaches them: no gradient reaches the input
      feature map through the keys and values (the query path keeps its gradient). This changes
      the encoder's gradient by about a third (tests/test_official_parity.py).

    It exists for checkpoints converted from that code (``iste convert-official`` sets it) and
    for training the published function; ``"tokens"`` (default) is the paper's formulation,
    differentiable end to end.

    With ``"tokens"`` the 10 tokens are never built: k and v are linear in the token, so they
    are projected once per pixel of the padded map and read at the 9 window positions, and the
    mean token's logit and value are the means of the window's (``q . mean(k) = mean(q . k)``,
    ``mean(v)``), so its weight is shared out over the 9. The same function as projecting the
    10 tokens of every pixel, 10x fewer products, equal to ~1e-7 (tests/test_lfi.py).
    """

    def __init__(self, channels: int = 64, heads: int = 8, *, layout: TokenLayout = "tokens"):
        super().__init__()
        if channels % heads:
            raise ValueError(f"LFI channels ({channels}) must be divisible by heads ({heads})")
        if layout not in ("tokens", "published"):
            raise ValueError(f"LFI layout must be 'tokens' or 'published', got {layout!r}")
        self.channels, self.heads, self.layout = channels, heads, layout
        self.max_pixels = 4096  # pixels per strip in forward (a memory bound only)
        self.qk = nn.Linear(channels, 2 * channels)
        self.kv = nn.Linear(channels, 2 * channels)
        self.proj = nn.Linear(channels, channels)

    def _published_tokens(self, padded: torch.Tensor) -> torch.Tensor:
        """The published layout's 10 key/value tokens (window mean, then the 3 x 3 window read
        as 9 rows of C) of the inner pixels of a reflect-padded map: (B, C, h+2, w+2) ->
        (B, h*w, 10, C); detached, as the published numpy windows are."""
        b, c, h, w = padded.shape[0], padded.shape[1], padded.shape[2] - 2, padded.shape[3] - 2
        win = F.unfold(padded.detach(), 3)  # (B, C*9, h*w)
        win = win.transpose(1, 2).reshape(b, h * w, 9, c)
        return torch.cat([win.mean(2, keepdim=True), win], dim=2)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """feat: (B, C, h, w) -> (B, C, h, w).

        Large maps are processed in strips of rows (each pixel's result depends only on its
        own window), so memory stays bounded: the tokens and their key/value projections take
        ~30 x C floats per pixel.
        """
        _check_size(feat)
        padded = F.pad(feat, (1, 1, 1, 1), mode="reflect")
        h, w = feat.shape[-2:]
        rows = max(1, self.max_pixels // w)
        if rows >= h:
            return self._attend(feat, padded)
        out = torch.empty_like(feat)  # feat's layout (channels-last for the convolutions)
        for r in range(0, h, rows):
            out[:, :, r:r + rows] = self._attend(feat[:, :, r:r + rows],
                                                 padded[:, :, r:r + rows + 2])
        return out

    def _attend(self, feat: torch.Tensor, padded: torch.Tensor) -> torch.Tensor:
        """Attention of the pixels of ``feat`` (B, C, h, w) over their windows in ``padded``
        (B, C, h+2, w+2, the same pixels with their one-pixel border) -> (B, C, h, w)."""
        if self.layout == "published":
            return self._attend_published(feat, padded)
        b, c, h, w = feat.shape
        nh, d = self.heads, c // self.heads
        hp, wp = padded.shape[-2:]
        # channel-major (nh, d, pixels), so that the sums over d and the softmax over the
        # tokens run along rows of pixels: 4.7x the tokens' projection, against 2.2x with the
        # projections' own pixel-major rows (docs/performance.md)
        q, q_self = _per_pixel(self.qk, feat).contiguous().view(b, 2, nh, d, h, w).unbind(1)
        kv = _per_pixel(self.kv, padded).contiguous().view(b, 2, nh, d, hp, wp)
        k, v = kv[:, 0], kv[:, 1]
        scaled = q * d ** -0.5
        logits = [_in_turn((scaled * k[..., dy:dy + h, dx:dx + w]).unbind(2))
                  for dy, dx in _WINDOW]  # (B, nh, h, w) each: the sums over d
        self_logit = _in_turn((q * q_self).unbind(2))
        attn = _softmax_rows(torch.stack([_in_turn(logits) / 9, *logits, self_logit], 2))
        weight = attn[:, :, 1:10] + attn[:, :, :1] / 9  # the mean token's share, spread
        out = _in_turn([weight[:, :, t:t + 1] * v[..., dy:dy + h, dx:dx + w]
                        for t, (dy, dx) in enumerate(_WINDOW)])
        return _per_pixel(self.proj, out.view(b, c, h, w))

    def _attend_published(self, feat: torch.Tensor, padded: torch.Tensor) -> torch.Tensor:
        """:meth:`_attend` with the published layout's tokens, projected token by token."""
        b, c, h, w = feat.shape
        nh, d = self.heads, c // self.heads
        tokens = self._published_tokens(padded)
        centre = feat.flatten(2).transpose(1, 2)  # (B, hw, C)
        q, q_self = self.qk(centre).view(b, h * w, 2, nh, d).unbind(2)  # (B, hw, nh, d)
        k, v = self.kv(tokens).view(b, h * w, tokens.shape[2], 2, nh, d).unbind(3)
        logits = torch.einsum("bpnd,bptnd->bpnt", q * d ** -0.5, k)  # (B, hw, nh, 10)
        self_logit = (q * q_self).sum(-1, keepdim=True)
        attn = torch.cat([logits, self_logit], -1).softmax(-1)[..., :-1]
        out = torch.einsum("bpnt,bptnd->bpnd", attn, v).reshape(b, h * w, c)
        return self.proj(out).transpose(1, 2).reshape(b, c, h, w)


_WINDOW = [(dy, dx) for dy in range(3) for dx in range(3)]  # row-major, as F.unfold reads


def _in_turn(parts) -> torch.Tensor:
    """The sum of ``parts`` (tensors of one shape), added one after another. A torch
    reduction over a dimension other than the innermost (``x.sum(2)``) takes another order for
    the pixels past the last whole vector of a row, so a pixel's sum would depend on the map's
    width (a crop would not equal the image); it was slower, too."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def _softmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 2 of (B, nh, T, h, w), computed over rows of T: along dim 2 itself, as
    with sums (:func:`_in_turn`), a pixel's result would depend on its place in a row."""
    return logits.movedim(2, -1).contiguous().softmax(-1).movedim(-1, 2).contiguous()


def _per_pixel(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer`` on every pixel of a map: (B, C, h, w) -> (B, out, h, w), with the pixels as
    the layer writes them (rows of ``out`` values: channels-last strides)."""
    return layer(x.flatten(2).transpose(1, 2)).transpose(1, 2).unflatten(2, x.shape[-2:])


MIN_SIDE = 2
"""The fewest pixels a feature map may have in each direction: the LFI mixes each pixel with
its neighbours (a model with it reads no smaller input: ``SRModel.min_input_side``)."""


def _check_size(feat: torch.Tensor) -> None:
    if feat.shape[-2] < MIN_SIDE or feat.shape[-1] < MIN_SIDE:
        # encoders keep the input's size: the image (or tile) is what the user can change
        raise ValueError(f"ISTE's local feature interaction (LFI) needs an image of at least "
                         f"{MIN_SIDE} x {MIN_SIDE} pixels, got {feat.shape[-1]} x "
                         f"{feat.shape[-2]} px")
