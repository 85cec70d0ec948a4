"""Report figures (PNG, matplotlib without pyplot's global state).

- :func:`comparison_figure` (paper Fig. 6): one region of one test image at one scale — the HR,
  the LR input (enlarged with nearest neighbours), and per method the SR and its absolute error
  map ``mean over RGB of |SR - HR|`` in 8-bit levels with its mean over the crop (brighter =
  larger error; one colour scale for all methods up to the 99.5th percentile of their errors,
  shown by a colour bar whose arrow marks larger errors drawn at its top colour).
- :func:`scale_strip_figure` (paper Fig. 7): one smaller region at increasing (non-integer)
  scales, one row per method, the HR first.

Regions are squares of HR pixels chosen where the HR has the most texture (mean gradient
magnitude), inside the border that the metrics shave, so the crop shows what is scored.
Panel titles give the whole image's PSNR / SSIM of that method at that scale.

Convention: images are uint8 (H, W, 3); regions are (row, col, size) in HR pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from iste.data.degrade import crop_to_scale
from iste.data.degradations import degradation_pair, parse_degradation
from iste.data.metrics import shave_width
from iste.eval.plotting import new_figure, save_png
from iste.eval.tables import scale_label

__all__ = ["pick_region", "texture_score", "comparison_figure", "scale_strip_figure",
           "pick_figure_image", "enlarge_nearest", "FIGURE_CANDIDATES", "METHODS_PER_ROW"]

METHODS_PER_ROW = 6
"""Fig. 6 shows at most this many methods side by side (a report of 13 methods drew one row
3000 pixels wide, its panels some 60 pixels each on a page); more go on further rows."""

FIGURE_CANDIDATES = 32
"""The figures' image is the most textured of the first this many test images (each is read
to be scored, before the evaluation starts)."""

SRLookup = Callable[[str, float], np.ndarray]  # (method, scale) -> SR uint8 (H, W, 3)


def _gray_gradient(image: np.ndarray) -> np.ndarray:
    gray = image.astype(np.float32).mean(-1)
    return np.hypot(ndimage.sobel(gray, 0), ndimage.sobel(gray, 1))


def texture_score(image: np.ndarray) -> float:
    """Mean gradient magnitude of the gray image: how much detail an image shows."""
    return float(_gray_gradient(image).mean())


def pick_figure_image(names: Sequence[str], load: Callable[[str], np.ndarray]) -> str:
    """The name of the image with the highest :func:`texture_score` (first on ties)."""
    scores = [texture_score(load(n)) for n in names]
    return names[int(np.argmax(scores))]


def pick_region(hr: np.ndarray, size: int, *, margin: int) -> tuple[int, int, int]:
    """(row, col, size) of the ``size`` x ``size`` square with most gradient energy, at least
    ``margin`` pixels from the border (the size shrinks to fit small images)."""
    height, width = hr.shape[:2]
    size = max(8, min(size, height - 2 * margin, width - 2 * margin))
    energy = ndimage.uniform_filter(_gray_gradient(hr), size=size, mode="constant")
    half = size // 2
    rows = slice(margin + half, height - margin - (size - half) + 1)
    cols = slice(margin + half, width - margin - (size - half) + 1)
    window = energy[rows, cols]
    if window.size == 0:
        return max(0, (height - size) // 2), max(0, (width - size) // 2), size
    r, c = np.unravel_index(int(np.argmax(window)), window.shape)
    return int(r + margin), int(c + margin), size


def enlarge_nearest(lr: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``lr`` (h, w, ...) shown on the (H, W) = ``hw`` grid of its SR: each output pixel takes
    the LR pixel its centre lies in (the model's own geometry: LR pixel i covers output
    pixels [i H/h, (i + 1) H/h)), so a crop of it shows the LR under the same crop of the HR,
    at any scale."""
    rows = (2 * np.arange(hw[0]) + 1) * lr.shape[0] // (2 * hw[0])
    cols = (2 * np.arange(hw[1]) + 1) * lr.shape[1] // (2 * hw[1])
    return lr[rows][:, cols]


def _crop(image: np.ndarray, region: tuple[int, int, int]) -> np.ndarray:
    r, c, s = region
    return image[r:r + s, c:c + s]


def _title(records: Mapping[tuple[str, float], dict], method: str, scale: float) -> str:
    rec = records.get((method, float(scale)))
    if rec is None:
        return method
    return f"{method}\n{rec['psnr']:.2f} dB / {rec['ssim']:.4f}"


