"""Linear interpolation of two checkpoints of one architecture (a fine-tuned model and its start).

    python scripts/interpolate_weights.py START.safetensors TUNED.safetensors --alpha 0.5 --out OUT

OUT = (1 - alpha) * START + alpha * TUNED, tensor by tensor (weight-space ensembling of a
fine-tuned model with the weights it started from, as in WiSE-FT, Wortsman et al., CVPR 2022):
alpha = 1 is TUNED, 0 is START. Both checkpoints must hold the same model config; OUT's
metadata records both sha256 and alpha.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("start", type=Path)
    parser.add_argument("tuned", type=Path)
    parser.add_argument("--alpha", type=float, required=True, help="weight of TUNED, in [0, 1]")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not 0 <= args.alpha <= 1:
        parser.error(f"--alpha must be in [0, 1], got {args.alpha}")

    import torch

    from iste.digest import sha256_file
    from iste.models.checkpoint import CheckpointError, load_model, save_model

    start, tuned = load_model(args.start), load_model(args.tuned)
    if start.model_config != tuned.model_config:
        raise CheckpointError(f"{args.start} and {args.tuned} hold different architectures")
    tuned_state = tuned.state_dict()
    mixed = {k: torch.lerp(v, tuned_state[k], args.alpha) if v.is_floating_point() else v
             for k, v in start.state_dict().items()}
    start.load_state_dict(mixed)
    meta = {"interpolated": {"start_sha256": sha256_file(args.start),
                             "tuned_sha256": sha256_file(args.tuned), "alpha": args.alpha}}
    save_model(start, args.out, meta=meta)
    print(f"wrote {args.out} (alpha {args.alpha:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
