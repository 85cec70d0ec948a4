"""Training losses of fixed-scale networks whose papers fix one (config section ``loss``).

- ``l1`` (default): mean absolute error of ``model.sr(lr)`` against the HR crop (the ISTE
  protocol's loss; EDSR, RDN, SwinIR and SRMFENet train with it).
- ``swdnet_spatial``: L1 of SWD-Net's spatial-stage SR alone, the first phase of its published
  trainer (the wavelet stage gets no gradient).
- ``swdnet``: SWD-Net's Eq. 4, L1(final SR) * ``sr_weight`` + L1(spatial-stage SR) *
  ``spatial_weight`` + L1(predicted Haar bands, Haar bands of HR), weights 0.1 / 0.1 / 1 as in
  the published trainer (``SWratio``, ``SWratio_tmp``).
- ``gan``: Li et al.'s generator loss (1 - w) * L1 + w * MSE(D(fake | input), 1) with w =
  ``gan_weight`` (published default 0.01 for the compression experiments, 0.001 in its README),
  and after every generator step a step of the conditional PatchGAN critic
  (:class:`~iste.models.fixed.li2021.Li2021Discriminator`) on 0.5 (MSE(D(real), 1) +
  MSE(D(fake), 0)) with Adam at ``d_lr`` (published 1e-5; cosine-annealed like the generator
  when the schedule is cosine). The critic sees the generator's input (the resized LR) as its
  condition, as published. ``curriculum``: Li et al.'s scale curriculum
  (:func:`curriculum_factor`), each sample's input degraded by its own factor.

The published losses sum over pixels (SWD-Net's ``L1Loss(size_average=False)``) or average
(Li et al.); with Adam the scale of a loss hardly matters, so we average throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from iste.models.layers.haar import haar_forward
from iste.train.horizon import follow_horizon
from iste.typed import check_unused_at_default

LossKind = Literal["l1", "swdnet_spatial", "swdnet", "gan"]
KINDS = ("l1", "swdnet_spatial", "swdnet", "gan")
ARCH_OF_KIND = {"swdnet_spatial": "swdnet", "swdnet": "swdnet", "gan": "li2021"}
"""The network each non-default loss is written for (the config check names it)."""


@dataclass(frozen=True)
class LossConfig:
    """kind: one of :data:`KINDS` (see the module docstring); spatial_weight, sr_weight:
    SWD-Net's lambda1 and lambda2; gan_weight, d_lr, curriculum, critic_width: Li et al.'s
    adversarial weight, critic learning rate, scale curriculum and the critic's first width
    (published 64; it doubles per block to 512)."""

    kind: LossKind = "l1"
    spatial_weight: float = 0.1
    sr_weight: float = 0.1
    gan_weight: float = 0.01
    d_lr: float = 1e-5
    curriculum: bool = False
    critic_width: int = 64

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"loss.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if isinstance(self.critic_width, bool) or not isinstance(self.critic_width, int) \
                or not 1 <= self.critic_width <= 1024:
            raise ValueError("loss.critic_width must be an integer in 1..1024")
        if self.curriculum and self.kind != "gan":
            raise ValueError("loss.curriculum is Li et al.'s: it needs loss.kind gan")
        for name in ("spatial_weight", "sr_weight"):
            if not 0 <= getattr(self, name) <= 100:
                raise ValueError(f"loss.{name} must be in [0, 100]")
        if not 0 <= self.gan_weight < 1:
            raise ValueError("loss.gan_weight must be in [0, 1)")
        if not 0 < self.d_lr <= 1:
            raise ValueError("loss.d_lr must be in (0, 1]")
        if self.kind != "swdnet":
            check_unused_at_default(self, ("spatial_weight", "sr_weight"), "loss",
                                    "loss.kind swdnet")
        if self.kind != "gan":
            check_unused_at_default(self, ("gan_weight", "d_lr", "critic_width"), "loss",
                                    "loss.kind gan")


def swdnet_loss(out, hr: torch.Tensor, cfg: LossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """SWD-Net's Eq. 4 (``swdnet``; ``out`` = ``model.stages(lr)``) or its spatial phase
    (``swdnet_spatial``; ``out`` = ``model.spatial(lr)``, (B, 3, 2h, 2w)). hr (B, 3, 2h, 2w)
    in [0, 1]."""
    if cfg.kind == "swdnet_spatial":
        loss = F.l1_loss(out, hr)
        return loss, {"l1_spatial": float(loss.detach())}
    sr = F.l1_loss(out.sr, hr)
    spatial = F.l1_loss(out.spatial, hr)
    bands = F.l1_loss(out.bands, haar_forward(hr))
    loss = cfg.sr_weight * sr + cfg.spatial_weight * spatial + bands
    return loss, {"l1": float(sr.detach()), "l1_spatial": float(spatial.detach()),
                  "l1_bands": float(bands.detach())}


class GANObjective:
    """Li et al.'s conditional LSGAN: owns the critic and its optimiser (saved with the run).

    Usage per step: ``fake = generator(cond)``; ``loss, logs = obj.generator_loss(fake, cond,
    hr)``; backward and step the generator; then ``logs |= obj.critic_step()`` (uses the fake
    of the same step, detached).
    """

    def __init__(self, cfg: LossConfig, device: torch.device, *, total_steps: int,
                 cosine: bool, min_lr_ratio: float = 0.05, distributed: bool = False):
        from iste.models.fixed.li2021 import Li2021Discriminator

        self.cfg = cfg
        self.critic = Li2021Discriminator(cfg.critic_width).to(device)
        self.score = (torch.nn.parallel.DistributedDataParallel(self.critic) if distributed
                      else self.critic)
        self.optimizer = torch.optim.Adam(self.critic.parameters(), lr=cfg.d_lr)
        self.scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, total_steps, cfg.d_lr * min_lr_ratio) if cosine else None)
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def generator_loss(self, fake: torch.Tensor, cond: torch.Tensor, hr: torch.Tensor
                       ) -> tuple[torch.Tensor, dict[str, float]]:
        """fake, cond, hr: (B, 3, H, W) — the generator's output, its input (the resized LR)
        and the HR crop, in [0, 1]."""
        l1 = F.l1_loss(fake, hr)
        score = self.score(fake, cond)
        adv = F.mse_loss(score, torch.ones_like(score))
        w = self.cfg.gan_weight
        self._last = (fake.detach(), cond.detach(), hr)
        return (1 - w) * l1 + w * adv, {"l1": float(l1.detach()), "gan_g": float(adv.detach())}

    def critic_step(self) -> dict[str, float]:
        """One critic update on the last generator step's fake, its condition and the HR."""
        if self._last is None:
            raise RuntimeError("critic_step before generator_loss")
        fake, cond, hr = self._last
        real_score = self.score(hr, cond)
        fake_score = self.score(fake, cond)
        loss = 0.5 * (F.mse_loss(real_score, torch.ones_like(real_score))
                      + F.mse_loss(fake_score, torch.zeros_like(fake_score)))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self._last = None
        return {"gan_d": float(loss.detach())}

    def state_dict(self) -> dict:
        return {"critic": self.critic.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict()}

    def load_state_dict(self, state: dict, *, step: int) -> None:
        """The critic, its optimiser and scheduler as :meth:`state_dict` saved them after
        ``step`` steps, checked as the generator's are (ValueError: weights or moments that
        are NaN or do not fit, a scheduler stepped another number of times)."""
        from iste.models.checkpoint import CheckpointError
        from iste.models.checkpoint import load_state as load_weights
        from iste.train.state import check_optimizer, check_scheduler

        try:
            load_weights(self.critic, state["critic"], source="critic")
        except CheckpointError as err:  # a damaged state: the caller names the file
            raise ValueError(str(err)) from None
        fresh = [{k: v for k, v in g.items() if k != "params"}
                 for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        check_optimizer(self.optimizer, fresh, name="critic optimizer")
        if (self.scheduler is None) != (state["scheduler"] is None):
            raise ValueError("critic scheduler: saved for another schedule")
        if self.scheduler is not None:
            planned = self.scheduler.T_max  # this run's length (--steps may extend it)
            fresh_schedule = self.scheduler.state_dict()
            self.scheduler.load_state_dict(state["scheduler"])
            check_scheduler(self.scheduler, fresh_schedule, step, name="critic scheduler")
            follow_horizon(self.scheduler, planned)


def curriculum_factor(step: int, total_steps: int, target: float, *, start: float = 2.0) -> float:
    """Li et al.'s curriculum: the mean degradation factor at ``step`` of ``total_steps``.

    Over the first half of training 2**factor grows linearly from 2**start (4) to
    2**target, i.e. factor = log2(2**start + t * (2**target - 2**start) / (total / 2)); then it
    stays at ``target``. (The published trainer counts epochs; we count steps.) Each sample then
    draws its own factor max(1, N(factor, 0.5)) (:func:`sample_factor`).
    """
    if target <= start:
        return float(target)
    half = max(1, total_steps // 2)
    grown = 2.0 ** start + min(step, half) * (2.0 ** target - 2.0 ** start) / half
    return min(math.log2(grown), float(target))


def sample_factor(mean: float, rng) -> float:
    """A sample's factor: max(1, N(mean, 0.5)) as the published ``Rescale(stc=True)``."""
    return float(max(1.0, rng.normal(mean, 0.5)))


def curriculum_input(model, hr: torch.Tensor, mean: float, rng, *, first: int = 0
                     ) -> torch.Tensor:
    """The generator's input for HR crops ``hr`` (B, 3, H, W) in [0, 1] under the curriculum:
    each crop degraded (the protocol's blur + bicubic) by its own factor max(1, N(mean, 0.5))
    to the LR size that factor gives, then resized back to (H, W) by ``model.upsample_input``.
    Runs on the CPU (PIL); returns a tensor on ``hr``'s device.

    first: the place of ``hr``'s first crop in the step's whole batch (``rank x B`` under
    torchrun): ``rng`` draws the factors of the whole batch in order, those before ``first``
    being the other ranks' crops. Every rank drew the first B factors before, so rank 1's
    crops took rank 0's factors and one process of the whole batch trained on others."""
    from iste.data.degrade import degrade, lr_size_for

    for _ in range(first):
        sample_factor(mean, rng)
    size = tuple(hr.shape[-2:])
    inputs = []
    for crop in hr.detach().cpu():
        factor = sample_factor(mean, rng)
        lr = degrade(crop.clamp(0, 1), factor, lr_size_for(size, factor))
        inputs.append(model.upsample_input(lr[None].to(hr.device), size))
    return torch.cat(inputs)


class _Call(torch.nn.Module):
    """One of a fixed-scale network's methods as a module's forward (DDP hooks ``forward``):
    ``sr`` (LR -> SR), ``stages`` (SWD-Net's three outputs), ``spatial`` (SWD-Net's spatial
    stage), ``forward`` (Li et al.'s generator on its resized input)."""

    def __init__(self, model, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, x: torch.Tensor):
        if self.method == "stages":
            return self.model.stages(x)
        if self.method == "spatial":
            return self.model.spatial(x)
        if self.method == "forward":
            return self.model(x)
        return self.model.sr(x)


_METHOD = {"l1": "sr", "swdnet": "stages", "swdnet_spatial": "spatial", "gan": "forward"}


class FixedObjective:
    """The training step of a fixed-scale network under ``cfg.loss``: :meth:`loss` before the
    generator's optimiser step, :meth:`after_step` after it (the critic's step for ``gan``).
    ``state_dict`` holds what a resumed run needs besides the network (the critic).
    ``rank``: this process's under torchrun (``distributed``), whose crops follow the lower
    ranks' in the step's whole batch."""

    def __init__(self, cfg, model, *, device: torch.device, total_steps: int,
                 distributed: bool = False, rank: int = 0):
        self.cfg, self.model, self.total = cfg.loss, model, total_steps
        self.seed, self.rank = cfg.run.seed, rank
        call = _Call(model, _METHOD[cfg.loss.kind])
        self.net = torch.nn.parallel.DistributedDataParallel(call) if distributed else call
        self.gan = None
        if cfg.loss.kind == "gan":
            cosine = cfg.optim.schedule == "cosine"
            self.gan = GANObjective(cfg.loss, device, total_steps=total_steps, cosine=cosine,
                                    min_lr_ratio=cfg.optim.min_lr_ratio, distributed=distributed)

    def loss(self, batch: dict[str, torch.Tensor],
             step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """batch: ``lr`` (B, 3, h, w) and ``hr`` (B, 3, s h, s w) in [0, 1]; step: the
        optimisation step about to be taken (the curriculum's clock)."""
        lr, hr = batch["lr"], batch["hr"]
        kind = self.cfg.kind
        if kind == "l1":
            loss = F.l1_loss(self.net(lr), hr)
            return loss, {}
        if kind in ("swdnet", "swdnet_spatial"):
            return swdnet_loss(self.net(lr), hr, self.cfg)
        if self.cfg.curriculum:
            import numpy as np

            mean = curriculum_factor(step, self.total, float(self.model.scale))
            cond = curriculum_input(self.model, hr, mean, np.random.default_rng([self.seed, step]),
                                    first=self.rank * hr.shape[0])
        else:
            cond = self.model.upsample_input(lr, tuple(hr.shape[-2:]))
        return self.gan.generator_loss(self.net(cond), cond, hr)

    def after_step(self) -> dict[str, float]:
        return {} if self.gan is None else self.gan.critic_step()

    def state_dict(self) -> dict:
        return {} if self.gan is None else {"critic": self.gan.state_dict()}

    def load_state_dict(self, state: dict, *, step: int) -> None:
        """What :meth:`state_dict` saved at ``step``; ValueError when it is damaged."""
        if self.gan is not None:
            self.gan.load_state_dict(state["critic"], step=step)
