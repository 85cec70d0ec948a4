"""Training losses of SWD-Net (Eq. 4) and Li et al. (L1 + conditional LSGAN, curriculum)."""

import numpy as np
import pytest
import torch

from iste.models.fixed.li2021 import Li2021Config, Li2021Discriminator, Li2021Generator
from iste.models.fixed.swdnet import SWDNet
from iste.models.layers.haar import haar_forward, haar_inverse
from iste.train.objectives import (GANObjective, LossConfig, curriculum_factor, sample_factor,
                                   swdnet_loss)


def test_haar_pair_is_exact_and_orthonormal():
    x = torch.rand(2, 3, 6, 8, dtype=torch.float64)
    bands = haar_forward(x)
    assert bands.shape == (2, 12, 3, 4)
    assert torch.allclose(haar_inverse(bands), x)
    assert torch.allclose(bands.square().sum(), x.square().sum())    # energy kept
    assert torch.allclose(bands[:, :3], x.unfold(2, 2, 2).unfold(3, 2, 2).sum((-1, -2)) / 2)
    with pytest.raises(ValueError, match="even"):
        haar_forward(torch.rand(1, 3, 5, 4))


def test_swdnet_loss_is_eq4_and_reaches_both_stages():
    torch.manual_seed(0)
    model = SWDNet()
    lr, hr = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 16, 16)
    loss, logs = swdnet_loss(model, lr, hr, LossConfig(kind="swdnet"))
    assert loss.item() == pytest.approx(0.1 * logs["l1"] + 0.1 * logs["l1_spatial"] + logs["l1_bands"], rel=1e-5)
    loss.backward()
    assert model.spatial.head.weight.grad.abs().sum() > 0
    assert model.wavelet.to_bands.weight.grad.abs().sum() > 0


def test_gan_objective_updates_the_critic_and_the_generator():
    torch.manual_seed(0)
    gen = Li2021Generator(Li2021Config(base_channels=4), scale=2)
    obj = GANObjective(LossConfig(kind="gan", gan_weight=0.5, d_lr=1e-3), torch.device("cpu"),
                       total_steps=10, cosine=True)
    lr, hr = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 32, 32)
    loss, logs = obj.generator_loss(gen, lr, hr)
    assert loss.item() == pytest.approx(0.5 * logs["l1"] + 0.5 * logs["gan_g"], rel=1e-5)
    obj.critic.zero_grad()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in gen.parameters())
    before = [p.detach().clone() for p in obj.critic.parameters()]
    logs_d = obj.critic_step()
    assert np.isfinite(logs_d["gan_d"])
    assert any(not torch.equal(a, b) for a, b in zip(before, obj.critic.parameters()))
    assert obj.optimizer.param_groups[0]["lr"] < 1e-3            # cosine-annealed
    with pytest.raises(RuntimeError):
        obj.critic_step()
    state = obj.state_dict()
    other = GANObjective(LossConfig(kind="gan"), torch.device("cpu"), total_steps=10, cosine=True)
    other.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(other.critic.parameters(), obj.critic.parameters()))


def test_critic_scores_one_value_per_16_pixel_patch():
    d = Li2021Discriminator(width=8)
    assert d(torch.rand(2, 3, 64, 48), torch.rand(2, 3, 64, 48)).shape == (2, 1, 4, 3)


def test_curriculum_grows_to_the_target_over_the_first_half():
    values = [curriculum_factor(t, 100, 4.0) for t in range(0, 101, 10)]
    assert values[0] == pytest.approx(2.0) and values[5] == pytest.approx(4.0)
    assert values == sorted(values) and values[-1] == 4.0
    assert 2.0 ** values[2] == pytest.approx(4 + 0.4 * 12)     # linear in 2**factor
    assert curriculum_factor(0, 100, 2.0) == 2.0
    rng = np.random.default_rng(0)
    draws = [sample_factor(1.2, rng) for _ in range(200)]
    assert min(draws) == 1.0 and max(draws) > 1.2
