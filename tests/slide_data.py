"""Shared data for the tests of iste.slides: real H&E and a small pyramidal TIFF.

The pyramid is written with tifffile directly (not with iste's writer), once per session,
from the same levels :class:`InMemorySlide` builds, so the in-memory and the file readers
must return identical pixels (deflate is lossless).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

from iste.slides.reader import InMemorySlide

MPP = 0.5
TILE = 128
_cache: dict[str, object] = {}


def he_image(width: int = 600, height: int = 440, x: int = 900, y: int = 1400) -> np.ndarray:
    """A real H&E region of the cmu-svs sample, uint8 (height, width, 3)."""
    key = f"he{width},{height},{x},{y}"
    if key not in _cache:
        import tiffslide

        from iste.data.samples import sample_path

        with tiffslide.TiffSlide(sample_path("cmu-svs")) as s:
            _cache[key] = np.asarray(s.read_region((x, y), 0, (width, height), as_array=True))
    return _cache[key]  # type: ignore[return-value]


def memory_slide() -> InMemorySlide:
    return InMemorySlide(he_image(), mpp=MPP, min_level_size=100)


def write_tiff_pyramid(path: Path, slide: InMemorySlide, mpp: float | None = MPP) -> Path:
    """Generic tiled TIFF of ``slide``'s levels (deflate, tiles of TILE)."""
    w0 = slide.dimensions[0]
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for level, (w, h) in enumerate(slide.level_dimensions):
            rgb = slide.read_level(level, (0, 0), (w, h))
            res = {} if mpp is None else {
                "resolution": (1e4 / (mpp * w0 / w),) * 2, "resolutionunit": "CENTIMETER"}
            tw.write(rgb, tile=(TILE, TILE), compression="zlib", photometric="rgb",
                     subfiletype=1 if level else 0, metadata=None, **res)
    return path


def pyramid_tiff(tmp_path_factory) -> Path:
    """The session's small pyramidal TIFF (written on first use)."""
    if "pyramid" not in _cache:
        path = tmp_path_factory.mktemp("slides") / "pyramid.tiff"
        _cache["pyramid"] = write_tiff_pyramid(path, memory_slide())
    return _cache["pyramid"]  # type: ignore[return-value]


def smooth_tissue(height: int = 96, width: int = 104, seed: int = 0) -> np.ndarray:
    """Synthetic smooth blobs with some fine texture (a stand-in for stained tissue that was
    never JPEG-compressed): uint8 (H, W, 3)."""
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.random((height, width, 3)), (3, 3, 0))
    base = (base - base.min()) / (base.max() - base.min())
    texture = ndimage.gaussian_filter(rng.random((height, width, 3)), (0.8, 0.8, 0)) - 0.5
    return np.clip((base * 0.8 + texture * 0.3 + 0.1) * 255, 0, 255).astype(np.uint8)


def tissue_disc_on_glass() -> tuple[np.ndarray, np.ndarray]:
    """(rgb uint8 (224, 224, 3), its glass bool at x2 (448, 448)): a disc of tissue whose
    edge crosses the tile borders of any grid, on flat glass (the glass's mask keeps 4 px
    away from the disc)."""
    rgb = np.full((224, 224, 3), 242, np.uint8)
    yy, xx = np.mgrid[:224, :224]
    disc = (yy - 100) ** 2 + (xx - 110) ** 2 < 60 ** 2
    rgb[disc] = he_image()[:224, :224][disc]
    glass = (yy - 100) ** 2 + (xx - 110) ** 2 >= 64 ** 2
    return rgb, glass.repeat(2, 0).repeat(2, 1)


@contextlib.contextmanager
def killed_at_tile(n: int):
    """Within the block, the slide pipeline's ``n``-th model tile raises KeyboardInterrupt
    (a job stopped mid-run: the tiles before it are finished in its work folder)."""
    import iste.slides.pipeline as pipeline

    real, calls = pipeline.render_tile, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    pipeline.render_tile = interrupted
    try:
        yield
    finally:
        pipeline.render_tile = real


def damaged_tiff(path: Path) -> Path:
    """A tiled TIFF that opens but whose every tile's deflate stream is zeros: no tile of it
    decodes (a slide damaged on disk)."""
    tifffile.imwrite(path, np.full((128, 128, 3), 200, np.uint8), tile=(64, 64),
                     photometric="rgb", compression="zlib", metadata=None)
    with tifffile.TiffFile(path) as tif:
        offsets, counts = tif.pages[0].dataoffsets, tif.pages[0].databytecounts
    data = bytearray(path.read_bytes())
    for offset, count in zip(offsets, counts):
        data[offset:offset + count] = bytes(count)
    path.write_bytes(bytes(data))
    return path
