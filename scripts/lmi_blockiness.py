"""Measure what makes an undertrained LMI blocky: its output jumps at every LR pixel centre.

    python scripts/lmi_blockiness.py [--scale 2] [--images 16] CHECKPOINT [CHECKPOINT ...]

LMI (the published COZ code, reproduced by ``iste.models.heads.lmi``) weights each of its 16
neighbours' predictions by the area of the diagonally opposite rectangle. On the 4 x 4 grid
that weighting is discontinuous at the LR pixel centres: just past a centre the neighbour set
shifts by one pixel and the weights jump (e.g. along one axis from 1/2, 1/4, 0, 1/4 on pixels
-1, 0, 1, 2 to 1/4, 0, 1/4, 1/2 on pixels -2, -1, 0, 1 just before it). The output is continuous
only when the 16 token predictions agree, which the mixer has to learn.

For every checkpoint, on ``sample:cmu-test`` degraded as in the evaluation (x ``--scale``):

- ``jump``: mean |f(c - d) - f(c + d)| over queries just before / after each LR pixel centre
  c along rows (d = 1e-3 LR pixel), in 8-bit levels; a continuous decoder gives ~0;
- ``token_spread``: mean over queries of the standard deviation of the 16 token predictions
  (LMI only), in 8-bit levels: 0 when the tokens agree.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def _queries(lr_hw: tuple[int, int], out_w: int, delta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(2, Q, 2) queries just before (0) and after (1) every LR row centre, at every output
    column centre."""
    from iste.data.coords import coord_axis

    h, _ = lr_hw
    rows = coord_axis(h, dtype=torch.float64)
    cols = coord_axis(out_w, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)
    step = torch.tensor([delta * 2 / h, 0.0], dtype=torch.float64)
    return (grid - step).float(), (grid + step).float()


def measure(model, images: list[np.ndarray], scale: float, delta: float = 1e-3) -> dict:
    from iste.data.coords import normalize
    from iste.data.degrade import evaluation_pair

    spread: list[torch.Tensor] = []
    hook = None
    if hasattr(model, "mixer"):  # LMI: the 16 token predictions, (B, 16 Q, 3) before the sum
        hook = model.out.register_forward_hook(
            lambda mod, args, out: spread.append(out.view(-1, 16, 3).std(1).mean() * 127.5))
    jumps = []
    with torch.no_grad():
        for img in images:
            hr, lr = evaluation_pair(img, scale)
            inp = normalize(torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255)
            before, after = _queries(tuple(inp.shape[-2:]), hr.shape[1], delta)
            cell = torch.tensor([2 / hr.shape[0], 2 / hr.shape[1]]).expand(1, len(before), 2)
            f0 = model(inp, before[None], cell)
            f1 = model(inp, after[None], cell)
            jumps.append(float((f0 - f1).abs().mean() * 127.5))
    if hook is not None:
        hook.remove()
    out = {"jump": float(np.mean(jumps))}
    if spread:
        out["token_spread"] = float(torch.stack(spread).mean())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args(argv)
    import iste
    from iste.slides.samples import cmu_test_images

    images = [img for _, img in cmu_test_images()[: args.images]]
    for path in args.checkpoints:
        model = iste.load(path, device="cpu").eval()
        values = measure(model, images, args.scale)
        print(path, " ".join(f"{k} {v:.2f}" for k, v in values.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
