"""``iste upscale`` for whole-slide images, folders and lists: their options, the slide path
and the cohort path (plain images go through upscale_image.py, also inside a cohort)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from iste.cli.options import load_model_for, query_options
from iste.cli.runlog import error, print_line, record, say
from iste.cli.upscale_image import (bytes_text, duration_text, image_estimate,
                                    image_input_pixels, image_provenance, model_name,
                                    output_taken, refuse_existing, run_image)
from iste.paths import link_note, occupied
from iste.runtime import pick_device
from iste.text import decimal


def add_slide_options(p: argparse.ArgumentParser) -> None:
    """The options only a whole-slide input accepts (their dests are kept on the parsed
    arguments as ``slide_only``, for :func:`slide_options_given`)."""
    from iste.slides.formats import AUTO_BACKEND, BACKENDS
    from iste.slides.job import UNREADABLE_MODES
    from iste.slides.writer import LAYOUTS

    g = p.add_argument_group("whole-slide images")
    dests = []

    def option(*flags, **kwargs) -> None:
        dests.append(g.add_argument(*flags, **kwargs).dest)

    option("--target-mpp", type=float, help="output microns per pixel (instead of -s; "
           "the scale is the source level's mpp / target)")
    option("--level", type=int, help="source pyramid level (default 0)")
    option("--region", help="x,y,width,height in level-0 pixels (default: whole slide)")
    option("--format", choices=LAYOUTS, help="output layout: svs (default: Aperio-style "
           "pyramidal TIFF that OpenSlide, tiffslide, Bio-Formats/QuPath and libvips "
           "read alike), generic (tiled TIFF, reduced IFDs), ome (OME-TIFF, SubIFDs), "
           "dicom (DICOM WSI folder)")
    option("--codec", choices=["jpeg", "deflate"], help="tile compression "
           "(default jpeg)")
    option("--quality", type=int, help="JPEG quality 1..100 (default 90)")
    option("--tile", type=int, help="inference tile side in output pixels, a "
           "multiple of 16 (default 512 x ceil(scale / 2): 512 up to x2, 1024 up to x4; "
           "memory grows with tile / scale); TIFF tiles: its largest divisor up to 512 that "
           "is a multiple of 16 and at most twice the output's longer side")
    option("--tissue", action=argparse.BooleanOptionalAction, default=None,
           help="run the model on tissue only: glass bicubic, blended into the model's "
                "pixels over 64 output px beside tissue (default: on)")
    option("--halo", type=int, help="LR halo around tiles (default: the model's "
           "measured receptive field)")
    option("--backend", choices=BACKENDS,
           help=f"slide reader (default auto: {AUTO_BACKEND})")
    option("--unreadable-tiles", choices=UNREADABLE_MODES,
           help="input that cannot be read (a damaged JPEG tile or DICOM frame): stop "
                "(default: the job stops, naming it; its finished tiles are kept) or fill "
                "(the output pixels whose input cannot be read are upsampled from the next "
                "coarser level that can be read there, else white; warned about and recorded "
                "in the output's provenance and --json-summary)")
    p.set_defaults(slide_only=tuple(dests))


def slide_options_given(args) -> list[str]:
    """The slide-only options (:func:`add_slide_options`) given on the command line."""
    return [name for name in args.slide_only if getattr(args, name) not in (None, False)]


def input_kind(path: Path, slide_options: list[str]) -> str:
    """"cohort" (a folder of slides / images, or a list file), "slide", or "image".

    A folder holding DICOM files is one DICOM slide. A .tif/.tiff is a slide when it is tiled
    or pyramidal, or when slide options are given; an untiled single-level TIFF stays a plain
    image, read whole.
    """
    from iste.slides.cohort import LIST_SUFFIXES
    from iste.slides.formats import is_slide

    if path.is_dir():
        return "slide" if is_slide(path) else "cohort"
    if path.suffix.lower() in LIST_SUFFIXES:
        return "cohort"
    if is_slide(path, tiff_as_slide=bool(slide_options)):
        return "slide"
    if slide_options:
        raise ValueError(f"--{slide_options[0].replace('_', '-')} applies to whole-slide "
                         f"images; {path} is a plain image")
    return "image"


def _job(args, slide):
    """The job of ``args`` for ``slide`` (its mpp gives the scale of --target-mpp)."""
    from iste.slides.job import scale_for_target_mpp

    check_job_options(args)
    if args.target_mpp is not None:
        return _job_at(args, scale_for_target_mpp(slide, args.level or 0, args.target_mpp))
    return _job_at(args, args.scale)


def check_job_options(args) -> None:
    """The options every slide of a run shares, checked once before any slide is opened (a
    folder's mistake is one error, not one per slide).

    Raises:
        ValueError: neither or both of -s and --target-mpp, or an option out of range.
    """
    if (args.scale is None) == (args.target_mpp is None):
        raise ValueError("give exactly one of -s/--scale and --target-mpp")
    _job_at(args, 2.0 if args.scale is None else args.scale)


def _job_at(args, scale: float):
    from iste.engine.frame import check_scale
    from iste.slides.job import SlideJob

    defaults = SlideJob(2.0)
    return SlideJob(
        check_scale(scale), level=args.level or 0, region=_parse_region(args.region),
        tile=args.tile,
        codec=args.codec or defaults.codec,
        quality=defaults.quality if args.quality is None else args.quality,
        layout=args.format or defaults.layout,
        tissue=defaults.tissue if args.tissue is None else args.tissue, halo=args.halo,
        unreadable=args.unreadable_tiles or defaults.unreadable)


def _parse_region(text: str | None):
    if text is None:
        return None
    try:
        x, y, w, h = (decimal(v, whole=True) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--region must be x,y,width,height (integers), got {text!r}") from None
    return (x, y, w, h)


@contextlib.contextmanager
def _opened_job(args, path: Path):
    """(slide as the job reads it, job, its plan), checked against each other before the
    model loads."""
    from iste.slides.deblocked import deblocked
    from iste.slides.formats import open_slide
    from iste.slides.job import make_plan

    with open_slide(path, backend=args.backend) as opened:
        slide = deblocked(opened, args.deblock)
        job = _job(args, slide)
        yield slide, job, make_plan(slide, job)


def _upscale_one(args, path: Path, output: Path, get_model, options):
    """Open, validate (before the model is loaded), run; returns a SlideResult."""
    from iste.refusals import DiskFullError, FileTooLargeError
    from iste.slides.pipeline import upscale_slide
    from iste.slides.workdir import holds_tiles, work_dir_for

    with _opened_job(args, path) as (slide, job, plan):
        model = get_model()
        prov = _slide_provenance(args, model, path, slide, job, plan, options)
        try:
            return upscale_slide(slide, output, model, job, options=options, provenance=prov,
                                 replace=args.overwrite)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM / SIGHUP (cli.main.Terminated), which
            # main then names
            if holds_tiles(work_dir_for(output)):
                print_line(f"iste: finished tiles are kept in {work_dir_for(output)}: rerun "
                           "the same command to resume", sys.stderr)
            raise
        except (DiskFullError, FileTooLargeError) as err:
            if not holds_tiles(work_dir_for(output)):
                raise
            how = ("free space and rerun the same command to resume"
                   if isinstance(err, DiskFullError) else
                   "the same command resumes them (another -o makes them again)")
            raise type(err)(f"{err}; the finished tiles are kept in {work_dir_for(output)}: "
                            f"{how}") from None


def _slide_provenance(args, model, path: Path, slide, job, plan, options, *,
                      hash_source: bool = True):
    """What a slide job's output records (:class:`iste.provenance.Provenance`)."""
    from iste.models.checkpoint import is_untrained
    from iste.provenance import Provenance
    from iste.slides.pipeline import input_pixels, tissue_rule

    covered = plan.region0  # the request snapped to the level's pixels
    return Provenance.for_run(
        model, model_name=model_name(args), scale=job.scale, options=options, source=path,
        hash_source=hash_source, untrained=is_untrained(model), level=job.level,
        region=None if job.region is None else list(covered),
        **({} if job.region in (None, covered) else {"region_requested": list(job.region)}),
        input_pixels=input_pixels(slide, job), tissue=tissue_rule(job))


def existing_problem(args, item: Path, output: Path, slide: bool, model) -> str | None:
    """Why the output already at ``output`` is not what this run would write for ``item``,
    or None when it is (a folder run skips it). Not trusted for being there: a slide output
    must open whole (a TIFF's tiles, a DICOM folder's frames within their files) and every
    output must record this run's source, scale, model, level and region
    (:data:`iste.provenance.RUN_FIELDS`): a rerun with another -s or --model skipped the
    outputs of the first run as if they were its own; a slide output must hold the levels this
    run writes (a DICOM folder that lost a level's file opens without it); and the source's
    bytes where it changed since (:func:`iste.provenance.source_problem`: an input replaced
    under its name)."""
    from iste.data.imagemeta import read_image_meta
    from iste.provenance import differences, image_problem, recorded, source_problem
    from iste.slides.formats import open_slide
    from iste.engine.tiles import TILE_STEP
    from iste.slides.levels import pyramid_sizes_to_fit
    from iste.slides.reader import SlideError

    levels = None
    try:
        if slide:
            with open_slide(output) as made:
                levels = [tuple(size) for size in made.level_dimensions]
        found = recorded(output)
        damaged = None if slide else image_problem(output, found)
    except (SlideError, ValueError, OSError) as err:
        return f"it is not a complete iste output ({err})"
    if damaged is not None:
        return damaged
    if slide:
        with _opened_job(args, item) as (opened, job, plan):
            expected = _slide_provenance(args, model, item, opened, job, plan,
                                         query_options(args), hash_source=False)
            # as this run's tile or another's would lay it out (--tile is not compared)
            wanted = [pyramid_sizes_to_fit(*plan.out_size, fit=side)
                      for side in range(16, TILE_STEP + 1, 16)]
    else:
        expected = image_provenance(args, model, item, args.scale,
                                    image_input_pixels(item, args.deblock),
                                    meta=read_image_meta(item), hash_source=False)
    wrong = differences(found, expected)
    if not wrong and slide and levels not in wanted:  # a DICOM folder lost a level's file
        return (f"it is not a complete iste output (its levels are {_sizes(levels)}, not a "
                f"pyramid of {_sizes([plan.out_size])} as iste writes it)")
    if not wrong:  # the run's request is the output's: was it made from the bytes there now?
        changed = source_problem(found, item, output)
        wrong = [] if changed is None else [changed]
    return f"it was made with {', '.join(wrong)}" if wrong else None


def _sizes(levels: list[tuple[int, int]]) -> str:
    """``"1000 x 800, 500 x 400"``: level sizes (width, height) in words."""
    return ", ".join(f"{w} x {h}" for w, h in levels)


OVERWRITE_MARKS = ".iste-overwrite"
"""A folder in a folder run's output folder while --overwrite runs of it are unfinished
(stopped, or with failures): one JSON file per process, naming the outputs it wrote. The
rerun keeps those (once verified: :func:`existing_problem`) instead of making them again;
the run that finishes without failures removes the folder."""


class OverwriteMarks:
    """The outputs that unfinished --overwrite runs into ``out_dir`` wrote (:attr:`done`,
    their names), read when the run starts; :meth:`add` records one this process wrote."""

    def __init__(self, out_dir: Path):
        from uuid import uuid4

        self.folder = out_dir / OVERWRITE_MARKS
        self.done: set[str] = set()
        for mark in sorted(self.folder.glob("*.json")):
            try:
                names = json.loads(mark.read_text(encoding="utf-8"))["done"]
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a mark that does not read as one: its outputs are made again
            self.done.update(n for n in names if isinstance(n, str))
        self._mine: list[str] = []
        self._path = self.folder / f"{uuid4().hex}.json"

    def add(self, output: Path) -> None:
        from iste.eval.files import write_json_atomic

        self._mine.append(output.name)
        write_json_atomic(self._path, {"done": self._mine})

    def finished(self) -> None:
        """Every item is done: a later --overwrite run redoes them all."""
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


def _report(result, path: Path) -> str:
    w, h = result.size
    mpp = "no mpp" if result.mpp is None else f"{result.mpp[0]:.4g} mpp"
    filled = f"{result.tiles_filled} filled, " if result.tiles_filled else ""
    regions = (f"; {len(result.filled)} region(s) filled for input that cannot be read"
               if result.filled else "")
    return (f"wrote {result.path} ({w} x {h} px, {len(result.levels)} level(s), {mpp}, "
            f"x{result.scale:g} from {path.name}; tiles: {result.tiles_model} model"
            f"{_blended(result.tiles_blended, ' (', ')')}, "
            f"{result.tiles_background} background, {filled}{result.tiles_resumed} resumed; "
            f"{result.mpx_per_s:.3g} Mpx/s{regions})")


def _blended(tiles: int, before: str, after: str) -> str:
    """How many model tiles are blended with bicubic at tissue's edge, between ``before`` and
    ``after``; "" for none."""
    return f"{before}{tiles} blended with bicubic{after}" if tiles else ""


def _summary(result, path: Path) -> dict:
    return {"input": str(path), "output": str(result.path), "size": list(result.size),
            "levels": [list(v) for v in result.levels], "scale": result.scale,
            "mpp": None if result.mpp is None else list(result.mpp),
            "tiles": result.tiles, "tiles_model": result.tiles_model,
            "tiles_background": result.tiles_background, "tiles_blended": result.tiles_blended,
            "tiles_resumed": result.tiles_resumed,
            "tiles_filled": result.tiles_filled, "filled": result.filled,
            "seconds": round(result.seconds_total, 3)}


def run_slide(args, path: Path) -> int:
    from iste.paths import check_name_fits, check_not_input, check_writable, ensure_dir
    from iste.slides.workdir import remove_leftovers, work_dir_for

    output = Path(args.output)
    check_not_input(output, path)
    # the names first: a name too long was a bare 'File name too long: OUT' (Path.is_dir)
    check_name_fits(output, f"cannot write {output}")
    check_name_fits(work_dir_for(output), f"the work folder of {output.name} (its tiles until "
                    "the slide is complete)")
    if output.is_dir() and args.format != "dicom":
        raise ValueError(f"output {output} is a directory; give a file name (.tiff)")
    remove_leftovers(output)  # of a job killed as it finished: also beside an output refused
    if output_exists(args, output):
        refuse_existing(output, overwrite=args.overwrite)  # replaced only once complete
    ensure_dir(output.parent, what="output folder")  # written to now, not after the model
    check_writable(output)
    result = _upscale_one(args, path, output, _loader(args, args.device), query_options(args))
    say(_report(result, path))
    record(outputs=[_summary(result, path)])
    return 0


def output_exists(args, output: Path) -> bool:
    """Whether a slide's output is already there (:func:`iste.slides.pipeline.output_present`).
    A single slide's is then refused without --overwrite, a cohort's skipped; the job checks
    again once it holds the output's work folder."""
    from iste.slides.pipeline import output_present

    return output_present(output, dicom=args.format == "dicom")


def _cohort_items(args, spec: Path) -> list[tuple[Path, Path, bool]]:
    """(item, its output, whether it is a slide) for each item of a folder or list, sorted;
    checked before anything runs (-o a directory, no two outputs alike). What an item is
    depends on the item alone (an untiled TIFF is a plain image, as on its own without slide
    options): the slide options apply to the cohort's slides and change no item's kind."""
    from iste.data.imageformats import SUPPORTED_SUFFIXES
    from iste.slides.cohort import list_slides, output_paths
    from iste.slides.formats import is_slide

    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"for a folder or list, -o must be a directory; {out_dir} is a file")
    if not occupied(out_dir) and out_dir.suffix.lower() in SUPPORTED_SUFFIXES:
        # 'iste upscale FOLDER -o x.png' made a folder named x.png, the outputs in it
        raise ValueError(f"for a folder or list, -o is a folder; {out_dir} is named as an "
                         f"image ({out_dir.suffix}): give a folder name (a folder of that name "
                         "that exists is taken)")
    items = list_slides(spec, images=True)
    slides = [is_slide(p, tiff_as_slide=False) for p in items]
    outputs = output_paths(items, out_dir, [_output_suffix(args, p, k)
                                            for p, k in zip(items, slides)])
    return list(zip(items, outputs, slides))


