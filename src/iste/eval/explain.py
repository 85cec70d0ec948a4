"""Explanatory figures of an ISTE checkpoint on one image (paper Figs. 8, 9, 10 and the arXiv
version's STF retrieval figure), read through the head's own pieces (``encode``,
:meth:`~iste.models.heads.iste.ISTE.query_parts`, :meth:`~iste.models.heads.iste.ISTE.stf_matches`).

The LR input is the evaluation protocol's (:func:`iste.data.degrade.evaluation_pair`: blur +
bicubic at ``scale``). STF's key set is the engine's rule for one key window laid over the
whole output (output pixels on a regular grid of stride :func:`iste.engine.frame.key_stride`),
so its similarity grows with the fourth power of the image's side: a larger image is cut to
its most textured square of :data:`MAX_LR_SIDE` LR pixels (``Explained.region``).

- ``fig8_texture_learner.png``: F_LR (the encoder's output, the Texture Learner's input; LR
  grid) against F_TL (its output at every output pixel), each shown as its first three
  principal components (as RGB) and as the per-pixel feature norm.
- ``fig9_decoders.png``: LR input, I_LPD, I_LTD, their sum I_Pred and the ground truth. I_LPD
  and I_Pred are images ((x + 1) / 2); I_LTD is a signed correction, shown stretched to its own
  1st-99th percentile range (mid-grey = 0), its bound given in 8-bit levels.
- ``fig10_ablations.png``: the models side by side on the most textured region, PSNR of the
  whole image in the titles.
- ``stf_retrieval.png``: for a random subset of LR pixels, an arrow from the position of the
  texture feature STF retrieves to the pixel it enhances, over the enlarged LR image; beside
  it, the retrieval confidence S per LR pixel.

Convention: images uint8 (H, W, 3); features (C, H, W) float.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from iste.data.coords import denormalize, make_coord, normalize
from iste.data.degrade import cropped_size, evaluation_pair
from iste.data.metrics import MIN_SHAVED, psnr, shave_width
from iste.data.tensors import tensor_to_rgb
from iste.engine.frame import key_stride
from iste.engine.render import QueryOptions
from iste.eval.figures import enlarge_nearest, pick_region
from iste.eval.plotting import new_figure, panel_row, save_png
from iste.models.heads.iste import ISTE, KeySet

__all__ = ["Explained", "explain", "texture_learner_figure", "decoder_figure",
           "ablation_figure", "retrieval_figure", "MAX_LR_SIDE", "FIGURES", "lacking",
           "min_image_side", "check_image"]

MAX_LR_SIDE = 128
"""Largest LR side the figures explain. With one key window over the whole output, an LR side
L makes 4 L^2 similarity rows against ~L^2 keys: L = 128 is ~140 GFLOP (seconds), where a
1200-px image at x4 (L = 300) is ~4 TFLOP and ran for minutes."""

FIGURES: dict[str, tuple[str, str]] = {
    "fig8_texture_learner": ("Fig. 8", "the Texture Learner"),
    "fig9_decoders": ("Fig. 9", "both decoders (LPD and LTD)"),
    "stf_retrieval": ("the STF retrieval figure", "STF"),
}
"""The figures of one ISTE model: file stem -> (name, the part of the model it shows)."""


def lacking(model: ISTE) -> dict[str, str]:
    """The figures of :data:`FIGURES` that ``model`` cannot make: file stem -> its name and
    what the model lacks (e.g. an ablation without STF has no retrieval figure)."""
    cfg = model.config
    has = {"fig8_texture_learner": cfg.texture == "sine",
           "fig9_decoders": cfg.pixel_branch and cfg.ltd,
           "stf_retrieval": cfg.stf}
    return {stem: f"{FIGURES[stem][0]} needs a model with {FIGURES[stem][1]}"
            for stem, ok in has.items() if not ok}


def min_image_side(scale: float) -> int:
    """The smallest side (px) of an image the figures explain at ``scale``: its evaluation HR
    (:func:`iste.data.degrade.cropped_size`) must keep :data:`~iste.data.metrics.MIN_SHAVED`
    pixels once the protocol's border (:func:`~iste.data.metrics.shave_width`) is shaved."""
    need = 2 * shave_width(scale) + MIN_SHAVED
    side = need
    while cropped_size((side, side), scale)[0] < need:
        side += 1
    return side


def check_image(hw: tuple[int, int], scale: float) -> None:
    """Raise ValueError, naming the minimum size, when an image of ``hw`` = (H, W) is too small
    for the figures at ``scale`` (see :func:`min_image_side`)."""
    side = min_image_side(scale)
    if min(hw) < side:
        raise ValueError(f"the image ({hw[1]} x {hw[0]} px) is too small for the figures at "
                         f"x{scale:g}: they need at least {side} x {side} px (PSNR is scored "
                         f"after shaving {shave_width(scale)} px per side)")


