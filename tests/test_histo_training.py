"""Training losses of SWD-Net (Eq. 4) and Li et al. (L1 + conditional LSGAN, curriculum)."""

import json
import warnings

import numpy as np
import pytest
import torch

from iste.models.fixed.li2021 import Li2021Config, Li2021Discriminator, Li2021Generator
from iste.models.fixed.swdnet import SWDNet, SWDNetConfig
from iste.models.layers.haar import haar_forward, haar_inverse
from iste.train.config import parse_train_config
from iste.train.loop import train
from iste.train.objectives import (GANObjective, LossConfig, curriculum_factor, sample_factor,
                                   swdnet_loss)
from iste.train.schedule import make_scheduler, resolve_schedule
from iste.typed import ConfigError
from model_zoo import tiny_fixed
from ranks import two_ranks, worker
from train_helpers import tiny_fixed_train_dict, train_straight_and_split


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
    loss, logs = swdnet_loss(model.stages(lr), hr, LossConfig(kind="swdnet"))
    assert loss.item() == pytest.approx(
        0.1 * logs["l1"] + 0.1 * logs["l1_spatial"] + logs["l1_bands"], rel=1e-5)
    loss.backward()
    assert model.spatial.head.weight.grad.abs().sum() > 0
    assert model.wavelet.to_bands.weight.grad.abs().sum() > 0


def test_gan_objective_updates_the_critic_and_the_generator():
    torch.manual_seed(0)
    gen = Li2021Generator(Li2021Config(base_channels=4), scale=2)
    obj = GANObjective(LossConfig(kind="gan", gan_weight=0.5, d_lr=1e-3), torch.device("cpu"),
                       total_steps=10, cosine=True)
    lr, hr = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 32, 32)
    cond = gen.upsample_input(lr)
    loss, logs = obj.generator_loss(gen(cond), cond, hr)
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
    other.load_state_dict(state, step=1)
    assert all(torch.equal(a, b)
               for a, b in zip(other.critic.parameters(), obj.critic.parameters()))
    assert other.scheduler.T_max == 10  # a resumed run's own length, as its generator's
    same = LossConfig(kind="gan", gan_weight=0.5, d_lr=1e-3)
    longer = GANObjective(same, torch.device("cpu"), total_steps=40, cosine=True)
    longer.load_state_dict(state, step=1)  # a run extended with --steps: the critic anneals to 40
    straight = GANObjective(same, torch.device("cpu"), total_steps=40, cosine=True)
    with warnings.catch_warnings():  # the schedule alone, on purpose: no optimiser step
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        for _ in range(obj.scheduler.last_epoch):
            straight.scheduler.step()
    assert longer.scheduler.T_max == 40
    assert longer.optimizer.param_groups[0]["lr"] == pytest.approx(
        straight.optimizer.param_groups[0]["lr"], rel=1e-6)


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


def test_swdnet_spatial_phase_trains_the_spatial_stage_only():
    torch.manual_seed(0)
    model = SWDNet(SWDNetConfig(blocks=1, wavelet_width=4))
    loss, logs = swdnet_loss(model.spatial(torch.rand(1, 3, 8, 8)), torch.rand(1, 3, 16, 16),
                             LossConfig(kind="swdnet_spatial"))
    loss.backward()
    assert set(logs) == {"l1_spatial"}
    assert all(p.grad is None for p in model.wavelet.parameters())
    assert all(p.grad is not None for p in model.spatial.parameters())


def test_loss_config_refuses_a_curriculum_without_the_gan():
    with pytest.raises(ValueError, match="curriculum"):
        LossConfig(kind="l1", curriculum=True)
    with pytest.raises(ValueError, match="loss.kind"):
        LossConfig(kind="perceptual")


# -- through iste's trainer ------------------------------------------------------------------


