"""``iste train`` for fixed-scale networks: their own scale, the whole HR crop, L1, resumable."""

import json

import pytest
import torch

import iste
from iste.models.registry import FIXED
from iste.train.config import bundled_configs, load_train_config, parse_train_config
from iste.train.dataset import CropDataset
from iste.train.sources import open_source
from iste.typed import ConfigError
from ranks import two_ranks, worker
from train_helpers import tiny_fixed_train_dict, train_straight_and_split


# The networks whose bundled configs this module checks; the histopathology networks
# (swdnet, srmfenet, li2021) bring theirs with their losses (tests/test_histo_training.py).
CONFIGURED = ("edsr", "rdn", "swinir")


def test_bundled_fixed_configs_exist_for_every_scale():
    names = bundled_configs()
    for arch in CONFIGURED:
        for s in FIXED[arch].scales:
            for name in (f"{arch}-x{s}", f"compact-{arch}-x{s}"):
                cfg = load_train_config(name)
                assert cfg.model.arch == arch and cfg.model.scale == s, name
                assert cfg.data.scale_min == cfg.data.scale_max == s
                assert cfg.data.val_scales == (s,) and cfg.data.patch == 48
    assert "edsr-x2" in names


def test_a_fixed_config_trains_at_its_own_scale_only(train_folder):
    cfg = parse_train_config(tiny_fixed_train_dict(train_folder, scale=3))
    assert (cfg.data.scale_min, cfg.data.scale_max, cfg.data.val_scales) == (3.0, 3.0, (3.0,))
    same = parse_train_config(tiny_fixed_train_dict(train_folder, scale=3,
                                                    data={"scale_max": 3}))
    assert same.data == cfg.data
    for key, value in (("scale_max", 4), ("scale_min", 1.0), ("val_scales", [2, 3])):
        with pytest.raises(ConfigError, match=rf"data\.{key}: EDSR x3 is a fixed-scale"):
            parse_train_config(tiny_fixed_train_dict(train_folder, scale=3, data={key: value}))
    with pytest.raises(ConfigError, match="samples no queries"):
        parse_train_config(tiny_fixed_train_dict(train_folder, data={"sample_q": 64}))


def test_the_dataset_gives_whole_hr_crops_of_patch_times_scale(train_folder):
    cfg = parse_train_config(tiny_fixed_train_dict(train_folder, scale=3))
    ds = CropDataset([open_source(str(train_folder))], cfg.data, seed=0, length=4,
                     whole_hr=True)
    sample = ds[1]
    assert set(sample) == {"lr", "hr", "scale"}
    assert sample["lr"].shape == (3, 16, 16) and sample["hr"].shape == (3, 48, 48)
    assert float(sample["scale"]) == 3.0
    # the same draw as the query dataset: the LR crops are identical
    queries = CropDataset([open_source(str(train_folder))], cfg.data, seed=0, length=4)
    assert torch.equal(queries[1]["lr"], sample["lr"])


def test_training_lowers_the_loss_resumes_exactly_and_gives_a_usable_checkpoint(
        train_folder, tmp_path):
    cfg = parse_train_config(tiny_fixed_train_dict(train_folder, steps=30, checkpoint_every=10,
                                                   val_every=30))
    straight, _, _ = train_straight_and_split(cfg, tmp_path, stop_after=10)
    log = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])
    assert {"psnr_x2", "bicubic_x2"} <= set(straight) and "psnr_x3" not in straight
    model = iste.load(tmp_path / "a" / "model.safetensors")
    assert model.scale == 2
    assert iste.upscale(torch.rand(3, 10, 12), 2, model).shape == (3, 20, 24)


def test_two_process_ddp_syncs_a_fixed_scale_network(train_folder, tmp_path):
    """Ranks draw different crops: equal replicas after 3 steps mean the gradients were
    averaged through DDP (the training step goes through a forward wrapper of ``sr``)."""
    two_ranks(worker("ddp_worker.py"), str(train_folder), str(tmp_path), "fixed")
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    start = build_model_state(tmp_path)
    assert any(not torch.equal(start[k], r0[k]) for k in r0)  # it did train


def build_model_state(tmp_path):
    from iste.models.registry import build_model

    torch.manual_seed(0)  # the run's seed: the weights before the first step
    cfg = parse_train_config(tiny_fixed_train_dict(tmp_path))
    return build_model(cfg.model).state_dict()
