"""How long a slide job will take on this machine and what it will need, before it runs
(``iste upscale SLIDE ... --estimate``).

The job is checked and planned exactly as :func:`iste.slides.pipeline.upscale_slide` would
(:func:`~iste.slides.pipeline.prepare_job`: same output checks, tile grid and tissue rule), and
every inference tile is classed as model (some of its pixels are the model's: on or beside
tissue, :func:`~iste.slides.pipeline.tile_coverage`; those at tissue's edge are blended with
bicubic, which costs little beside the model) or background (bicubic alone).
A few tiles of each kind are then run through the job's own pipeline (read, model or bicubic,
encode) into a temporary folder, after one untimed warm-up tile, to measure this machine's
rate in output megapixels per second, the encoded size of a TIFF tile and the cost of
building the pyramid's lower levels from it. The projection:

    time  = tissue detection (measured) + model Mpx / model rate + background Mpx / background
            rate + pyramid (decoding each level once and encoding the level below, at the
            sample's per-tile costs)
    bytes = level-0 tiles x the sample's bytes per tile of their kind + the lower levels' tiles
            x the bytes of a tile built from the sample's model tiles (by the tissue's share of
            the area; glass tiles' bytes for the rest) + the label and macro images; the model
            tiles' bytes are scaled by this slide's detail (the bytes of 32 of its model
            tiles made bicubically against those of the timed ones), and all by how the
            output stores them (DICOM and plain images re-encode the job's work tiles)

A job interrupted earlier resumes from the finished tiles in its work folder: those that verify
and belong to this job (:func:`~iste.slides.workdir.finished_tiles`, read without taking the
folder's lock or changing anything) are left out of the tiles' time and of the free space still
needed. The work scales with the area because the job streams tiles with bounded memory
(docs/wsi.md). The peak resident memory is that of the whole process while the sample ran. The
disk the job needs at its end: the work folder's level-0 tiles and the lower levels' scratch
files, beside the output being written (about twice a TIFF output). Nothing is written near the
output. Rates depend on the job's scale and tile, not on the slide's content (the model's work
per pixel is fixed), so a folder of slides measures them once per scale and tile
(:class:`Calibrations`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from iste.data.tensors import rgb_to_tensor, tensor_to_rgb
from iste.engine.render import QueryOptions
from iste.engine.tiles import bicubic_tile
from iste.process_memory import peak_rss_during
from iste.progress import Progress
from iste.slides.job import SlideJob
from iste.slides.levels import halve
from iste.slides.pipeline import (JobSetup, SlideResult, job_manifest, pending_positions,
                                  prepare_job, read_crop, run_tiles, tiff_parts, tiff_tiles_of,
                                  tile_area, tile_coverage, tissue_blend, tissue_mask)
from iste.slides.reader import SlideReader, UnreadableRegionError
from iste.slides.tissue import TissueMask
from iste.slides.unreadable import fill_crop
from iste.slides.workdir import Finished, WorkDir, finished_tiles, work_dir_for
from iste.slides.writer import ASSOCIATED, PyramidSpec

__all__ = ["SAMPLE_TILES", "KindRate", "Calibration", "Calibrations", "SlideEstimate",
           "estimate_slide", "output_destination"]

SAMPLE_TILES = 3
"""Tiles of each kind timed per calibration, after one untimed warm-up tile."""

KINDS = ("model", "background")
BYTES_SAMPLE = 32
"""Model tiles per slide made bicubically to scale the output's bytes to its detail."""


@dataclass(frozen=True)
class KindRate:
    """One kind of tile measured: ``seconds_per_mpx`` of pipeline time per output megapixel
    (``tiles`` tiles, ``mpx`` megapixels timed), the mean encoded ``bytes_per_tiff_tile`` and
    ``decode_seconds`` per TIFF tile of the job's work tiles, the bytes of the same pixels as
    the output stores them against those (``output_bytes_ratio``: 1 for a TIFF pyramid,
    whose tiles are the work tiles; DICOM and plain images re-encode them), the mean bytes of
    the same tiles made bicubically (:func:`_bicubic_bytes`: the yardstick of a slide's
    detail), the slide they came from, and the bytes per pixel of their pixels (edge padding
    left out) as the svs layout's thumbnail stores them (:func:`_thumbnail_density`)."""

    seconds_per_mpx: float
    bytes_per_tiff_tile: float
    output_bytes_ratio: float
    decode_seconds: float
    tiles: int
    mpx: float
    bicubic_bytes_per_tiff_tile: float
    measured_on: str
    thumbnail_bytes_per_px: float = 0.0

    @property
    def mpx_per_s(self) -> float:
        return 1 / self.seconds_per_mpx if self.seconds_per_mpx > 0 else float("inf")


