"""Where a module draws the random numbers of its training forward (stochastic depth).

The rule for every module that draws random numbers in ``forward``: pass
``generator=training_generator()`` to the draw. Outside :func:`drawing_from` that is ``None``,
torch's global generator, as usual. The trainer runs a batch's parts side by side in worker
threads (:mod:`iste.train.parts`); there the global generator would be drawn from by two
threads in whichever order they reach it, so each part draws from a generator of its own,
seeded by the calling thread, and a run stays reproducible (and resumable: the seeds come
from the global generator, whose state the checkpoint keeps).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

__all__ = ["training_generator", "drawing_from", "seeded_generators"]

_LOCAL = threading.local()


def training_generator() -> torch.Generator | None:
    """The calling thread's generator for training draws: ``None`` (torch's global one)
    unless set by :func:`drawing_from`."""
    return getattr(_LOCAL, "generator", None)


@contextlib.contextmanager
def drawing_from(generator: torch.Generator) -> Iterator[None]:
    """Training draws of this thread come from ``generator`` inside the block."""
    previous = training_generator()
    _LOCAL.generator = generator
    try:
        yield
    finally:
        _LOCAL.generator = previous


def seeded_generators(count: int, device: torch.device) -> list[torch.Generator]:
    """``count`` generators for training draws (:func:`drawing_from`) on ``device``, seeded
    by one draw of ``count`` seeds from torch's global generator: the global generator moves
    alike however they are used (its state is what a checkpoint keeps), and processes seeded
    alike that draw alike (torchrun's ranks) stay in step."""
    seeds = torch.randint(0, 2 ** 62, (count,)).tolist()
    return [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
