"""A run folder as a careless or unlucky user meets it: extended, killed, shared, reused."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from iste.data.images import ImageReadError
from iste.data.imagewrite import write_image
from iste.models.checkpoint import CheckpointError
from iste.train import loop
from iste.train.config import parse_train_config
from iste.train.loop import train
from iste.train.sources import FolderSource
from iste.train.state import STATE_FILE, load_state
from train_helpers import synthetic_folder, tiny_train_dict


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return synthetic_folder(tmp_path_factory.mktemp("imgs"), n=3, size=200)


def _lrs(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["lr"] for r in records if "lr" in r}


def test_an_extended_run_follows_its_new_length(folder, tmp_path):
    cosine = {"lr": 1e-3, "schedule": "cosine"}
    short = parse_train_config({**tiny_train_dict(folder, steps=6), "optim": cosine})
    train(short, tmp_path / "r", progress=False)
    longer = parse_train_config({**tiny_train_dict(folder, steps=12), "optim": cosine})
    train(longer, tmp_path / "r", resume=True, progress=False)
    train(longer, tmp_path / "straight", progress=False)
    lrs, straight = _lrs(tmp_path / "r"), _lrs(tmp_path / "straight")
    after = [lrs[s] for s in range(7, 13)]
    assert all(a > b for a, b in zip(after, after[1:]))  # still annealing, never back up
    for s in range(7, 13):  # on the 12-step curve from step 7 on
        assert lrs[s] == pytest.approx(straight[s], rel=1e-6)
    assert after[-1] == pytest.approx(0, abs=1e-9)


def test_a_run_cannot_resume_to_fewer_steps_than_it_has_done(folder, tmp_path):
    train(parse_train_config(tiny_train_dict(folder)), tmp_path / "r", progress=False)
    with pytest.raises(CheckpointError, match=r"at step 6, past the 3 steps asked for; give "
                                              r"more steps \(--steps\)"):
        train(parse_train_config(tiny_train_dict(folder, steps=3)), tmp_path / "r",
              resume=True, progress=False)


def test_an_epoch_run_whose_folder_lost_images_says_why_it_is_past_its_end(tmp_path):
    """An epoch run's steps follow its images: with one removed, its resume said 'past the 2
    steps asked for; give more steps to extend it', but none were asked for and --steps is
    refused for such a run; the change of images was not said."""
    imgs = synthetic_folder(tmp_path / "imgs", n=3, size=200)
    d = tiny_train_dict(imgs)
    del d["run"]["steps"]
    cfg = parse_train_config({**d, "run": {**d["run"], "epochs": 2}})
    assert train(cfg, tmp_path / "r", progress=False)["step"] == 4
    (imgs / "img2.png").unlink()
    with pytest.raises(CheckpointError, match=r"at step 4, past the 2 steps of 2 epochs over 2 "
                                              r"images \(the saved run had 3\); raise "
                                              r"run.epochs \(in a copy of the config\)"):
        train(cfg, tmp_path / "r", resume=True, progress=False)


def _validated_config(folder, *, steps: int, checkpoint_every: int, val=None):
    """A tiny run on ``folder`` validated every 2 steps on one 48-px tile of ``val`` (default:
    ``folder``) at x2."""
    val = folder if val is None else val
    return parse_train_config({**tiny_train_dict(folder, steps=steps,
                                                 checkpoint_every=checkpoint_every,
                                                 val_every=2),
                               "data": {"train": [str(folder)], "val": [str(val)],
                                        "sample_q": 64, "min_tissue": 0.0, "val_tile": 48,
                                        "val_tiles": 1, "val_scales": [2.0]}})


def test_a_checkpoint_carries_the_best_validation_of_its_own_step(folder, tmp_path, monkeypatch):
    cfg = _validated_config(folder, steps=6, checkpoint_every=2)
    real = loop.save_state

    def killed_after_step_4(run_dir, **kw):  # the process dies right after this checkpoint
        real(run_dir, **kw)
        if kw["step"] == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_state", killed_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "r", progress=False)
    state = load_state(tmp_path / "r")
    assert state["step"] == 4 and state["best"]["step"] in (2, 4)
    validations = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text()
                   .splitlines() if "psnr_x2" in x]
    assert [v["step"] for v in validations] == [2, 4]  # step 4 validated before its checkpoint
    best_psnr = max(v["psnr_x2"] for v in validations)
    assert state["best"]["psnr"] == pytest.approx(best_psnr)  # step 4's validation counted


def test_a_run_whose_best_validation_is_perfect_resumes(folder, tmp_path, monkeypatch):
    """A validation tile an SR reproduces exactly (a white background tile, the prediction
    clamped to 1) scores PSNR inf, and so does the mean over tiles: the state then recorded
    best psnr inf, and its resume was refused as 'train_state.pt is damaged (best ... is not
    a validation record)'. An infinite PSNR is a score (nothing beats it); NaN is not."""
    import math

    from iste.data.metrics import psnr

    white = np.full((48, 48, 3), 255, np.uint8)
    assert psnr(np.ones((48, 48, 3), np.float32), white, scale=2) == math.inf
    cfg = _validated_config(folder, steps=4, checkpoint_every=2)
    monkeypatch.setattr(loop, "validate", lambda *a, **kw: {"psnr_x2": math.inf,
                                                            "bicubic_x2": math.inf})
    train(cfg, tmp_path / "r", stop_after=2, progress=False)
    assert load_state(tmp_path / "r")["best"] == {"step": 2, "psnr": math.inf}
    assert train(cfg, tmp_path / "r", resume=True, progress=False)["step"] == 4
    assert load_state(tmp_path / "r")["best"] == {"step": 2, "psnr": math.inf}
    state = load_state(tmp_path / "r")
    state["best"] = {"step": 2, "psnr": math.nan}
    torch.save(state, tmp_path / "r" / STATE_FILE)
    with pytest.raises(CheckpointError, match="is damaged"):
        train(cfg, tmp_path / "r", resume=True, progress=False)


