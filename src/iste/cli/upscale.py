"""``iste upscale INPUT -s SCALE -o OUTPUT``: super-resolve an image, a slide or a folder.

INPUT is a plain image (PNG/JPEG/strip TIFF: read whole, written whole), a whole-slide image
(SVS, tiled/pyramidal TIFF, DICOM WSI file or folder, anything tiffslide, OpenSlide or wsidicom
opens: processed tile by tile into a pyramidal BigTIFF or DICOM WSI, resumable), or a folder /
text list of slides and images (with -o a directory; sharded across processes under torchrun).
An existing output is never replaced without --overwrite. With --estimate a slide job (or a
folder's) is planned and a few of its tiles timed, a plain image's a few of its crops: the
projected time, output size, disk and memory are printed and nothing is written. See
docs/wsi.md.

This module holds the parser and picks the path; the paths are in upscale_image.py (plain
images) and upscale_slides.py (slides, folders and lists).
"""

from __future__ import annotations

import functools
from pathlib import Path

from iste.cli import upscale_image, upscale_slides
from iste.cli.options import (add_deblock_option, add_model_options, check_file_name, describe,
                              resolve_input)
from iste.cli.runlog import Written
from iste.data.samples import SAMPLES
from iste.paths import folders_made_undone


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="super-resolve an image, a whole-slide image or a folder",
                       description=describe(__doc__))
    p.add_argument("input", help="PNG/JPEG/TIFF image; whole-slide image (.svs, tiled TIFF, "
                                 ".dcm, DICOM folder ...); a folder or .txt list of slides and "
                                 "images; or sample:NAME ("
                                 + ", ".join(f"sample:{name}" for name in SAMPLES) + ")")
    p.add_argument("-s", "--scale", help="scale factor > 1 and <= 8, e.g. 2.5")
    p.add_argument("-o", "--output", required=True,
                   help="output image (.png, .tif, .jpg); for a slide a pyramidal .tiff, a "
                        "DICOM folder (--format dicom) or .png/.jpg if small; for a folder or "
                        "list a directory")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (default: an existing output is an error; "
                        "in a folder run it is skipped)")
    p.add_argument("--estimate", action="store_true",
                   help="plan the job, time a few of its tiles (a plain image's crops) on "
                        "this machine and print the projected time, output size, disk and "
                        "memory; writes nothing (docs/wsi.md)")
    add_model_options(p)
    add_deblock_option(p)
    upscale_slides.add_slide_options(p)
    p.set_defaults(run=run, written_paths=written_paths)


def written_paths(args) -> list[Written]:
    """What a run writes beyond -o itself, which no --log-file or --json-summary may name
    (:func:`iste.cli.runlog.run_logging`): in a folder run's output folder the names an item's
    output, its provenance sidecar or its work folder may take, also of items added later
    (any image or TIFF suffix, names beginning with a dot for temporaries, with
    ``--format dicom`` a name without a suffix); a plain image's provenance sidecar (an
    image's output, or a slide's written as .png/.jpg); a DICOM output's folder, whole. Found
    from the names alone, before anything is read or fetched (a ``sample:`` input is a
    single one)."""
    from iste.provenance import sidecar_path
    from iste.slides.pipeline import PLAIN_SUFFIXES

    output = Path(args.output)
    kind = None
    if not args.input.startswith("sample:"):
        try:
            kind = upscale_slides.input_kind(Path(args.input), [])
        except ValueError:  # the command says why
            return []
    if kind == "cohort":
        return [Written(output, f"{output}, the output folder of this folder run",
                        claims=functools.partial(_item_name, dicom=args.format == "dicom"))]
    if args.format == "dicom":
        return [Written(output, f"{output}, the DICOM output folder", claims=lambda name: True)]
    if kind == "image" or output.suffix.lower() in PLAIN_SUFFIXES:
        return [Written(sidecar_path(output), f"the provenance sidecar of the output {output}")]
    return []


def _item_name(name: str, *, dicom: bool) -> bool:
    """Whether a folder run may write ``name`` in its output folder: an item's output
    (STEM.tiff, STEM.png ...; with ``dicom`` a folder STEM), its sidecar (STEM.png.json),
    its work folder (STEM.tiff.iste-work) or a temporary (a dot first)."""
    from iste.data.imageformats import SUPPORTED_SUFFIXES
    from iste.slides.workdir import SUFFIX as WORK_SUFFIX

    lower = name.lower()
    for extra in (".json", WORK_SUFFIX):
        lower = lower.removesuffix(extra)
    suffix = Path(lower).suffix
    return name.startswith(".") or suffix in SUPPORTED_SUFFIXES or dicom and not suffix


def run(args) -> int:
    path = resolve_input(args.input)
    kind = upscale_slides.input_kind(path, upscale_slides.slide_options_given(args))
    if kind != "cohort" and not (kind == "slide" and args.format == "dicom"):
        check_file_name(args.output, "-o")  # one file, not a folder of outputs
    if args.estimate:
        return upscale_slides.run_estimate(args, path, kind)
    with folders_made_undone(args.output):  # a failed job leaves no empty folders
        if kind == "cohort":
            return upscale_slides.run_cohort(args, path)
        if kind == "slide":
            return upscale_slides.run_slide(args, path)
        return upscale_image.run_image(args, path)
