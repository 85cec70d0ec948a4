"""``iste upscale`` for whole-slide images and cohorts (the plain-image path is in upscale.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from iste.api import load, pick_device

_WSI_ONLY_SUFFIXES = (".svs", ".ndpi", ".scn", ".mrxs", ".vms", ".vmu", ".bif", ".svslide",
                      ".qptiff")
_TIFF_SUFFIXES = (".tif", ".tiff")


def input_kind(path: Path, slide_options: list[str]) -> str:
    """"cohort" (folder or list file), "slide", or "image".

    A .tif/.tiff is a slide when it is tiled or pyramidal, or when slide options are given;
    an untiled single-level TIFF stays a plain image, read whole as before.
    """
    from iste.slides.cohort import LIST_SUFFIXES

    suffix = path.suffix.lower()
    if path.is_dir() or suffix in LIST_SUFFIXES:
        return "cohort"
    if suffix in _WSI_ONLY_SUFFIXES:
        return "slide"
    if suffix in _TIFF_SUFFIXES:
        return "slide" if slide_options or _is_tiled_tiff(path) else "image"
    if slide_options:
        raise ValueError(f"--{slide_options[0].replace('_', '-')} applies to whole-slide "
                         f"images; {path} is a plain image")
    return "image"


def _is_tiled_tiff(path: Path) -> bool:
    import tifffile

    if not path.is_file():
        return False
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            return bool(page.is_tiled) or len(tif.series[0].levels) > 1
    except Exception:  # unreadable: let the image reader report it
        return False


def _job(args, slide):
    from iste.slides.job import SlideJob, scale_for_target_mpp

    if (args.scale is None) == (args.target_mpp is None):
        raise ValueError("give exactly one of -s/--scale and --target-mpp")
    level = args.level or 0
    if args.target_mpp is not None:
        scale = scale_for_target_mpp(slide, level, args.target_mpp)
    else:
        scale = args.scale
    defaults = SlideJob(2.0)
    return SlideJob(
        float(scale), level=level, region=_parse_region(args.region),
        tile=defaults.tile if args.tile is None else args.tile,
        codec=args.codec or defaults.codec,
        quality=defaults.quality if args.quality is None else args.quality, layout=args.format or defaults.layout,
        tissue=defaults.tissue if args.tissue is None else args.tissue, halo=args.halo)


def _parse_region(text: str | None):
    if text is None:
        return None
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--region must be x,y,width,height (integers), got {text!r}") from None
    return (x, y, w, h)


def _upscale_one(args, path: Path, output: Path, get_model, options):
    """Open, validate (before the model is loaded), run; returns a SlideResult."""
    from iste.slides.job import make_plan
    from iste.slides.pipeline import model_fingerprint, upscale_slide
    from iste.slides.reader import open_slide
    from iste.slides.workdir import work_dir_for

    with open_slide(path, backend=args.backend or "tiffslide") as slide:
        job = _job(args, slide)
        make_plan(slide, job)
        model = get_model()
        desc = (f"iste super-resolution x{job.scale:g} of {path.name} level {job.level}"
                f"{'' if job.region is None else ' region ' + str(job.region)}"
                f" | model {model_fingerprint(model)}")
        try:
            return upscale_slide(slide, output, model, job, options=options, description=desc)
        except KeyboardInterrupt:
            print(f"iste: interrupted; finished tiles are kept in {work_dir_for(output)}: "
                  "rerun the same command to resume", file=sys.stderr)
            raise


def _report(result, path: Path) -> str:
    w, h = result.size
    mpp = "no mpp" if result.mpp is None else f"{result.mpp[0]:.4g} mpp"
    return (f"wrote {result.path} ({w} x {h} px, {len(result.levels)} level(s), {mpp}, "
            f"x{result.scale:g} from {path.name}; tiles: {result.tiles_model} model, "
            f"{result.tiles_background} background, {result.tiles_resumed} resumed; "
            f"{result.mpx_per_s:.3g} Mpx/s)")


def run_slide(args, path: Path) -> int:
    from iste.cli.upscale import query_options

    from iste.files import check_not_input

    output = Path(args.output)
    check_not_input(output, path)
    if output.is_dir():
        raise ValueError(f"output {output} is a directory; give a file name (.tiff)")
    result = _upscale_one(args, path, output, _loader(args, args.device),
                          query_options(args))
    print(_report(result, path))
    return 0


def run_cohort(args, spec: Path) -> int:
    """Each rank upscales its share of the slides; a failing slide is reported, not fatal."""
    from iste.cli.upscale import query_options
    from iste.slides.cohort import distributed, gather_counts, list_slides, output_paths, shard

    from iste.files import ensure_dir

    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"for a cohort, -o must be a directory; {out_dir} is a file")
    slides = list_slides(spec)
    outputs = output_paths(slides, out_dir, ".tiff")
    ensure_dir(out_dir, what="output folder")
    with distributed(pick_device(args.device) if args.device else None) as (rank, world, device):
        get_model = _loader(args, str(device))
        counts = {"written": 0, "skipped": 0, "failed": 0}
        for path, output in shard(list(zip(slides, outputs)), rank, world):
            if output.exists() and not args.overwrite:
                print(f"[rank {rank}] skip {path.name}: {output} exists", flush=True)
                counts["skipped"] += 1
                continue
            try:
                result = _upscale_one(args, path, output, get_model, query_options(args))
            except (ValueError, OSError) as err:
                print(f"[rank {rank}] iste: error: {path}: {err}", file=sys.stderr, flush=True)
                counts["failed"] += 1
                continue
            print(f"[rank {rank}] {_report(result, path)}", flush=True)
            counts["written"] += 1
        total = gather_counts(counts)
    if rank == 0:
        print(f"cohort: {len(slides)} slide(s) on {world} process(es): {total['written']} "
              f"written, {total['skipped']} skipped (exist), {total['failed']} failed")
    return 1 if total["failed"] else 0


def _loader(args, device: str | None):
    """A function returning the model, loaded on first call only (after --threads)."""
    cache: list = []
    from iste.cli.upscale import set_threads

    model_path = args.model
    set_threads(args.threads)

    def get():
        if not cache:
            cache.append(load(model_path, device=pick_device(device)))
        return cache[0]

    return get

