"""SwinIR's shifted-window mask: the published -100 against iste's -inf, forward + backward.

    python benchmarks/swinir_mask.py [--threads 1] [--rounds 3] [--batch 4] [--size 48]

The paper SwinIR encoder (random weights, seed 0) with ``shift_mask: published`` and with
``exclude`` (the default), the same weights, interleaved rounds in one process: seconds of
one forward + backward at the training size (CPU time with one thread, wall time with more),
the features' largest difference, and the number of denormal attention weights of each
(docs/performance.md, "Session 35"; docs/reproduction.md, departure 11).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from iste.models.encoders import build_encoder

KINDS = ("published", "exclude")


class _CountDenormalWeights(TorchDispatchMode):
    """Counts the softmax outputs in (0, smallest normal float) of the ops run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._softmax.default:
            tiny = torch.finfo(out.dtype).tiny
            self.count += int(((out > 0) & (out < tiny)).sum())
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=48)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    encoders = {}
    for kind in KINDS:
        torch.manual_seed(0)
        encoders[kind] = build_encoder("swinir", {"shift_mask": kind}).train()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=gen) * 2 - 1
    with torch.no_grad():  # in eval mode: stochastic depth off
        out = {kind: encoder.eval()(x) for kind, encoder in encoders.items()}
        diff = (out["exclude"] - out["published"]).abs().max().item()
        for encoder in encoders.values():
            encoder.train()
    denormal = {}
    for kind, encoder in encoders.items():
        with torch.no_grad(), _CountDenormalWeights() as counter:
            encoder(x)
        denormal[kind] = counter.count
        encoder(x).square().mean().backward()  # warm-up
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for _ in range(args.rounds):
        for kind, encoder in encoders.items():
            start = clock()
            encoder(x).square().mean().backward()
            times[kind].append(clock() - start)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, "
          f"{args.size} x {args.size}, {args.rounds} interleaved rounds "
          f"({'CPU' if args.threads == 1 else 'wall'} time)")
    for kind in KINDS:
        print(f"shift_mask {kind:<9}: {min(times[kind]):.2f} s (rounds "
              f"{', '.join(f'{t:.2f}' for t in times[kind])}), "
              f"{denormal[kind]} denormal attention weights in the forward")
    print(f"published / exclude: {min(times['published']) / min(times['exclude']):.2f}x; "
          f"features' max |diff| {diff:.3g}")


if __name__ == "__main__":
    main()