def test_a_run_folder_in_use_is_refused(folder, tmp_path):
    cfg = parse_train_config(tiny_train_dict(folder))
    (tmp_path / "r").mkdir()
    with loop._run_lock(tmp_path / "r", True):
        with pytest.raises(CheckpointError, match="another process is training into"):
            train(cfg, tmp_path / "r", progress=False)
    assert train(cfg, tmp_path / "r", progress=False)["step"] == 6  # free again


def test_a_new_run_refuses_a_folder_holding_another_runs_files(folder, tmp_path):
    cfg = parse_train_config(tiny_train_dict(folder))
    train(cfg, tmp_path / "r", progress=False)
    (tmp_path / "r" / STATE_FILE).unlink()  # the big file deleted to save space
    before = (tmp_path / "r" / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match=r"already holds a run \(model.safetensors"):
        train(cfg, tmp_path / "r", progress=False)
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == before
    with pytest.warns(UserWarning, match="nothing to resume"):  # asked for: starts afresh
        assert train(cfg, tmp_path / "r", resume=True, progress=False)["step"] == 6


def test_only_rank_0_warns_that_there_is_nothing_to_resume(folder, tmp_path, monkeypatch):
    """Every rank finds the same missing state: under torchrun each said so, W warnings."""
    import contextlib
    import warnings

    from iste import distributed

    @contextlib.contextmanager
    def as_rank(rank):
        yield distributed.DistInfo(rank=rank), torch.device("cpu")

    cfg = parse_train_config(tiny_train_dict(folder, steps=2))
    for rank in (1, 0):
        monkeypatch.setattr(distributed, "process_group", lambda device, r=rank: as_rank(r))
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            train(cfg, tmp_path / f"r{rank}", resume=True, progress=False)
        assert any("nothing to resume" in str(w.message) for w in said) == (rank == 0)


@pytest.mark.parametrize("content,says", [
    (b"garbage", r"not a readable training state \(damaged, or not written by iste train"),
    ({"model": {}}, r"not an iste training state \(it lacks step, config, optimizer"),
    ([1, 2], "not an iste training state"),
])
def test_a_foreign_training_state_is_one_line(folder, tmp_path, content, says):
    run = tmp_path / "r"
    run.mkdir()
    if isinstance(content, bytes):
        (run / STATE_FILE).write_bytes(content)
    else:
        torch.save(content, run / STATE_FILE)
    with pytest.raises(CheckpointError, match=says) as err:
        train(parse_train_config(tiny_train_dict(folder)), run, resume=True, progress=False)
    assert "\n" not in str(err.value) and "weights_only" not in str(err.value)


def test_deep_images_are_refused_when_the_folder_is_scanned(folder, tmp_path):
    deep = tmp_path / "deep"
    deep.mkdir()
    write_image(deep / "ok.png", np.zeros((64, 64, 3), np.uint8))
    from PIL import Image

    Image.fromarray(np.zeros((64, 64), np.uint16)).save(deep / "g16.png")
    with pytest.raises(ImageReadError, match="16-bit PNG is not supported"):
        FolderSource(deep)