@dataclass
class Calibration:
    """Rates of one (scale, tile, codec) on this machine: per kind (measured when a slide
    first needs that kind); the seconds to build one lower-level tile from its four decoded
    children and its encoded bytes (``reduce_seconds``, ``reduce_bytes``: of the model tiles'
    mosaics where there are any, as lower levels pack more detail into a tile), and per pixel
    as the svs thumbnail stores such a tile (``reduce_thumbnail_bytes_per_px``); the process's
    peak resident memory (and, on a GPU, its peak allocation) while the model tiles ran."""

    kinds: dict[str, KindRate] = field(default_factory=dict)
    reduce_seconds: float | None = None
    reduce_bytes: float | None = None
    reduce_thumbnail_bytes_per_px: float | None = None
    peak_rss: int | None = None
    peak_device_memory: int | None = None


class Calibrations(dict):
    """Calibrations by (scale, tile, codec, quality, halo, output kind and suffix), shared by
    the slides of a folder."""

    @staticmethod
    def key(job: SlideJob, kind: str, output: Path) -> tuple:
        return (job.scale, job.tile, job.codec, job.quality, job.halo, kind,
                output.suffix.lower())


@dataclass
class SlideEstimate:
    """What a job will do and need. Sizes (width, height); seconds projected on this machine
    for the tiles still to run (``tiles_resumed`` of ``tiles`` are finished in the job's work
    folder, ``resumed``, and a rerun resumes from them); ``bytes_output`` the projected file
    (or folder) size; ``bytes_disk`` the free space the job still needs at its end (the
    finished tiles already hold theirs); ``disk_free`` the free space where the output goes
    now, and ``writable`` whether this user may create it there (its nearest existing
    folder)."""

    output: Path
    kind: str
    size: tuple[int, int]
    levels: list[tuple[int, int]]
    mpp: tuple[float, float] | None
    scale: float
    tile: int
    tiles_model: int
    tiles_background: int
    mpx_model: float
    mpx_background: float
    tissue_fraction: float | None
    seconds_detect: float
    seconds_tiles: float
    seconds_assembly: float
    bytes_output: float
    bytes_disk: float
    disk_free: int | None
    writable: bool
    calibration: Calibration
    tiles_resumed: int = 0
    resumed: Finished = Finished()
    tiles_blended: int = 0  # of the model tiles, those blended with bicubic at tissue's edge

    @property
    def tiles(self) -> int:
        return self.tiles_model + self.tiles_background

    @property
    def seconds(self) -> float:
        return self.seconds_detect + self.seconds_tiles + self.seconds_assembly

    def to_dict(self) -> dict:
        cal = self.calibration
        return {
            "output": str(self.output), "kind": self.kind, "size": list(self.size),
            "levels": [list(v) for v in self.levels],
            "mpp": None if self.mpp is None else list(self.mpp), "scale": self.scale,
            "tile": self.tile, "tiles_model": self.tiles_model,
            "tiles_background": self.tiles_background, "tiles_blended": self.tiles_blended,
            "mpx_model": round(self.mpx_model, 3), "mpx_background": round(self.mpx_background, 3),
            "tissue_fraction": self.tissue_fraction,
            "seconds": round(self.seconds, 1), "seconds_detect": round(self.seconds_detect, 2),
            "seconds_tiles": round(self.seconds_tiles, 1),
            "seconds_assembly": round(self.seconds_assembly, 1),
            "bytes_output": round(self.bytes_output), "bytes_disk": round(self.bytes_disk),
            "disk_free": self.disk_free, "writable": self.writable,
            "tiles_resumed": self.tiles_resumed,
            "work_folder": {"busy": self.resumed.busy, "stale": self.resumed.stale,
                            "bytes": self.resumed.bytes},
            "rates_mpx_per_s": {k: round(r.mpx_per_s, 4) for k, r in cal.kinds.items()},
            "tiles_timed": {k: r.tiles for k, r in cal.kinds.items()},
            "peak_rss": cal.peak_rss, "peak_device_memory": cal.peak_device_memory,
            "measured_on": {k: r.measured_on for k, r in cal.kinds.items()},
        }


