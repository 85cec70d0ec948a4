"""What a slide job computes: source rectangle, output size, output mpp, tiles.

Convention:
    ``region`` is (x, y, width, height) in the level-0 frame (OpenSlide's); the source
    rectangle ``lr_box`` is (x, y, width, height) in the frame of the level read. The output
    covers exactly that rectangle: out = Frame.for_scale((height, width), scale), and its mpp
    is the level-0 mpp times level-0 pixels per output pixel, per axis. Its tiles read the
    level around the rectangle as context (``SlidePlan.context``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

from iste.engine.frame import MAX_SCALE, Frame, check_scale
from iste.engine.tiles import TILE_STEP, Tile, default_tile
from iste.slides.reader import SlideError, SlideReader
from iste.slides.scale import output_mpp_refusal
from iste.slides.writer import CODECS, LAYOUTS, Codec, Layout

__all__ = ["MAX_SCALE", "UNREADABLE_MODES", "SlideJob", "SlidePlan", "make_plan",
           "scale_for_target_mpp", "tiff_tile_for"]

MAX_TILE = 4096  # output pixels per inference tile side (an LR crop of 2048 px a side at x2)
MAX_HALO = 1024  # LR pixels; the measured receptive field is capped at 64
UNREADABLE_MODES = ("stop", "fill")  # what a job does with input it cannot read


@dataclass(frozen=True)
class SlideJob:
    """The user's request (every field changes the output's pixels or layout).

    scale: output pixels per source-level pixel, 1 < scale <= MAX_SCALE.
    level: source pyramid level.
    region: (x, y, width, height) in the level-0 frame, or None for the whole slide.
    tile: inference tile side in output pixels, a multiple of 16 (the TIFF tile is
        gcd(tile, 512)); None: :func:`iste.engine.tiles.default_tile` for the scale (512 up
        to x2, 1024 up to x4, 2048 at x8), resolved here. Peak memory follows the tile's LR
        crop (tile / scale): with the shipped model at x2 ~0.75-0.8 GB at 512 and ~0.8-1.0 GB
        at 1024 (peak RSS of the whole job, docs/wsi.md).
    codec, quality, layout: see :class:`iste.slides.writer.PyramidSpec`.
    tissue: upsample glass bicubically instead of by the model, blended into the model's
        output beside tissue (:class:`iste.slides.tissue.TissueBlend`).
    halo: LR halo around tiles; None = measured receptive field of the model.
    unreadable: "stop" (the job stops at the first input it cannot read: a damaged tile or
        frame, :class:`~iste.slides.reader.UnreadableRegionError`) or "fill" (the output
        pixels whose input cannot be read are filled from the next coarser level that can be
        read there, upsampled, else white; recorded: :mod:`iste.slides.unreadable`). Not
        part of the work folder's key: tiles the two make alike are kept across a change.
    """

    scale: float
    level: int = 0
    region: tuple[int, int, int, int] | None = None
    tile: int | None = None
    codec: Codec = "jpeg"
    quality: int = 90
    layout: Layout = "svs"
    tissue: bool = True
    halo: int | None = None
    unreadable: str = "stop"

    @property
    def fills(self) -> bool:
        """Whether input that cannot be read is filled (``unreadable`` "fill")."""
        return self.unreadable == "fill"

    def __post_init__(self):
        check_scale(self.scale)
        if self.tile is None:
            object.__setattr__(self, "tile", default_tile(self.scale))
        if self.tile < 16 or self.tile % 16 or self.tile > MAX_TILE:
            raise ValueError(f"--tile must be a positive multiple of 16 up to {MAX_TILE}, got "
                             f"{self.tile}")
        if self.codec not in CODECS or self.layout not in LAYOUTS:
            raise ValueError(f"codec must be in {CODECS} and layout in {LAYOUTS}")
        if self.layout == "dicom" and self.codec != "jpeg":
            raise ValueError("DICOM output is written as RGB JPEG (what OpenSlide and wsidicom "
                             f"read); --codec {self.codec} applies to TIFF outputs")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"--quality must be in 1..100, got {self.quality}")
        if self.unreadable not in UNREADABLE_MODES:
            raise ValueError(f"unreadable must be one of {', '.join(UNREADABLE_MODES)}, got "
                             f"{self.unreadable!r}")
        if self.halo is not None and not 0 <= self.halo <= MAX_HALO:
            raise ValueError(f"--halo must be in 0..{MAX_HALO}, got {self.halo}")
        if self.region is not None and len(self.region) != 4:
            raise ValueError(f"region must be x,y,width,height, got {self.region}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SlidePlan:
    """level: the level read; lr_box: (x, y, width, height) in that level's frame;
    region0: the same rectangle in the level-0 frame; frame: LR -> output geometry;
    mpp: output microns per pixel (x, y) or None; tiff_tile: TIFF tile side;
    objective_power: the output's objective magnification (the source's power at level 0
    times output pixels per level-0 pixel: a 20x scan at x2 from level 0 is 40x), or None;
    context: (rows, cols) of the level read around ``lr_box``, in its LR indices (the whole
    level: a region's tiles read across its border, :func:`iste.engine.tiles.tile_for`)."""

    level: int
    lr_box: tuple[int, int, int, int]
    region0: tuple[int, int, int, int]
    frame: Frame
    mpp: tuple[float, float] | None
    tiff_tile: int
    objective_power: float | None = None
    context: tuple[range, range] | None = None

    @property
    def out_size(self) -> tuple[int, int]:
        """(width, height) of the output."""
        return self.frame.out_hw[1], self.frame.out_hw[0]

    def crop_box(self, tile: Tile) -> tuple[int, int, int, int]:
        """(x, y, width, height) of ``tile``'s LR crop in the frame of the level read."""
        x0, y0 = self.lr_box[:2]
        return (x0 + tile.lr_cols.start, y0 + tile.lr_rows.start, len(tile.lr_cols),
                len(tile.lr_rows))


def tiff_tile_for(tile: int, out_size: tuple[int, int] | None = None) -> int:
    """The TIFF (and DICOM) tile side for inference tiles of side ``tile`` (a multiple of 16):
    the largest multiple of 16 up to ``TILE_STEP`` (512) that divides it, so that an inference
    tile covers whole TIFF tiles. 512 for the default tiles, 400 for 400 (the gcd with 512 gave
    16-px tiles there: a 1.7x larger file with 7 levels); a warning when it is below 128.

    out_size: the output's (width, height); the side is then also no larger than twice its
    longer side: libvips refuses a tiled page whose tile is over that, rounded up to 256
    ("tile size out of range": an 80 x 60 output in 512-px tiles; 128 now, still one tile)."""
    side = _divisor_of_16s(tile, TILE_STEP)
    if side < 128 <= tile:
        warnings.warn(f"--tile {tile} makes {side}-px TIFF tiles (the largest multiple of 16 "
                      f"up to {TILE_STEP} that divides it): readers slow down and the file "
                      "grows; a multiple of 128 avoids it", stacklevel=2)
    if out_size is not None:
        side = _divisor_of_16s(side, max(16, 2 * max(out_size)))
    return side


def _divisor_of_16s(n: int, up_to: int) -> int:
    """The largest multiple of 16 up to ``up_to`` (>= 16) that divides ``n`` (a multiple of
    16)."""
    return max(d for d in range(16, min(n, up_to) + 1, 16) if n % d == 0)


def scale_for_target_mpp(slide: SlideReader, level: int, target_mpp: float) -> float:
    """The scale that takes ``level`` to ``target_mpp`` microns per pixel.

    Raises:
        SlideError: the slide records no mpp; the target is not finer than the level; or it
            is finer than MAX_SCALE allows.
    """
    _check_level(slide, level)
    if not (math.isfinite(target_mpp) and target_mpp > 0):
        raise SlideError(f"--target-mpp must be a positive number, got {target_mpp}")
    if slide.mpp is None:
        raise SlideError(f"{slide.path or 'the slide'} records no microns per pixel; "
                         "give the scale with -s instead of --target-mpp")
    d = slide.level_downsamples[level]
    mpp_level = (slide.mpp[0] + slide.mpp[1]) / 2 * d
    # An mpp read from a file carries float noise (0.2527 from a TIFF's resolution reads
    # 0.25270000000000004): half of it gave x2.0000000000000004, which a fixed-scale x2 network
    # refused ("cannot upscale by 2") and outputs recorded. Nine significant digits keep every
    # scale a user can mean (an output's size moves by far less than a pixel).
    scale = float(f"{mpp_level / target_mpp:.9g}")
    x, y = slide.mpp
    if abs(x - y) > 0.01 * max(x, y) and 1 < scale <= MAX_SCALE:
        warnings.warn(f"{slide.path or 'the slide'}: its pixels are not square ({x:.4g} x "
                      f"{y:.4g} um at level 0); --target-mpp {target_mpp:g} sets one scale "
                      f"from their mean (x{scale:.4g}), so the output's pixels are "
                      f"{x * d / scale:.4g} x {y * d / scale:.4g} um", stacklevel=2)
    if scale <= 1:
        raise SlideError(f"target {target_mpp:g} mpp is not finer than level {level} "
                         f"({mpp_level:.4g} mpp): nothing to super-resolve")
    if scale > MAX_SCALE:
        raise SlideError(f"target {target_mpp:g} mpp is finer than the model can reach from "
                         f"level {level} ({mpp_level:.4g} mpp): it needs x{scale:.6g}, the "
                         f"maximum is x{MAX_SCALE:g} (finest {mpp_level / MAX_SCALE:.4g} mpp)")
    return scale


def _check_level(slide: SlideReader, level: int) -> None:
    if not 0 <= level < slide.level_count:
        raise SlideError(f"--level {level} does not exist: the slide has levels 0.."
                         f"{slide.level_count - 1}")
    mismatch = slide.level_mismatch(level)
    if mismatch is not None:
        raise SlideError(f"{mismatch}: choose another --level")


def make_plan(slide: SlideReader, job: SlideJob) -> SlidePlan:
    """Validate the job against the slide and fix the geometry.

    Raises:
        SlideError: level out of range, region empty or not inside the slide, an output
            pixel size iste would not read back (:func:`iste.slides.scale.output_mpp_refusal`).
    """
    _check_level(slide, job.level)
    w0, h0 = slide.dimensions
    x, y, w, h = job.region if job.region is not None else (0, 0, w0, h0)
    if w < 1 or h < 1:
        raise SlideError(f"region {x},{y},{w},{h} is empty")
    if x < 0 or y < 0 or x + w > w0 or y + h > h0:
        raise SlideError(f"region {x},{y},{w},{h} (level-0 x,y,width,height) is outside the "
                         f"slide ({w0} x {h0})")
    d = slide.level_downsamples[job.level]
    lw_max, lh_max = slide.level_dimensions[job.level]
    lx0, ly0 = math.floor(x / d), math.floor(y / d)
    lx1, ly1 = min(lw_max, math.ceil((x + w) / d)), min(lh_max, math.ceil((y + h) / d))
    lr_box = (lx0, ly0, max(1, lx1 - lx0), max(1, ly1 - ly0))
    frame = Frame.for_scale((lr_box[3], lr_box[2]), float(job.scale))
    mpp = None
    if slide.mpp is not None:
        # level-0 pixels covered by the output, per output pixel
        mpp = (slide.mpp[0] * lr_box[2] * d / frame.out_hw[1],
               slide.mpp[1] * lr_box[3] * d / frame.out_hw[0])
        refused = output_mpp_refusal(mpp)
        if refused is not None:
            raise SlideError(refused)
    region0 = (round(lx0 * d), round(ly0 * d), round(lr_box[2] * d), round(lr_box[3] * d))
    power = None
    if slide.objective_power is not None:
        power = slide.objective_power * frame.out_hw[1] / (lr_box[2] * d)
    # a region's pixels at its border are rendered from the level around it, as in the
    # output of the whole level (the region's own pixels only gave its outer ~5 LR pixels
    # of output other values: up to 50 grey levels at the edge, docs/wsi.md)
    context = (range(-ly0, lh_max - ly0), range(-lx0, lw_max - lx0))
    tiff_tile = tiff_tile_for(job.tile, (frame.out_hw[1], frame.out_hw[0]))
    return SlidePlan(job.level, lr_box, region0, frame, mpp, tiff_tile, power, context)