@pytest.mark.parametrize("name,data,says", [
    ("t16.tif", np.zeros((64, 64, 3), np.uint16), "uint16 TIFF is not supported"),
    ("tf.tif", np.zeros((64, 64, 3), np.float32), "float32 TIFF is not supported"),
    ("pages.tif", np.zeros((2, 64, 64), np.uint8), "multi-page TIFF"),  # found when drawn
])
def test_tiffs_read_image_refuses_are_refused_when_the_folder_is_scanned(tmp_path, name, data,
                                                                         says):
    import tifffile

    write_image(tmp_path / "ok.png", np.zeros((64, 64, 3), np.uint8))
    tifffile.imwrite(tmp_path / name, data,
                     photometric="rgb" if data.shape[-1] == 3 else "minisblack")
    with pytest.raises(ImageReadError, match=f"{name}: {says}"):
        FolderSource(tmp_path)


_OPENED: list[str] | None = None  # the files opened while a test records them


def _record_opens(event, args):  # an audit hook: must never raise
    if event == "open" and _OPENED is not None and isinstance(args[0], (str, os.PathLike)):
        _OPENED.append(os.fspath(args[0]))


def test_indexing_a_folder_opens_each_image_once(tmp_path):
    """Each image was opened three or four times (its size, its end, its depth): on a network
    mount each open is a round trip."""
    import sys

    import tifffile

    global _OPENED
    rgb = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    for suffix in (".png", ".jpg", ".tif"):
        write_image(tmp_path / f"a{suffix}", rgb)
    tifffile.imwrite(tmp_path / "gray.tiff", rgb[..., 0])
    if _record_opens not in getattr(sys, "_iste_audit_hooks", ()):
        sys.addaudithook(_record_opens)  # hooks cannot be removed: added once per process
        sys._iste_audit_hooks = (*getattr(sys, "_iste_audit_hooks", ()), _record_opens)
    _OPENED = []
    try:
        source = FolderSource(tmp_path)
    finally:
        opened, _OPENED = _OPENED, None
    assert source.sizes == [40] * 4
    images = sorted(p for p in opened if Path(p).parent == tmp_path)
    assert images == sorted(str(tmp_path / n) for n in ("a.png", "a.jpg", "a.tif", "gray.tiff"))


def test_a_loader_workers_error_is_its_own_message(folder, tmp_path):
    bad = tmp_path / "bad"
    synthetic_folder(bad, n=2, size=200)
    data = bytearray((bad / "img0.png").read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)  # damage inside: found when read
    (bad / "img0.png").write_bytes(bytes(data))
    cfg = parse_train_config(tiny_train_dict(bad, workers=1))
    with pytest.raises(ImageReadError) as err:
        train(cfg, tmp_path / "r", progress=False)
    assert "DataLoader" not in str(err.value) and "Traceback" not in str(err.value)
    assert "img0.png" in str(err.value)


def _train_cli_with_a_worker(folder, tmp_path, monkeypatch, capsys, ends=None, **run):
    """``iste train -q`` with one loader worker, which calls ``ends()`` (if given) at its
    first sample; the exit code and the stderr lines. run: more run entries of the config."""
    from iste.cli.main import main
    from iste.train.dataset import CropDataset

    parent, sample = os.getpid(), CropDataset.__getitem__

    def first_sample(self, index):
        if ends is not None and os.getpid() != parent:
            ends()
        return sample(self, index)

    monkeypatch.setattr(CropDataset, "__getitem__", first_sample)
    config = tmp_path / "c.json"
    config.write_text(json.dumps(tiny_train_dict(folder, workers=1, **run)))
    code = main(["train", str(config), "--run-dir", str(tmp_path / "r"), "--device", "cpu",
                 "-q"])
    return code, capsys.readouterr().err.splitlines()


def test_a_killed_loader_worker_is_one_line(folder, tmp_path, monkeypatch, capsys):
    # the kernel's out-of-memory killer ended a worker: torch's SIGCHLD handler raised its
    # RuntimeError inside backward(), a traceback and exit code 1
    import signal

    code, err = _train_cli_with_a_worker(
        folder, tmp_path, monkeypatch, capsys, lambda: os.kill(os.getpid(), signal.SIGKILL))
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("iste: error: a data loader worker process (pid "), err
    assert "fewer loader workers" in err[0]


