"""GlaS / PCam downstream experiments: readers, networks, resumable training, end to end."""

import contextlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from model_zoo import tiny_config
from ranks import two_ranks, worker
from iste.cli.main import main
from iste.downstream.experiments.glas import GlasCrops
from iste.downstream.experiments.pcam import classification_scores
from iste.downstream.glas import load_glas_item, read_glas_index
from iste.downstream.pcam import PCamSplit, PCamTrainSet
from iste.downstream.resnet50 import resnet50
from iste.downstream.synthetic import write_glas, write_pcam
from iste.downstream.trainer import FitConfig, fit
from iste.downstream.unet import UNet
from iste.eval.methods import Method
from iste.models.checkpoint import CheckpointError, save_model
from iste.models.registry import build_model


# ---- networks -------------------------------------------------------------------------------
def test_resnet50_has_the_published_layout():
    # torchvision's resnet50 has 25 557 032 parameters with 1000 classes; with 2 classes the
    # fc layer shrinks by 2048 * 998 + 998
    assert sum(p.numel() for p in resnet50().parameters()) == 25_557_032 - 2048 * 998 - 998
    net = resnet50(width=4)
    for size in (96, 48):
        out = net(torch.rand(2, 3, size, size))
        assert out.shape == (2, 2) and torch.isfinite(out).all()


def test_unet_keeps_any_input_size_and_trains_every_parameter():
    net = UNet(width=4)
    x = torch.rand(1, 3, 37, 50)
    out = net(x)
    assert out.shape == (1, 2, 37, 50)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())



def test_unet_segments_an_image_smaller_than_its_pooling_grid():
    # a side no longer than its padding to a multiple of 16 cannot be reflect-padded: a GlaS
    # test image of 9 x 13 px (HR crop 8 x 12 at x4) stopped the run with torch's traceback
    net = UNet(width=2).eval()
    for h, w in ((8, 12), (1, 1), (5, 40), (40, 3)):
        with torch.no_grad():
            out = net(torch.rand(1, 3, h, w))
        assert out.shape == (1, 2, h, w) and torch.isfinite(out).all()


# ---- readers --------------------------------------------------------------------------------
def test_glas_reader_follows_grade_csv(tmp_path):
    root = write_glas(tmp_path / "g", counts=(("train", 2), ("testA", 1), ("testB", 1)))
    index = read_glas_index(root)
    assert [i.name for i in index["train"]] == ["train_1", "train_2"]
    image, anno = load_glas_item(index["testA"][0])
    assert image.shape == (64, 80, 3) and image.dtype == np.uint8
    assert anno.dtype == np.int32 and set(np.unique(anno)) <= {0, 1, 2, 3} and anno.max() >= 1


def test_a_glas_annotation_of_other_than_whole_labels_is_refused(tmp_path):
    # a float map (a TIFF under the .bmp name: PIL reads by content) was truncated, 1.6 -> 1
    root = write_glas(tmp_path / "g", counts=(("train", 1), ("testA", 1), ("testB", 1)))
    item = read_glas_index(root)["testA"][0]
    labels = np.zeros((64, 80), np.float32)
    labels[5:20, 5:30], labels[30:50, 10:25] = 1.0, 2.0
    Image.fromarray(labels).save(item.annotation, format="TIFF")
    assert np.array_equal(load_glas_item(item)[1], labels.astype(np.int32))  # whole: taken
    for bad in (1.6, -1.0, float("nan")):
        labels[0, 0] = bad
        Image.fromarray(labels).save(item.annotation, format="TIFF")
        with pytest.raises(ValueError, match=rf"whole gland labels >= 0; it has {bad:g} "
                                             r"\(float32 values\)"):
            load_glas_item(item)


def test_a_binary_glas_mask_is_split_into_its_glands(tmp_path):
    root = write_glas(tmp_path / "g", counts=(("train", 1), ("testA", 1), ("testB", 1)))
    item = read_glas_index(root)["testA"][0]
    instances = np.zeros((64, 80), np.uint8)  # three glands apart, as instance labels
    instances[5:20, 5:30], instances[30:50, 10:25], instances[25:60, 40:75] = 1, 2, 3
    Image.fromarray(instances).save(item.annotation)
    assert np.array_equal(load_glas_item(item)[1], instances)  # a label map: as it is
    Image.fromarray(np.where(instances > 0, 255, 0).astype(np.uint8)).save(item.annotation)
    with pytest.warns(UserWarning, match="binary mask .* its 3 connected regions"):
        _, split = load_glas_item(item)
    assert split.dtype == np.int32 and split.max() == 3
    assert np.array_equal(split > 0, instances > 0)
    for k in range(1, 4):  # each gland one object, as its instance label had it
        assert len(np.unique(instances[split == k])) == 1
    # 0/1 (a converter's mask, a 1-bit BMP) made all glands one object: Dice and Hausdorff
    # of one blob against the glands
    for mask in ((instances > 0).astype(np.uint8), instances > 0):
        Image.fromarray(mask).save(item.annotation)
        with pytest.warns(UserWarning, match=r"binary mask \(0 and 1\): its 3 connected"):
            assert np.array_equal(load_glas_item(item)[1], split)
    one = (instances == 3).astype(np.uint8)  # one gland labelled 1: a label map, as it is
    Image.fromarray(one).save(item.annotation)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(load_glas_item(item)[1], one)


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "Grade.csv").unlink(), "no Grade.csv"),
    (lambda r: (r / "testB_1_anno.bmp").unlink(), "testB_1_anno.bmp is missing"),
    (lambda r: (r / "Grade.csv").write_text("name,x\nval_1,1\n"), "no known split"),
    (lambda r: (r / "Grade.csv").write_text("name,x\ntrain_1,1\ntestA_1,1\ntestB_1,1\n"
                                            "testA_1,1\n"), "names 'testA_1' twice"),
])
def test_glas_reader_rejects_a_damaged_folder(tmp_path, damage, message):
    root = write_glas(tmp_path / "g", counts=(("train", 1), ("testA", 1), ("testB", 1)))
    damage(root)
    with pytest.raises(ValueError, match=message):
        read_glas_index(root)


