"""``iste convert-official CKPT.pth -o OUT.safetensors [--arch NAME]``: import a checkpoint.

A published checkpoint: the LIIF family's ``{'model': {name, args, sd}}`` (LIIF, LTE, ISTE,
LMI, ITSRN, LIT, and LIIF's EDSR/RDN with their upsamplers), or a fixed-scale network's bare
state dict (SwinIR's ``{'params': ...}``, ...) whose architecture ``--arch`` names."""

from __future__ import annotations

from pathlib import Path

from iste.cli.options import describe, file_path
from iste.cli.runlog import echo


def add_parser(sub, name: str) -> None:
    from iste.models.registry import FIXED

    p = sub.add_parser(name, help="convert a published checkpoint (.pth) to our format",
                       description=describe(__doc__))
    p.add_argument("checkpoint", help="published checkpoint ({'model': {name, args, sd}}, or "
                                      "a fixed-scale network's state dict with --arch)")
    p.add_argument("--arch", choices=list(FIXED),
                   help="the fixed-scale architecture of a bare state dict (sizes and scale "
                        "are read from its tensors)")
    p.add_argument("--scale", type=int, default=None,
                   help="the scale a fixed-scale network was trained for, where its weights do "
                        "not tell (li2021: the generator works at the output size); checked "
                        "against the weights elsewhere")
    p.add_argument("-o", "--output", required=True, type=file_path, help="output .safetensors")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (default: an existing output is an error)")
    p.set_defaults(run=run)


def run(args) -> int:
    from iste.models.checkpoint import save_model
    from iste.models.official import build_converted, load_official
    from iste.models.registry import FixedConfig, count_parameters, describe_config

    out = Path(args.output)
    if out.suffix != ".safetensors":
        raise ValueError(f"output must end in .safetensors, got {out.name}")
    if out.is_dir():
        raise ValueError(f"output {out} is a folder; give a file name")
    from iste.paths import check_not_input, check_output_file, folders_made_undone, occupied

    check_not_input(out, args.checkpoint)
    if occupied(out) and not args.overwrite:  # a training run's weights, another conversion...
        raise FileExistsError(f"output {out} exists; pass --overwrite to replace it")
    with folders_made_undone(out.parent):  # a refused checkpoint leaves no empty folders
        # a file or a read-only place where the output goes: said before the conversion, in
        # words ('[Errno 17] File exists' after it)
        check_output_file(out, "output")
        conv = load_official(args.checkpoint, arch=args.arch, scale=args.scale)
        model = build_converted(conv)
        # without --overwrite, an output another conversion wrote since the check is kept
        save_model(model, out, meta={"converted_from": Path(args.checkpoint).name,
                                     "dropped": list(conv.dropped)}, replace=args.overwrite)
    cfg = conv.config
    what = (describe_config(cfg) if isinstance(cfg, FixedConfig)
            else f"{cfg.head} with {cfg.encoder} encoder")
    echo(f"wrote {out}: {what}, {count_parameters(model) / 1e6:.2f}M parameters")
    if conv.dropped:
        echo(f"dropped {len(conv.dropped)} tensors the published model never uses: "
             f"{', '.join(sorted({_module_of(k) for k in conv.dropped}))}")
    return 0


def _module_of(key: str) -> str:
    """The layer a state-dict entry belongs to, without its tensor's name or a layer index:
    ``encoder.sub_mean.weight`` -> ``encoder.sub_mean``, ``imnet_query.layers.0.bias`` ->
    ``imnet_query.layers`` (the first part alone read as if the whole encoder were dropped)."""
    parts = key.split(".")[:-1] or key.split(".")
    index = next((i for i, part in enumerate(parts) if part.isdigit()), len(parts))
    return ".".join(parts[:max(index, 1)])