def test_a_sigterm_to_the_whole_job_stops_training_with_143(folder, tmp_path, monkeypatch,
                                                            capsys):
    # a scheduler's SIGTERM goes to every process of the job: the worker's death, arriving
    # with the stop, was raised by torch's SIGCHLD handler over it (exit code 1 and a
    # traceback, or an 'Exception ignored' traceback after the line) in place of the stop
    import multiprocessing
    import signal

    loss, steps = loop._query_loss, []

    def scheduler_stops_the_job(*args):
        steps.append(len(steps))
        if len(steps) == 3:
            workers = multiprocessing.active_children()
            try:
                os.kill(os.getpid(), signal.SIGTERM)
            finally:  # the same signal ends the worker while the stop unwinds
                for worker in workers:
                    os.kill(worker.pid, signal.SIGKILL)
                    os.waitid(os.P_PID, worker.pid, os.WEXITED | os.WNOWAIT)
        return loss(*args)

    monkeypatch.setattr(loop, "_query_loss", scheduler_stops_the_job)
    # no checkpoint before the end: the stop itself saved step 3 (it saved nothing, and a
    # scheduler's preemption lost every step since the last checkpoint)
    code, err = _train_cli_with_a_worker(folder, tmp_path, monkeypatch, capsys,
                                         checkpoint_every=100)
    run, config = tmp_path / "r", tmp_path / "c.json"
    assert (code, err) == (143, [f"iste: stopped by SIGTERM at step 3 of 6, saved in "
                                 f"{run / STATE_FILE}; the run continues with: iste train "
                                 f"{config} --run-dir {run} --resume"])
    assert load_state(run)["step"] == 3
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] \
        == [1, 2, 3]