def test_pcam_reader_streams_blocks_and_checks_shapes(tmp_path):
    root = write_pcam(tmp_path / "p", sizes=(("train", 6), ("valid", 2), ("test", 4)))
    split = PCamSplit(root, "train")
    x, y = split.read(2, 5)
    with h5py.File(root / "camelyonpatch_level_2_split_train_x.h5") as f:
        assert np.array_equal(x, f["x"][2:5])
    assert x.shape == (3, 96, 96, 3) and y.shape == (3,) and set(y) <= {0, 1}
    data = PCamTrainSet(split, seed=3, length=12)
    firsts = sorted(int(data._index(i)) for i in range(6))
    assert firsts == list(range(6))  # one epoch visits every patch once
    a, b = data[7], data[7]
    assert torch.equal(a[0], b[0]) and a[1] == b[1]  # sample i is a function of (seed, i)
    with h5py.File(root / "camelyonpatch_level_2_split_test_x.h5", "w") as f:
        f.create_dataset("x", data=np.zeros((4, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(N, 96, 96, 3\)"):
        PCamSplit(root, "test")
    (root / "camelyonpatch_level_2_split_valid_y.h5").unlink()
    with pytest.raises(ValueError, match="PCam file missing"):
        PCamSplit(root, "valid")



def _h5(path, key, data):
    with h5py.File(path, "w") as f:
        chunked = data.ndim > 0 and data.size > 0
        f.create_dataset(key, data=data, chunks=(1,) + data.shape[1:] if chunked else None,
                         compression="gzip" if chunked else None)


@pytest.mark.parametrize("kind, data, says", [
    # labels were cast to int before the check (0.6 -> 0) and read only while testing
    ("y", np.full((4, 1, 1, 1), 0.6, np.float32), r"labels must be 0 or 1, patch 0 has 0\.6"),
    ("y", np.array([0, 1, 1, np.nan], np.float32).reshape(4, 1, 1, 1), "patch 3 has nan"),
    ("y", np.array([b"0", b"1", b"1", b"0"]).reshape(4, 1, 1, 1), "patch 0 has b'0'"),
    ("x", None, "datasets 'x' and 'y' expected"),  # a group named x: AttributeError
    ("y", np.array(1, np.uint8), r"y must be \(N, 1, 1, 1\) with N = 4, got \(\)"),  # IndexError
    ("xy", np.zeros((0, 96, 96, 3), np.uint8), "PCam split 'test' has no patches"),
])
def test_pcam_labels_and_layout_are_checked_when_a_split_opens(tmp_path, kind, data, says):
    root = write_pcam(tmp_path / "p", sizes=(("test", 4),))
    x_path, y_path = (root / f"camelyonpatch_level_2_split_test_{k}.h5" for k in "xy")
    if kind == "y":
        _h5(y_path, "y", data)
    elif kind == "x":
        with h5py.File(x_path, "w") as f:
            f.create_group("x")
    else:
        _h5(x_path, "x", data)
        _h5(y_path, "y", np.zeros((0, 1, 1, 1), np.uint8))
    with pytest.raises(ValueError, match=says):
        PCamSplit(root, "test")


def test_a_damaged_pcam_chunk_is_one_line(tmp_path):
    # a chunk that does not decompress raised h5py's OSError with its traceback (exit 1)
    root = write_pcam(tmp_path / "p", sizes=(("test", 4),))
    path = root / "camelyonpatch_level_2_split_test_x.h5"
    split = PCamSplit(root, "test")
    with h5py.File(path, "r") as f:
        offset = f["x"].id.get_chunk_info(2).byte_offset  # chunk of patch 2
    data = bytearray(path.read_bytes())
    data[offset:offset + 64] = bytes(64)
    path.write_bytes(bytes(data))
    assert split.read(0, 2)[0].shape == (2, 96, 96, 3)  # the sound chunks still read
    with pytest.raises(ValueError, match=r"^cannot read patches 1-3 of PCam split 'test' "
                                         r"\(camelyonpatch_level_2_split_test_x.h5, "):
        split.read(1, 3)


def test_classification_scores_by_hand():
    prob = np.array([0.9, 0.8, 0.3, 0.6, 0.1])
    labels = np.array([1, 0, 1, 0, 0])
    s = classification_scores(prob, labels)
    assert s["accuracy"] == pytest.approx(2 / 5)  # tp 1, fp 2, fn 1, tn 1
    assert s["f1"] == pytest.approx(2 / (2 + 2 + 1))
    # positive scores 0.9, 0.3 against negatives 0.8, 0.6, 0.1: 0.9 beats 3, 0.3 beats 1
    assert s["auc"] == pytest.approx(4 / 6)


# ---- training -------------------------------------------------------------------------------
def test_an_interrupted_training_run_resumes_to_the_same_weights(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (24, 24, 3), dtype=np.uint8) for _ in range(2)]
    masks = [(im[..., 0] > 128).astype(np.int32) for im in images]
    cfg = FitConfig(steps=4, batch_size=2, lr=1e-2, checkpoint_every=2)
    data = GlasCrops(images, masks, crop=16, seed=0, length=8)

    def build():
        return UNet(width=2, depth=2)

    whole = fit(build, data, F.cross_entropy, cfg, tmp_path / "whole", spec={}, progress=False)

    class Stop(Exception):
        pass

    def stop_at_third(logits, target, calls=[0]):
        calls[0] += 1
        if calls[0] == 3:
            raise Stop
        return F.cross_entropy(logits, target)

    with pytest.raises(Stop):
        fit(build, data, stop_at_third, cfg, tmp_path / "split", spec={}, progress=False)
    resumed = fit(build, data, F.cross_entropy, cfg, tmp_path / "split", spec={}, progress=False)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    # a finished run's weights, removed or damaged, are written again from its state
    from safetensors import safe_open

    def weights():  # tensors and metadata (safetensors orders the metadata differently)
        with safe_open(str(tmp_path / "whole" / "weights.safetensors"), framework="pt") as f:
            return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}

    meta, tensors = weights()
    for damage in ("remove", b"junk"):
        if damage == "remove":
            (tmp_path / "whole" / "weights.safetensors").unlink()
        else:
            (tmp_path / "whole" / "weights.safetensors").write_bytes(damage)
        fit(build, data, F.cross_entropy, cfg, tmp_path / "whole", spec={}, progress=False)
        again_meta, again = weights()
        assert again_meta == meta and again.keys() == tensors.keys()
        assert all(torch.equal(again[k], v) for k, v in tensors.items())
    with pytest.raises(ValueError, match="other settings"):
        fit(build, data, F.cross_entropy, cfg, tmp_path / "split", spec={"x": 1}, progress=False)


def test_a_stop_before_the_first_step_or_after_the_last_is_saved_where_it_came(tmp_path):
    """A stop noted before a network's first step saved nothing (its line named a state that
    was not there); one noted in its last step lets the run finish, saved, and stops the
    command before the next network or the scoring."""
    import signal

    from iste import stopping

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)]
    data = GlasCrops(images, [(images[0][..., 0] > 128).astype(np.int32)], crop=16, seed=0,
                     length=6)
    cfg = FitConfig(steps=3, batch_size=2, lr=1e-2, checkpoint_every=100)

    def build():
        return UNet(width=2, depth=2)

    def sigterm_in_the_last_step(logits, target, calls=[0]):
        calls[0] += 1
        if calls[0] == 3:
            stopping.note(signal.SIGTERM)  # as the command line's handler does
        return F.cross_entropy(logits, target)

    for run, before, loss in (("first", True, F.cross_entropy),
                              ("last", False, sigterm_in_the_last_step)):
        try:
            if before:
                stopping.note(signal.SIGTERM)
            with pytest.raises(stopping.StoppedSaved) as stop:
                fit(build, data, loss, cfg, tmp_path / run, spec={}, progress=False)
        finally:
            stopping.forget()
        step = 0 if before else 3
        assert (stop.value.signum, stop.value.step, stop.value.steps) == (signal.SIGTERM, step, 3)
        assert stop.value.state == str(tmp_path / run / "train_state.pt")
        assert torch.load(tmp_path / run / "train_state.pt", weights_only=True)["step"] == step
    whole = fit(build, data, F.cross_entropy, cfg, tmp_path / "whole", spec={}, progress=False)
    for run in ("first", "last"):
        again = fit(build, data, F.cross_entropy, cfg, tmp_path / run, spec={}, progress=False)
        assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(),
                                                     again.state_dict().values()))


