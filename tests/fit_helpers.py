"""A small regression for iste.downstream.trainer.fit, in one process or under torchrun."""

from pathlib import Path

import torch
from torch import nn

from iste.downstream.trainer import FitConfig, fit


class Samples(torch.utils.data.Dataset):
    """Sample i: (x (4,), y (1,)), a pure function of i, y a noisy linear function of x."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(4, generator=g)
        return x, x.sum(0, keepdim=True) + torch.randn(1, generator=g)


def fit_regression(run_dir: Path, batch_size: int) -> nn.Module:
    """3 steps of Adam on :class:`Samples`, the loss logged at every step."""
    cfg = FitConfig(steps=3, batch_size=batch_size, lr=0.1, log_every=1, checkpoint_every=100)
    return fit(lambda: nn.Linear(4, 1), Samples(), nn.functional.mse_loss, cfg, run_dir,
               spec={"net": "linear"}, device=torch.device("cpu"), progress=False)