def estimate_slide(slide: SlideReader, output: str | os.PathLike, model: torch.nn.Module,
                   job: SlideJob, *, options: QueryOptions = QueryOptions(),
                   calibrations: Calibrations | None = None) -> SlideEstimate:
    """Project the job ``upscale_slide(slide, output, model, job, options=options)``.

    ``calibrations``: rates already measured (a folder's earlier slides); the kinds this slide
    needs and they lack are measured on this slide and added. Writes nothing outside a
    temporary folder.

    Raises:
        SlideError / ValueError on bad input, as the job itself would.
    """
    options = options.resolved(model)
    output = Path(output)
    setup = prepare_job(slide, output, model, job, options)
    t0 = time.perf_counter()
    mask = tissue_mask(slide, job) if job.tissue else None
    seconds_detect = time.perf_counter() - t0
    by_kind = _tiles_by_kind(slide, setup, mask)
    work = work_dir_for(output)
    resumed = finished_tiles(work, job_manifest(slide, model, job, setup, options)) \
        if os.path.lexists(work) else Finished()  # no work folder: the input is not read
    calibrations = Calibrations() if calibrations is None else calibrations
    cal = calibrations.setdefault(Calibrations.key(job, setup.kind, output), Calibration())
    missing = [k for k in KINDS if by_kind[k] and k not in cal.kinds]
    if missing:
        _calibrate(slide, model, setup, output, mask, options, by_kind, missing, cal,
                   fill=job.fills)
    return _project(slide, output, job, setup, mask, by_kind, cal, seconds_detect, resumed)


def _tiles_by_kind(slide, setup: JobSetup, mask: TissueMask | None) -> dict[str, list]:
    """Grid positions (i, j) of each kind, row-major, as the job's reader will class them;
    under "blended", those of the model tiles that are blended with bicubic at tissue's edge
    (:func:`~iste.slides.pipeline.tile_coverage` "edge": timed as model tiles, the blend
    costing about 1 % of a model tile)."""
    rows, cols = setup.grid.shape
    blend = tissue_blend(mask, slide, setup.plan)
    out: dict[str, list] = {k: [] for k in (*KINDS, "blended")}
    for i in range(rows):
        for j in range(cols):
            coverage = tile_coverage(blend, setup.grid.tile(i, j))
            out["background" if coverage == "glass" else "model"].append((i, j))
            if coverage == "edge":
                out["blended"].append((i, j))
    return out


def _sample(positions: list, grid, n: int) -> list:
    """1 + ``n`` positions spread evenly over ``positions``, full-size tiles first."""
    full_area = grid.tile_hw[0] * grid.tile_hw[1]
    full = [p for p in positions if tile_area(grid, *p) == full_area]
    pool = full if len(full) >= min(len(positions), n + 1) else positions
    if len(pool) <= n + 1:
        return list(pool)
    picks = np.linspace(0, len(pool) - 1, n + 1).round().astype(int)
    return [pool[k] for k in dict.fromkeys(picks.tolist())]