def test_an_unfinished_run_resumes_only_with_the_processes_that_trained_it(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)]
    data = GlasCrops(images, [(images[0][..., 0] > 128).astype(np.int32)], crop=16, seed=0,
                     length=8)

    def build():
        return UNet(width=2, depth=2)

    def stop_at_third(logits, target, calls=[0]):  # after the checkpoint of step 2
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return F.cross_entropy(logits, target)

    cfg = FitConfig(steps=4, batch_size=2, lr=1e-2, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):
        fit(build, data, stop_at_third, cfg, tmp_path / "part", spec={}, progress=False)
    fit(build, data, F.cross_entropy, cfg, tmp_path / "whole", spec={}, progress=False)
    for run, step in (("part", 2), ("whole", 4)):
        state = torch.load(tmp_path / run / "train_state.pt", weights_only=True)
        assert (state["step"], state["world"]) == (step, 1)
        torch.save({**state, "world": 2}, tmp_path / run / "train_state.pt")  # as 2 ranks save
    with pytest.raises(CheckpointError, match=r"trained by 2 process\(es\), this run has 1"):
        fit(build, data, F.cross_entropy, cfg, tmp_path / "part", spec={}, progress=False)
    # a finished run's weights serve any number of processes
    fit(build, data, F.cross_entropy, cfg, tmp_path / "whole", spec={}, progress=False)



class _BadSample(torch.utils.data.Dataset):
    """Sample 3 cannot be read (as a damaged PCam chunk); the others are (3, 16, 16) zeros."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i == 3:
            raise ValueError("cannot read patches 3-4 of PCam split 'train'")
        return torch.zeros(3, 16, 16), torch.zeros(16, 16, dtype=torch.int64)


def test_an_error_in_a_loader_worker_is_its_own_one_line(tmp_path):
    # with --workers, torch re-raised it with the worker's whole traceback as its message
    cfg = FitConfig(steps=4, batch_size=2, workers=1)
    with pytest.raises(ValueError) as err:
        fit(lambda: UNet(width=2, depth=2), _BadSample(), F.cross_entropy, cfg,
            tmp_path / "run", spec={}, progress=False)
    assert str(err.value) == "cannot read patches 3-4 of PCam split 'train'"


@pytest.mark.parametrize("content,says", [
    (b"", r"not a readable training state \(damaged, or not written by iste downstream: "),
    ([1, 2], r"not an iste training state \(it lacks step, spec, model"),
    ({"step": 4, "spec": {"fit": 1}}, r"not an iste training state \(it lacks model, optimizer"),
    ("whole", r"is damaged \(Error\(s\) in loading state_dict"),
    ("step", r"is damaged \(step 'x' is not a step count\)"),
    ("format", r"not an iste training state \(format 'x'\)"),
    ("newer", r"format 2, newer than format 1 that this iste reads \(written by a newer iste\)"),
])
def test_a_malformed_training_state_is_one_line(tmp_path, content, says):
    """A state that loads but is not what fit wrote (or does not load) names the file and
    says to remove it; it never resumes and never shows a traceback's TypeError/KeyError."""
    cfg = FitConfig(steps=2, batch_size=2)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)]
    data = GlasCrops(images, [np.zeros((24, 24), np.int32)], crop=16, seed=0, length=4)
    run = tmp_path / "run"
    fit(lambda: UNet(width=2, depth=2), data, F.cross_entropy, cfg, run, spec={},
        progress=False)
    state = torch.load(run / "train_state.pt", weights_only=True)
    if content == "whole":  # another network's weights under the run's own spec
        content = {**state, "model": {"weight": torch.zeros(1)}}
    elif content == "step":
        content = {**state, "step": "x"}
    elif content in ("format", "newer"):  # a state of a later layout was read as this one's
        assert state["format"] == 1
        content = {**state, "format": "x" if content == "format" else 2}
    if isinstance(content, bytes):
        (run / "train_state.pt").write_bytes(content)
    else:
        torch.save(content, run / "train_state.pt")
    with pytest.raises(ValueError, match=says) as err:
        fit(lambda: UNet(width=2, depth=2), data, F.cross_entropy, cfg, run, spec={},
            progress=False)
    message = str(err.value)
    assert "\n" not in message and str(run / "train_state.pt") in message
    assert message.endswith("resume it with that version" if "newer" in says else
                            "remove it to start the run over")


