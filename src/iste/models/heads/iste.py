"""ISTE: implicit self-texture enhancement (Duan et al., Scientific Reports 2025).

Two branches decoded at every query and summed:
    feature aggregation: F_LR -> LFI -> conv -> F_LFIC --STF(keys = texture)--> F_STF -> LPD
    texture learning:    F_LR -> Texture Learner -> F_TL ----------------------------> LTD
The Table 4 ablations are switches of :class:`ISTEConfig` (see :data:`ABLATIONS`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from iste.models.heads.base import Features, KeySet, KeyWork, SRHead, cell_layer, scaled_cell
from iste.models.layers.argmax import argmax_last
from iste.models.layers.ensemble import (Neighbour, ensemble_sum, gather_pixels,
                                         local_neighbours, neighbour_indices, pixel_table,
                                         repeat_or_broadcast, repeat_queries, stack_neighbours)
from iste.models.layers.lfi import MIN_SIDE as LFI_MIN_SIDE
from iste.models.layers.lfi import LocalFeatureInteractor, TokenLayout
from iste.models.layers.linear import linear
from iste.models.layers.mlp import MLP
from iste.typed import check_size, check_sizes

Texture = Literal["sine", "conv", "none"]

# Paper Table 4, as config overrides of the full model.
ABLATIONS: dict[str, dict] = {
    "full": {},
    "no-lfi": {"lfi": False},
    "no-tl": {"texture": "conv"},
    "no-stf": {"stf": False},
    "no-ltd": {"ltd": False},
    "tl-ltd-only": {"pixel_branch": False, "lfi": False, "stf": False},
    "lfi-lpd-only": {"texture": "none", "stf": False, "ltd": False},
}


def iste_label(config: "ISTEConfig") -> str:
    """"ISTE" for the full model, "ISTE (no-lfi)" for a Table 4 ablation; another mix of the
    switches names those that differ from the full model ("ISTE (lfi=False, ltd=False)").
    An LFI of the published layout, another function than the paper's (converted
    checkpoints), adds "published LFI": "ISTE (published LFI)", "ISTE (no-ltd, published
    LFI)"."""
    mine, full = asdict(config), asdict(ISTEConfig())
    switched = {name: mine[name] for name in _SWITCHES if mine[name] != full[name]}
    parts = []
    if switched:
        ablation = next((name for name, overrides in ABLATIONS.items()
                         if overrides == switched), None)
        parts.append(ablation or ", ".join(f"{k}={v}" for k, v in switched.items()))
    if config.lfi_layout == "published" and config.pixel_branch and config.lfi:
        parts.append("published LFI")
    return f"ISTE ({', '.join(parts)})" if parts else "ISTE"


_SWITCHES = sorted({name for overrides in ABLATIONS.values() for name in overrides})


KEY_TABLE_BLOCK = 2048
"""LR pixels per part of a window's STF key table (:meth:`ISTE.key_work`): parts run
side by side on CPU, so a window (~2 500 pixels per ensemble shift) makes ~8 parts, and the
engine queues the parts of several windows at once. Against 1024 (in one process,
interleaved, real-time priority): warm viewer tiles x2 1.10x, x3.3 1.04-1.12x, x4 1.0x; the
shipped model on 128 x 128 at x2 1.15x, on 64 x 64 at x4 0.99x; the paper-size ISTE 1.01x
(docs/performance.md)."""


SIMILARITY_ROWS = 256
"""Rows of STF's similarity computed and reduced at a time (:meth:`ISTE.fuse`): a block of
256 rows against 2304 keys (2.4 MB) is reduced to its argmax while it is still in cache,
where the whole part's similarity (2048 rows, 19 MB) went out to memory and back. One
thread, 2048 pixels x 2304 keys x 64 channels: 8.3-8.8 ms against 9.3-10.9 ms with the
BLAS's ``bmm`` (docs/performance.md, "Session 10"); 512-2048 rows measured alike since the
product runs through :func:`~iste.models.layers.linear.linear` (session 11)."""


