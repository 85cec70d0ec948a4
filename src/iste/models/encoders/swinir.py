"""SwinIR without upsampler, ISTE's encoder.

Liang et al., "SwinIR: Image Restoration Using Swin Transformer" (ICCVW 2021), in the form the
published ISTE code uses: a 3x3 conv to ``embed_dim`` channels, a LayerNorm on the pixel tokens,
residual Swin Transformer blocks (RSTB: ``depth`` Swin layers alternating plain and shifted
windows, then a conv and a skip), a final LayerNorm, a conv and a long skip, then ISTE's 'none'
tail ``conv_before_upsample`` = Conv3x3(embed_dim -> out_dim) + LeakyReLU (slope 0.01, torch's
default; not SwinIR's usual 0.2). Patch size is 1 (every pixel is a token), no absolute
position embedding, no dropout; stochastic depth ``drop_path_rate`` rises linearly from 0 over
all Swin layers and acts only in training. No mean shift or ``img_range`` scaling is applied:
both are commented out of the published forward.

Input sizes. Windows need H and W to be multiples of ``window_size``, so ``forward`` pads the
input at the bottom and right by reflection (without repeating the edge pixel, as
``F.pad(mode='reflect')``) up to the next multiple, exactly as the published
``check_image_size``. The published forward then returns the *padded* feature map, which the
published heads treat as covering the whole image -- a geometric shift for inputs that are not
multiples of the window (its test script avoids that by padding the image itself beforehand and
cropping the prediction). Here ``crop_to_input=True`` (default) crops the features back to
(h, w), so they align with the input; with ``False`` the padded map is returned as published.
The cropped features equal the published ones at every input position (padding content still
influences features near the bottom/right border). Inputs too small for one reflection
(pad >= size) are reflected repeatedly (replicated when the size is 1), where the published
code raises.

Parameter names equal the published ones. The published ``relative_position_index`` and
``attn_mask`` buffers are derived data; here the index is a non-persistent buffer and the shift
mask is built in ``forward`` for the padded size, so neither is in the state dict.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from iste.models.checks import as_int_tuple, check_bool, check_choice, check_float, check_int
from iste.models.layers.linear import linear
from iste.models.layers.randomness import training_generator
from .base import Encoder

ShiftMask = Literal["exclude", "published"]
# added to the logits of token pairs from different regions of a shifted window
_MASK_VALUES: dict[str, float] = {"exclude": float("-inf"), "published": -100.0}


@dataclass(frozen=True)
class SwinBodyConfig:
    """Size of a SwinIR body (conv, RSTBs, norm, conv, long skip), shared by ISTE's encoder
    (:class:`SwinIRConfig`) and the classical-SR network
    (:class:`~iste.models.fixed.swinir.SwinIRNetConfig`). Defaults are the paper's.

    Attributes:
        embed_dim: token channels.
        depths: Swin layers per RSTB (one entry per RSTB).
        num_heads: attention heads per RSTB; each must divide ``embed_dim``.
        window_size: side of the square attention windows; odd layers shift by half of it.
        mlp_ratio: hidden width of the Swin MLPs as a multiple of ``embed_dim``.
        resi_connection: '1conv' (one 3x3 conv) or '3conv' (3x3 -> 1x1 -> 3x3 through
            embed_dim/4, LeakyReLU 0.2) at the end of each RSTB and of the body.
        drop_path_rate: stochastic depth of the last Swin layer (training only).
        shift_mask: how a shifted window keeps apart the tokens that the cyclic shift brought
            from opposite image borders. 'exclude' (default): their attention weights are 0.
            'published': -100 is added to their logits, as the published code does; their
            weights are then ~4e-44, denormal floats that make the CPU's attention products
            ~10-20x slower (docs/performance.md), while the outputs are the same in float32
            unless a logit exceeds its row's largest unmasked one by about 13 + 87.

    Error messages name the concrete config class. YAML lists become tuples.
    """

    embed_dim: int = 180
    depths: tuple[int, ...] = (6, 6, 6, 6, 6, 6)
    num_heads: tuple[int, ...] = (6, 6, 6, 6, 6, 6)
    window_size: int = 8
    mlp_ratio: float = 2.0
    resi_connection: Literal["1conv", "3conv"] = "1conv"
    drop_path_rate: float = 0.1
    shift_mask: ShiftMask = "exclude"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_int(owner, "embed_dim", self.embed_dim)
        depths = as_int_tuple(owner, "depths", self.depths)
        heads = as_int_tuple(owner, "num_heads", self.num_heads)
        object.__setattr__(self, "depths", depths)
        object.__setattr__(self, "num_heads", heads)
        if len(depths) != len(heads):
            raise ValueError(f"{owner}: depths and num_heads need one entry per RSTB, got "
                             f"{len(depths)} and {len(heads)}")
        for h in heads:
            if self.embed_dim % h:
                raise ValueError(f"{owner}: every num_heads entry must divide embed_dim="
                                 f"{self.embed_dim}, got {h}")
        check_int(owner, "window_size", self.window_size, max_value=64)
        ratio = check_float(owner, "mlp_ratio", self.mlp_ratio, min_value=0.0, max_value=16.0,
                            min_inclusive=False)
        object.__setattr__(self, "mlp_ratio", ratio)
        if int(self.embed_dim * ratio) < 1:
            raise ValueError(f"{owner}: embed_dim * mlp_ratio must be >= 1")
        check_choice(owner, "resi_connection", self.resi_connection, ("1conv", "3conv"))
        if self.resi_connection == "3conv" and self.embed_dim < 4:
            raise ValueError(f"{owner}: resi_connection='3conv' needs embed_dim >= 4")
        rate = check_float(owner, "drop_path_rate", self.drop_path_rate, min_value=0.0,
                           max_value=0.99)
        object.__setattr__(self, "drop_path_rate", rate)
        check_choice(owner, "shift_mask", self.shift_mask, tuple(_MASK_VALUES))

    def body_fields(self) -> dict[str, object]:
        """The :class:`SwinBodyConfig` fields of this config, by name."""
        return {f.name: getattr(self, f.name) for f in fields(SwinBodyConfig)}


@dataclass(frozen=True)
class SwinIRConfig(SwinBodyConfig):
    """Size of a SwinIR encoder: the body's fields (:class:`SwinBodyConfig`) and its output.
    Defaults are ISTE's (about 11.6 M parameters).

    Attributes:
        out_dim: channels of the output features (the published ``num_feat`` = 64).
        crop_to_input: crop the features back to the input size (see module docstring).

    Published arguments that are not fields: ``img_size`` (48) only precomputes the shift mask
    for 48 x 48 inputs (ours is built for each input size) and would shrink the window if it
    were <= ``window_size``; ``patch_size`` is 1 (the published ``PatchEmbed`` only flattens);
    ``img_range`` and the RGB mean are never applied; ``upsampler`` is always 'none'.
    """

    out_dim: int = 64
    crop_to_input: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("SwinIRConfig", "out_dim", self.out_dim)
        check_bool("SwinIRConfig", "crop_to_input", self.crop_to_input)


# ---------------------------------------------------------------------------------------------
# helpers


def _to_windows(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, nW, ws*ws, C); windows in row-major order, H and W multiples of ws."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // ws) * (w // ws), ws * ws, c)


def window_order(size: tuple[int, int], ws: int, shift: int, *,
                 device: torch.device) -> torch.Tensor:
    """(H*W,) int64: for each token of the windows (windows row-major, tokens row-major within),
    its index in the row-major H x W map, after a cyclic shift of the map by ``-shift`` on both
    axes: ``x.flatten(1, 2)[:, order]`` equals ``_to_windows(torch.roll(x, (-shift, -shift),
    (1, 2)), ws).flatten(1, 2)`` for x (B, H, W, C)."""
    h, w = size
    rows = (torch.arange(h, device=device) + shift) % h  # source row of each shifted row
    cols = (torch.arange(w, device=device) + shift) % w
    rows = rows.view(h // ws, 1, ws, 1)  # (window row, -, row in window, -)
    cols = cols.view(1, w // ws, 1, ws)
    return (rows * w + cols).flatten()


class _ReorderTokens(torch.autograd.Function):
    """``x.index_select(1, order)`` for a permutation ``order`` of x's dim 1, (B, L, C) ->
    (B, L, C), whose backward gathers with the ``inverse`` permutation (index_select's own
    backward scatters into a zero tensor)."""

    @staticmethod
    def forward(ctx, x, order, inverse):
        ctx.inverse = inverse
        return x.index_select(1, order)

    @staticmethod
    def backward(ctx, grad):
        return grad.index_select(1, ctx.inverse), None, None


@dataclass(frozen=True)
class Windows:
    """What the Swin layers of one forward pass share, for an H x W token map.

    Attributes:
        size: (H, W), multiples of the window.
        orders: per shift (0 and the shifted layers' shift), the token order of the windows
            (:func:`window_order`) and its inverse, each (H*W,).
        mask: (nW, N, N) additive mask of the shifted windows, or None without shifted layers.
    """

    size: tuple[int, int]
    orders: dict[int, tuple[torch.Tensor, torch.Tensor]]
    mask: torch.Tensor | None

    @staticmethod
    def build(size: tuple[int, int], ws: int, shifts: set[int], *, device: torch.device,
              dtype: torch.dtype, kind: ShiftMask) -> Windows:
        orders = {}
        for shift in shifts:
            order = window_order(size, ws, shift, device=device)
            inverse = torch.empty_like(order).scatter_(
                0, order, torch.arange(order.numel(), device=device))
            orders[shift] = (order, inverse)
        shift = max(shifts)
        mask = (shift_window_mask(size, ws, shift, device=device, dtype=dtype, kind=kind)
                if shift else None)
        return Windows(size, orders, mask)

    def split(self, tokens: torch.Tensor, shift: int, ws: int) -> torch.Tensor:
        """(B, H*W, C) map tokens -> (B, nW, ws*ws, C) tokens of the windows shifted by
        ``shift``."""
        order, inverse = self.orders[shift]
        b, _, c = tokens.shape
        return _ReorderTokens.apply(tokens, order, inverse).view(b, -1, ws * ws, c)

    def merge(self, windows: torch.Tensor, shift: int) -> torch.Tensor:
        """Inverse of :meth:`split`: (B, nW, ws*ws, C) -> (B, H*W, C)."""
        order, inverse = self.orders[shift]
        b, c = windows.shape[0], windows.shape[-1]
        return _ReorderTokens.apply(windows.reshape(b, -1, c), inverse, order)


class _SplitHeads(torch.autograd.Function):
    """The attention operands of a window's qkv product, each written once in the layout its
    batched product reads: (B, nW, N, 3 * C) -> q * scale (B, nW, heads, N, d), k transposed
    (B, nW, heads, d, N) and v (B, nW, heads, N, d), d = C / heads. The same values as the
    published permute, unbind and ``q * scale`` (whose products copied each operand again);
    the backward writes the three gradients into one qkv-shaped tensor (autograd stacked
    them, then copied the stack into that layout)."""

    @staticmethod
    def forward(ctx, qkv, heads, scale):
        b, n_win, n, c3 = qkv.shape
        parts = qkv.view(b, n_win, n, 3, heads, c3 // (3 * heads))
        ctx.scale = scale
        q = torch.mul(parts[:, :, :, 0].transpose(2, 3), scale,
                      out=qkv.new_empty(b, n_win, heads, n, parts.shape[-1]))
        k_t = qkv.new_empty(b, n_win, heads, parts.shape[-1], n).copy_(
            parts[:, :, :, 1].permute(0, 1, 3, 4, 2))
        v = qkv.new_empty(b, n_win, heads, n, parts.shape[-1]).copy_(
            parts[:, :, :, 2].transpose(2, 3))
        return q, k_t, v

    @staticmethod
    def backward(ctx, grad_q, grad_k_t, grad_v):
        b, n_win, heads, n, d = grad_q.shape
        grad = grad_q.new_empty(b, n_win, n, 3, heads, d)
        torch.mul(grad_q.transpose(2, 3), ctx.scale, out=grad[:, :, :, 0])
        grad[:, :, :, 1].copy_(grad_k_t.permute(0, 1, 4, 2, 3))
        grad[:, :, :, 2].copy_(grad_v.transpose(2, 3))
        return grad.view(b, n_win, n, 3 * heads * d), None, None


def relative_position_index(ws: int) -> torch.Tensor:
    """(ws*ws, ws*ws) int64: row of the bias table for each (query, key) pair of a window.

    For tokens p = (r1, c1) and q = (r2, c2): (r1 - r2 + ws - 1) * (2 ws - 1) + (c1 - c2 + ws - 1).
    """
    # an index table, on the CPU even when the model is built on the meta device (to count
    # its parameters); token k = (k // ws, k % ws)
    r = torch.arange(ws, device="cpu")
    rows = r.repeat_interleave(ws)
    cols = r.repeat(ws)
    d_row = rows[:, None] - rows[None, :] + ws - 1
    d_col = cols[:, None] - cols[None, :] + ws - 1
    return d_row * (2 * ws - 1) + d_col


def shift_window_mask(size: tuple[int, int], ws: int, shift: int, *, device: torch.device,
                      dtype: torch.dtype, kind: ShiftMask = "exclude") -> torch.Tensor:
    """Additive mask of shifted-window attention: (nW, ws*ws, ws*ws), 0 or, for the pairs kept
    apart, -inf (``kind='exclude'``) or -100 (``'published'``).

    After the cyclic shift by ``-shift``, the last window row/column holds pixels from opposite
    image borders; each axis is cut into [0, L - ws), [L - ws, L - shift), [L - shift, L) and
    tokens may only attend to tokens of the same (row band, column band).
    """
    h, w = size
    row_band = ((torch.arange(h, device=device) >= h - ws).long()
                + (torch.arange(h, device=device) >= h - shift).long())
    col_band = ((torch.arange(w, device=device) >= w - ws).long()
                + (torch.arange(w, device=device) >= w - shift).long())
    region = (row_band[:, None] * 3 + col_band[None, :]).to(dtype)  # (H, W)
    region = _to_windows(region[None, :, :, None], ws)[0, :, :, 0]  # (nW, ws*ws)
    differs = region[:, None, :] != region[:, :, None]
    zero = torch.zeros((), device=device, dtype=dtype)
    return torch.where(differs, zero + _MASK_VALUES[kind], zero)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (B, C, h, w) at the bottom/right by reflection to multiples of ``multiple``.

    Equals ``F.pad(x, (0, pw, 0, ph), mode='reflect')`` (the published ``check_image_size``)
    whenever that is defined; otherwise reflects repeatedly, or replicates a size-1 axis.
    """
    for dim in (-2, -1):
        target = -(-x.shape[dim] // multiple) * multiple
        while x.shape[dim] < target:
            size = x.shape[dim]
            step = min(target - size, size - 1)
            pad = (0, 0, 0, max(step, 1)) if dim == -2 else (0, max(step, 1), 0, 0)
            x = F.pad(x, pad, mode="reflect" if step > 0 else "replicate")
    return x


class _AddDivided(torch.autograd.Function):
    """x + branch / divisor in one pass, divisor broadcast (B, 1, ...); the branch's gradient
    is grad / divisor (``torch.addcdiv``'s own multiplies by the reciprocal, which differs
    from the published division in the last bit)."""

    @staticmethod
    def forward(ctx, x, branch, divisor):
        ctx.save_for_backward(divisor)
        return torch.addcdiv(x, branch, divisor)

    @staticmethod
    def backward(ctx, grad):
        (divisor,) = ctx.saved_tensors
        return grad, grad / divisor, None


def _add_residual(x: torch.Tensor, branch: torch.Tensor, p: float,
                  training: bool) -> torch.Tensor:
    """x + drop_path(branch), x and branch (B, ...): with stochastic depth (training, p > 0)
    a sample's whole branch is zeroed with probability p and the kept ones are divided by
    1 - p.

    One pass over the tensors: the branch is divided by 1 - p where kept and by inf where
    dropped (its elements then become zeros of their own sign, as ``branch * 0`` does), which
    equals x + the published ``branch / (1 - p) * mask`` bit for bit, values and
    gradients."""
    if p == 0.0 or not training:
        return x + branch
    keep = 1.0 - p
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    kept = torch.rand(shape, device=x.device, dtype=x.dtype, generator=training_generator()) < keep
    divisor = torch.full(shape, float("inf"), device=x.device, dtype=x.dtype).masked_fill_(
        kept, keep)
    return _AddDivided.apply(x, branch, divisor)


def _resi_conv(dim: int, kind: str) -> nn.Module:
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, padding=1)
    return nn.Sequential(nn.Conv2d(dim, dim // 4, 3, padding=1), nn.LeakyReLU(0.2),
                         nn.Conv2d(dim // 4, dim // 4, 1), nn.LeakyReLU(0.2),
                         nn.Conv2d(dim // 4, dim, 3, padding=1))


def _tokens_to_map(tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W)."""
    b, _, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, *size)


# ---------------------------------------------------------------------------------------------
# modules (attribute names follow the published code, for state-dict compatibility)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias.

    forward(x, mask): x (B, nW, N, C) with N = ws*ws tokens per window; mask (nW, N, N) additive
    or None. Returns (B, nW, N, C).
    """

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window_size),
                             persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n_win, n, c = x.shape
        qkv = linear(x, self.qkv.weight, self.qkv.bias)
        q, k_t, v = _SplitHeads.apply(qkv, self.num_heads, self.scale)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, self.num_heads).permute(2, 0, 1)  # (heads, N, N)
        if mask is not None:
            bias = bias + mask.unsqueeze(1)  # (nW, heads, N, N)
        # Written out rather than F.scaled_dot_product_attention: same cost on CPU here, and
        # bit-identical to the published code (SDPA differs by ~1e-5 over 36 layers).
        logits = q @ k_t + bias
        out = logits.softmax(dim=-1) @ v
        return linear(out.transpose(2, 3).reshape(b, n_win, n, c), self.proj.weight,
                      self.proj.bias)


class Mlp(nn.Module):
    """Linear -> GELU -> Linear on the last axis: (..., C) -> (..., C)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # layers.linear: oneDNN products (fused with the exact GELU in inference)
        hidden = linear(x, self.fc1.weight, self.fc1.bias, gelu=True)
        return linear(hidden, self.fc2.weight, self.fc2.bias)


class SwinLayer(nn.Module):
    """One Swin Transformer layer (pre-norm window attention and MLP, each with a skip).

    forward(x, windows): x (B, H*W, C) tokens in row-major order of the H x W map of
    ``windows`` (:class:`Windows`). Returns (B, H*W, C).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, shift: int,
                 mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift = shift
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, windows: Windows) -> torch.Tensor:
        # the cyclic shift and the window partition are one reordering of the tokens
        s = self.shift
        y = windows.split(self.norm1(x), s, self.window_size)
        y = windows.merge(self.attn(y, windows.mask if s else None), s)
        x = _add_residual(x, y, self.drop_path, self.training)
        return _add_residual(x, self.mlp(self.norm2(x)), self.drop_path, self.training)


class SwinLayerGroup(nn.Module):
    """A sequence of Swin layers (published ``BasicLayer``; holds ``blocks``)."""

    def __init__(self, blocks: list[SwinLayer]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, windows: Windows) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, windows)
        return x


class RSTB(nn.Module):
    """Residual Swin Transformer Block: x + tokens(conv(map(swin_layers(x)))).

    forward(x, windows): (B, H*W, C) -> (B, H*W, C), see :class:`SwinLayer`.
    """

    def __init__(self, group: SwinLayerGroup, conv: nn.Module) -> None:
        super().__init__()
        self.residual_group = group
        self.conv = conv

    def forward(self, x: torch.Tensor, windows: Windows) -> torch.Tensor:
        y = self.conv(_tokens_to_map(self.residual_group(x, windows), windows.size))
        return x + y.flatten(2).transpose(1, 2)


class PatchEmbed(nn.Module):
    """Pixels to tokens (patch size 1) with a LayerNorm: (B, C, H, W) -> (B, H*W, C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.flatten(2).transpose(1, 2))


class SwinIREncoder(Encoder):
    """SwinIR feature extractor with ISTE's 'none' tail.

    Args:
        config: network size and padding behaviour, see :class:`SwinIRConfig`.

    Shapes:
        forward(x): x is (B, 3, h, w), the normalised image in [-1, 1], any h, w >= 1. Returns
        (B, ``out_dim``, h, w) features, or (B, ``out_dim``, H, W) with H, W = h, w rounded up
        to multiples of ``window_size`` when ``config.crop_to_input`` is False.
    """

    def __init__(self, config: SwinIRConfig) -> None:
        super().__init__()
        self.config = config
        dim, ws = config.embed_dim, config.window_size
        self.out_dim: int = config.out_dim
        self.window_size = ws
        self.size_alignment = ws
        self.shift = ws // 2
        self.conv_first = nn.Conv2d(3, dim, 3, padding=1)
        self.patch_embed = PatchEmbed(dim)
        n_layers = sum(config.depths)
        rates = torch.linspace(0, config.drop_path_rate, n_layers, device="cpu").tolist()
        self.layers = nn.ModuleList()
        for depth, heads in zip(config.depths, config.num_heads):
            blocks = [SwinLayer(dim, heads, ws, 0 if i % 2 == 0 else self.shift,
                                config.mlp_ratio, rates.pop(0)) for i in range(depth)]
            conv = _resi_conv(dim, config.resi_connection)
            self.layers.append(RSTB(SwinLayerGroup(blocks), conv))
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = _resi_conv(dim, config.resi_connection)
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, config.out_dim, 3, padding=1),
                                                  nn.LeakyReLU())
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.window_size)
        size = (x.shape[-2], x.shape[-1])
        shifts = {block.shift for layer in self.layers for block in layer.residual_group.blocks}
        windows = Windows.build(size, self.window_size, shifts, device=x.device, dtype=x.dtype,
                                kind=self.config.shift_mask)
        shallow = self.conv_first(x)
        tokens = self.patch_embed(shallow)
        for layer in self.layers:
            tokens = layer(tokens, windows)
        deep = _tokens_to_map(self.norm(tokens), size)
        feat = self.conv_before_upsample(self.conv_after_body(deep) + shallow)
        return feat[..., :h, :w] if self.config.crop_to_input else feat


def _init_weights(m: nn.Module) -> None:
    """SwinIR's initialisation: truncated-normal(0.02) linears with zero bias, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