# ---- end to end -----------------------------------------------------------------------------
@pytest.fixture()
def iste_ckpt(tmp_path):
    return save_model(build_model(tiny_config("iste")), tmp_path / "iste.safetensors")


def count_upscales(monkeypatch) -> list:
    calls = []
    original = Method.upscale

    def upscale(self, lr, hr_hw, **kw):
        calls.append(self.name)
        return original(self, lr, hr_hw, **kw)
    monkeypatch.setattr(Method, "upscale", upscale)
    return calls


def _tiny_glas(root, ckpt, out) -> list[str]:
    """``iste downstream glas`` arguments: bicubic and ``ckpt`` on ``root``, 4 steps of tiny
    U-Nets on the CPU."""
    return ["downstream", "glas", "--data", str(root), "--methods",
            f"Bicubic=bicubic,ISTE={ckpt}", "--out", str(out), "--steps", "4",
            "--batch-size", "2", "--crop", "32", "--unet-width", "4", "--min-area", "10",
            "--device", "cpu", "--no-progress"]


def test_glas_end_to_end_produces_table5_and_resumes(tmp_path, iste_ckpt, monkeypatch, capsys):
    import iste.downstream.figures_seg as figures_seg

    root = write_glas(tmp_path / "glas")
    out = tmp_path / "report"
    argv = _tiny_glas(root, iste_ckpt, out)
    calls = count_upscales(monkeypatch)
    drawn, draw = {}, figures_seg.segmentation_figure

    def spy(path, image, truth, predictions, *, title):
        drawn.update({label: segmented for label, _, segmented in predictions}, hr=image,
                     name=title)
        return draw(path, image, truth, predictions, title=title)

    monkeypatch.setattr(figures_seg, "segmentation_figure", spy)
    assert main(argv) == 0
    # Fig. 11: a SISR setting's glands over the SR image its U-Net segmented (they were drawn
    # over the HR image); the other settings segmented the HR image
    for method in ("Bicubic", "ISTE"):
        sr = np.load(out / "sr" / method / f"{drawn['name']}.npy")
        assert np.array_equal(drawn[f"SISR: {method}"], sr)
        assert not np.array_equal(sr, drawn["hr"])
        assert drawn[f"Trained on {method}"] is drawn["Original HR"] is drawn["hr"]
    assert sorted(set(calls)) == ["Bicubic", "ISTE"] and len(calls) == 2 * 8
    table = json.loads((out / "table5_glas.json").read_text())
    settings = ["Original HR", "SISR: Bicubic", "Trained on Bicubic", "SISR: ISTE",
                "Trained on ISTE"]
    assert sorted({r["setting"] for r in table["rows"]}) == sorted(settings)
    assert {r["split"] for r in table["rows"]} == {"testA", "testB"}
    records = json.loads((out / "results_glas.json").read_text())["records"]
    assert len(records) == len(settings) * 4
    glands = {}
    for name in ("testA_1", "testA_2", "testB_1", "testB_2"):
        _, anno = load_glas_item(next(i for s in read_glas_index(root).values() for i in s
                                      if i.name == name))
        glands[name] = len(np.unique(anno[:64, :80])) - 1
    for r in records:  # every ground-truth gland is either detected or missed
        assert r["tp"] + r["fn"] == glands[r["image"]]
    for row in table["rows"]:
        if row["metric"] == "f1":
            mine = [r for r in records if r["setting"] == row["setting"]
                    and r["split"] == row["split"]]
            tp, fp, fn = (sum(r[k] for r in mine) for k in ("tp", "fp", "fn"))
            assert row["value"] == pytest.approx(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1)
    md = (out / "table5_glas.md").read_text()
    assert all(f"| {s} |" in md for s in settings)
    assert (out / "fig11_segmentations.png").stat().st_size > 10_000
    metrics = (out / "runs" / "unet-hr" / "metrics.jsonl").read_text()
    calls.clear()
    assert main(argv) == 0  # rerun: SR cached, training finished
    assert calls == []
    assert (out / "runs" / "unet-hr" / "metrics.jsonl").read_text() == metrics
    assert json.loads((out / "results_glas.json").read_text())["records"] == records



def test_a_sigterm_saves_the_step_it_stops_at_and_the_rerun_ends_as_an_uninterrupted_one(
        tmp_path, monkeypatch, capsys):
    """A scheduler's SIGTERM in the middle of a U-Net's training lost every step since its
    last checkpoint (1000 steps apart): the run now stops after the step under way, saves it,
    exits 143 with the command that continues it, and scores nothing of the partly trained
    network; the rerun ends with the weights, RNG, losses and scores of an uninterrupted run."""
    import signal

    root = write_glas(tmp_path / "glas")

    def argv(out):
        return ["downstream", "glas", "--data", str(root), "--methods", "Bicubic=bicubic",
                "--out", str(out), "--steps", "6", "--batch-size", "2", "--crop", "32",
                "--unet-width", "4", "--min-area", "10", "--device", "cpu", "--no-progress",
                "--threads", "1"]

    forward, calls = UNet.forward, []

    def sigterm_in_step_3(self, x):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return forward(self, x)

    split = tmp_path / "split"
    monkeypatch.setattr(UNet, "forward", sigterm_in_step_3)
    assert main(argv(split)) == 143
    state = split / "runs" / "unet-hr" / "train_state.pt"
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"iste: stopped by SIGTERM at step 3 of 6, saved in {state}; the run continues with: "
        f"iste {' '.join(argv(split))}")
    assert torch.load(state, weights_only=True)["step"] == 3
    assert sorted(p.name for p in split.iterdir()) == [".lock", "runs", "sr"]  # none scored
    assert sorted(p.name for p in (split / "runs").iterdir()) == ["unet-hr"]
    monkeypatch.setattr(UNet, "forward", forward)
    assert main(argv(split)) == 0
    assert main(argv(tmp_path / "straight")) == 0
    for run in ("unet-hr", "unet-Bicubic"):
        a, b = (torch.load(tmp_path / r / "runs" / run / "train_state.pt", weights_only=True)
                for r in ("straight", "split"))
        assert a["step"] == b["step"] == 6 and torch.equal(a["torch_rng"], b["torch_rng"])
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
        logged = [[{k: v for k, v in json.loads(x).items() if k in ("step", "loss", "lr")}
                   for x in (tmp_path / r / "runs" / run / "metrics.jsonl").read_text()
                   .splitlines()] for r in ("straight", "split")]
        assert logged[0] == logged[1] and logged[0][-1]["step"] == 6
    records = [json.loads((tmp_path / r / "results_glas.json").read_text())["records"]
               for r in ("straight", "split")]
    assert records[0] == records[1]