def test_a_changed_validation_folder_rescores_the_best_weights_on_resume(folder, tmp_path):
    """The validation images changed on disk between two runs of one training (same config):
    the resumed run compared its scores with the best record measured on the old tiles, so
    best.safetensors stayed the old weights against scores of other tiles, without a word.
    The best weights are now scored again on the new tiles, with a warning."""
    import shutil
    import warnings

    from iste.models.checkpoint import load_model
    from iste.train.dataset import validation_tiles
    from iste.train.state import BEST_FILE
    from iste.train.validate import validate

    val = synthetic_folder(tmp_path / "val", n=1, size=200)
    cfg = _validated_config(folder, steps=4, checkpoint_every=2, val=val)
    run = tmp_path / "r"
    train(cfg, run, stop_after=2, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same tiles: nothing to say
        train(cfg, run, resume=True, stop_after=1, progress=False)  # step 3: no validation
    assert load_state(run)["best"]["step"] == 2
    old = load_state(run)["best"]
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    write_image(val / "img0.png", noise)  # a harder tile: lower PSNR than the saved record
    shutil.copy(run / BEST_FILE, tmp_path / "step2.safetensors")
    with pytest.warns(UserWarning, match=r"validation tiles differ from those the saved run "
                                         rf"scored .*step 2 \({old['psnr']:.2f} dB on them\)"
                                         r"; it scores [\d.]+ dB on this run's"):
        train(cfg, run, resume=True, progress=False)
    sources = [FolderSource(val)]
    tiles = validation_tiles(sources, size=48, count=1, min_tissue=0.0)
    rescored = validate(load_model(tmp_path / "step2.safetensors"), tiles, (2.0,))["psnr_x2"]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    at_4 = next(r["psnr_x2"] for r in records if r["step"] == 4 and "psnr_x2" in r)
    assert rescored < old["psnr"] and at_4 < old["psnr"]  # the old record beat both
    assert load_state(run)["best"]["psnr"] == pytest.approx(max(rescored, at_4))


@pytest.mark.parametrize("change,says", [
    ("remove", "it is missing or unreadable; it cannot be scored (checkpoint not found: "),
    ("replace", "it holds step 3's; it scores ")])
def test_a_best_file_removed_or_replaced_before_a_resume_is_not_taken_for_the_record(
        folder, tmp_path, monkeypatch, change, says):
    """best.safetensors removed (or another checkpoint copied in its place) between two runs
    of one training: the resumed run kept the saved record and, no later validation beating
    it, ended with no best.safetensors (or the other weights) under a record of step 2."""
    import shutil

    from iste.models.checkpoint import read_metadata
    from iste.train.state import BEST_FILE

    cfg = _validated_config(folder, steps=4, checkpoint_every=3)
    run = tmp_path / "r"
    with pytest.warns(UserWarning, match="is data.train"):
        train(cfg, run, stop_after=3, progress=False)
    assert load_state(run)["best"]["step"] == 2
    if change == "remove":
        (run / BEST_FILE).unlink()
    else:
        shutil.copy(run / "model.safetensors", run / BEST_FILE)  # step 3's weights
    scores = iter([5.0, 1.0])  # the file's new score, then step 4's validation
    monkeypatch.setattr(loop, "validate", lambda *a, **kw: {"psnr_x2": next(scores),
                                                            "bicubic_x2": 0.0})
    with pytest.warns(UserWarning, match=r"best\.safetensors is not the best weights the saved "
                                         r"run recorded \(step 2, [\d.]+ dB\): "
                                         + says.replace("(", r"\(").replace(")", r"\)")):
        train(cfg, run, resume=True, progress=False)
    best = load_state(run)["best"]
    assert best == ({"step": 4, "psnr": 5.0} if change == "remove" else
                    {"step": 3, "psnr": 5.0})
    assert int(read_metadata(run / BEST_FILE)[1]["step"]) == best["step"]


def test_a_changed_training_folder_is_said_on_resume(tmp_path):
    imgs = synthetic_folder(tmp_path / "imgs", n=3, size=200)
    cfg = parse_train_config(tiny_train_dict(imgs))
    train(cfg, tmp_path / "r", stop_after=3, progress=False)
    synthetic_folder(tmp_path / "more", n=2, size=200)
    for p in (tmp_path / "more").iterdir():
        p.rename(imgs / f"extra_{p.name}")
    with pytest.warns(UserWarning, match="now hold 5 images, the saved run had 3"):
        train(cfg, tmp_path / "r", resume=True, progress=False)


def test_a_run_resumed_from_another_folder_records_both_training_folders(tmp_path,
                                                                        monkeypatch):
    """data.train is relative to the folder a run starts in: resumed from another folder
    holding a folder of that name, the run went on with those images without a word, and its
    train_sources (what iste eval compares test data with) named only them. Now it is said,
    and both are recorded; a state from before train_sources was recorded resumes."""
    from iste.models.checkpoint import read_metadata

    first, second = tmp_path.resolve() / "a", tmp_path.resolve() / "b"
    for root in (first, second):
        synthetic_folder(root / "imgs", n=3, size=200)
    cfg = parse_train_config(tiny_train_dict(Path("imgs"), steps=9))
    run = tmp_path / "r"
    monkeypatch.chdir(first)
    train(cfg, run, stop_after=3, progress=False)
    monkeypatch.chdir(second)
    with pytest.warns(UserWarning, match=f"data.train now lies at {second / 'imgs'}, the saved "
                                         f"run's at {first / 'imgs'} "):
        train(cfg, run, resume=True, stop_after=3, progress=False)
    both = [str(first / "imgs"), str(second / "imgs")]
    assert read_metadata(run / "model.safetensors")[1]["train_sources"] == both
    assert load_state(run)["meta"]["train_sources"] == both
    state = load_state(run)
    del state["meta"]["train_sources"]  # an older run: what data.train resolves to now
    torch.save(state, run / STATE_FILE)
    assert train(cfg, run, resume=True, progress=False)["step"] == 9
    assert load_state(run)["meta"]["train_sources"] == [str(second / "imgs")]


def test_data_copied_elsewhere_without_its_times_is_one_warning_on_resume(tmp_path,
                                                                         monkeypatch):
    """A run resumed from a copy of its data folder (cp -r: new modification times) warned
    twice of one event: the data moved, and the same names and sizes with other times."""
    import shutil
    import warnings

    first, second = tmp_path.resolve() / "a", tmp_path.resolve() / "b"
    synthetic_folder(first / "imgs", n=3, size=200)
    cfg = parse_train_config(tiny_train_dict(Path("imgs"), steps=9))
    run = tmp_path / "r"
    monkeypatch.chdir(first)
    train(cfg, run, stop_after=3, progress=False)
    shutil.copytree(first / "imgs", second / "imgs", copy_function=shutil.copyfile)
    for i, image in enumerate(sorted((second / "imgs").iterdir())):  # a copy's new times
        when = image.stat().st_mtime_ns + (i + 1) * 10**9
        os.utime(image, ns=(when, when))
    monkeypatch.chdir(second)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg, run, resume=True, stop_after=3, progress=False)
    said = [str(w.message) for w in caught if "data.train" in str(w.message)]
    assert len(said) == 1, said
    assert said[0].startswith(f"data.train now lies at {second / 'imgs'}, the saved run's at "
                              f"{first / 'imgs'} ")
    assert "with the saved run's file names and sizes (copied without their modification " \
        "times" in said[0]


def test_a_resume_compares_its_data_by_place_not_by_spelling(tmp_path, monkeypatch):
    """data.train written ``imgs`` in one call and its absolute path, ``./imgs`` or a link to
    it in the next was refused as another config; now the same place resumes (a state from
    before data_places too, by its train_sources) and another folder is still refused."""
    root = tmp_path.resolve()
    imgs = synthetic_folder(root / "imgs", n=3, size=200)
    synthetic_folder(root / "other", n=3, size=200)
    (root / "link").symlink_to(imgs, target_is_directory=True)
    monkeypatch.chdir(root)
    run = root / "r"

    def cfg(spec, steps):
        return parse_train_config({**tiny_train_dict(Path(spec), steps=steps)})

    train(cfg("imgs", 12), run, stop_after=3, progress=False)
    with pytest.raises(CheckpointError, match=r"different config \(data\.train: \['imgs'\] "
                                              r"saved, \['other'\] now\)"):
        train(cfg("other", 12), run, resume=True, stop_after=3, progress=False)
    for step, spec in ((6, str(imgs)), (9, "link")):
        assert train(cfg(spec, 12), run, resume=True, stop_after=3, progress=False)["step"] == step
    state = load_state(run)
    del state["data_places"]  # an older state: its train_sources name the places
    torch.save(state, run / STATE_FILE)
    assert train(cfg("./imgs", 12), run, resume=True, progress=False)["step"] == 12
    assert load_state(run)["meta"]["train_sources"] == [str(imgs)]