@dataclass(frozen=True)
class ISTEConfig:
    """ISTE head. ``hidden_dim`` is the width of F_LFIC, F_TL and the decoders' input.

    pixel_branch: the feature aggregation branch (LFI, F_LFIC, STF, LPD).
    texture: "sine" = Texture Learner; "conv" = a 3x3 conv in its place; "none" = no texture
        branch (then neither STF nor LTD).
    lfi_layout: "tokens" (paper Eq. 2, differentiable end to end) or "published" (the published
        code's function and gradients: scrambled tokens, key/value path detached; set by
        converted checkpoints; :class:`~iste.models.layers.lfi.LocalFeatureInteractor`).
    stf_chunk: bound on the number of similarity entries held at once (memory knob only).
    """

    hidden_dim: int = 256
    decoder_hidden: tuple[int, ...] = (256, 256, 256)
    pixel_branch: bool = True
    lfi: bool = True
    lfi_heads: int = 8
    lfi_layout: TokenLayout = "tokens"
    texture: Texture = "sine"
    stf: bool = True
    ltd: bool = True
    stf_chunk: int = 1 << 22

    def __post_init__(self):
        object.__setattr__(self, "decoder_hidden",
                           check_sizes("iste.decoder_hidden", self.decoder_hidden))
        check_size("iste.hidden_dim", self.hidden_dim)
        check_size("iste.lfi_heads", self.lfi_heads, high=256)
        check_size("iste.stf_chunk", self.stf_chunk, high=1 << 31)
        if self.texture not in ("sine", "conv", "none"):
            raise ValueError(f"iste.texture must be 'sine', 'conv' or 'none', got {self.texture!r}")
        if self.stf and (not self.pixel_branch or self.texture == "none"):
            raise ValueError("iste.stf needs both the pixel branch and a texture branch")
        if self.lfi and not self.pixel_branch:
            raise ValueError("iste.lfi belongs to the pixel branch: set lfi: false with "
                             "pixel_branch: false")
        if self.ltd and self.texture == "none":
            raise ValueError("iste.ltd decodes texture features: it needs texture 'sine' or 'conv'")
        if not (self.pixel_branch or self.ltd):
            raise ValueError("iste needs at least one decoder: pixel_branch or ltd")