def test_a_sigterm_to_the_whole_job_saves_the_step_a_unet_stopped_at(tmp_path):
    """A scheduler's preemption signals every process of the job, the loader workers too: the
    run stops at a step boundary and saves it (its resume: the test above)."""
    import re
    import signal
    import time

    root, out = write_glas(tmp_path / "glas"), tmp_path / "out"
    cmd = [sys.executable, "-m", "iste", "downstream", "glas", "--data", str(root), "--methods",
           "Bicubic=bicubic", "--out", str(out), "--steps", "100000", "--batch-size", "2",
           "--crop", "32", "--unet-width", "2", "--workers", "1", "--device", "cpu",
           "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    err = tmp_path / "stderr"
    with open(err, "w") as stream:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stream,
                                start_new_session=True)
    try:  # the progress bar shows steps trained: the stop comes in the training loop
        deadline = time.time() + 120
        while (proc.poll() is None and time.time() < deadline
               and not re.search(r"U-Net hr: .*\b[1-9]\d*/100000", err.read_text())):
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    state = out / "runs" / "unet-hr" / "train_state.pt"
    step = torch.load(state, weights_only=True)["step"]
    said = [x for x in re.split(r"[\r\n]", err.read_text()) if x.startswith("iste: stopped")]
    assert (proc.returncode, said) == (143, [
        f"iste: stopped by SIGTERM at step {step} of 100000, saved in {state}; the run "
        f"continues with: iste {' '.join(cmd[3:])}"]), err.read_text()[-2000:]
    assert step >= 1


def test_glas_under_torchrun_trains_on_both_ranks_and_a_single_process_reuses_it(
        tmp_path, iste_ckpt, monkeypatch, capsys):
    """Two gloo ranks: rank 0 makes the SR cache, both train the U-Nets (DDP), rank 0 writes
    the tables; a later one-process run finds every SR image and finished U-Net reusable."""
    root = write_glas(tmp_path / "glas")
    out = tmp_path / "report"
    args = _tiny_glas(root, iste_ckpt, out)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    done = two_ranks("-m", "iste", *args, env=env)
    assert done.stdout.count("**Table 5.") == 1  # rank 0 alone reports
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["unet-Bicubic", "unet-ISTE", "unet-hr"]
    for run in runs:
        state = torch.load(out / "runs" / run / "train_state.pt", weights_only=True)
        assert (state["step"], state["world"]) == (4, 2)
    records = json.loads((out / "results_glas.json").read_text())["records"]
    assert len(records) == 5 * 4
    metrics = {r: (out / "runs" / r / "metrics.jsonl").read_text() for r in runs}
    calls = count_upscales(monkeypatch)
    assert main(args) == 0
    assert calls == []  # every SR image verified from the cache
    assert {r: (out / "runs" / r / "metrics.jsonl").read_text() for r in runs} == metrics
    assert json.loads((out / "results_glas.json").read_text())["records"] == records

def test_fit_under_torchrun_logs_the_loss_of_the_steps_whole_batch(tmp_path):
    """2 gloo ranks of 2 samples a step train as 1 process of 4 (the same samples, the mean
    gradient); the logged loss was rank 0's half of the batch alone."""
    from fit_helpers import fit_regression

    two_ranks(worker("ddp_fit_worker.py"), str(tmp_path / "two"), "2")
    alone = fit_regression(tmp_path / "one", 4)
    two = torch.load(tmp_path / "two" / "train_state.pt", weights_only=True)["model"]
    assert all(torch.allclose(two[k], v, atol=1e-6) for k, v in alone.state_dict().items())
    losses = [[json.loads(x)["loss"] for x in (tmp_path / run / "metrics.jsonl").read_text()
               .splitlines()] for run in ("two", "one")]
    assert len(losses[0]) == 3 and losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_pcam_end_to_end_produces_table6(tmp_path, iste_ckpt, capsys):
    root = write_pcam(tmp_path / "pcam")
    liif = save_model(build_model(tiny_config("liif")), tmp_path / "liif.safetensors")
    out = tmp_path / "report"
    assert main(["downstream", "pcam", "--data", str(root), "--methods",
                 f"Bicubic=bicubic,LIIF={liif},ISTE={iste_ckpt}", "--out", str(out),
                 "--steps", "3", "--batch-size", "4", "--resnet-width", "8", "--block", "5",
                 "--device", "cpu", "--no-progress"]) == 0
    table = json.loads((out / "table6_pcam.json").read_text())
    settings = ["Original", "Low resolution", "Bicubic", "LIIF", "ISTE"]
    assert [r["setting"] for r in table["rows"] if r["metric"] == "accuracy"] == settings
    assert all(r["n"] == 12 for r in table["rows"])
    for s in settings:
        probs = np.concatenate([np.load(p) for p in sorted((out / "prob" / s).glob("*.npy"))])
        assert probs.shape == (12,) and ((probs >= 0) & (probs <= 1)).all()
    results = json.loads((out / "results_pcam.json").read_text())
    with h5py.File(root / "camelyonpatch_level_2_split_test_y.h5") as f:
        labels = f["y"][:].reshape(-1)
    probs = np.concatenate([np.load(p) for p in sorted((out / "prob" / "ISTE").glob("*.npy"))])
    assert results["scores"]["ISTE"] == pytest.approx(classification_scores(probs, labels))
    assert "| Low resolution |" in (out / "table6_pcam.md").read_text()
    # a finished run whose weights were removed writes them again from train_state.pt
    (out / "runs" / "resnet50" / "weights.safetensors").unlink()
    assert main(["downstream", "pcam", "--data", str(root), "--methods",
                 f"Bicubic=bicubic,LIIF={liif},ISTE={iste_ckpt}", "--out", str(out),
                 "--steps", "3", "--batch-size", "4", "--resnet-width", "8", "--block", "5",
                 "--device", "cpu", "--no-progress"]) == 0
    assert json.loads((out / "results_pcam.json").read_text())["scores"] == results["scores"]