class Explained:
    """Everything the figures show for one model and one image."""

    def __init__(self, model: ISTE, image: np.ndarray, scale: float,
                 options: QueryOptions = QueryOptions(), *, max_lr_side: int = MAX_LR_SIDE):
        if not isinstance(model, ISTE):
            raise ValueError(f"explanatory figures need an ISTE model, got {type(model).__name__}")
        check_image(image.shape[:2], scale)
        side = int(max_lr_side * scale)
        self.region: tuple[int, int, int] | None = None
        """(row, col, side) of the square explained when the image was larger, else None."""
        if max(image.shape[:2]) > side:
            self.region = pick_region(image, side, margin=0)
            r, c, s = self.region
            image = image[r:r + s, c:c + s]
        self.scale = scale
        """The requested scale: the title's and the shave's (the evaluation protocol's), not
        the HR/LR size ratio, which differs at a non-integer scale (x3.01 on 48 px: 45 / 15)."""
        self.lr, self.hr = evaluation_pair(image, scale)
        device = next(model.parameters()).device
        lr = torch.from_numpy(self.lr).permute(2, 0, 1)[None].float().to(device) / 255
        h_out, w_out = self.hr.shape[:2]
        with torch.no_grad():
            inp = normalize(lr)
            self.f_lr = model.encoder(inp)[0].cpu()
            self.feats = model.encode(inp)
        coord = make_coord((h_out, w_out), device=device)[None]
        cell = torch.tensor([2 / h_out, 2 / w_out], device=device).expand_as(coord)
        self.keys = None
        if model.config.stf:
            stride = key_stride(h_out / self.lr.shape[0], options.stf_window, options.stf_keys)
            grid = make_coord((h_out, w_out), flatten=False, device=device)[::stride, ::stride]
            key_coord = grid.reshape(1, -1, 2)
            self.keys = KeySet(key_coord, cell[:, :1].expand_as(key_coord))
        parts = {}
        for i in range(0, coord.shape[1], 16384):
            for k, v in model.query_parts(self.feats, coord[:, i:i + 16384],
                                          cell[:, i:i + 16384], keys=self.keys).items():
                parts.setdefault(k, []).append(v[0].cpu())
        self.parts = {k: torch.cat(v).view(h_out, w_out, -1).permute(2, 0, 1)
                      for k, v in parts.items()}
        self.model = model

    def image(self, part: str) -> np.ndarray:
        """I_LPD, or the prediction ("pred" = the sum of the parts) as uint8 (H, W, 3)."""
        x = (sum(self.parts[p] for p in ("lpd", "ltd") if p in self.parts)
             if part == "pred" else self.parts[part])
        return tensor_to_rgb(denormalize(x))


def explain(model: ISTE, image: np.ndarray, scale: float,
            options: QueryOptions = QueryOptions(), *,
            max_lr_side: int = MAX_LR_SIDE) -> Explained:
    """The figures' material for ``image`` uint8 (H, W, 3), or for its most textured square of
    ``max_lr_side`` LR pixels when it is larger (see ``Explained.region``)."""
    return Explained(model, image, scale, options, max_lr_side=max_lr_side)


def _pca_rgb(feat: torch.Tensor) -> np.ndarray:
    """(C, H, W) -> (H, W, 3) float in [0, 1]: first three principal components, each
    stretched to its 1st-99th percentile.

    The components are the leading eigenvectors of the (C, C) scatter matrix, each turned
    so that its largest loading is positive: the same colours on every run.
    ``torch.pca_lowrank`` drew a random projection from the global generator, so each run of
    ``iste figures`` (a rerun after an interrupted one too) coloured Fig. 8 differently."""
    c, h, w = feat.shape
    x = feat.reshape(c, -1).T.double()
    x = x - x.mean(0)
    _, vectors = torch.linalg.eigh(x.T @ x)  # ascending eigenvalues
    v = vectors[:, -3:].flip(1)
    v = v * torch.sign(v.gather(0, v.abs().argmax(0, keepdim=True)))
    comps = (x @ v).numpy()
    lo, hi = np.percentile(comps, 1, axis=0), np.percentile(comps, 99, axis=0)
    return np.clip((comps - lo) / np.maximum(hi - lo, 1e-12), 0, 1).reshape(h, w, 3)


def _norm_map(feat: torch.Tensor) -> np.ndarray:
    return feat.norm(dim=0).numpy()


