"""``iste info [MODEL]``: a checkpoint's architecture, or parameter counts of the paper's models."""

from __future__ import annotations

# Built by the published ISTE but never used in its forward pass (we do not build them):
# imnet_texture_auxiliary (an MLP 256-256x3-3) and imnet_query (an MLP 3-256x3-256).
PUBLISHED_ISTE_UNUSED = 198_147 + 198_400 + 128

NOTE = """\
Encoder: the ISTE repository's SwinIR (180 ch, 6 RSTB x 6, window 8, conv 180->64), identical
to the published module parameter for parameter. The published ISTE module also holds {unused:,}
parameters it never uses (imnet_texture_auxiliary, imnet_query, an LFI depth conv): with them
it counts {published:.2f}M. Subtracting each head (ISTE's with those parameters), the paper's
totals imply an encoder of {implied} M, some {gap:.2f}M below this SwinIR
({encoder:.2f}M); the paper does not say which SwinIR variant it counted."""


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="describe a checkpoint, or count the paper models' parameters",
                       description=__doc__.split("\n")[0].strip("`"))
    p.add_argument("model", nargs="?", help="checkpoint (.safetensors); omitted: paper models")
    p.set_defaults(run=run)


def run(args) -> int:
    import json

    from iste.models.checkpoint import read_metadata
    from iste.models.registry import HEADS, build_model, count_parameters

    if args.model:
        config, meta = read_metadata(args.model)
        model = build_model(config)
        print(json.dumps({"config": config.to_dict(), "parameters": count_parameters(model),
                          "meta": meta}, indent=2))
        return 0
    print(f"{'model':<14}{'encoder (M)':>12}{'head (M)':>10}{'total (M)':>11}{'paper (M)':>11}")
    implied = {}
    for name, entry in HEADS.items():
        model = build_model({"head": name, "encoder": "swinir"})
        enc, total = count_parameters(model.encoder), count_parameters(model)
        head = total - enc + (PUBLISHED_ISTE_UNUSED if name == "iste" else 0)
        implied[entry.label] = entry.paper_params_m - head / 1e6
        print(f"{name + '-swinir':<14}{enc / 1e6:>12.2f}{(total - enc) / 1e6:>10.2f}"
              f"{total / 1e6:>11.2f}{entry.paper_params_m:>11.1f}")
        if name == "iste":
            iste_published = (total + PUBLISHED_ISTE_UNUSED) / 1e6
    mean = sum(implied.values()) / len(implied)
    print(NOTE.format(unused=PUBLISHED_ISTE_UNUSED, published=iste_published,
                      implied=", ".join(f"{k} {v:.2f}" for k, v in implied.items()),
                      gap=enc / 1e6 - mean, encoder=enc / 1e6))
    return 0
