"""A run's length and learning-rate milestones in optimisation steps, from steps or epochs.

The published trainer counts epochs: one epoch is one pass over the training images, each
listed ``repeat`` times (its ``image-folder`` dataset's ``repeat: 20``), in batches of
``batch_size`` — ceil(images x repeat / batch) steps, the last batch of an epoch possibly
short. Its MultiStepLR is stepped once per epoch, so its milestones are epochs. A config with
``run.epochs`` is resolved here into the same number of steps for the dataset at hand; with
several ranks the global batch is ``batch_size x world``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from iste.train.config import TrainConfig

__all__ = ["Schedule", "resolve_schedule", "DEFAULT_STEPS"]

DEFAULT_STEPS = 1000


@dataclass(frozen=True)
class Schedule:
    """steps: total optimisation steps; milestones: steps at which the lr is multiplied by
    gamma; steps_per_epoch: None when the run is counted in steps."""

    steps: int
    milestones: tuple[int, ...]
    steps_per_epoch: int | None = None


def resolve_schedule(cfg: TrainConfig, images: int | None, *, world: int = 1) -> Schedule:
    """The schedule of ``cfg`` for a training set of ``images`` images (None: unknown, e.g.
    whole slides, allowed only when the run is counted in steps)."""
    run = cfg.run
    if run.epochs is None:
        return Schedule(run.steps or DEFAULT_STEPS, tuple(cfg.optim.milestones))
    if not images:
        raise ValueError("run.epochs counts passes over the training images, but a whole-slide "
                         "source has no image count: give run.steps instead")
    per_epoch = math.ceil(images * run.repeat / (run.batch_size * world))
    return Schedule(run.epochs * per_epoch, tuple(m * per_epoch for m in cfg.optim.milestones),
                    per_epoch)
