"""``iste info [MODEL]``: a checkpoint's architecture, or parameter counts of the paper's models."""

from __future__ import annotations

# Paper (Table 8), SwinIR encoder: millions of parameters.
PAPER_PARAMS_M = {"iste": 12.5, "liif": 11.4, "lte": 11.5}


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="describe a checkpoint, or count the paper models' parameters",
                       description=__doc__.split("\n")[0].strip("`"))
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
    print(f"{'model':<14}{'ours (M)':>10}{'paper (M)':>11}")
    for head, paper in PAPER_PARAMS_M.items():
        model = build_model({"head": head, "encoder": "swinir"})
        print(f"{head + '-swinir':<14}{count_parameters(model) / 1e6:>10.2f}{paper:>11.1f}")
    return 0
