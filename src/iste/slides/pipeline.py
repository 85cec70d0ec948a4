"""Whole-slide super-resolution: read / infer / write tiles in a bounded pipeline, resumable.

Flow (:func:`upscale_slide`):

1. :func:`iste.slides.job.make_plan` fixes the source rectangle, output size and mpp;
2. the output is cut into inference tiles of ``job.tile`` output pixels
   (:class:`iste.engine.tiles.TileGrid`), each made of whole TIFF tiles;
3. a reader thread reads each tile's LR crop (with halo and whole key windows) into a
   bounded queue; the calling thread runs the model (when tissue detection is on: on tiles
   that reach tissue; on glass a bicubic interpolation in the same frame, and beside tissue
   the two blended per pixel, :class:`iste.slides.tissue.TissueBlend`); a writer thread cuts the
   result into TIFF tiles, encodes them and stores them in the work directory
   (:mod:`iste.slides.workdir`). Queues hold at most ``QUEUE_DEPTH`` tiles each;
4. an inference tile whose LR crop cannot be read (a damaged tile or frame of the input,
   :class:`~iste.slides.reader.UnreadableRegionError`) stops the job, or with
   ``job.unreadable`` "fill" has what cannot be read filled (:mod:`iste.slides.unreadable`:
   the next coarser level that can be read there, upsampled bicubically, else white); the
   filled regions are warned about once each and recorded in the output's provenance and
   :attr:`SlideResult.filled`;
5. when every tile exists the pyramid is assembled (:func:`iste.slides.writer.write_pyramid`)
   or, for a .png/.jpg output, the image; the file is renamed into place and the work
   directory removed.

A job interrupted at any point resumes from the tiles in the work directory when rerun with
the same parameters, model and input.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from iste.data.imagemeta import profile_problem
from iste.data.tensors import rgb_to_tensor, tensor_to_rgb
from iste.engine.render import QueryOptions
from iste.digest import sha256_file
from iste.paths import check_not_input, ensure_dir, occupied
from iste.temps import remove_stale_temps
from iste.progress import Progress
from iste.stopping import raise_if_stopped
from iste.provenance import Provenance, iste_version, model_fingerprint
from iste.engine.fixed import check_fixed_frame, check_fixed_scale, is_fixed_scale
from iste.engine.tiles import (Tile, TileGeometry, TileGrid, bicubic_tile, render_tile,
                               tile_geometry)
from iste.slides.job import SlideJob, SlidePlan, make_plan
from iste.slides.reader import SlideError, SlideReader, UnreadableRegionError
from iste.slides.tissue import (BLEND_RULE, NO_TISSUE, Coverage, TissueBlend, TissueMask,
                                blend_pixels, detect_tissue)
from iste.slides.unreadable import (fill_crop, filled_mask, filled_regions, warn_filled,
                                    with_filled)
from iste.slides.workdir import WorkDir, work_dir_for
from iste.slides.writer import ASSOCIATED, PyramidSpec, TileCodec

__all__ = ["SlideResult", "JobSetup", "upscale_slide", "prepare_job", "run_tiles",
           "tile_coverage", "tissue_blend", "tile_area", "tiff_tiles_of",
           "tiff_parts", "read_crop", "input_pixels", "tissue_rule", "job_manifest",
           "pending_positions", "tissue_mask",
           "PYRAMID_SUFFIXES", "PLAIN_SUFFIXES", "PLAIN_MAX_SIDE"]

QUEUE_DEPTH = 2
PYRAMID_SUFFIXES = (".tif", ".tiff")
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg")
PLAIN_MAX_SIDE = 8192


@dataclass
class SlideResult:
    """What was written and how fast."""

    path: Path
    size: tuple[int, int]  # (width, height) of the output
    levels: list[tuple[int, int]]
    mpp: tuple[float, float] | None
    scale: float
    tiles: int = 0
    tiles_model: int = 0
    tiles_blended: int = 0  # of the model tiles, those blended with bicubic at tissue's edge
    tiles_background: int = 0
    tiles_resumed: int = 0
    seconds_tiles: float = 0.0
    seconds_total: float = 0.0
    tissue_fraction: float | None = None
    px_run: int = 0  # output pixels of the tiles this run computed (not the resumed ones)
    tiles_filled: int = 0  # of this run's tiles, those filled for input that cannot be read
    filled: list[dict] = field(default_factory=list)  # unreadable.filled_regions

    @property
    def mpx_per_s(self) -> float:
        """Output megapixels per second of tile work (tiles done in this run only: by their
        pixels, as the progress lines count them; a grid's edge tiles are smaller)."""
        return self.px_run / 1e6 / self.seconds_tiles if self.seconds_tiles > 0 else 0.0


def _output_kind(path: Path, codec: str, layout: str) -> tuple[str, str]:
    suffix = path.suffix.lower()
    if layout == "dicom":
        if suffix in PYRAMID_SUFFIXES + PLAIN_SUFFIXES:
            raise ValueError(f"DICOM output is a folder of .dcm files; give a folder name, "
                             f"not {path.name}")
        return "dicom", codec
    if suffix in PYRAMID_SUFFIXES:
        return "pyramid", codec
    if suffix in PLAIN_SUFFIXES:
        return "plain", "deflate"  # lossless intermediate tiles for a plain image
    raise ValueError(f"cannot write {path}: slide output must end in "
                     f"{', '.join(PYRAMID_SUFFIXES + PLAIN_SUFFIXES)}")


def output_present(output: str | os.PathLike, *, dicom: bool) -> bool:
    """Whether a slide job's output is already there: a file or a link (one to nothing too:
    :func:`iste.paths.occupied`), or for DICOM output a folder holding anything (an empty
    folder is written into)."""
    output = Path(output)
    if dicom and output.is_dir():
        return any(output.iterdir())
    return occupied(output)


def upscale_slide(slide: SlideReader, output: str | os.PathLike, model: torch.nn.Module,
                  job: SlideJob, *, options: QueryOptions = QueryOptions(),
                  progress: bool | None = None,
                  provenance: Provenance | None = None, replace: bool = True) -> SlideResult:
    """Super-resolve a slide (or a region of it) into a pyramidal TIFF or a plain image.

    Args:
        slide: an open :class:`SlideReader`.
        output: .tif/.tiff (pyramidal BigTIFF in ``job.layout``), a folder (``job.layout``
            "dicom": DICOM WSI) or .png/.jpg (plain; both sides <= PLAIN_MAX_SIDE; with its
            resolution, ICC profile and a JSON provenance sidecar).
        model: a loaded head; runs on its own device.
        job: scale, level, region, tile, codec, layout, tissue, halo, and what is done
            with input that cannot be read (``unreadable``: stop, or fill and record).
        options: query options (chunk, STF keys, precision).
        progress: show a tqdm bar (None: only on a terminal).
        provenance: what made the output, recorded in it (see :mod:`iste.provenance`).
            The pixel size, objective power (source power x scale), ICC profile and the
            label / macro images of the source are carried over.
        replace: False: an output present once the work folder is locked is refused
            (FileExistsError), as the caller's own check before the model would have.

    Raises:
        SlideError / ValueError on bad input, before anything is written;
        UnreadableRegionError (``job.unreadable`` "stop") where the input cannot be read,
        its finished tiles kept for a rerun.
    """
    t_start = time.perf_counter()
    options = options.resolved(model)  # the work folder records the precision it ran
    output = Path(output)
    setup = prepare_job(slide, output, model, job, options)
    plan, grid = setup.plan, setup.grid
    ensure_dir(output.parent, what="output folder")
    mask = tissue_mask(slide, job) if job.tissue else None
    result = SlideResult(output, plan.out_size, [], plan.mpp, float(job.scale),
                         tiles=len(grid),
                         tissue_fraction=None if mask is None else mask.fraction)
    kind, codec_name = setup.kind, setup.codec.codec
    params = job_manifest(slide, model, job, setup, options)
    with WorkDir(work_dir_for(output), params, keep_filled=job.fills) as wd:
        pending = pending_positions(grid, plan.tiff_tile, wd.has)
        if not replace and output_present(output, dicom=job.layout == "dicom"):
            # checked again under the lock: another job may have finished it since the
            # caller looked (its lock released), and this one would replace it
            if len(pending) == len(grid):  # the folder is this call's own, empty: not kept
                wd.remove()
            raise FileExistsError(f"output {output} exists (another job finished it while "
                                  "this one started); pass --overwrite to replace it")
        remove_stale_temps(output, locked=True)  # a killed plain-image write's leftovers
        wd.warn_damaged()
        result.tiles_resumed = len(grid) - len(pending)
        total_px = plan.frame.out_hw[0] * plan.frame.out_hw[1]
        result.px_run = sum(tile_area(grid, i, j) for i, j in pending)
        done_px = total_px - result.px_run
        name = Path(slide.path).name if slide.path else "slide"
        t0 = time.perf_counter()
        with Progress(total_px, initial=done_px, unit="px", desc=f"x{result.scale:g} {name}",
                      show=progress) as bar:
            try:
                run_tiles(slide, model, setup, mask, wd, pending, options, result, bar)
            except UnreadableRegionError as err:
                raise _how_to_go_on(err, wd) from None
        result.seconds_tiles = time.perf_counter() - t0
        result.filled = filled_regions(wd.filled.values())
        if result.filled:
            warn_filled(result.filled, slide)
            provenance = with_filled(provenance, result.filled)
        if params["input"] is not None:  # the tiles must all be of the input the key names
            _check_input_unchanged(slide, params["input"], wd)
        spec = output_spec(slide, plan, job, codec_name, provenance)
        if kind == "pyramid":
            _assemble(output, spec, wd, progress)
            result.levels = spec.level_sizes
        elif kind == "dicom":
            from iste.slides.dicom import write_dicom

            write_dicom(output, spec, wd.get, provenance=provenance)
            result.levels = spec.level_sizes
        else:
            _write_plain(output, spec, setup.codec, wd, provenance)
            result.levels = [plan.out_size]
        try:
            wd.remove()
        except KeyboardInterrupt:  # the output is in place: its tiles are no longer needed,
            wd.remove()  # and a rerun refuses the output that exists (seconds: a deletion)
            raise
    result.seconds_total = time.perf_counter() - t_start
    return result


@dataclass(frozen=True)
class JobSetup:
    """A slide job checked against its slide and output, before anything is written.

    kind: "pyramid" (.tif/.tiff), "dicom" (a folder) or "plain" (.png/.jpg); codec: how the
    level-0 tiles are stored; grid: the inference tiles of ``job.tile`` output pixels.
    """

    kind: str
    codec: TileCodec
    plan: SlidePlan
    geom: TileGeometry
    grid: TileGrid


def prepare_job(slide: SlideReader, output: Path, model: torch.nn.Module, job: SlideJob,
                options: QueryOptions) -> JobSetup:
    """Validate ``job`` on ``slide`` for ``output`` and fix its geometry and tiles; writes
    nothing (:func:`upscale_slide` and :mod:`iste.slides.estimate` start here).

    Raises:
        SlideError / ValueError on bad input.
    """
    kind, codec_name = _output_kind(output, job.codec, job.layout)
    plan = make_plan(slide, job)
    if is_fixed_scale(model):  # its own scale only: refused before anything is written
        check_fixed_scale(model, job.scale)
        check_fixed_frame(model, plan.frame.lr_hw, plan.frame.out_hw)
    _check_level_readable(slide, job.level, model)
    w_out, h_out = plan.out_size
    if kind == "plain" and max(w_out, h_out) > PLAIN_MAX_SIDE:
        raise ValueError(f"output would be {w_out} x {h_out} px: too large for "
                         f"{output.suffix}; write a pyramidal .tiff instead")
    if slide.path is not None:
        check_not_input(output, slide.path)
    if output.is_dir() and kind != "dicom":
        raise ValueError(f"output {output} is a directory; give a file name")
    if kind == "dicom":
        from iste.slides.dicom import check_output_folder

        check_output_folder(output)
        if plan.mpp is None:  # refused now, not once every tile is made
            raise ValueError("DICOM WSI output needs the pixel size, and the source records "
                             "no microns per pixel: write a .tiff instead")
    if kind == "pyramid" and job.layout == "svs" and plan.mpp is not None \
            and not math.isclose(*plan.mpp, rel_tol=0.01):
        warnings.warn(f"the pixels are not square ({plan.mpp[0]:.4g} x {plan.mpp[1]:.4g} um): "
                      "the SVS layout records one pixel size (their mean), which readers "
                      "take for both axes; --format ome records each", stacklevel=2)
    geom = tile_geometry(model, options, halo=job.halo)
    return JobSetup(kind, TileCodec(codec_name, plan.tiff_tile, job.quality), plan, geom,
                    TileGrid(plan.frame, (job.tile, job.tile), geom, plan.context))


def _check_level_readable(slide: SlideReader, level: int, model: torch.nn.Module) -> None:
    """Refuse, before the work folder is made, a level narrower or lower than ``model``
    reads (ISTE's LFI: 2 x 2 px): its tiles' crops come from it, and the first one failed
    with the work folder left behind."""
    side = model.min_input_side
    w, h = slide.level_dimensions[level]
    if min(w, h) < side:
        raise ValueError(f"level {level} is {w} x {h} px, under the {side} x {side} px the model "
                         "reads: choose a finer --level")


def tissue_mask(slide: SlideReader, job: SlideJob) -> TissueMask | None:
    """:func:`detect_tissue` of ``slide`` for ``job``; where its thumbnail cannot be read (a
    damaged tile of the level it is made from), the job stops saying how to go on, or with
    ``job.unreadable`` "fill" runs the model on every tile (None: as ``--no-tissue``), with a
    warning. A mask without tissue is warned about: the output is bicubic throughout."""
    try:
        mask = detect_tissue(slide)
    except UnreadableRegionError as err:
        if not job.fills:
            raise _how_to_go_on(err, None) from None
        warnings.warn(f"tissue detection cannot read the slide's thumbnail ({err}): the model "
                      "runs on every tile, as with --no-tissue", stacklevel=3)
        return None
    if mask.empty:
        name = f"{Path(slide.path).name}: " if slide.path is not None else ""
        warnings.warn(f"{name}{NO_TISSUE}: every output pixel is bicubic; --no-tissue runs the "
                      "model on every tile", stacklevel=3)
    return mask


def _how_to_go_on(err: UnreadableRegionError, wd: WorkDir | None) -> UnreadableRegionError:
    """``err`` (a job that stops where its input cannot be read) saying how to go on."""
    from iste.slides.workdir import holds_tiles

    kept = f"; its finished tiles are kept in {wd.path}" \
        if wd is not None and holds_tiles(wd.path) else ""
    return UnreadableRegionError(
        f"{err}: rerun with --unreadable-tiles fill to finish the slide with what cannot be "
        f"read filled from a coarser level and recorded (docs/wsi.md){kept}",
        level=err.level, box=err.box, tiles=err.tiles)


def read_crop(reader: SlideReader, plan: SlidePlan, tile: Tile) -> np.ndarray:
    """The LR crop ``tile`` is rendered from: uint8 (len(lr_rows), len(lr_cols), 3) of
    ``plan.level``, read through ``reader`` (the slide, or its ``as_stored`` pixels)."""
    x, y, w, h = plan.crop_box(tile)
    return reader.read_level(plan.level, (x, y), (w, h))


def tiff_parts(tile: Tile, rgb: np.ndarray, t: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(row, col, pixels) of each TIFF tile (side t) of a rendered tile; rgb: uint8
    (*tile.out_hw, 3); parts at the output's right and bottom edges are smaller than t."""
    r0, c0 = tile.out_rows.start, tile.out_cols.start
    for r, c in tiff_tiles_of(tile.out_rows, tile.out_cols, t):
        yield r, c, rgb[r * t - r0:(r + 1) * t - r0, c * t - c0:(c + 1) * t - c0]


def tissue_blend(mask: TissueMask | None, slide: SlideReader,
                 plan: SlidePlan) -> TissueBlend | None:
    """The model's weight over the job's output (:class:`TissueBlend`), or None without a mask
    (the model everywhere)."""
    if mask is None:
        return None
    return TissueBlend(mask, plan.frame, plan.lr_box[:2], slide.level_downsamples[plan.level])


def tile_coverage(blend: TissueBlend | None, tile: Tile) -> Coverage:
    """How ``tile`` is made: "tissue" (the model; also every tile without a mask), "glass"
    (bicubic) or "edge" (both, blended by :meth:`TissueBlend.weights`)."""
    return "tissue" if blend is None else blend.coverage(tile.out_rows, tile.out_cols)


def output_spec(slide: SlideReader, plan: SlidePlan, job: SlideJob, codec: str,
                provenance: Provenance | None) -> PyramidSpec:
    """The output's layout and metadata: pixel size, objective power, ICC profile, the
    source's label and macro, provenance; a DICOM output, a DICOM source's study, patient
    and slide."""
    w_out, h_out = plan.out_size
    associated = tuple(_readable_associated(slide))
    props = () if provenance is None else tuple(  # None left out, as of the text and XMP
        (f"iste.{k}", v) for k, v in provenance.to_dict().items() if v is not None)
    return PyramidSpec(w_out, h_out, tile=plan.tiff_tile, mpp=plan.mpp, codec=codec,
                       quality=job.quality, layout=job.layout,
                       description="" if provenance is None else provenance.to_text(),
                       objective_power=plan.objective_power,
                       icc_profile=_output_profile(slide),
                       associated=associated, properties=props,
                       xmp=None if provenance is None else provenance.to_xmp(),
                       dicom_source=slide.dicom_metadata if job.layout == "dicom" else None,
                       dicom_references=(slide.dicom_instances(plan.level)
                                         if job.layout == "dicom" else ()),
                       origin_mm=_origin_mm(slide, plan))


def _output_profile(slide: SlideReader) -> bytes | None:
    """The source's ICC profile where it describes the RGB output: a profile of the colour
    space the slide stores (:attr:`~iste.slides.reader.SlideReader.stored_mode`) that is RGB
    and LittleCMS can apply (:func:`~iste.data.imagemeta.profile_problem`, the rule plain
    images follow). Else None with a warning that says why: an RGB profile of a gray scan, a
    gray or CMYK scan's profile does not describe the output's pixels, and a truncated or
    garbage one, copied, made the output's profile fail in its readers."""
    icc = slide.icc_profile
    problem = profile_problem(icc, slide.stored_mode, "RGB")
    if problem is not None:
        name = Path(slide.path).name if slide.path else "the slide"
        warnings.warn(f"{name}: its ICC profile ({len(icc)} bytes) is {problem}; the output "
                      "carries none", stacklevel=3)
        return None
    return icc or None


def _origin_mm(slide: SlideReader, plan: SlidePlan) -> tuple[float, float]:
    """(x, y) mm from the slide's level-0 top-left corner to the output's; (0, 0) where the
    slide records no pixel size."""
    if slide.mpp is None:
        return 0.0, 0.0
    d = slide.level_downsamples[plan.level]
    return (plan.lr_box[0] * d * slide.mpp[0] / 1000, plan.lr_box[1] * d * slide.mpp[1] / 1000)


def _readable_associated(slide: SlideReader):
    """(name, uint8 (h, w, 3)) of the source's label and macro that can be read; one that
    cannot (damaged, 16-bit) is left out with a warning, not the job's finished pixels."""
    for name in ASSOCIATED:
        if name in slide.associated_images:
            try:
                yield name, slide.read_associated(name)
            except (SlideError, ValueError, OSError) as exc:
                warnings.warn(f"the source's {name} image cannot be read ({exc}); the output "
                              "goes without it", stacklevel=3)


def job_manifest(slide: SlideReader, model: torch.nn.Module, job: SlideJob, setup: JobSetup,
                 options: QueryOptions) -> dict:
    """What determines a job's output pixels, recorded in its work folder: a rerun with the
    same manifest resumes from the finished tiles, any other discards them. ``options``
    resolved for the model (:meth:`QueryOptions.resolved`). The iste version too: another
    version's engine may render other pixels, which must not be mixed into one output; and
    the libraries that decode the input (:attr:`SlideReader.decoder`), as the viewer's disk
    cache names them."""
    plan, geom = setup.plan, setup.geom
    params = {
        "iste": iste_version(),
        "input": None if slide.path is None else input_identity(slide),
        "model": model_fingerprint(model), "job": _job_key(job), "codec": setup.codec.key,
        "kind": setup.kind,
        "lr_box": plan.lr_box, "out_hw": plan.frame.out_hw,
        "geometry": [geom.halo, geom.key_window, geom.align,
                     [[axis.start, axis.stop] for axis in plan.context or ()]],
        "options": options.pixel_key,
        "pixels": input_pixels(slide, job),
        # two decoders (another --backend, a library upgraded between runs) can put one
        # tile's pixels a level or more apart: tiles of both must not meet in one output
        "decoder": slide.decoder,
    }
    if job.tissue:  # a folder of an older rule is not kept
        params["tissue"] = tissue_rule(job)
    return params


def _job_key(job: SlideJob) -> dict:
    """The job's fields for the manifest, less its codec and quality: how the tiles are
    stored is keyed by the tile codec (:attr:`TileCodec.key`: a plain image's tiles are
    deflate whatever ``--codec`` says, and deflate ignores ``--quality``); less what is done
    with input that cannot be read: the model tiles of a job that stopped there are those a
    rerun that fills makes, and a filled tile is told apart by its note in the work folder
    (:class:`~iste.slides.workdir.WorkDir` ``keep_filled``)."""
    return {k: v for k, v in job.to_dict().items()
            if k not in ("codec", "quality", "unreadable")}


def input_identity(slide: SlideReader) -> dict:
    """What tells the input's bytes apart, for the manifest: the size, modification time and
    sha256 of the file the slide is read from, or of each of its files (a DICOM series, a
    MIRAX data folder: a folder's own times do not change when a file in it is rewritten in
    place). The digest because a file replaced in place by another of the same size with
    its old modification time kept (``cp``, then ``touch -r``; a restore from a backup) has
    nothing else that differs; the job's provenance digests the same files
    (:func:`iste.provenance.source_sha256`), and :func:`iste.digest.sha256_file` reads
    a file once per process while it is unchanged."""
    path = Path(slide.path).resolve()
    files = slide.files
    if files == (Path(slide.path),):
        st = path.stat()
        return {"path": str(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
                "sha256": sha256_file(path)}
    entries = []
    for p in files:
        st = p.stat()
        entries.append([p.name, st.st_size, st.st_mtime_ns, sha256_file(p)])
    return {"path": str(path), "files": entries}


def _check_input_unchanged(slide: SlideReader, recorded: dict, wd: WorkDir) -> None:
    """Before the finished tiles are assembled: the input is still the one the job's key
    recorded (:func:`input_identity`, ``recorded``); a file rewritten, replaced or removed
    while the job ran may have fed some tiles its old bytes and some its new ones, so the work
    folder is removed (a rerun starts afresh) and a SlideError names the file. Cheap on an
    unchanged file: a stat per file and the digest memo of :func:`iste.digest.sha256_file`
    (a file whose last change was under 3 s before the job started is read again)."""
    try:
        same = input_identity(slide) == recorded
    except OSError:
        same = False
    if not same:
        wd.remove()
        raise SlideError(f"{slide.path} changed while the job ran (its files' size, time or "
                         "sha256 differ from the start): nothing was written and its finished "
                         "tiles were discarded; rerun once it is no longer being written")


def input_pixels(slide: SlideReader, job: SlideJob) -> str:
    """What the job feeds the model and the bicubic path, for the provenance and the work
    folder's manifest: the reader's processing (or "as decoded"), and that the bicubic path
    (glass, and its share of the blend beside tissue) reads the pixels as stored
    (:func:`_read_loop`) when the tissue path is on. Only the
    processing of the level the job reads counts (a deflate level 0 of a slide whose other
    levels are JPEG is not deblocked)."""
    processing = slide.processing_of(job.level)
    pixels = processing or "as decoded"
    if job.tissue and processing:
        pixels += "; background (bicubic) tiles as decoded"
    return pixels


def tissue_rule(job: SlideJob) -> str | None:
    """How the job's output joins the model's pixels and bicubic ones, for the provenance and
    the work folder's manifest: :data:`BLEND_RULE` with tissue detection, None without."""
    return BLEND_RULE if job.tissue else None


def tiff_tiles_of(out_rows: range, out_cols: range, t: int):
    """(row, col) of the TIFF tiles (side t) covering an output rectangle."""
    for r in range(out_rows.start // t, -(-out_rows.stop // t)):
        for c in range(out_cols.start // t, -(-out_cols.stop // t)):
            yield r, c


def pending_positions(grid: TileGrid, t: int,
                      has: Callable[[int, int], bool]) -> list[tuple[int, int]]:
    """Grid positions (i, j), row-major, of the tiles with a TIFF tile (side ``t``) that
    ``has(row, col)`` says is still missing: the work a job (or its estimate) has left."""
    rows, cols = grid.shape
    todo = []
    for i in range(rows):
        for j in range(cols):
            if not all(has(r, c) for r, c in tiff_tiles_of(*grid.out_ranges(i, j), t)):
                todo.append((i, j))
    return todo


_DONE = object()


def run_tiles(slide, model, setup: JobSetup, mask: TissueMask | None, wd: WorkDir,
              pending: list[tuple[int, int]], options: QueryOptions, result: SlideResult,
              bar: Progress) -> None:
    """The bounded read -> infer -> write pipeline over the ``pending`` grid positions; the
    encoded TIFF tiles go to ``wd``, the counts to ``result``, the pixels to ``bar``. Where
    ``wd`` keeps filled tiles (the job fills), input that cannot be read is filled, a tile
    decoded from corrupt data (libjpeg's garbage blocks) too: the slide's decoding reader
    then refuses it (:attr:`~iste.slides.reader.SlideReader.corrupt_is_unreadable`) for the
    run's reads (tissue detection, before, read it as decoded)."""
    plan, grid = setup.plan, setup.grid
    decoder = slide.as_stored
    decoder.corrupt_is_unreadable = wd.keep_filled
    stop = threading.Event()
    errors: list[BaseException] = []
    q_in: queue.Queue = queue.Queue(QUEUE_DEPTH)
    q_out: queue.Queue = queue.Queue(QUEUE_DEPTH)
    threads = [
        threading.Thread(target=_guard, args=(_read_loop, stop, errors, slide, plan, mask,
                                               (grid.tile(i, j) for i, j in pending), q_in,
                                               wd.keep_filled),
                         daemon=True),
        threading.Thread(target=_guard, args=(_write_loop, stop, errors, wd, setup.codec, plan,
                                               q_out, bar, len(grid), result.tiles_resumed),
                         daemon=True),
    ]
    for th in threads:
        th.start()
    try:
        _infer_loop(model, plan, options, q_in, q_out, stop, result)
    except BaseException as exc:
        stop.set()
        errors.append(exc)
    finally:
        _put(q_out, _DONE, stop, force=True)
        for th in threads:
            th.join()
        decoder.corrupt_is_unreadable = False
    if errors:
        raise errors[0]


def tile_area(grid: TileGrid, i: int, j: int) -> int:
    """Output pixels of grid tile (i, j) (edge tiles are smaller)."""
    rows, cols = grid.out_ranges(i, j)
    return len(rows) * len(cols)


def _guard(fn, stop: threading.Event, errors: list, *args) -> None:
    try:
        fn(stop, *args)
    except BaseException as exc:  # handed to the main thread
        errors.append(exc)
        stop.set()


def _put(q: queue.Queue, item, stop: threading.Event, *, force: bool = False) -> bool:
    """Put unless stopped (``force``: also when stopped, dropping queued items if full)."""
    while True:
        if stop.is_set() and not force:
            return False
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            if force and stop.is_set():
                with q.mutex:
                    q.queue.clear()


def _get(q: queue.Queue, stop: threading.Event):
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                return _DONE


def _read_loop(stop, slide: SlideReader, plan: SlidePlan, mask: TissueMask | None,
               pending: Iterator[Tile], q_in: queue.Queue, fill: bool) -> None:
    """Each tile's LR crops onto ``q_in`` with the model's weights (:class:`_TileWork`);
    ``fill``: a crop that cannot be read is filled (:func:`fill_crop`, its note goes with it)
    rather than stopping the job."""
    blend = tissue_blend(mask, slide, plan)
    for tile in pending:
        coverage = tile_coverage(blend, tile)
        work = _TileWork(tile, coverage)
        if coverage == "edge":
            work.weights = blend.weights(tile.out_rows, tile.out_cols)
        # the bicubic path reads the stored pixels: processing them (deblocking) cost more
        # than the bicubic and changes nothing visible on glass; a blend reads both
        if coverage != "glass":
            work.model_crop, work.note = _read_or_fill(slide, plan, tile, fill)
        if coverage != "tissue":
            work.bicubic_crop, note = _read_or_fill(slide.as_stored, plan, tile, fill)
            work.note = work.note or note
        if not _put(q_in, work, stop):
            return
    _put(q_in, _DONE, stop)


@dataclass
class _TileWork:
    """A tile on its way to the model: its coverage (:func:`tile_coverage`), the LR crops
    uint8 (*tile.lr_hw, 3) it needs (the model's read through the slide, the bicubic's as
    stored), the model's weights float32 (*tile.out_hw) of an "edge" tile, the fill note."""

    tile: Tile
    coverage: Coverage
    model_crop: np.ndarray | None = None
    bicubic_crop: np.ndarray | None = None
    weights: np.ndarray | None = None
    note: dict | None = None


def _read_or_fill(reader: SlideReader, plan: SlidePlan, tile: Tile,
                  fill: bool) -> tuple[np.ndarray, dict | None]:
    """(crop, None), or with ``fill`` where it cannot be read (filled crop, note)."""
    try:
        return read_crop(reader, plan, tile), None
    except UnreadableRegionError as err:
        if not fill:
            raise
        return fill_crop(reader, plan, tile, err)


def _infer_loop(model, plan: SlidePlan, options: QueryOptions, q_in, q_out, stop,
                result: SlideResult) -> None:
    device = next(model.parameters()).device
    while True:
        raise_if_stopped()  # its progress is counted by the writer thread (iste.stopping)
        work = _get(q_in, stop)
        if work is _DONE:
            return
        tile, note = work.tile, work.note
        rgb = tensor_to_rgb(_render_work(model, plan, options, work, device))
        if note is not None:
            result.tiles_filled += 1
        elif work.coverage == "glass":
            result.tiles_background += 1
        else:
            result.tiles_model += 1
            result.tiles_blended += work.coverage == "edge"
        if not _put(q_out, (tile, rgb, note), stop):
            return


def _render_work(model, plan: SlidePlan, options: QueryOptions, work: _TileWork,
                 device: torch.device) -> torch.Tensor:
    """(1, 3, *tile.out_hw) in [0, 1]: the model's pixels, the bicubic's, or their blend
    ``w * model + (1 - w) * bicubic``; where a note says the input was filled, bicubic
    there (no detail is left to recover: the model would invent some)."""
    tile = work.tile
    sr = bicubic = None
    if work.model_crop is not None:
        lr = rgb_to_tensor(work.model_crop, device)
        filled = None if work.note is None else torch.from_numpy(
            filled_mask(plan, tile, work.note["holes"])).to(device)
        if filled is None or not bool(filled.all()):
            sr = render_tile(model, lr, plan.frame, tile, options=options)
        if filled is not None:
            bicubic_filled = bicubic_tile(lr, plan.frame, tile)
            sr = bicubic_filled if sr is None else torch.where(filled, bicubic_filled, sr)
    if work.bicubic_crop is not None:
        bicubic = bicubic_tile(rgb_to_tensor(work.bicubic_crop, device), plan.frame, tile)
    if sr is None or bicubic is None:
        return bicubic if sr is None else sr
    return blend_pixels(sr, bicubic, work.weights)


def _write_loop(stop, wd: WorkDir, codec: TileCodec, plan: SlidePlan, q_out: queue.Queue,
                bar, n_tiles: int, n_resumed: int) -> None:
    t = plan.tiff_tile
    done = n_resumed
    while True:
        item = _get(q_out, stop)
        if item is _DONE:
            return
        tile, rgb, note = item
        for r, c, part in tiff_parts(tile, rgb, t):
            wd.put(r, c, codec.encode(part), note)
        done += 1
        bar.set_postfix_str(f"tiles {done}/{n_tiles}")
        bar.update(rgb.shape[0] * rgb.shape[1])


def _assemble(output: Path, spec: PyramidSpec, wd: WorkDir, progress: bool | None) -> None:
    from iste.slides.writer import write_pyramid

    n = sum(-(-w // spec.tile) * -(-h // spec.tile) for w, h in spec.level_sizes)
    with Progress(n, unit="tile", desc=f"pyramid {output.name}", show=progress) as bar:
        write_pyramid(output, spec, wd.get, progress=bar.update, scratch=wd.scratch)


def _write_plain(output: Path, spec: PyramidSpec, codec: TileCodec, wd: WorkDir,
                 provenance: Provenance | None) -> None:
    from iste.data.imagewrite import write_image
    from iste.provenance import write_with_sidecar

    t = spec.tile
    out = np.empty((spec.height, spec.width, 3), np.uint8)
    rows, cols = spec.grid(0)
    for r in range(rows):
        for c in range(cols):
            tile = codec.decode(wd.get(r, c))
            hh, ww = min(t, spec.height - r * t), min(t, spec.width - c * t)
            out[r * t:r * t + hh, c * t:c * t + ww] = tile[:hh, :ww]
    image = {"mpp": spec.mpp, "icc_profile": spec.icc_profile,
             "description": spec.description or None, "jpeg_quality": spec.quality}
    if provenance is None:
        write_image(output, out, **image)
    else:
        write_with_sidecar(output, out, provenance, **image)