def comparison_figure(hr_full: np.ndarray, scale: float, methods: Sequence[str], sr: SRLookup,
                      records: Mapping[tuple[str, float], dict], path: Path, *,
                      image_name: str, region_size: int = 96, degradation: str = "paper") -> Path:
    """Paper Fig. 6 for one image at ``scale``: HR / LR, then SR over error map per method
    (LR made by the fixed ``degradation``, as in the evaluation); at most
    :data:`METHODS_PER_ROW` methods a row, each row of methods beginning with the HR / LR."""
    lr, hr = degradation_pair(hr_full, scale, parse_degradation(degradation, allow_random=False))
    region = pick_region(hr, region_size, margin=shave_width(scale))
    r, c, s = region
    hr_crop = _crop(hr, region)
    lr_crop = _crop(enlarge_nearest(lr, hr.shape[:2]), region)
    sr_crops = {m: _crop(sr(m, scale), region) for m in methods}  # each SR read once
    errors = {m: np.abs(sr_crops[m].astype(np.float32) - hr_crop.astype(np.float32)).mean(-1)
              for m in methods}
    vmax = max(8.0, float(np.percentile(np.concatenate([e.ravel() for e in errors.values()]),
                                        99.5)))
    chunks = [methods[i:i + METHODS_PER_ROW] for i in range(0, len(methods), METHODS_PER_ROW)]
    fig, axes = new_figure(2 * len(chunks), 1 + max(map(len, chunks)), extra_w=0.6)
    for k, chunk in enumerate(chunks):  # per chunk: HR over LR, then SR over error per method
        top, bottom = axes[2 * k], axes[2 * k + 1]
        top[0].imshow(hr_crop, interpolation="nearest")
        top[0].set_title("HR (ground truth)", fontsize=9)
        bottom[0].imshow(lr_crop, interpolation="nearest")
        bottom[0].set_title(f"LR input ({scale_label(scale)} smaller)", fontsize=9)
        for j, m in enumerate(chunk, start=1):
            top[j].imshow(sr_crops[m], interpolation="nearest")
            top[j].set_title(_title(records, m, scale), fontsize=9)
            image = bottom[j].imshow(errors[m], cmap="inferno", vmin=0, vmax=vmax,
                                     interpolation="nearest")
            bottom[j].set_title(f"|{m} − HR|\ncrop mean {errors[m].mean():.1f}", fontsize=9)
        for ax in [*top[len(chunk) + 1:], *bottom[len(chunk) + 1:]]:
            ax.set_axis_off()
    # the scale stops at the 99.5th percentile: the arrow says that larger errors exist
    clipped = max(float(e.max()) for e in errors.values()) > vmax
    fig.colorbar(image, ax=axes[1::2].ravel().tolist(), shrink=0.9,
                 extend="max" if clipped else "neither", label="abs. error (8-bit levels)")
    fig.suptitle(f"{image_name}, {scale_label(scale)}: {s} x {s} HR px at (x={c}, y={r}); "
                 "title = whole-image PSNR / SSIM", fontsize=10)
    return save_png(fig, path)


def scale_strip_figure(hr_full: np.ndarray, scales: Sequence[float], methods: Sequence[str],
                       sr: SRLookup, records: Mapping[tuple[str, float], dict], path: Path, *,
                       image_name: str, region_size: int = 72) -> Path:
    """Paper Fig. 7: the same HR region, one row per method (HR first), one column per scale."""
    scales = sorted(scales)
    smallest = min((crop_to_scale(hr_full, s) for s in scales), key=lambda a: a.size)
    region = pick_region(smallest, region_size, margin=shave_width(max(scales)))
    hr_crop = _crop(smallest, region)
    fig, axes = new_figure(len(methods), len(scales) + 1, panel=1.75)
    for i, m in enumerate(methods):
        axes[i, 0].imshow(hr_crop, interpolation="nearest")
        axes[i, 0].set_ylabel(m, fontsize=10)
        if i == 0:
            axes[i, 0].set_title("HR", fontsize=9)
        for j, scale in enumerate(scales, start=1):
            axes[i, j].imshow(_crop(sr(m, scale), region), interpolation="nearest")
            rec = records.get((m, float(scale)))
            psnr = "" if rec is None else f", {rec['psnr']:.2f} dB"
            axes[i, j].set_title(f"{scale_label(scale)}{psnr}", fontsize=9)
    r, c, s = region
    fig.suptitle(f"{image_name}: {s} x {s} HR px at (x={c}, y={r})\n"
                 "rows: methods; columns: scales (whole-image PSNR)", fontsize=10)
    return save_png(fig, path)