def test_a_state_from_before_train_sources_is_respelt_by_nothing():
    """A state without data_places or train_sources has no place per data.train entry; the
    sample sets places.recorded reads from its config (for iste eval) stand at other entries
    and must not respell one: ``a`` replaced by sample:cmu-train passed for ``a``."""
    from iste.train.loop import _spelled_as_saved

    saved = {"data": {"train": ["a", "sample:cmu-train"], "val": []}}
    state = {"config": saved, "meta": {"train_config": saved}}
    current = {"data": {"train": ["sample:cmu-train", "sample:cmu-train"], "val": []}}
    assert _spelled_as_saved(current, saved, state) == current


def test_a_yaml_exponent_without_a_dot_is_the_number_meant(folder, tmp_path):
    import yaml

    from iste.train.config import load_train_config
    from iste.typed import ConfigError

    text = yaml.safe_dump(tiny_train_dict(folder)).replace("lr: 0.001", "lr: 1e-3")
    assert yaml.safe_load(text)["optim"]["lr"] == "1e-3"  # what YAML 1.1 makes of it
    (tmp_path / "c.yaml").write_text(text)
    assert load_train_config(tmp_path / "c.yaml").optim.lr == 1e-3
    (tmp_path / "d.yaml").write_text(text.replace("lr: 1e-3", "lr: fast"))
    with pytest.raises(ConfigError, match="optim.lr: expected a number"):
        load_train_config(tmp_path / "d.yaml")


@pytest.mark.parametrize("field,value", [("config", "x"), ("step", "1"), ("optimizer", {"a": 1}),
                                         ("meta", [1]), ("torch_rng", torch.zeros(3)),
                                         ("meta", {"train_sources": "/"})])
def test_a_training_state_with_a_damaged_field_is_one_line(folder, tmp_path, field, value):
    run = tmp_path / "r"
    cfg = parse_train_config(tiny_train_dict(folder, steps=2))
    train(cfg, run, progress=False)
    state = load_state(run)
    state[field] = value
    torch.save(state, run / STATE_FILE)
    with pytest.raises(CheckpointError, match="is damaged .*start over from step 0") as err:
        train(parse_train_config(tiny_train_dict(folder, steps=3)), run, resume=True,
              progress=False)
    assert "\n" not in str(err.value)


def test_a_validation_tile_too_small_for_its_scales_is_refused_with_the_config(folder):
    from iste.typed import ConfigError

    config = tiny_train_dict(folder)
    config["data"] = {**config["data"], "val": config["data"]["train"], "val_tile": 8}
    with pytest.raises((ConfigError, ValueError), match="val_tile \\(8 px\\) is too small"):
        parse_train_config(config)


def test_a_key_given_twice_in_a_config_is_refused(tmp_path):
    from iste.typed import ConfigError, load_yaml

    (tmp_path / "c.yaml").write_text("run:\n  batch_size: 2\nrun:\n  steps: 3\n")
    with pytest.raises(ConfigError, match="line 3: 'run' is given twice"):
        load_yaml(tmp_path / "c.yaml")