def _check_cohort(args, todo: list[tuple[Path, Path, bool]]) -> None:
    """What a folder run refuses up front beside its listing, before the model loads (and
    so does its --estimate): the slides' options, the scale the plain images need, names
    too long (:func:`_check_names_fit`)."""
    if any(slide for _, _, slide in todo):
        check_job_options(args)
    if args.scale is None and not all(slide for _, _, slide in todo):
        raise ValueError("give the scale with -s: the folder's plain images take one "
                         "(--target-mpp applies to slides)")
    _check_names_fit(todo)


def _check_names_fit(todo: list[tuple[Path, Path, bool]]) -> None:
    """Before the model loads, as for a single slide: every item's longest name fits its
    folder (:func:`iste.paths.check_name_fits`): a slide's work folder (its output's name
    and ``.iste-work``), an image's provenance sidecar (its name and ``.json``); an item
    found too long only once its turn came failed after the model had loaded."""
    from iste.paths import check_name_fits
    from iste.provenance import sidecar_path
    from iste.slides.workdir import work_dir_for

    for item, output, slide in todo:
        if slide:
            check_name_fits(work_dir_for(output), f"{item}: the work folder of {output.name} "
                            "(its tiles until the slide is complete)")
        else:
            check_name_fits(sidecar_path(output), f"{item}: the provenance sidecar of "
                            f"{output.name}")


