"""``iste upscale`` for a plain image (PNG/JPEG/strip TIFF): read whole, written whole, with its
resolution (scaled), ICC profile and a provenance sidecar; also for each plain image of a
folder run (upscale_slides.py), which shares :func:`refuse_existing`."""

from __future__ import annotations

from pathlib import Path

from iste.cli.options import load_model_for, query_options
from iste.cli.runlog import record, say


def check_output_name(path: Path) -> None:
    """ValueError where no image output can be written at ``path`` whatever the options: it
    or its provenance sidecar is a folder, or its suffix is no image format's. Reads names
    only, writes nothing (also what ``--estimate`` refuses)."""
    from iste.data.imageformats import SUPPORTED_SUFFIXES
    from iste.paths import check_name_fits
    from iste.provenance import sidecar_path

    # the sidecar's name, 5 bytes longer, first: an output of 251 to 255 bytes was refused
    # as 'File name too long: OUT.json', a file the user had not named
    check_name_fits(path, f"cannot write {path}")
    check_name_fits(sidecar_path(path), f"cannot write {path}: its provenance sidecar "
                    f"{path.name}.json")
    for target in (path, sidecar_path(path)):  # before the suffix: '-o out/' said
        if target.is_dir():  # "unsupported suffix ''"
            raise ValueError(f"output {target} is a directory; give a file name")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise ValueError(f"cannot write {path}: unsupported suffix {path.suffix!r} "
                         f"(supported: {', '.join(SUPPORTED_SUFFIXES)})")


def output_taken(path: Path) -> bool:
    """Whether an image output or its provenance sidecar is there (the run refuses it
    without --overwrite)."""
    from iste.paths import occupied
    from iste.provenance import sidecar_path

    return occupied(path) or occupied(sidecar_path(path))


def check_output_path(path: Path, *, overwrite: bool) -> None:
    """Fail before any work if the output or its provenance sidecar cannot (or may not) be
    written; create its directory."""
    from iste.paths import check_writable, ensure_dir, occupied
    from iste.provenance import sidecar_path

    sidecar = sidecar_path(path)
    check_output_name(path)
    refuse_existing(path, overwrite=overwrite)
    if occupied(sidecar) and not overwrite:
        raise FileExistsError(f"{sidecar} exists (the provenance of an output {path.name}); "
                              "pass --overwrite to replace it")
    ensure_dir(path.parent, what="output folder")
    for target in (path, sidecar):
        check_writable(target)


def refuse_existing(path: Path, *, overwrite: bool) -> None:
    from iste.paths import occupied

    if occupied(path) and not overwrite:
        raise FileExistsError(f"output {path} exists; pass --overwrite to replace it")


def run_image(args, path: Path, output: Path | None = None, get_model=None, *,
              new_only: bool = False) -> int:
    """A plain image, read and written whole; its resolution (scaled), ICC profile and a
    provenance sidecar (``OUTPUT.json``) go with it. A gray image's output is gray, an alpha
    channel is carried (resized), an EXIF orientation applied (docs/wsi.md). ``new_only``
    (a folder run's item, which its check found missing; with ``args.overwrite`` set): an
    output image another process wrote since is kept (FileExistsError), a sidecar left
    without its image is replaced."""
    from iste.data.imagemeta import upright
    from iste.engine.fixed import check_fixed_scale
    from iste.engine.image import in_source_kind
    from iste.paths import check_not_input

    out_path = Path(args.output) if output is None else output
    scale = _scale_of(args)
    check_not_input(out_path, path)
    check_output_path(out_path, overwrite=args.overwrite)
    frame, (image, alpha, meta, processing) = read_job(args, path, out_path, scale)
    model = load_model_for(args) if get_model is None else get_model()
    check_fixed_scale(model, scale)
    # turned after SR, as viewers show the source: the frame, deblocking and tiles stay in
    # the stored order
    sr = _upscale_with_progress(image, frame, model, args, path.name)
    sr = upright(in_source_kind(sr, meta.gray, alpha), meta.orientation)
    _write_with_provenance(out_path, sr, meta, frame, model, args, path, processing, scale,
                           new_only=new_only)
    h, w = upright(image, meta.orientation).shape[:2]
    turned = "" if upright_of(meta) is None else f", turned upright: EXIF orientation " \
        f"{meta.orientation}"
    say(f"wrote {out_path} ({sr.shape[1]} x {sr.shape[0]} px, x{scale:g} from {w} x {h}"
        f"{turned})")
    record(outputs=[str(out_path)], scale=scale)
    return 0


def _scale_of(args) -> float:
    from iste.engine.frame import check_scale

    if args.scale is None:
        raise ValueError("give the scale with -s (--target-mpp is for whole-slide images)")
    return check_scale(args.scale)


