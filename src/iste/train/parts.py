"""A training step's batch in parts, side by side on the chunk workers (CPU).

Why: a training step of an arbitrary-scale head is thousands of torch operations, many of
them small (the LFI's windows, STF's per-sample pixels, layer norms, softmaxes). With the
whole batch on N intra-op threads each operation is an OpenMP region ending at a barrier.
Cut into N parts of the batch, each part's forward and backward runs on one chunk worker
(:mod:`iste.engine.parallel`) with one intra-op thread and no barrier. Measured in one
process, the two forms switched every round (paper-size ISTE, batch 4, 2 threads, real-time
priority): EDSR-baseline ISTE steps 1.14x and 1.20x faster, SwinIR ISTE 1.18x and 1.11x
(docs/performance.md, "Session 10").

The gradient is the whole batch's: the loss is a mean over samples of equal size (the same
number of queries each), so each part's loss is weighted by its share of the batch, and the
parts' gradients are summed in part order in the calling thread (the same gradient up to
float rounding; the same bits from run to run). That needs a forward that treats each sample
on its own (no batch statistics, no state written during the forward), as every
arbitrary-scale head and encoder here does; the fixed-scale objectives (SRMFENet's batch
norms, the GAN critics) keep the batch whole.
Random draws in the forward (SwinIR's stochastic depth) come from a generator per part,
seeded from torch's global generator in the calling thread
(:mod:`iste.models.layers.randomness`), so a run stays reproducible and resumable.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable, Sequence

import torch

from iste.engine.parallel import map_chunks
from iste.models.layers.randomness import drawing_from, seeded_generators

__all__ = ["batch_parts", "backward_in_parts"]

Batch = dict[str, torch.Tensor]


def batch_parts(batch_size: int, workers: int) -> list[slice]:
    """Contiguous parts of a batch, one per chunk worker, sizes differing by at most one.

    ``[]`` (keep the batch whole, on the intra-op threads) with one worker, or with more
    workers than samples: a part per sample would leave workers idle, while the whole batch
    can use every thread."""
    if workers < 2 or workers > batch_size:
        return []
    bounds = [round(i * batch_size / workers) for i in range(workers + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def backward_in_parts(loss_of: Callable[[Batch], torch.Tensor], batch: Batch,
                      params: Sequence[torch.nn.Parameter], parts: list[slice],
                      context: Callable[[], AbstractContextManager]) -> torch.Tensor:
    """Set ``p.grad`` of every parameter in ``params`` to the gradient of the whole batch's
    loss, computing each part of ``parts`` on its own chunk worker; returns the loss (detached).

    loss_of: a part of the batch (every tensor cut along dim 0) -> the mean loss over it.
    context: entered around each part's forward in its worker (autocast: thread-local state).
    A parameter that no part reaches keeps ``grad`` None."""
    first = next(iter(batch.values()))
    size = first.shape[0]
    generators = seeded_generators(len(parts), first.device)
    params = list(params)

    def run(job):
        part, generator = job
        sub = {name: value[part] for name, value in batch.items()}
        with torch.enable_grad(), context(), drawing_from(generator):
            loss = loss_of(sub) * ((part.stop - part.start) / size)
        return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)

    results = map_chunks(run, list(zip(parts, generators)), len(parts))
    for i, param in enumerate(params):  # summed in part order, in the calling thread
        grads = [part_grads[i] for _, part_grads in results if part_grads[i] is not None]
        param.grad = sum(grads[1:], grads[0]) if grads else None
    return torch.stack([loss for loss, _ in results]).sum()