def _output_suffix(args, item: Path, is_slide: bool) -> str:
    if not is_slide:
        return item.suffix.lower()
    return "" if args.format == "dicom" else ".tiff"


def run_cohort(args, spec: Path) -> int:
    """Each rank upscales its share of the slides and images; an existing output is skipped
    (unless --overwrite), a failing item is reported, not fatal (exit code 1 at the end). A
    full disk stops the rank's run: every item after it would be computed and then fail."""
    from iste.data.images import ImageReadError
    from iste.paths import ensure_dir
    from iste.refusals import DiskFullError
    from iste.runtime import out_of_memory_message
    from iste.slides.cohort import distributed, from_rank_0, gather_results, shard
    from iste.slides.workdir import WorkDirBusyError, wait_while_busy

    with distributed(pick_device(args.device) if args.device else None) as (rank, world, device):
        # listed by rank 0 for all: a slide added to the folder between two ranks' listings
        # would shard the items differently (one written twice, another by no rank)
        todo = from_rank_0(lambda: _cohort_items(args, spec))
        _check_cohort(args, todo)
        get_model = _loader(args, str(device) if device is not None else None)
        model = get_model()  # a missing or bad model fails before anything is written
        if args.scale is not None:  # a fixed-scale model at another scale: once, not per item
            from iste.engine.fixed import check_fixed_scale
            from iste.engine.frame import check_scale

            check_fixed_scale(model, check_scale(args.scale))
        ensure_dir(Path(args.output), what="output folder")
        _check_folder_writable(args, todo)
        marks = OverwriteMarks(Path(args.output)) if args.overwrite else None
        counts = {"written": 0, "skipped": 0, "failed": 0}
        done: list[dict] = []
        failures: list[dict] = []
        # the record holds these lists as they grow: a run stopped by a signal records what
        # it wrote and what failed before it stopped (it recorded only 'interrupted')
        record(outputs=done, counts=counts, failures=failures)
        mine = shard(todo, rank, world)
        tag = f"[rank {rank}] " if world > 1 else ""
        busy: list[tuple[Path, Path, bool]] = []  # slides another process is writing
        for n, item in enumerate(mine):
            if item in busy:  # its turn again, once the other process's job has ended
                say(f"{tag}{item[0].name}: waiting for the other process writing "
                    f"{item[1].name}")
                wait_while_busy(item[1])
            try:
                counts[_cohort_item(args, item, get_model, model, tag, done, marks)] += 1
            except WorkDirBusyError:
                if item in busy:  # taken again meanwhile: wait for that job too
                    mine.append(item)
                    continue
                say(f"{tag}{item[0].name}: another process is writing "
                    f"{item[1].name}; checked again once the others are done")
                busy.append(item)
                mine.append(item)
            except (ValueError, OSError, ImageReadError, RuntimeError, MemoryError) as err:
                path = item[0]
                message = str(err)
                if isinstance(err, (RuntimeError, MemoryError)):  # memory ran out: this item
                    message = out_of_memory_message(err)  # fails (a plain image is read
                    if message is None:  # whole; the next may fit), any other error stops
                        raise
                error(f"{path}: {message}", prefix=tag)
                failures.append({"input": str(path), "error": message})
                counts["failed"] += 1
                if isinstance(err, DiskFullError):
                    left = [p for p, _, _ in dict.fromkeys(mine[n + 1:])]
                    stopping = f"stopping with {len(left)} item(s) not started; " if left else ""
                    error(f"the disk is full: {stopping}free space and rerun the same command "
                          "(written outputs are skipped)", prefix=tag)
                    counts["failed"] += len(left)  # and named, as the record's failures are
                    failures.extend({"input": str(p), "error": "not started: the disk is "
                                     "full"} for p in left)
                    break
        # every rank's records: each rank writes the same --json-summary
        total, done, failures = gather_results(counts, done, failures)
    if rank == 0:
        say(f"cohort: {len(todo)} item(s) on {world} process(es): {total['written']} "
            f"written, {total['skipped']} skipped (exist), {total['failed']} failed")
        if marks is not None and not total["failed"]:
            marks.finished()
    record(outputs=done, counts=total, failures=failures)
    return 1 if total["failed"] else 0