def read_job(args, path: Path, out_path: Path, scale: float):
    """The frame of an image's job and its input as the job runs it: (frame, (uint8 RGB (h,
    w, 3) deblocked where ``args.deblock`` says, alpha (h, w) or None, the source's
    :class:`~iste.data.imagemeta.ImageMeta`, the processing done: "" or the deblocking)), after
    the refusals that need no model: the output is the input, the output too large or the job
    beyond the memory available (from the header, before decoding), transparency into a
    JPEG."""
    from iste.data.imagemeta import read_image_meta
    from iste.data.images import image_size, read_image_and_alpha
    from iste.data.imagewrite import check_write_size
    from iste.engine.budget import check_decode_fits, check_output_pixels
    from iste.engine.frame import Frame

    frame = Frame.for_scale(image_size(path), scale)  # from the header: bounds before decoding
    check_output_pixels(frame.out_hw)
    check_decode_fits(frame.lr_hw, frame.out_hw)
    check_write_size(out_path, frame.out_hw)
    (image, alpha), meta = read_image_and_alpha(path), read_image_meta(path)
    if alpha is not None and out_path.suffix.lower() in (".jpg", ".jpeg"):
        raise ValueError(f"cannot write {out_path}: {path.name} has transparency (an alpha "
                         "channel) and JPEG has none; write a .png or .tif")
    image, processing = _deblocked(image, path, args.deblock)  # on the JPEG's own block grid
    return frame, (image, alpha, meta, processing)


def estimate_image_job(args, path: Path, output: Path, get_model):
    """``--estimate`` of one plain image: checked as the run would check it (the same
    refusals, none of its writes), read as it reads it (timed), then projected
    (:func:`iste.engine.estimate.estimate_image`). Returns (estimate, seconds to read, the
    source's :class:`~iste.data.imagemeta.ImageMeta`)."""
    import time

    from iste.engine.estimate import estimate_image
    from iste.engine.fixed import check_fixed_scale
    from iste.paths import check_not_input

    scale = _scale_of(args)
    check_not_input(output, path)
    check_output_name(output)
    t0 = time.perf_counter()
    frame, (image, alpha, meta, _) = read_job(args, path, output, scale)
    seconds_read = time.perf_counter() - t0
    model = get_model()
    check_fixed_scale(model, scale)
    est = estimate_image(image, frame.out_hw, model, suffix=output.suffix,
                         options=query_options(args).resolved(model), gray=meta.gray,
                         alpha=alpha)
    return est, seconds_read, meta


def upright_of(meta) -> int | None:
    """The EXIF orientation an output is turned upright by (:func:`iste.data.imagemeta.upright`;
    what its provenance records as ``exif_orientation``), or None where it is not turned."""
    return None if meta.orientation in (None, 1) else meta.orientation


def _deblocked(image, path: Path, mode: str):
    """``image`` deblocked when it is a JPEG file and ``mode`` is "auto"; with the processing
    done ("" for none)."""
    from iste.data.deblock import DEBLOCKED, deblock

    quant = _blocks_undone(path, mode)
    if quant is None:
        return image, ""
    return deblock(image, quant), DEBLOCKED


def _blocks_undone(path: Path, mode: str):
    """The JPEG quantisation whose blocks ``mode`` undoes in the image at ``path`` (None: it
    is read as decoded)."""
    from iste.data.jpeg import jpeg_file_quantisation

    return None if mode == "off" else jpeg_file_quantisation(path)


def image_input_pixels(path: Path, mode: str) -> str:
    """What an image's output records as its ``input_pixels``: "as decoded", or the
    deblocking done (:func:`_deblocked`)."""
    from iste.data.deblock import DEBLOCKED

    return "as decoded" if _blocks_undone(path, mode) is None else DEBLOCKED


def _upscale_with_progress(image, frame, model, args, name: str):
    from iste.engine.image import upscale_to
    from iste.progress import Progress

    total = frame.out_hw[0] * frame.out_hw[1]
    with Progress(total, desc=f"x{frame.scale[0]:.3g} {name}") as bar:
        return upscale_to(image, frame.out_hw, model, options=query_options(args),
                          progress=bar.update)


def _write_with_provenance(out_path: Path, sr, meta, frame, model, args, source: Path,
                           processing: str, scale: float, *, new_only: bool = False) -> None:
    from iste.data.imagemeta import upright_xy
    from iste.locks import writing_together
    from iste.paths import occupied
    from iste.provenance import write_with_sidecar

    # the requested scale; the sizes' own ratios where rounding to whole pixels moved them
    sizes = ({} if frame.scale == (scale, scale)
             else {"scale_hw": [round(v, 6) for v in upright_xy(frame.scale,
                                                                 meta.orientation)]})
    prov = image_provenance(args, model, source, scale, processing or "as decoded", meta=meta,
                            **sizes)
    mpp = None if meta.mpp is None else upright_xy((meta.mpp[0] / frame.scale[1],
                                                    meta.mpp[1] / frame.scale[0]),
                                                   meta.orientation)
    # without --overwrite (or for a folder run's item) an output another job wrote since the
    # check before the model is kept (FileExistsError, naming the image: the sidecar's write
    # failed first, and the error named only it); with it, jobs replace the pair one at a
    # time: a pair is never one job's image and the other's provenance, nor an image without
    # its provenance
    with writing_together(out_path.parent):
        if (new_only or not args.overwrite) and occupied(out_path):
            raise FileExistsError(f"output {out_path} exists (written by another process "
                                  "meanwhile); pass --overwrite to replace it")
        write_with_sidecar(out_path, sr, prov, mpp=mpp, icc_profile=meta.icc_profile,
                           png_colour=meta.png_colour, description=prov.to_text(),
                           replace=args.overwrite)