def _calibrate(slide, model, setup: JobSetup, output: Path, mask, options: QueryOptions,
               by_kind: dict[str, list], kinds: list[str], cal: Calibration, *,
               fill: bool = False) -> None:
    """Run sample tiles of ``kinds`` through the job's pipeline; fill ``cal``. ``fill``: the
    job's ``--unreadable-tiles fill`` (a sample tile that cannot be read is filled, as the
    job would, rather than stopping the estimate)."""
    grid, t = setup.grid, setup.plan.tiff_tile
    device = next(model.parameters()).device
    with tempfile.TemporaryDirectory(prefix="iste-estimate-") as tmp, \
            WorkDir(Path(tmp) / "work", {}, keep_filled=fill) as wd:

        def run(positions: list) -> float:
            result = SlideResult(Path(tmp), setup.plan.out_size, [], None, 0.0, tiles=len(grid))
            t0 = time.perf_counter()
            run_tiles(slide, model, setup, mask, wd, positions, options, result,
                      Progress(0, desc="estimate", enabled=False))
            return time.perf_counter() - t0

        for kind in kinds:
            picks = _sample(by_kind[kind], grid, SAMPLE_TILES)
            warm, timed = (picks[:1], picks[1:]) if len(picks) > 1 else ([], picks)

            def measure() -> float:
                if warm:
                    run(warm)
                return run(timed)

            if kind == "model":
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                seconds, cal.peak_rss = peak_rss_during(measure)
                if device.type == "cuda":
                    cal.peak_device_memory = torch.cuda.max_memory_allocated(device)
            else:
                seconds = measure()
            mpx = sum(tile_area(grid, *p) for p in timed) / 1e6
            encoded = [wd.get(r, c) for p in timed
                       for r, c in tiff_tiles_of(*grid.out_ranges(*p), t)]
            t0 = time.perf_counter()
            decoded = [setup.codec.decode(data) for data in encoded]
            decode = (time.perf_counter() - t0) / len(encoded)
            work_bytes = float(np.mean([len(e) for e in encoded]))
            stored = _stored_bytes(setup, output, decoded, Path(tmp))
            cal.kinds[kind] = KindRate(seconds / mpx, work_bytes,
                                       1.0 if stored is None else stored / work_bytes,
                                       decode, len(timed), mpx,
                                       _bicubic_bytes(slide, setup, timed, fill),
                                       str(slide.path) if slide.path else "slide",
                                       _thumbnail_density(setup, _content(setup, timed,
                                                                          decoded)))
            if cal.reduce_seconds is None or kind == "model":
                cal.reduce_seconds, cal.reduce_bytes, reduced = _reduce(setup, decoded)
                cal.reduce_thumbnail_bytes_per_px = _thumbnail_density(setup, [reduced])