def test_pcam_reads_validation_and_test_patches_in_blocks(tmp_path, monkeypatch):
    # the validation split was read whole (32 768 patches: 0.9 GB) for its accuracy
    root = write_pcam(tmp_path / "pcam")
    reads = []
    original = PCamSplit.read

    def read(self, start, stop):
        reads.append((self.split, stop - start))
        return original(self, start, stop)
    monkeypatch.setattr(PCamSplit, "read", read)
    assert main(["downstream", "pcam", "--data", str(root), "--methods", "bicubic", "--out",
                 str(tmp_path / "o"), "--steps", "1", "--batch-size", "2", "--resnet-width",
                 "2", "--block", "3", "--device", "cpu", "--no-progress", "-q"]) == 0
    assert {split for split, _ in reads} == {"train", "valid", "test"}
    assert max(n for split, n in reads if split != "train") == 3
    assert sum(n for split, n in reads if split == "valid") == 8


def test_bad_downstream_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["downstream", "glas", "--data", str(tmp_path), "--methods", "bicubic",
                 "--out", str(tmp_path / "o")]) == 2
    assert "no Grade.csv" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # it held only .lock
    with pytest.raises(SystemExit) as ex:  # a usage error, before anything is read
        main(["downstream", "pcam", "--data", str(tmp_path), "--methods", "bicubic",
              "--out", str(tmp_path / "o"), "--steps", "0"])
    assert ex.value.code == 2
    assert main(["downstream", "pcam", "--data", str(tmp_path), "--methods", "bicubic",
                 "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()



def test_a_label_too_long_for_its_folders_is_refused_before_any_work(tmp_path, iste_ckpt,
                                                                      monkeypatch, capsys):
    """A method label of 251 to 255 bytes was a folder sr/LABEL, then failed as runs/unet-LABEL
    ('file name too long') once every image was super-resolved; in PCam, as prob/LABEL once
    the classifier was trained."""
    from iste.downstream.experiments import pcam

    calls = count_upscales(monkeypatch)
    label = "L" * 252
    argv = _tiny_glas(write_glas(tmp_path / "glas"), iste_ckpt, tmp_path / "g")
    argv[argv.index("--methods") + 1] = f"{label}={iste_ckpt}"
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"its folder runs/unet-{label} in --out" in err, err
    assert calls == [] and not (tmp_path / "g").exists()

    def must_not_train(*args, **kwargs):
        raise AssertionError("the classifier trained")

    monkeypatch.setattr(pcam, "fit", must_not_train)
    label = "L" * 256
    assert main(["downstream", "pcam", "--data", str(write_pcam(tmp_path / "pcam")),
                 "--methods", f"{label}={iste_ckpt}", "--out", str(tmp_path / "p"),
                 "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"its folder prob/{label} in --out" in err and "shorter label" in err, err
    assert not (tmp_path / "p").exists()

PCAM_FAST = ["--steps", "1", "--batch-size", "2", "--resnet-width", "2", "--block", "3"]
GLAS_FAST = ["--steps", "4", "--batch-size", "2", "--crop", "32", "--unet-width", "4",
             "--min-area", "10", "--device", "cpu", "--no-progress"]


def test_glas_refuses_other_settings_before_remaking_the_sr(tmp_path, capsys):
    data = write_glas(tmp_path / "data", counts=(("train", 2), ("testA", 1), ("testB", 1)))
    run = ["downstream", "glas", "--data", str(data), "--methods", "B=bicubic", *GLAS_FAST,
           "--out", str(tmp_path / "o"), "-q"]
    assert main(run) == 0
    cache = sorted((tmp_path / "o" / "sr").rglob("*.npy"))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in cache}
    capsys.readouterr()
    assert main([*run, "--degradation", "paper"]) == 2
    assert "differ" in capsys.readouterr().err
    # the SR images of the run there were neither remade nor replaced before the refusal
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in cache} == before


def test_glas_never_reuses_what_other_data_made(tmp_path, capsys):
    import shutil

    data = write_glas(tmp_path / "data")
    run = ["downstream", "glas", "--data", str(data), "--methods", "B=bicubic", *GLAS_FAST]
    assert main([*run, "--out", str(tmp_path / "o"), "-q"]) == 0  # options after the task
    shutil.rmtree(data)
    write_glas(data, seed=7)  # other images under the same names
    capsys.readouterr()
    # the trained U-Nets are not taken for the new data: refused, naming what differs ...
    assert main([*run, "--out", str(tmp_path / "o")]) == 2
    assert "(its train_data differ)" in capsys.readouterr().err
    # ... and the SR images, cached per image, are made again from the new pixels
    shutil.rmtree(tmp_path / "o" / "runs")
    assert main([*run, "--out", str(tmp_path / "o"), "-q"]) == 0
    assert main([*run, "--out", str(tmp_path / "fresh"), "-q"]) == 0
    for sr in (tmp_path / "fresh" / "sr" / "B").glob("*.npy"):
        assert np.array_equal(np.load(sr), np.load(tmp_path / "o" / "sr" / "B" / sr.name))
    table = json.loads((tmp_path / "o" / "table5_glas.json").read_text())
    assert table == json.loads((tmp_path / "fresh" / "table5_glas.json").read_text())


@pytest.mark.parametrize("task,extra,says", [
    ("glas", ["--methods", "hr=bicubic"], "method name 'hr' is the HR images' own"),
    # a disk that ignores case (macOS) made runs/unet-ISTE and runs/unet-iste one folder: the
    # second U-Net was refused there, after the SR of every image and the first U-Net
    ("glas", ["--methods", "ISTE=bicubic,iste=bicubic"],
     "method names ISTE and iste differ only by case"),
    # PCam's prob/ISTE and prob/iste too: the second method's probabilities were the first's
    ("pcam", ["--methods", "ISTE=bicubic,iste=bicubic", *PCAM_FAST],
     "method names ISTE and iste differ only by case"),
    ("pcam", ["--methods", "original=bicubic", *PCAM_FAST],
     "method name 'original' is a fixed row"),
    ("glas", ["--methods", "bicubic", "--crop", "0"], "--crop must be >= 32, got 0"),
    ("glas", ["--methods", "bicubic", "--max-images", "-1"], "--max-images must be >= 1"),
    ("pcam", ["--methods", "bicubic", "--max-train", "0"], "--max-train must be >= 1"),
    ("pcam", ["--methods", "bicubic", "--max-test", "0"], "--max-test must be >= 1"),
    ("pcam", ["--methods", "bicubic", "--block", "0"], "--block must be >= 1"),
    ("glas", ["--methods", "bicubic", "--opening-radius", "-1"], "--opening-radius must be >= 0"),
    ("glas", ["--methods", "bicubic", "--min-area", "-5"], "--min-area must be >= 0, got -5"),
    ("glas", ["--methods", "bicubic", "--unet-width", "0"], "--unet-width must be >= 1, got 0"),
    ("pcam", ["--methods", "bicubic", "--resnet-width", "0"], "--resnet-width must be >= 1"),
])
def test_bad_downstream_options_are_one_line_before_any_work(tmp_path, capsys, task, extra,
                                                              says):
    data = write_glas(tmp_path / "data") if task == "glas" else write_pcam(tmp_path / "data")
    assert main(["downstream", task, "--data", str(data), "--out", str(tmp_path / "o"),
                 "--device", "cpu", "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err
    assert not (tmp_path / "o" / "runs").exists()



@pytest.mark.parametrize("change, says", [
    # the crop was checked against the training images only after the SR of every image
    ("crop", "--crop 100 is larger than the smallest training image (64 px)"),
    # an image smaller than the scale: "target size must be positive", naming no image
    ("tiny", "testB_2: a 3 x 3 image is too small for x4 (its LR would be 0 x 0)"),
])
def test_glas_data_that_cannot_serve_is_named_before_any_sr(tmp_path, capsys, change, says):
    from PIL import Image

    data = write_glas(tmp_path / "data")
    extra = ["--crop", "100"] if change == "crop" else []
    if change == "tiny":
        Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(data / "testB_2.bmp")
        Image.fromarray(np.zeros((3, 3), np.uint8)).save(data / "testB_2_anno.bmp")
    out = tmp_path / "o"
    assert main(["downstream", "glas", "--data", str(data), "--methods", "bicubic", "--out",
                 str(out), *GLAS_FAST, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert f"iste: error: {says}" in err and "\n" not in err
    assert not (out / "sr").exists()


def test_a_damaged_pcam_file_is_one_line(tmp_path, capsys):
    data = write_pcam(tmp_path / "data")
    (data / "camelyonpatch_level_2_split_test_x.h5").write_bytes(b"")
    assert main(["downstream", "pcam", "--data", str(data), "--methods", "bicubic", "--out",
                 str(tmp_path / "o"), "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot read PCam split 'test'" in err and "\n" not in err


def test_a_grade_csv_that_is_not_utf8_is_named(tmp_path):
    data = write_glas(tmp_path / "data")
    (data / "Grade.csv").write_bytes("name,grade\ntrain_1,b\xe9nin\n".encode("latin-1"))
    with pytest.raises(ValueError, match="Grade.csv: not UTF-8 text"):
        read_glas_index(data)


@pytest.mark.parametrize("task", ["glas", "pcam"])
def test_a_second_run_into_an_out_in_use_is_refused(tmp_path, capsys, task):
    # two runs into one --out trained into the same run folders (two records per step in
    # their metrics) and one's results replaced the other's, both exiting 0
    from iste.locks import folder_lock

    data = write_glas(tmp_path / "data") if task == "glas" else write_pcam(tmp_path / "data")
    out = tmp_path / "o"
    with folder_lock(out, "held"):  # as another process's run holds it
        assert main(["downstream", task, "--data", str(data), "--methods", "bicubic",
                     "--out", str(out), "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"another iste downstream run is writing {out}" in err and "\n" not in err
    assert not (out / "runs").exists()


def test_a_cached_array_records_the_bytes_it_wrote(tmp_path, monkeypatch):
    # the sha256 was taken of the file at the path after the write: another process's array
    # written there meanwhile was recorded under this tag, and reused as this one's
    from iste import files
    from iste.downstream import cache

    path = tmp_path / "sr.npy"
    rename = files.write_atomic

    def swapped(target, write, **kwargs):  # another writer's array lands right after ours
        rename(target, write, **kwargs)
        if str(target).endswith(".npy"):
            np.save(target, np.zeros(3))

    monkeypatch.setattr(files, "write_atomic", swapped)
    cache.cached_array(path, {"scale": 4.0}, lambda: np.ones(3))
    monkeypatch.undo()
    again = cache.cached_array(path, {"scale": 4.0}, lambda: np.full(3, 7.0))
    assert again.tolist() == [7.0, 7.0, 7.0]  # the other bytes did not verify: recomputed


@pytest.mark.parametrize("scale, side", [(2.0, 96), (2.5, 95), (3.3, 96)])
def test_pcam_rows_score_the_same_pixels_at_any_scale(scale, side):
    # at x2.5 the LR (38 x 38) covers 95 x 95 of the patch: Original is that crop, as the SR
    # rows are (docs/downstream.md)
    from iste.downstream.experiments.pcam import PCamRequest, _block_settings
    from iste.eval.methods import load_methods

    block = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    req = PCamRequest(data=Path("."), methods=("bicubic",), out=Path("."), scale=scale)
    rows = {k: f() for k, f in _block_settings(block, req, load_methods(["bicubic"])).items()}
    assert rows["Original"].shape == rows["bicubic"].shape == (2, side, side, 3)
    assert np.array_equal(rows["Original"], block[:, :side, :side])
    lr_side = int(96 / scale)
    assert rows["Low resolution"].shape == (2, lr_side, lr_side, 3)


def test_loader_workers_are_bounded_as_training_bounds_them():
    # --workers 100000 forked loader processes until the machine ran out of them; training's
    # run.workers was already bounded (iste.typed.MAX_LOADER_WORKERS)
    assert FitConfig(workers=256).workers == 256
    for bad in (-1, 257, 100000):
        with pytest.raises(ValueError, match=rf"workers must be in 0\.\.256, got {bad}"):
            FitConfig(workers=bad)


@pytest.mark.parametrize("field, value, says", [
    ("lr", float("inf"), r"lr must be in \(0, 1\], got inf"),  # trained to NaN
    ("lr", 5.0, r"lr must be in \(0, 1\]"),
    ("seed", -5, r"seed must be in 0\.\.18446744073709551615, got -5"),  # first sample failed
    ("weight_decay", float("nan"), "weight decay must be in"),
])
def test_fit_settings_that_fail_later_are_refused_when_given(field, value, says):
    with pytest.raises(ValueError, match=says):
        FitConfig(**{field: value})


def test_glas_names_a_method_trained_on_its_images(tmp_path):
    # iste eval named such a method; the downstream experiments, which load the same methods,
    # gave their tables without a word (eval.methods.warn_seen, read by both). An image of
    # the GlaS folder that is a link to an image of the SR training data is named too
    # (iste.data.places.folder_places): it was not, the folder's place being its own
    import shutil

    from iste.data.places import place

    data = write_glas(tmp_path / "data", counts=(("train", 2), ("testA", 1), ("testB", 1)))
    seen = save_model(build_model(tiny_config("liif")), tmp_path / "seen.safetensors",
                      meta={"train_sources": [place(data)]})
    (tmp_path / "sr-train").mkdir()
    moved = shutil.move(data / "testB_1.bmp", tmp_path / "sr-train" / "b.bmp")
    (data / "testB_1.bmp").symlink_to(moved)
    linked = save_model(build_model(tiny_config("liif")), tmp_path / "linked.safetensors",
                        meta={"train_sources": [place(tmp_path / "sr-train")]})
    with pytest.warns(UserWarning) as warned:
        assert main(["downstream", "glas", "--data", str(data), "--methods",
                     f"S={seen},L={linked}", *GLAS_FAST, "--out", str(tmp_path / "o"),
                     "-q"]) == 0
    said = [str(w.message) for w in warned if "has seen the test data" in str(w.message)]
    assert said == [f"method {m} has seen the test data in training (test data {t}): its "
                    "scores say nothing of unseen images" for m, t in (
                        ("S", f"{data.resolve()} is its training source {data.resolve()}"),
                        ("L", f"{moved.resolve()} shares images with its training source "
                              f"{(tmp_path / 'sr-train').resolve()}"))]


def test_glas_tags_a_fixed_scale_methods_sr_with_the_checkpoint_that_made_it(
        tmp_path, capsys, monkeypatch):
    # EDSR=x2,EDSR=x4 at x4 runs the x4 checkpoint, but its SR images and its U-Net were
    # tagged with the x2 checkpoint's digest: an x4 checkpoint retrained in place was taken
    # for the cached SR and the finished U-Net, and the table came from the old weights
    import shutil

    from model_zoo import tiny_fixed

    data = write_glas(tmp_path / "data", counts=(("train", 1), ("testA", 1), ("testB", 1)))
    ckpt = {s: tmp_path / f"edsr_x{s}.safetensors" for s in (2, 4)}

    def train(scale: int, seed: int) -> None:
        torch.manual_seed(seed)
        save_model(build_model(tiny_fixed("edsr", scale)), ckpt[scale])

    train(2, 0)
    train(4, 0)
    run = ["downstream", "glas", "--data", str(data), *GLAS_FAST, "-q", "--methods"]
    both = [*run, f"EDSR={ckpt[2]},EDSR={ckpt[4]}", "--out", str(tmp_path / "o")]
    assert main(both) == 0
    train(4, 1)
    capsys.readouterr()
    assert main(both) == 2  # the U-Net trained on the old weights' SR is not taken
    assert "(its train_images differ)" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "o" / "runs")
    calls = count_upscales(monkeypatch)
    assert main(both) == 0
    assert calls == ["EDSR"] * 3  # every SR image made again, by the new weights
    # a fixed-scale method without a checkpoint for the scale: refused before any work (it
    # stopped at the first SR, inside the engine)
    assert main([*run, f"EDSR={ckpt[2]}", "--out", str(tmp_path / "x2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "iste: error: method EDSR has no model for x4 (it has x2)"
    assert not (tmp_path / "x2" / "sr").exists()


def test_sr_tags_hold_the_precision_auto_picks_on_the_machine(monkeypatch):
    # "auto" is bf16 for a wide model where the device has bf16 units and fp32 elsewhere:
    # tagged "auto", SR images made in bf16 on a GPU were read as the fp32 ones on a CPU
    from iste import runtime
    from iste.downstream.experiments.common import sr_tag
    from iste.engine.render import QueryOptions

    wide = Method("W", "W", "digest", model=build_model(tiny_config("liif", hidden=[256])))
    tags = {}
    for fast in (True, False):
        monkeypatch.setattr(runtime, "bf16_is_fast", lambda device, fast=fast: fast)
        tags[fast] = sr_tag(wide, 2.0, "bicubic", QueryOptions(precision="auto", chunk=64))
    assert (tags[True]["precision"], tags[False]["precision"]) == ("bf16", "fp32")
    assert "chunk" not in tags[True]  # the speed knobs are not part of it
    tags[True].pop("precision"), tags[False].pop("precision")
    assert tags[True] == tags[False]


def test_pcam_refuses_a_fixed_scale_method_without_the_scale_before_training(tmp_path, capsys):
    # it was refused by the engine at the first test block, after the ResNet's training
    from model_zoo import tiny_fixed

    ckpt = save_model(build_model(tiny_fixed("edsr", 4)), tmp_path / "edsr_x4.safetensors")
    data = write_pcam(tmp_path / "data", sizes=(("train", 4), ("valid", 2), ("test", 2)))
    assert main(["downstream", "pcam", "--data", str(data), "--methods", f"EDSR={ckpt}",
                 "--out", str(tmp_path / "o"), "--steps", "1", "--batch-size", "2",
                 "--resnet-width", "2", "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "iste: error: method EDSR has no model for x2 (it has x4)"
    assert not (tmp_path / "o" / "runs").exists()