class PreparedKeys(NamedTuple):
    """STF resolved once for a fixed key set (see :meth:`ISTE.key_work`).

    Once the keys are fixed, F_STF depends only on the query's LR pixel, so it is computed per
    pixel. ``table`` (B, P, width) holds the LPD's first-layer projection of F_STF (bias
    included) for every prepared (ensemble shift k, LR pixel), shift after shift; ``slots``
    (P,) int64 names its rows, ``k * pixel_count + pixel`` (flat LR pixel, ``pixel_count`` =
    h * w). A row is found through ``lookup``: per shift, the span of flat pixels from its
    first prepared pixel to its last (a key window's rows of the map, not the whole map),
    shifts one after another, holding each prepared pixel's row and -1 elsewhere; shift k's
    pixel p sits at ``p + lookup_base[k]``.
    """

    slots: torch.Tensor
    pixel_count: int
    lookup: torch.Tensor
    lookup_base: torch.Tensor
    table: torch.Tensor

    @classmethod
    def of_shifts(cls, pixels: Sequence[torch.Tensor], pixel_count: int,
                  table: torch.Tensor) -> "PreparedKeys":
        """From each shift's prepared flat LR pixels (increasing, int64) and the table whose
        rows follow them, shift after shift."""
        device = table.device
        first = torch.tensor([int(p[0]) if p.numel() else 0 for p in pixels], device=device)
        span = torch.tensor([int(p[-1]) - int(p[0]) + 1 if p.numel() else 0 for p in pixels],
                            device=device)
        start = torch.cumsum(span, 0) - span
        base = start - first
        positions = torch.cat([p + base[k] for k, p in enumerate(pixels)])
        lookup = torch.full((int(span.sum()),), -1, dtype=torch.long, device=device)
        lookup[positions] = torch.arange(positions.numel(), device=device)
        slots = torch.cat([p + k * pixel_count for k, p in enumerate(pixels)])
        return cls(slots, pixel_count, lookup, base, table)

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Table rows of stacked neighbours (:func:`stack_neighbours`): index (B, K*Q) of flat
        LR pixels, shift k in block k -> (B, K*Q) rows, read from ``lookup`` and checked
        against ``slots``."""
        b, kq = index.shape
        k = self.lookup_base.numel()
        by_shift = index.view(b, k, kq // k)
        shift_base = torch.arange(0, k * self.pixel_count, self.pixel_count, device=index.device)
        wanted = (by_shift + shift_base.view(1, k, 1)).view(b, kq)
        if self.slots.numel():
            at = (by_shift + self.lookup_base.view(1, k, 1)).view(b, kq)
            at = self.lookup[at.clamp_(0, self.lookup.numel() - 1)]
            if not bool((at < 0).any()) and torch.equal(self.slots[at], wanted):
                return at
        raise ValueError("a query reaches an LR pixel its prepared keys were not resolved "
                         "for: prepare the keys with coordinates covering these queries")


class ISTE(SRHead):
    @property
    def uses_key_set(self) -> bool:
        """Whether queries take an STF key set (the engine then renders key windows)."""
        return self.config.stf

    @property
    def min_input_side(self) -> int:
        """:data:`iste.models.layers.lfi.MIN_SIDE` with the LFI; 1 without it."""
        return LFI_MIN_SIDE if self.config.lfi else 1

    def __init__(self, encoder: nn.Module, config: ISTEConfig = ISTEConfig()):
        super().__init__()
        self.config = config
        self.encoder = encoder
        c_in, dim = encoder.out_dim, config.hidden_dim
        if config.pixel_branch:
            if config.lfi:
                self.lfi = LocalFeatureInteractor(c_in, config.lfi_heads, layout=config.lfi_layout)
            self.lfic = nn.Conv2d(c_in, dim, 3, padding=1)
            self.lpd = MLP(dim + 4, 3, config.decoder_hidden)
        if config.texture != "none":
            self.amp = nn.Conv2d(c_in, dim, 3, padding=1)
        if config.texture == "sine":
            self.freq_x = nn.Conv2d(c_in, dim, 3, padding=1)
            self.freq_y = nn.Conv2d(c_in, dim, 3, padding=1)
            self.phase = nn.Linear(2, dim, bias=False)
        if config.stf:
            self.fusion = nn.Linear(2 * dim, dim, bias=False)
        if config.ltd:
            self.ltd = MLP(dim, 3, config.decoder_hidden)

    # ---- per-input work -------------------------------------------------------------------
    def encode(self, inp: torch.Tensor) -> Features:
        """Feature maps as per-pixel tables (B, h*w, hidden_dim): lfic, amp, freq_x, freq_y."""
        cfg = self.config
        feat = self.encoder(inp)
        feats: Features = {"hw": tuple(feat.shape[-2:])}
        if cfg.pixel_branch:
            lfic = pixel_table(self.lfic(self.lfi(feat) if cfg.lfi else feat))
            feats["lfic"] = lfic
            if not cfg.stf:  # F_LFIC is decoded directly: its LPD projection is per pixel
                feats["lpd_proj"] = self.lpd.project_feat(lfic)
        # Texture tables stay float32 under autocast: the sine's argument needs the precision
        # (bf16 would round FreqX * rel by up to ~1/16 rad) and mixed-dtype arithmetic is slow.
        if cfg.texture != "none":
            feats["amp"] = pixel_table(self.amp(feat)).float()
        if cfg.texture == "sine":
            feats["freq_x"] = pixel_table(self.freq_x(feat)).float()
            feats["freq_y"] = pixel_table(self.freq_y(feat)).float()
        return feats

    # ---- per-query work -------------------------------------------------------------------
    def _phase(self, cell: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor | None:
        """Phase(cell) = 2 pi sigmoid(W cell * (h, w)): (B, Q, hidden_dim), or (B, 1, hidden_dim)
        when ``cell`` is one cell broadcast to every query (stride 0, as the engine passes it)."""
        if self.config.texture != "sine":
            return None
        return 2 * math.pi * torch.sigmoid(cell_layer(self.phase, cell, hw))

    def texture(self, feats: Features, nb: Neighbour, phase: torch.Tensor | None) -> torch.Tensor:
        """F_TL of the queries reached through neighbour ``nb``: (B, Q, hidden_dim).

        F_TL = Amp * sin(FreqX * rel_row + FreqY * rel_col + Phase(cell)); ``phase`` is
        (B, Q or 1, hidden_dim).
        """
        amp = gather_pixels(feats["amp"], nb.index)
        if phase is None:
            return amp
        x = torch.addcmul(phase, gather_pixels(feats["freq_x"], nb.index), nb.rel[..., :1])
        x = x.addcmul_(gather_pixels(feats["freq_y"], nb.index), nb.rel[..., 1:])
        if torch.is_grad_enabled():
            return amp * torch.sin(x)
        return x.sin_().mul_(amp)  # in place: no autograd graph to keep

    def fuse(self, q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Self-Texture Fusion: q (B, N, C) from F_LFIC, keys (B, K, C) from F_TL -> (B, N, C).

        t_i = argmax_j cos(q_i, k_j); S_i = cos(q_i, k_{t_i}); F_STF = q + W[q; k_t] * S.
        The argmax runs in row chunks without autograd (it has no gradient); S and the fusion
        are recomputed for the chosen keys with autograd, so memory stays O(chunk x K). All of
        it runs in float32 (only the fusion's matmul follows autocast): a similarity rounded to
        bf16 would pick other keys (and a bf16 pass with a float32 re-ranking of the best
        candidates measured slower than this). The similarity is a product with the keys as
        the weight of :func:`~iste.models.layers.linear.linear`: oneDNN's kernel on CPU, which
        ran 2048 x 2304 x 64 at ~200 GFLOP/s a thread here, the BLAS's ``bmm`` at ~93.
        """
        q, keys = q.float(), keys.float()
        b, n, _ = q.shape
        rows = max(1, min(SIMILARITY_ROWS, self.config.stf_chunk // max(1, keys.shape[1])))
        best = torch.empty(b, n, dtype=torch.long, device=q.device)
        with torch.no_grad(), torch.autocast(q.device.type, enabled=False):
            kn, qn = F.normalize(keys, dim=-1), F.normalize(q, dim=-1)
            for s in range(b):
                for i in range(0, n, rows):
                    best[s, i:i + rows] = argmax_last(linear(qn[s, i:i + rows], kn[s], None))
        chosen = gather_pixels(keys, best)
        score = (F.normalize(q, dim=-1) * F.normalize(chosen, dim=-1)).sum(-1, keepdim=True)
        return q + linear(torch.cat([q, chosen], -1), self.fusion.weight, None) * score

    def key_texture(self, feats: Features, keys: KeySet) -> tuple[torch.Tensor, ...]:
        """F_TL of the keys through each ensemble shift: one (B, K, hidden_dim) per shift.
        It depends on the keys' positions and the features there, not on the queries, so
        tiles sharing a key window can share it (:mod:`iste.engine.shared`)."""
        hw = feats["hw"]
        key_phase = self._phase(keys.cell, hw)
        return tuple(self.texture(feats, key_nb, key_phase)
                     for key_nb in local_neighbours(keys.coord, hw))

    def key_work(self, feats: Features, keys: KeySet, coord: torch.Tensor, *,
                 texture: tuple[torch.Tensor, ...] | None = None) -> KeyWork:
        """Resolve STF for the key set ``keys`` at every LR pixel that queries at ``coord``
        (B, Q, 2) reach; the result answers those queries and any others reaching only those
        pixels. Exact: the same F_STF as computing it per query, computed once per pixel.
        Every pixel's row is independent (its similarity to every key, the fusion, the LPD
        projection): the parts are blocks of up to :data:`KEY_TABLE_BLOCK` pixels of one
        ensemble shift, each giving (B, pixels of the block, width) rows; ``finish`` stacks
        them into :class:`PreparedKeys`."""
        hw = feats["hw"]
        if texture is None:
            texture = self.key_texture(feats, keys)
        pixels = [torch.unique(index) for index in neighbour_indices(coord, hw)]
        blocks = [(k, block) for k, shift_pixels in enumerate(pixels)
                  for block in shift_pixels.split(KEY_TABLE_BLOCK)]

        def block_table(part) -> torch.Tensor:
            k, block = part
            return self.lpd.project_feat(self.fuse(feats["lfic"][:, block], texture[k]))

        def finish(tables: list[torch.Tensor]) -> PreparedKeys:
            return PreparedKeys.of_shifts(pixels, hw[0] * hw[1], torch.cat(tables, 1))

        return KeyWork(blocks, block_table, finish)

    def query(self, feats: Features, coord: torch.Tensor, cell: torch.Tensor,
              keys: KeySet | PreparedKeys | None = None) -> torch.Tensor:
        """RGB at ``coord`` (see :mod:`iste.models.heads.base`).

        keys: the STF key set. ``None`` keeps the published semantics — the keys are the
        call's own queries, so the output depends on which queries share a call (training).
        The inference engine passes a fixed key set per output window instead, as a
        :class:`KeySet` or already resolved by :meth:`prepare_keys` (cheaper when the same
        keys serve several calls).
        """
        if self.config.stf and keys is None:
            return self._query_own_keys(feats, local_neighbours(coord, feats["hw"]), cell)
        nb, k, tex, ltd, lpd = self._decode_shifts(feats, coord, cell, keys)
        pred = ltd if ltd is not None else 0
        if lpd is not None:
            pred = pred + lpd
        return ensemble_sum(pred, nb.weight, k)

    # ---- introspection (paper Figs. 8-10 and the STF retrieval figure; docs/figures) --------
    @torch.no_grad()
    def query_parts(self, feats: Features, coord: torch.Tensor, cell: torch.Tensor,
                    keys: KeySet | PreparedKeys | None = None) -> dict[str, torch.Tensor]:
        """The two decoders' outputs and the texture feature at ``coord``, local-ensembled like
        :meth:`query` (so ``lpd + ltd`` is its output): ``lpd`` I_LPD (B, Q, 3), ``ltd`` I_LTD
        (B, Q, 3), ``texture`` F_TL (B, Q, hidden_dim); a part the config lacks is absent.
        ``keys`` must be given when the model has STF (a fixed key set, as the engine uses)."""
        if self.config.stf and keys is None:
            raise ValueError("query_parts needs a key set for a model with STF")
        nb, k, tex, ltd, lpd = self._decode_shifts(feats, coord, cell, keys)
        parts = {"texture": tex, "ltd": ltd, "lpd": lpd}
        return {name: ensemble_sum(part, nb.weight, k)
                for name, part in parts.items() if part is not None}

    def _decode_shifts(self, feats: Features, coord: torch.Tensor, cell: torch.Tensor,
                       keys: KeySet | PreparedKeys | None):
        """Both branches at every (shift, query) pair, before the local ensemble, with a fixed
        STF key set (``keys`` None only without STF). Every shift's decoding depends on its own
        neighbour only, so all shifts run in one pass.

        Returns (nb, k, texture F_TL (B, k*Q, hidden_dim), I_LTD (B, k*Q, 3), I_LPD (B, k*Q, 3)):
        ``nb`` the k stacked neighbours; a part the config lacks is None.
        """
        cfg, hw = self.config, feats["hw"]
        if cfg.stf and isinstance(keys, KeySet):
            keys = self.prepare_keys(feats, keys, coord)
        nbs = local_neighbours(coord, hw)
        nb, k = stack_neighbours(nbs), len(nbs)
        tex = ltd = lpd = None
        if cfg.texture != "none":
            tex = self.texture(feats, nb, _repeat_phase(self._phase(cell, hw), k))
            if cfg.ltd:
                ltd = self.ltd(tex)
        if cfg.pixel_branch:
            proj = (gather_pixels(keys.table, keys.rows(nb.index)) if cfg.stf
                    else gather_pixels(feats["lpd_proj"], nb.index))
            extra = torch.cat([nb.rel, repeat_queries(scaled_cell(cell, hw), k)], -1)
            lpd = self.lpd.forward_projected(proj, extra)
        return nb, k, tex, ltd, lpd

    @torch.no_grad()
    def stf_matches(self, feats: Features, keys: KeySet) -> tuple[torch.Tensor, torch.Tensor]:
        """STF's retrieval for every LR pixel: the key whose texture feature is most similar
        (cosine) to the pixel's F_LFIC, and that similarity S. Keys are read through the first
        ensemble neighbour (as :meth:`key_work` does for that neighbour).
        Returns (index (B, h*w) int64 into ``keys``, score (B, h*w))."""
        if not self.config.stf:
            raise ValueError("this model has no STF")
        key_nb = local_neighbours(keys.coord, feats["hw"])[0]
        tex = self.texture(feats, key_nb, self._phase(keys.cell, feats["hw"]))
        q = F.normalize(feats["lfic"].float(), dim=-1)
        sim = torch.bmm(q, F.normalize(tex.float(), dim=-1).transpose(1, 2))
        score, index = sim.max(-1)
        return index, score

    def _query_own_keys(self, feats: Features, nbs: list[Neighbour], cell: torch.Tensor):
        """The published semantics: for each shift, STF's keys are the texture features of
        the call's own queries through that shift."""
        cfg, hw = self.config, feats["hw"]
        cell_hw = scaled_cell(cell, hw)
        phase = self._phase(cell, hw)
        out = 0
        for nb in nbs:
            tex = self.texture(feats, nb, phase)
            proj = self._own_key_projection(feats["lfic"], nb.index, tex)
            pred = self.lpd.forward_projected(proj, torch.cat([nb.rel, cell_hw], -1))
            if cfg.ltd:
                pred = self.ltd(tex) + pred
            out = out + pred * nb.weight.unsqueeze(-1)
        return out

    def _own_key_projection(self, lfic: torch.Tensor, index: torch.Tensor,
                            keys: torch.Tensor) -> torch.Tensor:
        """The LPD's first-layer projection of F_STF for queries reading pixels ``index``
        (B, Q) of ``lfic`` (B, h*w, C), with the key set ``keys`` (B, K, C): (B, Q, width).

        F_STF depends on a query only through its pixel's F_LFIC (the keys are fixed for the
        call), so per sample it is computed once per distinct pixel and gathered: the same
        function and gradients as per query (up to float rounding), with fewer similarity rows
        and fusion products (training samples ~2300 queries over ~2300 LR pixels, so about a
        third of the rows repeat a pixel)."""
        rows = []
        for b in range(index.shape[0]):
            pixels, inverse = torch.unique(index[b], return_inverse=True)
            table = self.lpd.project_feat(self.fuse(lfic[b:b + 1, pixels], keys[b:b + 1]))
            rows.append(gather_pixels(table, inverse.unsqueeze(0)))
        return torch.cat(rows)


def _repeat_phase(phase: torch.Tensor | None, k: int) -> torch.Tensor | None:
    return None if phase is None else repeat_or_broadcast(phase, k)