def histo_train(folder, arch, scale, loss=None, optim=None, **run) -> dict:
    """4 steps on 16 x 16 LR crops, checkpoints every 2, lr 1e-3; validation on one 64-px
    tile."""
    return tiny_fixed_train_dict(folder, arch, scale, {"val_tile": 64, "val_tiles": 1},
                                 loss=loss or {}, optim={"lr": 1e-3, **(optim or {})},
                                 **{"steps": 4, "checkpoint_every": 2, **run})


def test_li2021_gan_with_curriculum_trains_and_resumes_its_critic_exactly(train_folder,
                                                                          tmp_path):
    cfg = parse_train_config(histo_train(
        train_folder, "li2021", 2, loss={"kind": "gan", "gan_weight": 0.5, "d_lr": 1e-3,
                                         "curriculum": True},
        optim={"schedule": "cosine", "min_lr_ratio": 0.05}))
    _, a, b = train_straight_and_split(cfg, tmp_path, stop_after=2)
    for k in a["objective"]["critic"]["critic"]:
        assert torch.equal(a["objective"]["critic"]["critic"][k],
                           b["objective"]["critic"]["critic"][k]), k
    log = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert all({"l1", "gan_g", "gan_d"} <= set(r) for r in log if "loss" in r)
    assert [r["lr"] for r in log if "lr" in r][-1] < 1e-3          # cosine


def test_the_curriculum_under_torchrun_degrades_each_crop_as_one_process_would(
        train_folder, tmp_path, monkeypatch):
    """2 ranks of batch 2 against 1 process of batch 4: every rank drew the first 2 factors
    of the step, so rank 1's crops took rank 0's factors, not the batch's third and fourth."""
    from iste.train import objectives

    two_ranks(worker("ddp_curriculum_worker.py"), str(train_folder), str(tmp_path))
    real, alone = objectives.curriculum_input, []
    monkeypatch.setattr(objectives, "curriculum_input",
                        lambda *a, **k: alone.append(real(*a, **k)) or alone[-1])
    raw = tiny_fixed_train_dict(train_folder, "li2021", steps=2, checkpoint_every=100,
                                batch_size=4, loss={"kind": "gan", "curriculum": True},
                                data={"val": []})  # ddp_curriculum_worker's, batch 2 x 2
    train(parse_train_config(raw), tmp_path / "one", progress=False, device=torch.device("cpu"))
    ranks = [torch.load(tmp_path / f"inputs{rank}.pt") for rank in (0, 1)]
    assert len(alone) == len(ranks[0]) == len(ranks[1]) == 2
    for step, whole in enumerate(alone):
        assert torch.equal(torch.cat([ranks[0][step], ranks[1][step]]), whole), step


def _nan_critic_moment(critic):
    moments = critic["optimizer"]["state"][0]
    moments["exp_avg"] = moments["exp_avg"] * np.nan


@pytest.mark.parametrize("damage,says", [
    (_nan_critic_moment, "critic optimizer state exp_avg holds NaN"),
    (lambda c: c["optimizer"]["state"][0].update(exp_avg_sq=torch.zeros(2)),
     "critic optimizer state exp_avg_sq of shape \\(2,\\)"),
    (lambda c: c["optimizer"]["param_groups"][0].update(lr="x"), "critic optimizer group 0.lr"),
    (lambda c: c["scheduler"].update(last_epoch=1), "critic scheduler at step 1, the run at 2"),
    (lambda c: c.update(scheduler=None), "critic scheduler: saved for another schedule"),
    (lambda c: next(iter(c["critic"].values())).fill_(np.nan), "critic: weights contain NaN"),
])
def test_a_damaged_critic_state_is_refused_on_resume(train_folder, tmp_path, damage, says):
    """Each of these trained on (NaN critic weights or moments poison the generator's
    adversarial loss at the first step) or was a traceback."""
    from iste.models.checkpoint import CheckpointError
    from iste.train.state import STATE_FILE, load_state

    loss = {"kind": "gan", "gan_weight": 0.5, "d_lr": 1e-3}
    run = tmp_path / "r"
    cosine = {"schedule": "cosine", "min_lr_ratio": 0.05}
    train(parse_train_config(histo_train(train_folder, "li2021", 2, loss=loss, optim=cosine,
                                         steps=2)), run, progress=False)
    state = load_state(run)
    damage(state["objective"]["critic"])
    torch.save(state, run / STATE_FILE)
    with pytest.raises(CheckpointError, match=f"{STATE_FILE} is damaged \\({says}") as err:
        train(parse_train_config(histo_train(train_folder, "li2021", 2, loss=loss,
                                             optim=cosine, steps=3)),
              run, resume=True, progress=False)
    assert "\n" not in str(err.value)


