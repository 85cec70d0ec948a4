"""``iste info [MODEL]``: a checkpoint, an output's provenance, or the paper's parameters.

A checkpoint: its architecture and parameter count; an output of iste (a slide's TIFF, a DICOM
folder or file, an image with its sidecar): what made it, as it records.

The paper's models: the arbitrary-scale heads with the SwinIR encoder, then the fixed-scale
networks."""

from __future__ import annotations

from pathlib import Path

from iste.cli.options import describe
from iste.cli.runlog import echo

# Built by the published ISTE but never used in its forward pass (we do not build them):
# imnet_texture_auxiliary (an MLP 256-256x3-3) and imnet_query (an MLP 3-256x3-256).
PUBLISHED_ISTE_UNUSED = 198_147 + 198_400 + 128

NOTE = """\
Encoder: the ISTE repository's SwinIR (180 ch, 6 RSTB x 6, window 8, conv 180->64), identical
to the published module parameter for parameter; every head here has the published module's
parameters (LIT: the one-stage CLIT of jaroslaw1007/CLIT's configs). The published ISTE module
also holds {unused:,} parameters it never uses (imnet_texture_auxiliary, imnet_query, an LFI
depth conv): with them it counts {published:.2f}M. Subtracting each head (ISTE's with those
parameters) from the paper's total leaves the encoder the paper counted:
{implied};
some {gap:.2f}M below this SwinIR ({encoder:.2f}M) on average; the paper does not say which
SwinIR variant it counted.{outliers} The starred rows (Table 9) add 7 Swin layers to the encoder
(bundled configs swinir-liif-star / swinir-lte-star): +{star:.2f}M here, +1.8M in the paper."""


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="describe a checkpoint or an output, or count the paper "
                       "models' parameters", description=describe(__doc__))
    p.add_argument("model", nargs="?", help="checkpoint (.safetensors), or an output of iste "
                   "(a slide's TIFF, a DICOM folder, an image with its .json sidecar): what "
                   "made it; omitted: paper models")
    p.set_defaults(run=run)


def _output_provenance(path: Path) -> dict:
    """{"output": path, "provenance": what it records (:func:`iste.provenance.recorded`)}."""
    from iste.provenance import recorded

    from iste.paths import link_note

    if not path.exists():
        raise ValueError(f"cannot open {path}: no such file or folder{link_note(path)}")
    try:
        return {"output": str(path), "provenance": recorded(path)}
    except ValueError as err:
        raise ValueError(f"{path} is neither a checkpoint (.safetensors) nor an output of iste "
                         f"({err})") from None


def _row(label: str, model, paper: float) -> str:
    from iste.models.registry import count_parameters

    enc, total = count_parameters(model.encoder), count_parameters(model)
    return (f"{label:<16}{enc / 1e6:>12.2f}{(total - enc) / 1e6:>10.2f}{total / 1e6:>11.2f}"
            f"{paper:>11.1f}")


def run(args) -> int:
    import json
    import textwrap

    from iste.models.checkpoint import load_model
    from iste.models.registry import HEADS, build_model, count_parameters
    from iste.train.config import load_train_config

    if args.model and not args.model.lower().endswith(".safetensors"):
        echo(json.dumps(_output_provenance(Path(args.model)), indent=2))
        return 0
    if args.model:
        model = load_model(args.model)  # the weights too: a file whose tensors do not load fails
        echo(json.dumps({"config": model.model_config.to_dict(),
                         "parameters": count_parameters(model),
                         "meta": model.checkpoint_meta}, indent=2))
        return 0
    echo(f"{'model':<16}{'encoder (M)':>12}{'head (M)':>10}{'total (M)':>11}{'paper (M)':>11}")
    implied, stars = {}, []
    for name, entry in HEADS.items():
        model = build_model({"head": name, "encoder": "swinir"})
        enc = count_parameters(model.encoder)
        head = count_parameters(model) - enc + (PUBLISHED_ISTE_UNUSED if name == "iste" else 0)
        implied[entry.label] = entry.paper_params_m - head / 1e6
        echo(_row(f"{name}-swinir", model, entry.paper_params_m))
        if name == "iste":
            iste_published = (count_parameters(model) + PUBLISHED_ISTE_UNUSED) / 1e6
        if entry.paper_star_params_m is not None:
            star = build_model(load_train_config(f"swinir-{name}-star").model)
            stars.append(_row(f"{name}*-swinir", star, entry.paper_star_params_m))
            star_extra = count_parameters(star.encoder) - enc
    for row in stars:
        echo(row)
    mean = sum(implied.values()) / len(implied)
    median = sorted(implied.values())[len(implied) // 2]
    far = {k: v - median for k, v in implied.items() if abs(v - median) > 0.1}
    outliers = "".join(f" {k}'s implied encoder is {abs(d):.2f}M {'below' if d < 0 else 'above'} "
                       "the others': the paper's count of that head differs from the published "
                       "configs' module by that much, for a reason the paper does not give."
                       for k, d in far.items())
    note = NOTE.format(outliers=outliers, unused=PUBLISHED_ISTE_UNUSED, published=iste_published,
                      implied=", ".join(f"{k} {v:.2f}M" for k, v in implied.items()),
                      gap=enc / 1e6 - mean, encoder=enc / 1e6, star=star_extra / 1e6)
    echo(textwrap.fill(" ".join(note.split()), 96))
    echo()
    _fixed_rows()
    return 0


FIXED_NOTE = """\
Fixed-scale networks (paper Table 1), counted from our modules, which hold the published
modules' parameters one for one (the upsampler grows with the scale), except SWD-Net's
layers that its published forward never uses; the papers state one figure each, for the scale
named, or none ("—"; the source then gives the published code's count)."""


def _fixed_rows() -> None:
    import textwrap

    import torch

    from iste.models.registry import FIXED, build_model, count_parameters

    echo(f"{'fixed-scale':<22}" + "".join(f"{f'x{s} (M)':>10}" for s in (2, 3, 4))
         + f"{'paper (M)':>12}  source")
    for name, entry in FIXED.items():
        for paper in entry.paper_counts:
            counts = []
            for s in (2, 3, 4):
                if s not in entry.scales:
                    counts.append(f"{'—':>10}")
                    continue
                with torch.device("meta"):
                    model = build_model({"arch": name, "scale": s, "args": paper.args})
                counts.append(f"{count_parameters(model) / 1e6:>10.2f}")
            stated = "—" if paper.params_m is None else f"{paper.params_m:.1f}"
            echo(f"{paper.variant:<22}{''.join(counts)}{stated:>10} "
                 f"x{paper.scale}  {paper.source}")
    echo(textwrap.fill(" ".join(FIXED_NOTE.split()), 96))