def _reduce(setup: JobSetup, decoded: list[np.ndarray]) -> tuple[float, float, np.ndarray]:
    """(seconds, encoded bytes) of one lower-level tile (a 2 x 2 mosaic of decoded tiles,
    halved and encoded): medians over mosaics of the sample's own tiles; and the first such
    tile, uint8 (t, t, 3)."""
    t = setup.plan.tiff_tile
    runs, sizes, tiles = [], [], []
    for k in range(min(3, len(decoded))):
        four = [decoded[(k + m) % len(decoded)] for m in range(4)]
        t0 = time.perf_counter()
        mosaic = np.empty((2 * t, 2 * t, 3), np.uint8)
        for m, child in enumerate(four):
            mosaic[(m // 2) * t:(m // 2 + 1) * t, (m % 2) * t:(m % 2 + 1) * t] = child
        tiles.append(halve(mosaic))
        sizes.append(len(setup.codec.encode(tiles[-1])))
        runs.append(time.perf_counter() - t0)
    return float(np.median(runs)), float(np.median(sizes)), tiles[0]


def _content(setup: JobSetup, positions: list, decoded: list[np.ndarray]) -> list[np.ndarray]:
    """The output's pixels in the ``decoded`` TIFF tiles of ``positions`` (in the order of
    :func:`tiff_tiles_of`), each cut to what the output holds (edge tiles are padded)."""
    grid, t = setup.grid, setup.plan.tiff_tile
    height, width = setup.plan.frame.out_hw
    tiles = [(r, c) for p in positions for r, c in tiff_tiles_of(*grid.out_ranges(*p), t)]
    return [rgb[:min(t, height - r * t), :min(t, width - c * t)]
            for (r, c), rgb in zip(tiles, decoded)]


def _thumbnail_density(setup: JobSetup, images: list[np.ndarray]) -> float:
    """Bytes per pixel of (up to 4 of) ``images`` as the svs layout's thumbnail stores them
    (one strip, no tile padding): the thumbnail of an output that fits in a tile or two is a
    page of its own size, where counting it as a whole lower-level tile (a dense 2 x 2 mosaic)
    made the estimate of a small region's output up to 1.9 times its size."""
    from iste.slides.writer import thumbnail_bytes

    spec = PyramidSpec(setup.plan.tiff_tile, setup.plan.tiff_tile, tile=setup.plan.tiff_tile,
                       codec=setup.codec.codec, quality=setup.codec.quality, layout="svs")
    images = images[:4]
    return (sum(thumbnail_bytes(spec, rgb) for rgb in images)
            / max(sum(rgb.shape[0] * rgb.shape[1] for rgb in images), 1))


def _stored_bytes(setup: JobSetup, output: Path, decoded: list[np.ndarray],
                  tmp: Path) -> float | None:
    """Mean bytes of the ``decoded`` work tiles as the output re-encodes them: DICOM's tile
    encoder; for a plain image, each tile written by the image writer in the output's format
    (a whole image compresses about alike); None for a TIFF pyramid, which stores the work
    tiles themselves."""
    if setup.kind == "pyramid":
        return None
    if setup.kind == "dicom":
        from iste.slides.dicom import tile_encoder

        encoder = tile_encoder(setup.codec.quality)
        return float(np.mean([len(encoder.encode(rgb)) for rgb in decoded]))
    from iste.data.imagewrite import write_image

    sizes = []
    for k, rgb in enumerate(decoded):
        path = tmp / f"tile{k}{output.suffix.lower()}"
        write_image(path, rgb, jpeg_quality=setup.codec.quality)  # the job's, as the output
        sizes.append(path.stat().st_size)
    return float(np.mean(sizes))


def _bicubic_bytes(slide, setup: JobSetup, positions: list, fill: bool) -> float:
    """Mean encoded bytes of the TIFF tiles of ``positions`` made bicubically from the stored
    pixels: ~30 times cheaper than the model, and their bytes follow a tile's detail (how
    much tissue, how much texture), so a wide sample of them scales the model tiles' bytes
    measured on a few to the whole slide. ``fill``: a tile that cannot be read is filled
    (:func:`~iste.slides.unreadable.fill_crop`), as the job under ``--unreadable-tiles fill``."""
    plan, device = setup.plan, torch.device("cpu")
    sizes = []
    for position in positions:
        tile = setup.grid.tile(*position)
        try:
            crop = read_crop(slide.as_stored, plan, tile)
        except UnreadableRegionError as err:
            if not fill:
                raise
            crop = fill_crop(slide.as_stored, plan, tile, err)[0]
        rgb = tensor_to_rgb(bicubic_tile(rgb_to_tensor(crop, device), plan.frame, tile))
        sizes += [len(setup.codec.encode(part))
                  for _, _, part in tiff_parts(tile, rgb, plan.tiff_tile)]
    return float(np.mean(sizes))


def _project(slide, output: Path, job: SlideJob, setup: JobSetup, mask, by_kind, cal,
             seconds_detect: float, resumed: Finished) -> SlideEstimate:
    grid, plan, t = setup.grid, setup.plan, setup.plan.tiff_tile
    mpx = {k: sum(tile_area(grid, *p) for p in by_kind[k]) / 1e6 for k in KINDS}
    tiff0 = {k: sum(1 for p in by_kind[k] for _ in tiff_tiles_of(*grid.out_ranges(*p), t))
             for k in KINDS}
    rates = {k: cal.kinds[k] for k in KINDS if by_kind[k]}
    left = set(pending_positions(grid, t, lambda r, c: (r, c) in resumed.tiles))
    seconds_tiles = sum(sum(tile_area(grid, *p) for p in by_kind[k] if p in left) / 1e6
                        * rates[k].seconds_per_mpx for k in rates)
    detail = {k: 1.0 for k in rates}  # this slide's bytes per tile against the calibration's
    if "model" in rates:
        wide = _sample(by_kind["model"], grid, BYTES_SAMPLE - 1)
        detail["model"] = (_bicubic_bytes(slide, setup, wide, job.fills)
                           / rates["model"].bicubic_bytes_per_tiff_tile)
    stored = {k: rates[k].bytes_per_tiff_tile * detail[k] for k in rates}  # work tiles
    bytes0 = sum(tiff0[k] * stored[k] for k in rates)
    output0 = sum(tiff0[k] * stored[k] * rates[k].output_bytes_ratio for k in rates)
    decode0 = sum(tiff0[k] * rates[k].decode_seconds for k in rates)
    mean_decode = decode0 / max(sum(tiff0.values()), 1)
    if setup.kind == "plain":
        levels = [plan.out_size]
        seconds_assembly, bytes_output, scratch = decode0, output0, 0.0
    else:
        spec = PyramidSpec(*plan.out_size, tile=t, codec=job.codec, quality=job.quality,
                           layout=job.layout)
        levels, halvings = spec.level_sizes, spec.halvings
        tiles = [rows * cols for rows, cols in map(spec.grid, range(len(halvings)))]
        # the lower levels' tiles; built, those of every halving below level 0 (a thin
        # output's past its levels too)
        lower, built = sum(tiles[1:len(levels)]), sum(tiles[1:])
        # each halving but the last is decoded once to build the next
        seconds_assembly = (decode0 + (built - tiles[-1]) * mean_decode
                            + built * (cal.reduce_seconds or 0.0))
        share = mpx["model"] / max(mpx["model"] + mpx["background"], 1e-12)
        glass = stored.get("background", 0.0)

        def lower_tile(ratio: dict[str, float]) -> float:
            """Bytes of a lower-level tile; ``ratio``: as stored against the work tiles."""
            return (share * (cal.reduce_bytes or 0.0) * detail.get("model", 1.0)
                    * ratio.get("model", 1.0) + (1 - share) * glass * ratio.get("background", 1.0))

        stored_lower = lower_tile({k: rates[k].output_bytes_ratio for k in rates})
        thumbnail = _thumbnail_bytes(halvings, rates, cal, share, detail) \
            if job.layout == "svs" else 0.0
        bytes_output = output0 + lower * stored_lower + thumbnail + _associated_bytes(slide)
        scratch = built * lower_tile({})
    # the work folder's tiles and the lower levels' scratch beside the output being written,
    # less what the finished tiles hold already
    bytes_disk = max(bytes0 + scratch + bytes_output - resumed.bytes, 0.0)
    return SlideEstimate(
        output, setup.kind, plan.out_size, levels, plan.mpp, float(job.scale), job.tile,
        len(by_kind["model"]), len(by_kind["background"]), mpx["model"], mpx["background"],
        None if mask is None else mask.fraction, seconds_detect, seconds_tiles,
        seconds_assembly, bytes_output, bytes_disk, *output_destination(output), cal,
        len(grid) - len(left), resumed, len(by_kind["blended"]))


def _thumbnail_bytes(halvings: list[tuple[int, int]], rates: dict[str, KindRate],
                     cal: Calibration, share: float, detail: dict[str, float]) -> float:
    """Bytes of the svs thumbnail: the last halving's pixels (w x h, one strip) at the
    thumbnail's measured bytes per pixel: of the model tiles (by the tissue's ``share`` of the
    area, scaled by this slide's ``detail``) as level 0 holds them for a one-level output,
    else as the lower levels pack them (:attr:`Calibration.reduce_thumbnail_bytes_per_px`);
    of the glass tiles for the rest."""
    w, h = halvings[-1]
    model = rates.get("model")
    if model is not None and len(halvings) > 1:
        dense = cal.reduce_thumbnail_bytes_per_px or model.thumbnail_bytes_per_px
    else:
        dense = model.thumbnail_bytes_per_px if model is not None else 0.0
    glass = rates["background"].thumbnail_bytes_per_px if "background" in rates else dense
    return w * h * (share * dense * detail.get("model", 1.0) + (1 - share) * glass)


def _associated_bytes(slide) -> float:
    """Bytes of the label and macro images the output carries over (stored LZW-compressed)."""
    import imagecodecs

    return float(sum(len(imagecodecs.lzw_encode(slide.read_associated(name).tobytes()))
                     for name in ASSOCIATED if name in slide.associated_images))


def output_destination(output: Path) -> tuple[int | None, bool]:
    """(free bytes, writable by this user) of the folder the output would be made in: the
    nearest folder that exists (the job creates the missing ones inside it)."""
    folder = output.resolve()
    if not folder.is_dir():
        folder = folder.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    writable = os.access(folder, os.W_OK | os.X_OK)
    try:
        return shutil.disk_usage(folder).free, writable
    except OSError:
        return None, writable
