"""``iste upscale INPUT -s SCALE -o OUTPUT``: super-resolve an image, a slide or a cohort.

INPUT is a plain image (PNG/JPEG/strip TIFF: read whole, written whole), a whole-slide image
(SVS, tiled/pyramidal TIFF, anything tiffslide or OpenSlide opens: processed tile by tile into
a pyramidal BigTIFF, resumable), or a cohort (a folder of slides or a text file listing them,
with -o a directory; sharded across processes under torchrun). See docs/wsi.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from iste.api import check_scale, load, pick_device, upscale as upscale_image
from iste.engine.frame import Frame
from iste.engine.render import QueryOptions
from iste.files import check_not_input

_SLIDE_ONLY = ("level", "region", "target_mpp", "format", "codec", "quality", "tile", "tissue",
               "halo", "backend", "threads", "overwrite")


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="super-resolve an image, a whole-slide image or a cohort",
                       description=__doc__.split("\n")[0].replace("``", ""))
    p.add_argument("input", help="PNG/JPEG/TIFF image; whole-slide image (.svs, tiled TIFF, "
                                 "...); a folder or .txt list of slides; or sample:NAME "
                                 "(sample:wsidicom-tile, sample:slideflow-tile, sample:cmu-svs)")
    p.add_argument("-s", "--scale", help="scale factor > 1, e.g. 2.5 (slides: <= 8)")
    p.add_argument("-o", "--output", required=True,
                   help="output image (.png, .tif, .jpg); for a slide a pyramidal .tiff (or "
                        ".png/.jpg if small); for a cohort a directory")
    add_model_options(p)
    add_slide_options(p)
    p.set_defaults(run=run)


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint (.safetensors); default: the shipped model")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--chunk", type=int, default=None,
                   help="queries per model call (default: 1024 on CPU, 65536 on GPU); a speed "
                        "and memory knob, the output does not change")
    p.add_argument("--stf-keys", type=int, default=QueryOptions.stf_keys,
                   help="ISTE: STF keys per 48x48 window (speed knob)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16 is faster on CPUs/GPUs with bfloat16 units")


def add_slide_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("whole-slide images")
    g.add_argument("--target-mpp", type=float, help="output microns per pixel (instead of -s; "
                   "the scale is the source level's mpp / target)")
    g.add_argument("--level", type=int, help="source pyramid level (default 0)")
    g.add_argument("--region", help="x,y,width,height in level-0 pixels (default: whole slide)")
    g.add_argument("--format", choices=["generic", "ome"], help="pyramidal TIFF layout: "
                   "generic tiled TIFF for OpenSlide/QuPath (default) or OME-TIFF (SubIFDs)")
    g.add_argument("--codec", choices=["jpeg", "deflate"], help="tile compression "
                   "(default jpeg)")
    g.add_argument("--quality", type=int, help="JPEG quality 1..100 (default 90)")
    g.add_argument("--tile", type=int, help="inference tile side in output pixels, a "
                   "multiple of 16 (default 512; memory grows with it)")
    g.add_argument("--tissue", action=argparse.BooleanOptionalAction, default=None,
                   help="run the model on tissue only, background bicubic (default: on)")
    g.add_argument("--halo", type=int, help="LR halo around tiles (default: the model's "
                   "measured receptive field)")
    g.add_argument("--backend", choices=["tiffslide", "openslide"],
                   help="slide reader (default tiffslide)")
    g.add_argument("--threads", type=int, help="torch CPU threads per process (default: "
                   "torch's choice; under torchrun 1 unless OMP_NUM_THREADS is set)")
    g.add_argument("--overwrite", action="store_true",
                   help="cohort: redo slides whose output already exists (default: skip)")


def set_threads(threads: int | None) -> None:
    """Apply ``--threads`` (torch's intra-op CPU threads) when given; it must be >= 1."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def query_options(args) -> QueryOptions:
    return QueryOptions(chunk=args.chunk, stf_keys=args.stf_keys, precision=args.precision)


def resolve_input(spec: str) -> Path:
    if spec.startswith("sample:"):
        from iste.data.samples import sample_path

        return sample_path(spec[len("sample:"):])
    return Path(spec)


def check_output_path(path: Path) -> None:
    """Fail before any work if the output cannot be written; create its directory."""
    from iste.data.images import SUPPORTED_SUFFIXES

    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise ValueError(f"cannot write {path}: unsupported suffix {path.suffix!r} "
                         f"(supported: {', '.join(SUPPORTED_SUFFIXES)})")
    from iste.files import ensure_dir

    if path.is_dir():
        raise ValueError(f"output {path} is a directory; give a file name")
    ensure_dir(path.parent, what="output folder")


def run(args) -> int:
    from iste.cli import upscale_slides

    path = resolve_input(args.input)
    kind = upscale_slides.input_kind(path, slide_options_given(args))
    if kind == "cohort":
        return upscale_slides.run_cohort(args, path)
    if kind == "slide":
        return upscale_slides.run_slide(args, path)
    return run_image(args, path)


def slide_options_given(args) -> list[str]:
    return [name for name in _SLIDE_ONLY if getattr(args, name, None) not in (None, False)]


def run_image(args, path: Path) -> int:
    """A plain image, read and written whole (unchanged behaviour)."""
    from iste.data.images import check_write_size, image_size, read_image, write_image
    from iste.engine.budget import check_output_pixels

    if args.scale is None:
        raise ValueError("give the scale with -s (--target-mpp is for whole-slide images)")
    scale = check_scale(args.scale)
    options = query_options(args)
    out_path = Path(args.output)
    check_not_input(out_path, path)
    check_output_path(out_path)
    frame = Frame.for_scale(image_size(path), scale)
    check_output_pixels(frame.out_hw)
    check_write_size(out_path, frame.out_hw)
    image = read_image(path)
    model = load(args.model, device=pick_device(args.device))
    total = frame.out_hw[0] * frame.out_hw[1]
    from tqdm import tqdm

    with tqdm(total=total, unit="px", unit_scale=True, desc=f"x{scale:g}", file=sys.stderr,
              disable=None) as bar:
        sr = upscale_image(image, scale, model, options=options, progress=bar.update)
    write_image(out_path, sr)
    h, w = image.shape[:2]
    print(f"wrote {out_path} ({sr.shape[1]} x {sr.shape[0]} px, x{scale:g} from {w} x {h})")
    return 0
