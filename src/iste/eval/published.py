"""The published test's geometry (dmhdmhdmh/ISTE ``test.py``), as an evaluation protocol.

``iste eval --protocol published`` super-resolves and scores every image the way the published
test script does, so a checkpoint converted from the published code (``iste convert-official``)
scores what that script prints:

1. The LR is padded at the bottom and right by mirroring (``torch.flip`` and concatenation) to
   ``(h // 8 + 1) * 8`` rows and ``(w // 8 + 1) * 8`` columns — always at least one row and
   column, a full 8 when the size is already a multiple of 8 (SwinIR's window; the script pads
   for every encoder).
2. The whole padded output grid, ``s * h_pad`` x ``s * w_pad`` pixel centres in row-major
   order, is queried with the cell ``(2 / (s h_pad), 2 / (s w_pad))``, multiplied by
   ``max(s / 4, 1)`` above x4 (the script's cell clipping), in chunks of 30 000 queries. Each
   chunk is one plain ``query`` call, so for ISTE the chunk's queries are STF's key set
   (DESIGN.md section 3): the output depends on the chunk size, and the similarity matrix is
   30 000 x 30 000 per chunk.
3. The prediction is clamped to [0, 1], cropped to the HR size (top-left) and scored as a
   float: PSNR with 8 pixels shaved at every scale (the script's ``shave = scale + 6`` with
   ``scale`` hard-coded to 2; :data:`iste.data.metrics.PUBLISHED_BORDER`).

At non-integer scales the script's grid ``scale * (h + pad)`` is not an integer and its code
cannot run (the only place where this protocol is defined by us): the grid is then the HR
image's pixel centres continued over the padding, ``round(h_pad * H / h)`` of them spaced
``h / H`` LR pixels apart, and the cell one such pixel (:func:`padded_axis`); H / h is the
actual ratio, ``round(h s) / h``. At integer scales that is the script's grid and cell bit for
bit. (A grid of ``round(s * h_pad)`` centres spread over the padded image, which this
protocol used before, puts the first H of them up to ~0.4 HR pixels off the HR pixels they
are scored against: about -0.1 to -1.2 dB at x2.4 on 100-pixel tiles.)
"""

from __future__ import annotations

import numpy as np
import torch

from iste.data.coords import denormalize, normalize
from iste.engine.render import QueryOptions, autocast_for
from iste.models.layers.ensemble import published_areas

__all__ = ["PUBLISHED_CHUNK", "PUBLISHED_WINDOW", "flip_pad", "padded_axis",
           "published_upscale"]

PUBLISHED_CHUNK = 30_000  # the published test config's eval_bsize
PUBLISHED_WINDOW = 8  # the published test's --window default
_CELL_CLIP = 4.0  # its --scale_max default


def flip_pad(lr: torch.Tensor, window: int = PUBLISHED_WINDOW) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, (h // window + 1) * window, (w // window + 1) * window), the
    extra rows and columns mirrored from the image's bottom and right edges."""
    h, w = lr.shape[-2:]
    hp, wp = (h // window + 1) * window, (w // window + 1) * window
    if hp > 2 * h or wp > 2 * w:
        raise ValueError(f"an LR of {w} x {h} px is too small to pad to a multiple of {window}")
    lr = torch.cat([lr, lr.flip(-2)], -2)[..., :hp, :]
    return torch.cat([lr, lr.flip(-1)], -1)[..., :wp]


def padded_axis(lr: int, padded: int, hr: int, *, device=None) -> tuple[torch.Tensor, float]:
    """The query grid along one axis of an LR of ``lr`` pixels flip-padded to ``padded``, whose
    HR has ``hr``: (count,) centres in the padded image's normalised units, the HR pixel
    centres ``-1 + (2i + 1) lr / (hr padded)`` continued over the padding, count =
    ``round(padded * hr / lr)``; and the cell, ``2 lr / (hr padded)``. At an integer scale
    (``hr = s * lr``) these are the published ``make_coord(s * padded)`` and
    ``2 / padded / s`` bit for bit (the same correctly rounded quotients)."""
    count = round(padded * hr / lr)
    r = lr / (hr * padded)
    centres = -1 + r + (2 * r) * torch.arange(count, device=device, dtype=torch.float32)
    return centres, 2 / padded / (hr / lr)


def published_upscale(model: torch.nn.Module, lr: np.ndarray, hr_hw: tuple[int, int],
                      scale: float, *, options: QueryOptions = QueryOptions(precision="fp32"),
                      chunk: int = PUBLISHED_CHUNK) -> np.ndarray:
    """uint8 (h, w, 3) LR -> float32 (H, W, 3) in [0, 1], ``hr_hw`` = (H, W), at ``scale``, by
    the published test's geometry (module notes). ``options`` contributes only its precision.
    """
    from iste.engine.fixed import check_fixed_frame, fixed_sr, is_fixed_scale

    device = next(model.parameters()).device
    x = torch.from_numpy(np.array(lr)).to(device).permute(2, 0, 1)[None].float() / 255
    padded = flip_pad(x)
    if is_fixed_scale(model):  # the same padding, then the whole network
        check_fixed_frame(model, tuple(lr.shape[:2]), tuple(hr_hw))
        with torch.no_grad():
            sr = fixed_sr(model, padded).float().clamp_(0, 1)
        return sr[0, :, :hr_hw[0], :hr_hw[1]].permute(1, 2, 0).cpu().numpy()
    (rows, cell_r), (cols, cell_c) = (padded_axis(n, p, m, device=device) for n, p, m in
                                      zip(lr.shape[:2], padded.shape[-2:], hr_hw))
    out_hw = (len(rows), len(cols))
    coord = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1).reshape(1, -1, 2)
    cell = torch.tensor([cell_r, cell_c], device=device)
    cell = (cell * max(scale / _CELL_CLIP, 1.0)).expand_as(coord)
    precision = options.resolved(model).precision
    with torch.no_grad(), autocast_for(device, precision), published_areas():
        feats = model.encode(normalize(padded))
        pred = torch.cat([model.query(feats, coord[:, i:i + chunk], cell[:, i:i + chunk])
                          for i in range(0, coord.shape[1], chunk)], 1)
    sr = denormalize(pred.float()).clamp_(0, 1).view(*out_hw, 3)[:hr_hw[0], :hr_hw[1]]
    return sr.cpu().numpy()