def _check_folder_writable(args, todo: list[tuple[Path, Path, bool]]) -> None:
    """One error before any item where the output folder takes no file (read-only, not
    permitted, full) and some item has an output still to write (or --overwrite redoes
    them): each item failed on its own ('cannot create the work folder ...: read-only file
    system' once per slide). A folder whose outputs are all there is left to the skips.

    Raises:
        FileSystemError: naming the folder, why, and how many outputs it would take."""
    from iste.paths import check_writable
    from iste.refusals import FileSystemError

    to_write = [output for _, output, slide in todo if args.overwrite
                or not (output_exists(args, output) if slide else occupied(output))]
    if not to_write:
        return
    try:
        check_writable(to_write[0], replaced=False)
    except FileSystemError as err:
        raise type(err)(f"{err}; the output folder {args.output} takes none of the "
                        f"{len(to_write)} output(s) still to write (nothing was done)") from None


def _cohort_item(args, item: tuple[Path, Path, bool], get_model, model, tag: str,
                 done: list[dict], marks: OverwriteMarks | None) -> str:
    """Write one item of a folder run, or skip its verified output (:func:`existing_problem`;
    with --overwrite, only one an unfinished --overwrite run wrote: ``marks``); returns
    "written" or "skipped", raises for a failure (WorkDirBusyError: another process is
    writing it). ``tag`` begins its lines: the process's rank under torchrun, else empty."""
    from iste.slides.workdir import WorkDirRemovedError, remove_leftovers

    path, output, slide = item
    if slide:
        remove_leftovers(output)  # of a job killed as it finished: also beside one skipped
    why = skipped_because(args, item, model, marks)
    if why is not None:
        say(f"{tag}skip {path.name}: {output} exists" + (f" ({why})" if why else ""))
        return "skipped"
    try:
        if slide:
            result = _upscale_one(args, path, output, get_model, query_options(args))
        else:  # a sidecar without its image (a killed write's) is replaced; an image another
            # run wrote since the check is not: it was, and that run's output silently lost
            run_image(_for_item(args, overwrite=True), path, output, get_model,
                      new_only=not args.overwrite)
    except (FileExistsError, WorkDirRemovedError):
        # another run into the folder finished it since the check (a slide's job was not yet
        # locked), or while this one ran, on a file system without locks (it removed the work
        # folder under this job): skipped as if it had been there, once verified
        why = skipped_because(args, item, model, marks)
        if why is None:
            raise
        say(f"{tag}skip {path.name}: {output} exists (another process finished it)")
        return "skipped"
    if slide:
        say(f"{tag}{_report(result, path)}")
        done.append(_summary(result, path))
    else:
        done.append({"input": str(path), "output": str(output)})
    if marks is not None:
        marks.add(output)
    return "written"


