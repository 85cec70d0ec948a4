"""``iste upscale INPUT -s SCALE -o OUTPUT``: super-resolve an image, a slide or a folder.

INPUT is a plain image (PNG/JPEG/strip TIFF: read whole, written whole), a whole-slide image
(SVS, tiled/pyramidal TIFF, DICOM WSI file or folder, anything tiffslide, OpenSlide or wsidicom
opens: processed tile by tile into a pyramidal BigTIFF or DICOM WSI, resumable), or a folder /
text list of slides and images (with -o a directory; sharded across processes under torchrun).
An existing output is never replaced without --overwrite. See docs/wsi.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from iste.cli.options import (add_model_options, describe, load_model_for, query_options,
                              resolve_input)
from iste.cli.runlog import record, say

_SLIDE_ONLY = ("level", "region", "target_mpp", "format", "codec", "quality", "tile", "tissue",
               "halo", "backend")


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="super-resolve an image, a whole-slide image or a folder",
                       description=describe(__doc__))
    p.add_argument("input", help="PNG/JPEG/TIFF image; whole-slide image (.svs, tiled TIFF, "
                                 ".dcm, DICOM folder ...); a folder or .txt list of slides and "
                                 "images; or sample:NAME (sample:wsidicom-tile, "
                                 "sample:slideflow-tile, sample:cmu-svs)")
    p.add_argument("-s", "--scale", help="scale factor > 1, e.g. 2.5 (slides: <= 8)")
    p.add_argument("-o", "--output", required=True,
                   help="output image (.png, .tif, .jpg); for a slide a pyramidal .tiff, a "
                        "DICOM folder (--format dicom) or .png/.jpg if small; for a folder or "
                        "list a directory")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (default: an existing output is an error; "
                        "in a folder run it is skipped)")
    add_model_options(p)
    add_slide_options(p)
    p.set_defaults(run=run)


def add_slide_options(p: argparse.ArgumentParser) -> None:
    from iste.slides.formats import BACKENDS
    from iste.slides.writer import LAYOUTS

    g = p.add_argument_group("whole-slide images")
    g.add_argument("--target-mpp", type=float, help="output microns per pixel (instead of -s; "
                   "the scale is the source level's mpp / target)")
    g.add_argument("--level", type=int, help="source pyramid level (default 0)")
    g.add_argument("--region", help="x,y,width,height in level-0 pixels (default: whole slide)")
    g.add_argument("--format", choices=LAYOUTS, help="output layout: svs (default: Aperio-style "
                   "pyramidal TIFF that OpenSlide, tiffslide, Bio-Formats/QuPath and libvips "
                   "read alike), generic (tiled TIFF, reduced IFDs), ome (OME-TIFF, SubIFDs), "
                   "dicom (DICOM WSI folder)")
    g.add_argument("--codec", choices=["jpeg", "deflate"], help="tile compression "
                   "(default jpeg)")
    g.add_argument("--quality", type=int, help="JPEG quality 1..100 (default 90)")
    g.add_argument("--tile", type=int, help="inference tile side in output pixels, a "
                   "multiple of 16 (default 512; memory grows with it)")
    g.add_argument("--tissue", action=argparse.BooleanOptionalAction, default=None,
                   help="run the model on tissue only, background bicubic (default: on)")
    g.add_argument("--halo", type=int, help="LR halo around tiles (default: the model's "
                   "measured receptive field)")
    g.add_argument("--backend", choices=BACKENDS,
                   help="slide reader (default auto: wsidicom for DICOM, OpenSlide for "
                        "MIRAX/VMS, tiffslide otherwise)")


def check_output_path(path: Path, *, overwrite: bool) -> None:
    """Fail before any work if the output cannot (or may not) be written; create its
    directory."""
    from iste.data.images import SUPPORTED_SUFFIXES

    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise ValueError(f"cannot write {path}: unsupported suffix {path.suffix!r} "
                         f"(supported: {', '.join(SUPPORTED_SUFFIXES)})")
    from iste.files import ensure_dir

    if path.is_dir():
        raise ValueError(f"output {path} is a directory; give a file name")
    refuse_existing(path, overwrite=overwrite)
    ensure_dir(path.parent, what="output folder")


def refuse_existing(path: Path, *, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"output {path} exists; pass --overwrite to replace it")


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
    return [name for name in _SLIDE_ONLY if getattr(args, name) not in (None, False)]


def run_image(args, path: Path, output: Path | None = None, get_model=None) -> int:
    """A plain image, read and written whole; its resolution (scaled), ICC profile and a
    provenance sidecar (``OUTPUT.json``) go with it."""
    from iste.engine.fixed import check_fixed_scale
    from iste.engine.frame import Frame, check_scale

    if args.scale is None:
        raise ValueError("give the scale with -s (--target-mpp is for whole-slide images)")
    scale = check_scale(args.scale)
    from iste.data.images import check_write_size, image_size
    from iste.engine.budget import check_output_pixels
    from iste.files import check_not_input

    out_path = Path(args.output) if output is None else output
    check_not_input(out_path, path)
    check_output_path(out_path, overwrite=args.overwrite)
    frame = Frame.for_scale(image_size(path), scale)  # from the header: bounds before decoding
    check_output_pixels(frame.out_hw)
    check_write_size(out_path, frame.out_hw)
    image, meta = _read_with_meta(path)
    model = load_model_for(args) if get_model is None else get_model()
    check_fixed_scale(model, scale)
    sr = _upscale_with_progress(image, frame, model, args, path.name)
    _write_with_provenance(out_path, sr, meta, frame, model, args, path)
    h, w = image.shape[:2]
    say(f"wrote {out_path} ({sr.shape[1]} x {sr.shape[0]} px, x{scale:g} from {w} x {h})")
    record(outputs=[str(out_path)], scale=scale)
    return 0


def _read_with_meta(path: Path):
    from iste.data.images import read_image, read_image_meta

    return read_image(path), read_image_meta(path)


def _upscale_with_progress(image, frame, model, args, name: str):
    from iste.engine.image import upscale_to
    from iste.progress import Progress

    total = frame.out_hw[0] * frame.out_hw[1]
    with Progress(total, desc=f"x{frame.scale[0]:.3g} {name}") as bar:
        return upscale_to(image, frame.out_hw, model, options=query_options(args),
                          progress=bar.update)


def _write_with_provenance(out_path: Path, sr, meta, frame, model, args, source: Path) -> None:
    from iste.data.images import write_image
    from iste.provenance import Provenance, write_sidecar

    prov = Provenance.for_run(model, model_name=_model_name(args), scale=frame.scale[0],
                              options=query_options(args), source=source)
    mpp = None if meta.mpp is None else (meta.mpp[0] / frame.scale[1],
                                         meta.mpp[1] / frame.scale[0])
    write_image(out_path, sr, mpp=mpp, icc_profile=meta.icc_profile,
                description=prov.to_text())
    write_sidecar(out_path, prov)


def _model_name(args) -> str | None:
    return None if args.model is None else Path(args.model).name
