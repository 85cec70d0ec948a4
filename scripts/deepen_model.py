"""Deepen the EDSR encoder of a trained checkpoint without changing what it computes.

    python scripts/deepen_model.py IN.safetensors --blocks 16 --out OUT.safetensors [--seed 0]

Adds residual blocks to the encoder (``encoder_args.n_resblocks``), each starting as the identity
(:func:`iste.models.encoders.edsr.deepened_state_dict`), so training of a larger model can start
from a smaller one's weights (``run.init: OUT``) instead of from random ones. Checks that the
deepened model's output equals the original's on a random input, and records IN's sha256 in OUT's
metadata.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--blocks", type=int, required=True, help="residual blocks of OUT")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0, help="initialisation of the added blocks")
    args = parser.parse_args()

    import torch

    from iste.digest import sha256_file
    from iste.models.checkpoint import CheckpointError, load_model, save_model
    from iste.models.encoders.edsr import EDSREncoder, deepened_state_dict
    from iste.models.registry import build_model

    small = load_model(args.checkpoint)
    config = small.model_config
    if (config.encoder not in ("edsr", "edsr-baseline")
            or not isinstance(small.encoder, EDSREncoder)):
        raise CheckpointError(f"{args.checkpoint}: encoder {config.encoder!r} is not an EDSR")
    blocks = small.encoder.config.n_resblocks
    torch.manual_seed(args.seed)
    big = build_model(replace(config, encoder_args={**config.encoder_args,
                                                    "n_resblocks": args.blocks}))
    encoder_state = {k.removeprefix("encoder."): v for k, v in small.state_dict().items()
                     if k.startswith("encoder.")}
    state = {f"encoder.{k}": v for k, v in
             deepened_state_dict(big.encoder, encoder_state, blocks).items()}
    state.update({k: v for k, v in small.state_dict().items() if not k.startswith("encoder.")})
    big.load_state_dict(state)

    inp = torch.rand(1, 3, 24, 24) * 2 - 1
    with torch.no_grad():
        diff = (big.encoder(inp) - small.encoder(inp)).abs().max().item()
    if diff > 1e-5:
        raise RuntimeError(f"deepened encoder differs by {diff:.3g}")
    meta = {"deepened": {"from_sha256": sha256_file(args.checkpoint), "from_blocks": blocks,
                         "blocks": args.blocks, "seed": args.seed}}
    save_model(big, args.out, meta=meta)
    print(f"wrote {args.out}: {blocks} -> {args.blocks} blocks, max |diff| {diff:.2g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