def skipped_because(args, item: tuple[Path, Path, bool], model,
                    marks: OverwriteMarks | None) -> str | None:
    """What a folder run does with an item whose output may be there already: None, make it
    (there is none, or --overwrite redoes it); a phrase, skip it ("" when there is nothing
    to add: its output is verified as this run's, :func:`existing_problem`; with --overwrite,
    one that an unfinished --overwrite run wrote, named in ``marks``). ValueError: it fails
    (an output there that is not this run's, without --overwrite)."""
    path, output, slide = item
    if args.overwrite and (marks is None or output.name not in marks.done):
        return None
    if not (output_exists(args, output) if slide else occupied(output)):
        return None
    problem = existing_problem(args, path, output, slide, model)
    if problem is None:
        return "written by an --overwrite run of it that stopped" if args.overwrite else ""
    if not args.overwrite:
        raise ValueError(f"{output} exists, but {problem}: --overwrite replaces it")
    return None


def _for_item(args, **changes):
    return argparse.Namespace(**{**vars(args), **changes})


def _loader(args, device: str | None):
    """A function returning the model, loaded on first call only."""
    cache: list = []

    def get():
        if not cache:
            cache.append(load_model_for(args, device))
        return cache[0]

    return get


def run_estimate(args, path: Path, kind: str) -> int:
    """``--estimate``: the projection of each slide's job (a folder's slides share their
    rates, measured once per scale and tile) and of each plain image's
    (:func:`iste.cli.upscale_image.image_estimate`)."""
    from iste.data.images import ImageReadError
    from iste.distributed import launched_world
    from iste.slides.estimate import Calibrations

    if not path.exists():
        raise ValueError(f"cannot open {path}: no such file or folder{link_note(path)}")
    if launched_world() > 1:
        raise ValueError("--estimate runs in one process: start it without torchrun")
    if kind == "cohort":
        todo = _cohort_items(args, path)
        _check_cohort(args, todo)  # the run's refusals: it would make none of its estimates
    else:
        todo = [(path, Path(args.output), kind == "slide")]
        _check_names_fit(todo)  # as the run refuses them
    get_model, options = _loader(args, args.device), query_options(args)
    if kind == "cohort":
        get_model()  # a missing or bad model is one error, not one per item
    calibrations, done, failures = Calibrations(), [], []
    skipped = 0
    marks = OverwriteMarks(Path(args.output)) if args.overwrite and kind == "cohort" else None
    for item, output, slide in todo:
        exists = not args.overwrite and (output_exists(args, output) if slide
                                         else output_taken(output))
        try:  # the run's rules for outputs there: what it would fail, the estimate fails
            why = skipped_because(args, (item, output, slide), get_model(), marks) \
                if kind == "cohort" else None
            if why is not None:
                why = why or "the run skips it; --overwrite redoes it"
                say(f"skip {item.name}: {output} exists ({why})")
                skipped += 1
                continue
            if slide:
                est = _estimate_one(args, item, output, get_model, options, calibrations)
                lines, entry = _estimate_report(est, item, exists), est.to_dict()
            else:
                lines, entry = image_estimate(args, item, output, get_model, exists=exists)
        except (ValueError, OSError, ImageReadError) as err:
            if kind != "cohort":
                raise
            error(f"{item}: {err}")
            failures.append({"input": str(item), "error": str(err)})
            continue
        for line in lines:
            say(line)
        done.append({"input": str(item), **entry})
    if kind == "cohort":
        _estimate_total(done, skipped, failures)
    record(estimates=done, failures=failures)
    return 1 if failures else 0


