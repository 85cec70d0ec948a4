"""``iste convert-official CKPT.pth -o OUT.safetensors``: import a published checkpoint."""

from __future__ import annotations

from pathlib import Path

from iste.cli.options import describe


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="convert a published LIIF/LTE/ISTE .pth to our format",
                       description=describe(__doc__))
    p.add_argument("checkpoint", help="published checkpoint ({'model': {name, args, sd}})")
    p.add_argument("-o", "--output", required=True, help="output .safetensors")
    p.set_defaults(run=run)


def run(args) -> int:
    from iste.models.checkpoint import save_model
    from iste.models.official import build_converted, load_official
    from iste.models.registry import count_parameters

    out = Path(args.output)
    if out.suffix != ".safetensors":
        raise ValueError(f"output must end in .safetensors, got {out.name}")
    from iste.files import check_not_input

    check_not_input(out, args.checkpoint)
    conv = load_official(args.checkpoint)
    model = build_converted(conv)
    save_model(model, out, meta={"converted_from": Path(args.checkpoint).name,
                                 "dropped": list(conv.dropped)})
    cfg = conv.config
    print(f"wrote {out}: {cfg.head} with {cfg.encoder} encoder, "
          f"{count_parameters(model) / 1e6:.2f}M parameters")
    if conv.dropped:
        print(f"dropped {len(conv.dropped)} tensors the published model never uses: "
              f"{', '.join(sorted({k.split('.')[0] for k in conv.dropped}))}")
    return 0
