"""A resumed learning-rate schedule's horizon: a run's length may change on resume (``--steps``
extends it), while a scheduler's saved state keeps the length it was made with."""

from __future__ import annotations

from collections import Counter

import torch

__all__ = ["follow_horizon"]


def follow_horizon(sched: torch.optim.lr_scheduler.LRScheduler, steps: int,
                   milestones: tuple[int, ...] = ()) -> bool:
    """After a resumed scheduler's state is loaded: a cosine over ``steps`` or a multi-step
    schedule with ``milestones`` takes that horizon where it differs, and the lr becomes the
    new curve's at the current step (the saved state alone would keep the old length: a
    cosine would climb back up past it). Returns whether anything changed."""
    if isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR):
        if sched.T_max == steps:
            return False
        sched.T_max = steps
    else:
        milestones = Counter(milestones)
        if sched.milestones == milestones:
            return False
        sched.milestones = milestones
    lrs = sched._get_closed_form_lr()  # both schedulers' closed form at sched.last_epoch
    for group, lr in zip(sched.optimizer.param_groups, lrs):
        group["lr"] = lr
    sched._last_lr = list(lrs)
    return True
