"""ISTE: implicit self-texture enhancement (Duan et al., Scientific Reports 2025).

Two branches decoded at every query and summed:
    feature aggregation: F_LR -> LFI -> conv -> F_LFIC --STF(keys = texture)--> F_STF -> LPD
    texture learning:    F_LR -> Texture Learner -> F_TL ----------------------------> LTD
The Table 4 ablations are switches of :class:`ISTEConfig` (see :data:`ABLATIONS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from iste.models.heads.base import Features, SRHead, scaled_cell
from iste.models.layers.ensemble import Neighbour, gather_pixels, local_neighbours, pixel_table
from iste.models.layers.lfi import LocalFeatureInteractor, TokenLayout
from iste.models.layers.mlp import MLP

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


@dataclass(frozen=True)
class ISTEConfig:
    """ISTE head. ``hidden_dim`` is the width of F_LFIC, F_TL and the decoders' input.

    pixel_branch: the feature aggregation branch (LFI, F_LFIC, STF, LPD).
    texture: "sine" = Texture Learner; "conv" = a 3x3 conv in its place; "none" = no texture
        branch (then neither STF nor LTD).
    lfi_layout: "tokens" (paper Eq. 2) or "published" (the published code's token layout).
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
        object.__setattr__(self, "decoder_hidden", tuple(int(h) for h in self.decoder_hidden))
        if self.texture not in ("sine", "conv", "none"):
            raise ValueError(f"iste.texture must be 'sine', 'conv' or 'none', got {self.texture!r}")
        if self.stf and (not self.pixel_branch or self.texture == "none"):
            raise ValueError("iste.stf needs both the pixel branch and a texture branch")
        if self.lfi and not self.pixel_branch:
            raise ValueError("iste.lfi belongs to the pixel branch: set lfi: false with pixel_branch: false")
        if self.ltd and self.texture == "none":
            raise ValueError("iste.ltd decodes texture features: it needs texture 'sine' or 'conv'")
        if not (self.pixel_branch or self.ltd):
            raise ValueError("iste needs at least one decoder: pixel_branch or ltd")
        if self.hidden_dim <= 0 or self.stf_chunk <= 0:
            raise ValueError("iste.hidden_dim and iste.stf_chunk must be positive")


class KeySet(NamedTuple):
    """Queries whose texture features serve as STF keys: coord, cell (B, K, 2) each."""

    coord: torch.Tensor
    cell: torch.Tensor


class ISTE(SRHead):
    uses_key_set = True

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
        if cfg.texture != "none":
            feats["amp"] = pixel_table(self.amp(feat))
        if cfg.texture == "sine":
            feats["freq_x"] = pixel_table(self.freq_x(feat))
            feats["freq_y"] = pixel_table(self.freq_y(feat))
        return feats

    # ---- per-query work -------------------------------------------------------------------
    def _phase(self, cell_hw: torch.Tensor) -> torch.Tensor | None:
        if self.config.texture != "sine":
            return None
        return 2 * math.pi * torch.sigmoid(self.phase(cell_hw))

    def texture(self, feats: Features, nb: Neighbour, phase: torch.Tensor | None) -> torch.Tensor:
        """F_TL of the queries reached through neighbour ``nb``: (B, Q, hidden_dim).

        F_TL = Amp * sin(FreqX * rel_row + FreqY * rel_col + Phase(cell)).
        """
        amp = gather_pixels(feats["amp"], nb.index)
        if phase is None:
            return amp
        x = (gather_pixels(feats["freq_x"], nb.index) * nb.rel[..., :1]
             + gather_pixels(feats["freq_y"], nb.index) * nb.rel[..., 1:])
        return amp * torch.sin(x + phase)

    def fuse(self, q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Self-Texture Fusion: q (B, N, C) from F_LFIC, keys (B, K, C) from F_TL -> (B, N, C).

        t_i = argmax_j cos(q_i, k_j); S_i = cos(q_i, k_{t_i}); F_STF = q + W[q; k_t] * S.
        The argmax runs in row chunks without autograd (it has no gradient); S and the fusion
        are recomputed for the chosen keys with autograd, so memory stays O(chunk x K).
        """
        b, n, _ = q.shape
        rows = max(1, self.config.stf_chunk // max(1, keys.shape[1]))
        with torch.no_grad():
            kn = F.normalize(keys, dim=-1).transpose(1, 2)
            qn = F.normalize(q, dim=-1)
            best = torch.cat([torch.bmm(qn[:, i:i + rows], kn).argmax(-1)
                              for i in range(0, n, rows)], 1) if n else q.new_zeros(b, 0, dtype=torch.long)
        chosen = gather_pixels(keys, best)
        score = (F.normalize(q, dim=-1) * F.normalize(chosen, dim=-1)).sum(-1, keepdim=True)
        return q + self.fusion(torch.cat([q, chosen], -1)) * score

    def _stf_projection(self, feats: Features, index: torch.Tensor,
                        keys: torch.Tensor, per_pixel: bool) -> torch.Tensor:
        """LPD first-layer projection of F_STF for every query: (B, Q, width).

        ``per_pixel``: F_STF depends only on the query's LR pixel once the key set is fixed, so
        it is computed once per distinct pixel and gathered (exact, cheaper at large scales).
        """
        if not per_pixel:
            return self.lpd.project_feat(self.fuse(gather_pixels(feats["lfic"], index), keys))
        rows = []
        for b in range(index.shape[0]):
            pixels, inverse = torch.unique(index[b], return_inverse=True)
            fused = self.fuse(feats["lfic"][b, pixels].unsqueeze(0), keys[b:b + 1])
            rows.append(self.lpd.project_feat(fused[0])[inverse])
        return torch.stack(rows)

    def query(self, feats: Features, coord: torch.Tensor, cell: torch.Tensor,
              keys: KeySet | None = None) -> torch.Tensor:
        """RGB at ``coord`` (see :mod:`iste.models.heads.base`).

        keys: the STF key set. ``None`` keeps the published semantics — the keys are the
        call's own queries, so the output depends on which queries share a call (training).
        The inference engine passes a fixed :class:`KeySet` per output window instead.
        """
        cfg, hw = self.config, feats["hw"]
        cell_hw = scaled_cell(cell, hw)
        phase = self._phase(cell_hw)
        key_nbs = key_phase = None
        if cfg.stf and keys is not None:
            key_nbs = local_neighbours(keys.coord, hw)
            key_phase = self._phase(scaled_cell(keys.cell, hw))
        out = 0
        for k, nb in enumerate(local_neighbours(coord, hw)):
            pred = 0
            tex = self.texture(feats, nb, phase) if cfg.texture != "none" else None
            if cfg.ltd:
                pred = self.ltd(tex)
            if cfg.pixel_branch:
                if cfg.stf:
                    key_tex = tex if key_nbs is None else self.texture(feats, key_nbs[k], key_phase)
                    proj = self._stf_projection(feats, nb.index, key_tex, key_nbs is not None)
                else:
                    proj = gather_pixels(feats["lpd_proj"], nb.index)
                pred = pred + self.lpd.forward_projected(proj, torch.cat([nb.rel, cell_hw], -1))
            out = out + pred * nb.weight.unsqueeze(-1)
        return out