def test_unusable_images_are_listed_when_a_folder_is_indexed_before_anything_is_written(
        folder, tmp_path):
    from hostile_cases import png_header_only

    bad = synthetic_folder(tmp_path / "bad", n=2, size=200)
    for name in ("img0.png", "img1.png"):  # cut short: found only when drawn, hours in
        data = (bad / name).read_bytes()
        (bad / name).with_suffix(".cut.png").write_bytes(data[:len(data) // 2])
    write_image(bad / "whole.jpg", np.zeros((200, 200, 3), np.uint8))
    (bad / "cut.jpg").write_bytes((bad / "whole.jpg").read_bytes()[:300])
    png_header_only(bad / "bomb.png", 40000, 40000)  # 1.6 Gpx: beyond MAX_INPUT_PIXELS
    os.mkfifo(bad / "pipe.png")  # opening it waited forever
    with pytest.raises(ImageReadError) as err:
        FolderSource(bad, "validation")
    said = str(err.value)
    assert said.startswith(f"validation folder {bad}: 5 of 8 images are unusable")
    assert "bomb.png" in said and "and 2 more" in said and "\n" not in said
    cfg = tiny_train_dict(folder)
    cfg["data"] = {**cfg["data"], "val": [str(bad)], "val_tile": 64, "val_tiles": 2}
    with pytest.raises(ImageReadError, match="validation folder"):
        train(parse_train_config(cfg), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()  # the data are read before the run folder is made


def test_a_loss_that_goes_nan_stops_the_run_at_its_step_with_finite_weights_saved(
        folder, tmp_path, monkeypatch):
    from iste.models.checkpoint import load_model

    real, steps = loop._query_loss, []

    def diverging(net, batch):  # NaN from the 5th step's batch on
        steps.append(batch["lr"].shape[0])
        loss = real(net, batch)
        return loss * float("nan") if sum(steps) > 8 else loss

    monkeypatch.setattr(loop, "_query_loss", diverging)
    run = tmp_path / "r"
    with pytest.raises(loop.TrainingDiverged, match="NaN or Inf at step 5; .* keeps the "
                                                    "checkpoint of step 3"):
        train(parse_train_config(tiny_train_dict(folder)), run, progress=False)
    assert load_state(run)["step"] == 3
    load_model(run / "model.safetensors")  # refuses NaN weights
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]


def _nan_moment(state):
    state["optimizer"]["state"][0]["exp_avg"] = state["optimizer"]["state"][0]["exp_avg"] * np.nan


@pytest.mark.parametrize("damage,says", [
    (_nan_moment, "optimizer state exp_avg holds NaN"),
    (lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(3)), "of shape \\(3,\\)"),
    (lambda s: s["optimizer"]["param_groups"][0].update(lr="x"), "group 0.lr: 'x'"),
    (lambda s: s["scheduler"].update(last_epoch="x"), "scheduler.last_epoch"),
    (lambda s: s["scheduler"].update(last_epoch=1), "scheduler at step 1, the run at 2"),
    (lambda s: s.update(step=1.5), "step 1.5 is not a count"),
    (lambda s: s.update(step=-1), "step -1 is not a count"),
    (lambda s: s.update(best={"step": 1}), "not a validation record"),
    (lambda s: s.update(val_pending=1), "val_pending 1 is not the state's step 2"),
    (lambda s: next(v for v in s["model"].values()).fill_(np.nan), "weights contain NaN"),
])
def test_a_training_state_with_damaged_values_is_refused_before_a_step(folder, tmp_path, damage,
                                                                       says):
    """Each of these trained on: a traceback at the first step, or NaN weights saved."""
    run = tmp_path / "r"
    train(parse_train_config(tiny_train_dict(folder, steps=2)), run, progress=False)
    state = load_state(run)
    damage(state)
    torch.save(state, run / STATE_FILE)
    with pytest.raises(CheckpointError, match=says) as err:
        train(parse_train_config(tiny_train_dict(folder, steps=3)), run, resume=True,
              progress=False)
    assert "\n" not in str(err.value)


def test_a_state_of_a_newer_format_is_refused_and_one_without_a_format_resumes(folder,
                                                                              tmp_path):
    """A state had no format: one of another layout, written by a later iste, was read as
    this one's (its keys misread, or a traceback)."""
    from iste.train.state import STATE_FORMAT

    run = tmp_path / "r"
    train(parse_train_config(tiny_train_dict(folder, steps=2)), run, progress=False)
    state = load_state(run)
    # format 2 only with a validation pending (test_train's stop during a validation)
    assert state["format"] == 1 and STATE_FORMAT == 2
    newer = {**state, "format": 3, "written_by": {"iste": "9.0", "torch": "9.0"}}
    del newer["optimizer"]  # another layout
    torch.save(newer, run / STATE_FILE)
    with pytest.raises(CheckpointError, match=f"{STATE_FILE} is a training state of format 3, "
                                              "newer than format 2 that this iste reads "
                                              "\\(written by iste 9.0\\)") as err:
        train(parse_train_config(tiny_train_dict(folder, steps=3)), run, resume=True,
              progress=False)
    assert "\n" not in str(err.value)
    torch.save({**state, "format": 1.5}, run / STATE_FILE)
    with pytest.raises(CheckpointError, match="not an iste training state \\(format 1.5\\)"):
        train(parse_train_config(tiny_train_dict(folder, steps=3)), run, resume=True,
              progress=False)
    older = dict(state)
    del older["format"]  # written before the format was recorded: format 1
    torch.save(older, run / STATE_FILE)
    train(parse_train_config(tiny_train_dict(folder, steps=3)), run, resume=True, progress=False)
    assert load_state(run)["step"] == 3


def test_resume_names_the_config_keys_that_differ_and_those_of_a_newer_version(folder,
                                                                               tmp_path):
    run = tmp_path / "r"
    train(parse_train_config(tiny_train_dict(folder, steps=2)), run, progress=False)
    other = tiny_train_dict(folder, steps=3, batch_size=3)
    other["optim"]["lr"] = 2e-3
    with pytest.raises(CheckpointError, match=r"different config \(optim\.lr: 0\.001 saved, "
                                              r"0\.002 now; run\.batch_size: 2 saved, 3 now\)"):
        train(parse_train_config(other), run, resume=True, progress=False)
    state = load_state(run)
    state["config"]["run"]["new_knob"] = 1
    state["written_by"] = {"iste": "9.0", "torch": "9.0"}
    torch.save(state, run / STATE_FILE)
    with pytest.raises(CheckpointError, match="written by iste 9.0: .*run.new_knob"):
        train(parse_train_config(tiny_train_dict(folder, steps=3)), run, resume=True,
              progress=False)


def test_a_full_disk_at_the_metrics_log_names_the_file(tmp_path):
    # between checkpoints the disk filled at metrics.jsonl: "[Errno 28] No space left on
    # device", naming no file. The file size limit (EFBIG) stands in for the full disk: it is
    # said as itself (free space would not help), with the file and how to resume
    import resource
    import signal

    from iste.refusals import FileTooLargeError

    log = loop.MetricsLog(tmp_path, enabled=True)
    log.write(1, loss=0.5)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    action = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (log.path.stat().st_size + 10, hard))
    try:
        with pytest.raises(FileTooLargeError, match=r"metrics.jsonl: file too large for this "
                           r"file system .* \(ulimit -f\); rerun with --resume"):
            log.write(2, loss=0.25)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, action)