def image_provenance(args, model, source: Path, scale: float, input_pixels: str, *, meta,
                     hash_source: bool = True, **extra):
    """What an image's output records (:class:`iste.provenance.Provenance`); with
    ``exif_orientation`` where the output is turned upright (:func:`upright_of`). ``meta``:
    the source's :class:`iste.data.imagemeta.ImageMeta`, as its caller read it."""
    from iste.models.checkpoint import is_untrained
    from iste.provenance import Provenance

    turned = upright_of(meta)
    if turned is not None:
        extra["exif_orientation"] = turned
    return Provenance.for_run(model, model_name=model_name(args), scale=scale,
                              options=query_options(args), source=source,
                              hash_source=hash_source, untrained=is_untrained(model),
                              input_pixels=input_pixels, **extra)


def model_name(args) -> str | None:
    """The ``--model`` file's name, as outputs record it (None: the shipped default)."""
    return None if args.model is None else Path(args.model).name


def image_estimate(args, path: Path, output: Path, get_model, *,
                   exists: bool) -> tuple[list[str], dict]:
    """``--estimate`` of one plain image (:func:`estimate_image_job`): the lines a user plans
    with and the record of ``--json-summary`` (``estimates``: the slides' fields that apply,
    ``kind`` "image"). ``exists``: the output (or its sidecar) is there and the run would
    refuse it without --overwrite."""
    from iste.data.imagemeta import upright_xy
    from iste.slides.estimate import output_destination

    est, seconds_read, meta = estimate_image_job(args, path, output, get_model)
    free, writable = output_destination(output)
    seconds = seconds_read + est.seconds_model + est.seconds_encode
    # the sizes the user sees: the output is turned upright as the source's EXIF asks
    (w, h), lr_size = (upright_xy(s, meta.orientation) for s in (est.size, est.lr_size))
    pass_kind = "tile by tile" if est.tiled else "whole"
    memory = f"~{bytes_text(est.memory)} for the pass ({pass_kind}, input and output included)"
    if est.peak_rss is not None:
        memory += f"; peak {bytes_text(est.peak_rss)} resident as its crops ran"
    if est.peak_device_memory is not None:
        memory += f", {bytes_text(est.peak_device_memory)} on the GPU"
    lines = [
        f"estimate: x{est.scale:.3g} of {path.name} -> {output} ({w} x {h} px from "
        f"{lr_size[0]} x {lr_size[1]}, a plain image: read and written whole)",
        f"  time on this machine: {duration_text(seconds)} (model "
        f"{duration_text(est.seconds_model)} at {est.mpx_per_s:.3g} Mpx/s; reading "
        f"{duration_text(seconds_read)}; writing {duration_text(est.seconds_encode)})",
        f"  output ~{bytes_text(est.bytes_output)}"
        + ("" if free is None else f" (free now: {bytes_text(free)})"),
        f"  memory: {memory}",
        f"  measured on {est.crops} crop(s) of {path.name} ({est.mpx_timed:.3g} Mpx of output); "
        "nothing written",
    ]
    if free is not None and free < est.bytes_output:
        lines.append(f"  warning: the output's file system has {bytes_text(free)} free, the "
                     f"output needs ~{bytes_text(est.bytes_output)}")
    if not writable:
        lines.append(f"  warning: this user cannot write where {output} goes: the job would "
                     "fail there")
    if exists:
        lines.append(f"  note: {output} (or its provenance) exists: the job needs --overwrite")
    record = {"output": str(output), "kind": "image", "size": [w, h],
              "lr_size": list(lr_size), "scale": est.scale, "seconds": round(seconds, 2),
              "seconds_read": round(seconds_read, 3),
              "seconds_model": round(est.seconds_model, 2),
              "seconds_encode": round(est.seconds_encode, 3),
              "bytes_output": round(est.bytes_output), "bytes_disk": round(est.bytes_output),
              "disk_free": free, "writable": writable, "memory": est.memory,
              "tiled": est.tiled, "rate_mpx_per_s": round(est.mpx_per_s, 4),
              "crops_timed": est.crops, "peak_rss": est.peak_rss,
              "peak_device_memory": est.peak_device_memory}
    return lines, record


def bytes_text(n: float) -> str:
    """A size as a user reads it: "8.95 MB", "1.2 GB"."""
    return f"{n / 1e9:.3g} GB" if n >= 1e8 else f"{n / 1e6:.3g} MB"


def duration_text(seconds: float) -> str:
    """A duration as a user reads it: "3.2 s", "3.45 min", "2.1 h"."""
    if seconds >= 5400:
        return f"{seconds / 3600:.3g} h"
    if seconds >= 90:
        return f"{seconds / 60:.3g} min"
    return f"{seconds:.3g} s"
