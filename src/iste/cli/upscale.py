"""``iste upscale INPUT -s SCALE -o OUTPUT``: super-resolve an image at any scale > 1."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from iste.api import check_scale, load, pick_device, upscale as upscale_image
from iste.engine.frame import Frame
from iste.engine.render import QueryOptions


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="super-resolve an image at any scale > 1",
                       description=__doc__.split("\n")[0].strip("`"))
    p.add_argument("input", help="PNG/JPEG/TIFF image, or sample:NAME for a bundled sample "
                                 "(sample:wsidicom-tile, sample:slideflow-tile)")
    p.add_argument("-s", "--scale", required=True, help="scale factor > 1, e.g. 2.5")
    p.add_argument("-o", "--output", required=True, help="output image (.png, .tif, .jpg)")
    add_model_options(p)
    p.set_defaults(run=run)


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint (.safetensors); default: the shipped model")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--chunk", type=int, default=QueryOptions.chunk,
                   help="queries per model call (memory knob; output does not change)")
    p.add_argument("--stf-keys", type=int, default=QueryOptions.stf_keys,
                   help="ISTE: STF keys per 48x48 window (speed knob)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16 is faster on CPUs/GPUs with bfloat16 units")


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
    if path.is_dir():
        raise ValueError(f"output {path} is a directory; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)


def run(args) -> int:
    from iste.data.images import read_image, write_image

    scale = check_scale(args.scale)
    options = query_options(args)
    out_path = Path(args.output)
    check_output_path(out_path)
    image = read_image(resolve_input(args.input))
    model = load(args.model, device=pick_device(args.device))
    frame = Frame.for_scale(image.shape[:2], scale)
    total = frame.out_hw[0] * frame.out_hw[1]
    from tqdm import tqdm

    with tqdm(total=total, unit="px", unit_scale=True, desc=f"x{scale:g}", file=sys.stderr,
              disable=None) as bar:
        sr = upscale_image(image, scale, model, options=options, progress=bar.update)
    write_image(out_path, sr)
    h, w = image.shape[:2]
    print(f"wrote {out_path} ({sr.shape[1]} x {sr.shape[0]} px, x{scale:g} from {w} x {h})")
    return 0
