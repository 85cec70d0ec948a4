"""``iste info [MODEL]``: a checkpoint's architecture, or parameter counts of the paper's models."""

from __future__ import annotations

from iste.cli.options import describe

# Paper (Tables 8/9), SwinIR encoder: millions of parameters.
PAPER_PARAMS_M = {"iste": 12.5, "liif": 11.4, "lte": 11.5}

# Built by the published ISTE but never used in its forward pass (we do not build them):
# imnet_texture_auxiliary (an MLP 256-256x3-3) and imnet_query (an MLP 3-256x3-256).
PUBLISHED_ISTE_UNUSED = 198_147 + 198_400 + 128

NOTE = """\
Encoder: the ISTE repository's SwinIR (180 ch, 6 RSTB x 6, window 8, conv 180->64), identical
to the published module parameter for parameter. The published ISTE module also holds {unused:,}
parameters it never uses (imnet_texture_auxiliary, imnet_query, an LFI depth conv): with them
it counts {published:.2f}M. Subtracting each head, the paper's three totals all imply an encoder
of about 11.0M (LIIF {e_liif:.2f}, LTE {e_lte:.2f}, ISTE {e_iste:.2f}), some 0.55M below this
SwinIR; the paper does not say which SwinIR variant it counted."""


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="describe a checkpoint, or count the paper models' parameters",
                       description=describe(__doc__))
    p.add_argument("model", nargs="?", help="checkpoint (.safetensors); omitted: paper models")
    p.set_defaults(run=run)


def run(args) -> int:
    import json

    from iste.models.checkpoint import read_metadata
    from iste.models.registry import build_model, count_parameters

    if args.model:
        config, meta = read_metadata(args.model)
        model = build_model(config)
        print(json.dumps({"config": config.to_dict(), "parameters": count_parameters(model),
                          "meta": meta}, indent=2))
        return 0
    print(f"{'model':<14}{'encoder (M)':>12}{'head (M)':>10}{'total (M)':>11}{'paper (M)':>11}")
    heads = {}
    for name, paper in PAPER_PARAMS_M.items():
        model = build_model({"head": name, "encoder": "swinir"})
        enc, total = count_parameters(model.encoder), count_parameters(model)
        heads[name] = total - enc
        print(f"{name + '-swinir':<14}{enc / 1e6:>12.2f}{(total - enc) / 1e6:>10.2f}"
              f"{total / 1e6:>11.2f}{paper:>11.1f}")
    iste_pub_head = heads["iste"] + PUBLISHED_ISTE_UNUSED
    print(NOTE.format(unused=PUBLISHED_ISTE_UNUSED, published=(enc + iste_pub_head) / 1e6,
                      e_liif=PAPER_PARAMS_M["liif"] - heads["liif"] / 1e6,
                      e_lte=PAPER_PARAMS_M["lte"] - heads["lte"] / 1e6,
                      e_iste=PAPER_PARAMS_M["iste"] - iste_pub_head / 1e6))
    return 0