def _estimate_total(done: list[dict], skipped: int, failures: list[dict]) -> None:
    """The last line of a folder's estimate: its items summed."""
    seconds = sum(d["seconds"] for d in done)
    peak = max((d["bytes_disk"] for d in done), default=0)
    images = sum(d["kind"] == "image" for d in done)
    slides = len(done) - images
    what = " and ".join([f"{slides} slide(s)"] * bool(slides or not images)
                        + [f"{images} plain image(s)"] * bool(images))
    per_day = (f" (~{86400 * len(done) / seconds:.3g} such {'items' if images else 'slides'}"
               " a day)") if seconds else ""
    say(f"folder: {what} estimated, {skipped} skipped (exist), "
        f"{len(failures)} failed: {duration_text(seconds)} in all on this machine{per_day}, "
        f"{bytes_text(sum(d['bytes_output'] for d in done))} of output; one job at a time "
        f"needs at most {bytes_text(peak)} free while it finishes")


def _estimate_one(args, path: Path, output: Path, get_model, options, calibrations):
    from iste.slides.estimate import estimate_slide

    with _opened_job(args, path) as (slide, job, _):
        return estimate_slide(slide, output, get_model(), job, options=options,
                              calibrations=calibrations)


def _estimate_report(est, path: Path, exists: bool) -> list[str]:
    """A few lines a user plans with (see :class:`iste.slides.estimate.SlideEstimate`);
    ``exists``: the output is there and the job would refuse it without --overwrite."""
    from iste.slides.workdir import work_dir_for

    cal = est.calibration
    tiles = {"model": est.tiles_model, "background": est.tiles_background}
    used = {k: cal.kinds[k] for k, n in tiles.items() if n}  # the kinds this slide has
    rates = ", ".join(f"{k} {r.mpx_per_s:.3g} Mpx/s" for k, r in used.items())
    w, h = est.size
    mpp = "no mpp" if est.mpp is None else f"{est.mpp[0]:.4g} mpp"
    area = est.mpx_model + est.mpx_background
    share = f"{100 * est.mpx_model / area:.0f} %" if area else "0 %"
    lines = [
        f"estimate: x{est.scale:g} of {path.name} -> {est.output} ({w} x {h} px, "
        f"{len(est.levels)} level(s), {mpp})",
        f"  tiles of {est.tile} px: {est.tiles_model} model ({share} of the area"
        f"{_blended(est.tiles_blended, '; ', '')}), "
        f"{est.tiles_background} background",
        f"  time on this machine: {duration_text(est.seconds)} (tiles "
        f"{duration_text(est.seconds_tiles)} at {rates}; tissue detection "
        f"{duration_text(est.seconds_detect)}; {'pyramid' if est.kind != 'plain' else 'image'} "
        f"{duration_text(est.seconds_assembly)})",
        f"  output ~{bytes_text(est.bytes_output)}; disk while it finishes "
        f"~{bytes_text(est.bytes_disk)}"
        + ("" if est.disk_free is None else f" (free now: {bytes_text(est.disk_free)})"),
    ]
    memory = []
    if cal.peak_rss is not None:
        memory.append(f"peak {bytes_text(cal.peak_rss)} resident as its tiles ran (the whole "
                      "process)")
    if cal.peak_device_memory is not None:
        memory.append(f"{bytes_text(cal.peak_device_memory)} on the GPU")
    if memory:
        lines.append(f"  memory: {', '.join(memory)}")
    sources = {Path(r.measured_on).name for r in used.values()}
    if len(sources) == 1:
        timed = " and ".join(f"{r.tiles} {k}" for k, r in used.items()) + \
            f" tile(s) of {sources.pop()}"
    else:
        timed = " and ".join(f"{r.tiles} {k} tile(s) of {Path(r.measured_on).name}"
                             for k, r in used.items())
    lines.append(f"  measured on {timed}; nothing written")
    if est.disk_free is not None and est.disk_free < est.bytes_disk:
        lines.append(f"  warning: the output's file system has {bytes_text(est.disk_free)} "
                     f"free, the job needs ~{bytes_text(est.bytes_disk)} as it finishes")
    if not est.writable:
        lines.append(f"  warning: this user cannot write where {est.output} goes: the job "
                     "would fail there")
    folder = work_dir_for(est.output)
    if exists:
        lines.append(f"  note: {est.output} exists: the job needs --overwrite")
    if est.tiles_resumed:
        lines.append(f"  resumes: {est.tiles_resumed} of {est.tiles} tiles are finished in "
                     f"{folder} (verified); the time counts the {est.tiles - est.tiles_resumed}"
                     " left")
    if est.resumed.stale:
        lines.append(f"  note: {folder} holds tiles of another job (other scale, model, input "
                     "or options): the run discards them")
    if est.resumed.busy:
        lines.append(f"  note: another process is working on {est.output} now; the run "
                     "refuses it until that process ends (its tiles so far are counted)")
    return lines
