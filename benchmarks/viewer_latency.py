"""Latency of the viewer's super-resolved tiles (:mod:`iste.serve.latency`, which ``iste bench
--sections viewer`` runs too): per scale (x2, x3.3, x4) and kind (cold: a view's first tile,
warm: the others, deeper: x4 under an x2 view), p50 / p95 in ms, each tile also rendered
alone (no reuse) back to back, with the median ratio of the pairs and the largest 8-bit
difference between the paths. Run from the repository root:

    .venv/bin/python benchmarks/viewer_latency.py --views 1 --view-size 3
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from iste.api import load
from iste.cli.options import resolve_input
from iste.engine.render import PRECISIONS
from iste.serve.latency import viewer_study
from iste.slides.deblocked import DEBLOCK_MODES


def main() -> int:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--slide", default="sample:cmu-svs")
    p.add_argument("--model", help="checkpoint (default: the shipped model)")
    p.add_argument("--views", type=int, default=3, help="views per scale")
    p.add_argument("--view-size", type=int, choices=[2, 3], default=3,
                   help="a view is N x N tiles (default 3)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deblock", choices=DEBLOCK_MODES, default="auto",
                   help="read the slide as iste serve does by default (auto: a JPEG slide is "
                        "deblocked) or as stored")
    p.add_argument("--no-ahead", dest="ahead", action="store_false",
                   help="render each tile without the view's other tiles ahead (the server "
                        "before it encoded a view's union at its first tile)")
    p.add_argument("--no-alone", dest="alone", action="store_false",
                   help="render only what the server renders (by default each tile is also "
                        "rendered alone just before, for the ratio: that render's memory "
                        "and caches are the shared tile's neighbours then)")
    p.add_argument("--in-turn", action="store_true",
                   help="also time each tile alone with its query chunks in turn")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="as iste serve --precision (default auto)")
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report = viewer_study(load(args.model), resolve_input(args.slide), views=args.views,
                          view_size=args.view_size, deblock=args.deblock, ahead=args.ahead,
                          alone=args.alone, in_turn=args.in_turn, seed=args.seed,
                          precision=args.precision,
                          log=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