def test_swdnet_trains_with_eq4_and_clipped_gradients(train_folder, tmp_path):
    cfg = parse_train_config(histo_train(train_folder, "swdnet", 2, loss={"kind": "swdnet"},
                                         optim={"clip_grad_norm": 0.4, "weight_decay": 1e-5}))
    last = train(cfg, tmp_path / "run", progress=False)
    assert last["step"] == 4 and {"l1", "l1_spatial", "l1_bands"} <= set(last)


def test_step_and_cosine_schedules():
    cfg = parse_train_config({"model": tiny_fixed("srmfenet", 2), "optim": {
        "lr": 1e-3, "schedule": "step", "step_every": 3, "gamma": 0.5}, "run": {"steps": 10}})
    plan = resolve_schedule(cfg, None)
    assert plan.milestones == (3, 6, 9)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched = make_scheduler(opt, cfg, plan)
    lrs = []
    for _ in range(10):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert lrs[1] == 1e-3 and lrs[2] == 5e-4 and lrs[-1] == pytest.approx(1.25e-4)
    cfg = parse_train_config({"model": tiny_fixed("li2021", 2), "optim": {
        "lr": 1e-3, "schedule": "cosine", "min_lr_ratio": 0.1}, "run": {"steps": 10}})
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched = make_scheduler(opt, cfg, resolve_schedule(cfg, None))
    for _ in range(10):
        opt.step()
        sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(1e-4)


@pytest.mark.parametrize("config,message", [
    ({"model": {"arch": "edsr", "scale": 2}, "loss": {"kind": "swdnet"}}, "loss of swdnet"),
    ({"model": {"head": "liif", "encoder": "edsr-baseline"}, "loss": {"kind": "gan"}},
     "loss of li2021"),
    ({"model": {"arch": "li2021", "scale": 2}, "optim": {"schedule": "cosine",
                                                        "milestones": [5]}}, "multistep"),
    ({"model": {"arch": "srmfenet", "scale": 2}, "optim": {"schedule": "step"}}, "step_every"),
    ({"model": {"arch": "srmfenet", "scale": 2}, "loss": {"kind": "l1", "gan": 1}}, "unknown"),
])
def test_bad_loss_and_schedule_configs_name_the_problem(config, message):
    with pytest.raises(ConfigError, match=message):
        parse_train_config(config)


HISTO_LOSS = {"swdnet": "swdnet", "srmfenet": "l1", "li2021": "gan"}


def test_bundled_configs_of_the_histopathology_baselines():
    from iste.models.registry import FIXED
    from iste.train.config import load_train_config

    for arch, kind in HISTO_LOSS.items():
        for s in FIXED[arch].scales:
            for name in (f"{arch}-x{s}", f"compact-{arch}-x{s}"):
                cfg = load_train_config(name)
                assert (cfg.model.arch, cfg.model.scale, cfg.loss.kind) == (arch, s, kind), name
                assert cfg.data.scale_min == cfg.data.scale_max == s and cfg.data.patch == 48
    assert load_train_config("swdnet-x2-spatial").loss.kind == "swdnet_spatial"
    li = load_train_config("li2021-x4")
    assert li.loss.curriculum and li.optim.schedule == "cosine" and li.loss.d_lr == 1e-5
    assert li.loss.critic_width == 64
    assert load_train_config("compact-li2021-x2").loss.critic_width == 16
    assert load_train_config("srmfenet-x3").optim.step_every == 2
    assert load_train_config("swdnet-x2").optim.clip_grad_norm == 0.4
