"""Figure: ISTE's STF key windows leave no visible seam (docs/figures/stf_key_windows.png).

    .venv/bin/python scripts/stf_seam_figure.py [--model PATH] [--scale 3] [--out PATH]

Super-resolves a 144 x 144 crop of the CMU test split (native scan, no degradation) with the
default key windows (48 LR pixels: 3 x 3 windows) and with one window over the whole crop (a
reference without borders), and plots: (1) the SR output with the window borders dotted,
(2) the absolute difference between the two, (3) the "excess step": the mean absolute
difference between adjacent output rows (columns) of the windowed result minus that of the
reference. A seam would be a spike of the excess step at a window border. Prints the largest
excess at a border next to the 99th percentile of |excess| elsewhere.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import iste  # noqa: E402
from iste.slides.samples import load_cmu_region  # noqa: E402
from iste.engine.render import QueryOptions, super_resolve  # noqa: E402


def adjacent_diff(img: np.ndarray, axis: int) -> np.ndarray:
    """Mean |x[i+1] - x[i]| along ``axis`` for each i: (n - 1,)."""
    d = np.abs(np.diff(img.astype(np.float64), axis=axis))
    other = tuple(a for a in range(img.ndim) if a != axis)
    return d.mean(axis=other)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model")
    p.add_argument("--scale", type=float, default=3.0)
    p.add_argument("--out", default="docs/figures/stf_key_windows.png")
    args = p.parse_args()
    model = iste.load(args.model, device="cpu")
    region = load_cmu_region("test")[0]
    lr = region[300:444, 1000:1144]  # 144 x 144 LR pixels of tissue: 3 x 3 key windows
    lr_t = torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255
    out_hw = (round(144 * args.scale), round(144 * args.scale))
    runs = {}
    for window in (48, 144):
        sr = super_resolve(model, lr_t, out_hw, options=QueryOptions(stf_window=window))
        runs[window] = (sr[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    sr, ref = runs[48], runs[144]
    n = out_hw[0]
    win = (2 * np.arange(n) + 1) * 144 // (2 * n * 48)
    borders = [int(i) for i in np.nonzero(np.diff(win))[0]]  # step between i and i + 1
    excess_r = adjacent_diff(sr, 0) - adjacent_diff(ref, 0)
    excess_c = adjacent_diff(sr, 1) - adjacent_diff(ref, 1)
    at_border = max(abs(e[b]) for e in (excess_r, excess_c) for b in borders)
    inside = np.abs(np.concatenate([np.delete(excess_r, borders), np.delete(excess_c, borders)]))
    typical = float(np.percentile(inside, 99))
    diff = np.abs(sr.astype(int) - ref.astype(int)).max(-1)

    fig, ax = plt.subplots(1, 3, figsize=(15, 5.2))
    ax[0].imshow(sr)
    for b in borders:
        for f in (ax[0].axhline, ax[0].axvline):
            f(b + 0.5, color="yellow", lw=0.6, ls=(0, (2, 6)))
    ax[0].set_title(f"SR x{args.scale:g}; key windows of 48 LR px (dotted)")
    im = ax[1].imshow(diff, cmap="magma", vmin=0, vmax=max(4, diff.max()))
    ax[1].set_title(f"|3x3 windows - 1 window|, max {diff.max()}, mean {diff.mean():.2f} (/255)")
    fig.colorbar(im, ax=ax[1], fraction=0.046)
    ax[2].plot(excess_r, lw=0.8, label="rows")
    ax[2].plot(excess_c, lw=0.8, label="columns")
    for b in borders:
        ax[2].axvline(b, color="k", lw=0.8, ls=":")
    ax[2].set_title(f"excess step at borders: max {at_border:.2f}\n"
                    f"(99th pct. elsewhere {typical:.2f}; /255)")
    ax[2].set_xlabel("output row / column")
    ax[2].legend()
    for a in ax[:2]:
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}: max excess step at window borders {at_border:.3f}/255, "
          f"99th percentile elsewhere {typical:.3f}; |windowed - single window| "
          f"max {diff.max()}, mean {diff.mean():.3f}")


if __name__ == "__main__":
    main()