def texture_learner_figure(ex: Explained, path: Path) -> Path:
    if "fig8_texture_learner" in lacking(ex.model):
        raise ValueError(lacking(ex.model)["fig8_texture_learner"])
    hw = ex.hr.shape[:2]
    f_tl = ex.parts["texture"]
    panels = [("LR input", enlarge_nearest(ex.lr, hw), None),
              (f"F_LR: 3 principal comp.\n({ex.f_lr.shape[0]} ch, LR grid)",
               enlarge_nearest(_pca_rgb(ex.f_lr), hw), None),
              ("F_LR: feature norm", enlarge_nearest(_norm_map(ex.f_lr), hw), "magma"),
              (f"F_TL: 3 principal comp.\n({f_tl.shape[0]} ch, output grid)", _pca_rgb(f_tl), None),
              ("F_TL: feature norm", _norm_map(f_tl), "magma")]
    return panel_row(panels, "Fig. 8: Texture Learner input F_LR and output F_TL", path, panel=2.6)


def decoder_figure(ex: Explained, path: Path) -> Path:
    if "fig9_decoders" in lacking(ex.model):
        raise ValueError(lacking(ex.model)["fig9_decoders"])
    ltd = ex.parts["ltd"].permute(1, 2, 0).numpy()
    lo, hi = np.percentile(ltd, 1), np.percentile(ltd, 99)
    bound = max(abs(lo), abs(hi), 1e-12)
    ltd_shown = np.clip(ltd / (2 * bound) + 0.5, 0, 1)
    levels = 127.5 * bound  # the model's outputs span [-1, 1] for 0-255: its bound in levels
    scale = ex.scale
    pred = ex.image("pred")
    panels = [("(a) LR input", enlarge_nearest(ex.lr, ex.hr.shape[:2])),
              ("(b) I_LPD", ex.image("lpd")),
              (f"(c) I_LTD (stretched,\n±{levels:.3g} 8-bit levels, grey = 0)", ltd_shown),
              (f"(d) I_Pred = I_LPD + I_LTD\n{psnr(pred, ex.hr, scale=scale):.2f} dB", pred),
              ("(e) Ground truth", ex.hr)]
    return panel_row(panels, f"Fig. 9: the two decoders' outputs (×{scale:g})", path, panel=2.6)


def ablation_figure(results: Sequence[tuple[str, np.ndarray]], lr: np.ndarray, hr: np.ndarray,
                    path: Path, *, scale: float, region: int = 96) -> Path:
    """results: (label, SR uint8 of hr's size) per model; zoom on the most textured region.
    ``scale``: the requested scale (the title's and the PSNR shave's; see ``Explained.scale``)."""
    r, c, size = pick_region(hr, region, margin=shave_width(scale))
    crop = lambda im: im[r:r + size, c:c + size]  # noqa: E731
    panels = [("LR (nearest)", crop(enlarge_nearest(lr, hr.shape[:2])))]
    panels += [(f"{label}\n{psnr(sr, hr, scale=scale):.2f} dB", crop(sr)) for label, sr in results]
    panels += [("HR", crop(hr))]
    return panel_row(panels, f"Fig. 10: ablations at ×{scale:g} (PSNR of the whole image)", path,
                     panel=2.4)


def retrieval_figure(ex: Explained, path: Path, *, arrows: Sequence[int] = (40, 10),
                     seed: int = 0) -> Path:
    if "stf_retrieval" in lacking(ex.model):
        raise ValueError(lacking(ex.model)["stf_retrieval"])
    index, score = ex.model.stf_matches(ex.feats, ex.keys)
    h, w = ex.lr.shape[:2]
    key_rc = (ex.keys.coord[0, index[0]].cpu().numpy() + 1) / 2 * np.array([h, w]) - 0.5
    pix_rc = np.stack(np.divmod(np.arange(h * w), w), 1).astype(float)
    order = np.random.default_rng(seed).permutation(h * w)
    fig, axes = new_figure(1, len(arrows) + 1, panel=3.2)
    for ax, n in zip(axes.flat, arrows):
        ax.imshow(ex.lr, interpolation="nearest")
        pick = order[:n]
        src, dst = key_rc[pick], pix_rc[pick]
        ax.quiver(src[:, 1], src[:, 0], dst[:, 1] - src[:, 1], dst[:, 0] - src[:, 0],
                  angles="xy", scale_units="xy", scale=1, color="#1f5fff", width=0.005,
                  headwidth=4, headlength=5)
        ax.scatter(src[:, 1], src[:, 0], s=14, c="#ff8c00", edgecolors="black", linewidths=0.5,
                   zorder=3)
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_title(f"{n} of {h * w} LR pixels:\nretrieved texture → enhanced pixel", fontsize=8)
    ax = axes.flat[len(arrows)]
    im = ax.imshow(score[0].view(h, w).cpu().numpy(), cmap="viridis")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title("STF confidence S (max cosine)", fontsize=8)
    fig.suptitle("STF retrieval (arXiv Fig. 8): arrow from the retrieved F_TL position "
                 "(orange)\nto the LR pixel whose F_LFIC it enhances", fontsize=9)
    return save_png(fig, path)
