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

import torch

from iste.train.config import DEFAULT_STEPS, TrainConfig
from iste.train.horizon import follow_horizon

__all__ = ["Schedule", "resolve_schedule", "make_scheduler", "follow_plan", "DEFAULT_STEPS"]


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
    units = (run.steps or DEFAULT_STEPS) if run.epochs is None else run.epochs
    milestones = cfg.optim.milestones
    if cfg.optim.schedule == "step":  # every step_every units (steps or epochs)
        milestones = tuple(range(cfg.optim.step_every, units, cfg.optim.step_every))
    if run.epochs is None:
        return Schedule(units, tuple(milestones))
    if not images:
        raise ValueError("run.epochs counts passes over the training images, but a whole-slide "
                         "source has no image count: give run.steps instead")
    per_epoch = math.ceil(images * run.repeat / (run.batch_size * world))
    return Schedule(run.epochs * per_epoch, tuple(m * per_epoch for m in milestones), per_epoch)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, plan: Schedule
                   ) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate scheduler of ``cfg.optim.schedule``, stepped once per optimisation
    step: multi-step (``multistep`` and ``step`` through :func:`resolve_schedule`'s
    milestones) or cosine annealing over ``plan.steps`` down to ``lr * min_lr_ratio``."""
    if cfg.optim.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, plan.steps, cfg.optim.lr * cfg.optim.min_lr_ratio)
    return torch.optim.lr_scheduler.MultiStepLR(opt, list(plan.milestones), cfg.optim.gamma)


def follow_plan(sched: torch.optim.lr_scheduler.LRScheduler, plan: Schedule) -> bool:
    """:func:`~iste.train.horizon.follow_horizon` to ``plan``, this invocation's length (a run
    extended with ``--steps``), after a resumed run's scheduler state is loaded."""
    return follow_horizon(sched, plan.steps, plan.milestones)
