"""What deblocking adds to a whole-slide run: deblock against the model's own work, one run.

Reads a region of the CMU sample SVS (Aperio JPEG/RGB, quality 30) as a whole-slide run reads
it (:class:`iste.slides.deblocked.DeblockedSlide`: the region plus its margin, deblocked with
the level's tables) and without deblocking, and super-resolves it with the shipped default (or
``--model``) at ``--scale``; repeats ``--rounds`` times, interleaved, so machine load hits all
alike. Prints the median milliseconds of each and the ratios (deblocking's share of a tile's
work). Run from the repository root:

    .venv/bin/python benchmarks/bench_deblock.py --size 256 --scale 2 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256, help="LR region side in pixels")
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model", help="checkpoint (default: the shipped model)")
    args = parser.parse_args()

    import torch

    from iste.api import load, upscale_to
    from iste.data.samples import sample_path
    from iste.runtime import set_threads
    from iste.slides.deblocked import deblocked
    from iste.slides.formats import open_slide

    set_threads(args.threads)
    model = load(args.model)
    box = ((1000, 2400), 0, (args.size, args.size))
    out_hw = (round(args.size * args.scale),) * 2
    times: dict[str, list[float]] = {"read": [], "read + deblock": [], "model": []}
    with open_slide(sample_path("cmu-svs")) as raw:
        smooth = deblocked(raw)
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            lr = raw.read_region(*box)
            t1 = time.perf_counter()
            smooth.read_region(*box)
            t2 = time.perf_counter()
            with torch.no_grad():
                upscale_to(lr, out_hw, model)
            t3 = time.perf_counter()
            times["read"].append(t1 - t0)
            times["read + deblock"].append(t2 - t1)
            times["model"].append(t3 - t2)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    deblock_ms = med["read + deblock"] - med["read"]
    print(f"LR {args.size} x {args.size} (+ margin), x{args.scale:g}, "
          f"{torch.get_num_threads()} thread(s), {args.rounds} rounds (medians)")
    for name, ms in med.items():
        print(f"  {name:16s} {ms:9.1f} ms")
    print(f"  deblocking      {deblock_ms:9.1f} ms = {deblock_ms / med['model']:.3f} of the "
          f"model's time, {deblock_ms / (args.size ** 2 / 1e6) / 1000:.2f} s per LR Mpx")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