def test_a_run_folder_removed_under_the_run_is_said_as_such(folder, tmp_path, monkeypatch):
    # runs/ cleaned while a training ran: the next checkpoint ended in "[Errno 2] No such
    # file or directory: 'run/.train_state.pt.<random>.tmp'", a file the user never named,
    # and the metrics log in "[Errno 2] ... 'run/metrics.jsonl'", as if a file to be read
    # were missing
    import re
    import shutil

    real, run = loop.save_state, tmp_path / "run"

    def removed_first(run_dir, **kw):
        shutil.rmtree(run_dir)
        real(run_dir, **kw)

    monkeypatch.setattr(loop, "save_state", removed_first)
    with pytest.raises(FileNotFoundError, match=r"^cannot write .*train_state\.pt: its folder "
                       rf"{re.escape(str(run))} does not exist \(removed while the command "
                       r"ran\?\)"):
        train(parse_train_config(tiny_train_dict(folder, steps=3)), run, progress=False)
    log = loop.MetricsLog(tmp_path / "again", enabled=True)
    (tmp_path / "again").mkdir()
    log.write(1, loss=0.5)
    shutil.rmtree(tmp_path / "again")
    with pytest.raises(FileNotFoundError, match=r"metrics\.jsonl: its folder .*again does not "
                                                r"exist \(removed while the command ran\?\)$"):
        log.write(2, loss=0.25)


def test_training_images_changed_in_place_are_named_on_resume(tmp_path):
    """An image edited or replaced with the count of images unchanged: the resumed run
    trained on other data without a word (only a changed count was said)."""
    import warnings

    data = synthetic_folder(tmp_path / "hr", n=3, size=200)
    cfg, run = parse_train_config(tiny_train_dict(data, steps=12)), tmp_path / "r"
    train(cfg, run, stop_after=3, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same files: nothing to say
        train(cfg, run, resume=True, stop_after=1, progress=False)
    image = data / "img1.png"
    when = image.stat().st_mtime_ns
    os.utime(image, ns=(when + 10**9, when + 10**9))  # same bytes, another time
    with pytest.warns(UserWarning, match=r"data.train holds the saved run's file names and "
                                         r"sizes with other modification times .*rsync -a"):
        train(cfg, run, resume=True, stop_after=1, progress=False)
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    write_image(image, noise)  # edited: another size
    with pytest.warns(UserWarning, match=r"data.train holds files of other names or sizes "
                                         r"than the saved run's, as many"):
        train(cfg, run, resume=True, stop_after=1, progress=False)
    with warnings.catch_warnings():  # the state records the data it now trains on
        warnings.simplefilter("error")
        assert train(cfg, run, resume=True, stop_after=1, progress=False)["step"] == 7
