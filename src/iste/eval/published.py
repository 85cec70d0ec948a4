"""The published test's geometry (dmhdmhdmh/ISTE ``test.py``), as an evaluation protocol.

``iste eval --protocol published`` super-resolves and scores every image the way the published
test script does, so a checkpoint converted from the published code (``iste convert-official``)
scores what that script prints:

1. The LR is padded at the bottom and right by mirroring (``torch.flip`` and concatenation) to
   ``(h // 8 + 1) * 8`` rows and ``(w // 8 + 1) * 8`` columns — always at least one row and
   column, a full 8 when the size is already a multiple of 8 (SwinIR's window; the script pads
   for every encoder).
2. The whole padded output grid, ``round(s * h_pad)`` x ``round(s * w_pad)`` pixel centres in
   row-major order, is queried with the cell ``(2 / (s h_pad), 2 / (s w_pad))``, multiplied by
   ``max(s / 4, 1)`` above x4 (the script's cell clipping), in chunks of 30 000 queries. Each
   chunk is one plain ``query`` call, so for ISTE the chunk's queries are STF's key set
   (DESIGN.md section 3): the output depends on the chunk size, and the similarity matrix is
   30 000 x 30 000 per chunk.
3. The prediction is clamped to [0, 1], cropped to the HR size (top-left) and scored as a
   float: PSNR with 8 pixels shaved at every scale (the script's ``shave = scale + 6`` with
   ``scale`` hard-coded to 2; :data:`iste.data.metrics.PUBLISHED_BORDER`).

At non-integer scales the script's grid ``scale * (h + pad)`` is not an integer and its code
cannot run; we round it (the only place where this protocol is defined by us).
"""

from __future__ import annotations

import numpy as np
import torch

from iste.data.coords import denormalize, make_coord, normalize
from iste.engine.render import QueryOptions, autocast_for
from iste.models.layers.ensemble import published_areas

__all__ = ["PUBLISHED_CHUNK", "PUBLISHED_WINDOW", "flip_pad", "published_upscale"]

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
    hp, wp = padded.shape[-2:]
    out_hw = (round(scale * hp), round(scale * wp))
    if out_hw[0] < hr_hw[0] or out_hw[1] < hr_hw[1]:
        raise ValueError(f"the padded output {out_hw} does not cover the HR size {hr_hw}")
    coord = make_coord(out_hw, device=device)[None]
    cell = torch.tensor([2 / hp / scale, 2 / wp / scale], device=device)
    cell = (cell * max(scale / _CELL_CLIP, 1.0)).expand_as(coord)
    precision = options.resolved(model).precision
    with torch.no_grad(), autocast_for(device, precision), published_areas():
        feats = model.encode(normalize(padded))
        pred = torch.cat([model.query(feats, coord[:, i:i + chunk], cell[:, i:i + chunk])
                          for i in range(0, coord.shape[1], chunk)], 1)
    sr = denormalize(pred.float()).clamp_(0, 1).view(*out_hw, 3)[:hr_hw[0], :hr_hw[1]]
    return sr.cpu().numpy()
