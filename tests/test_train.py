"""Training: configs, loss goes down, exact resume (also after SIGKILL), DDP replicas."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from iste.data.coords import normalize
from iste.models.checkpoint import CheckpointError, load_model
from iste.train.config import bundled_configs, load_train_config, parse_train_config
from iste.train.dataset import CropDataset
from iste.train.loop import train
from iste.train.schedule import resolve_schedule
from iste.train.sources import open_source
from iste.typed import ConfigError
from ranks import two_ranks, worker
from train_helpers import synthetic_folder, tiny_train_dict


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return synthetic_folder(tmp_path_factory.mktemp("hr"))


def test_every_bundled_config_parses():
    names = bundled_configs()
    assert {"compact-iste", "compact-liif"} <= set(names)
    for name in names:
        cfg = load_train_config(name)
        assert resolve_schedule(cfg, 460).steps > 0


PAPER_CONFIGS = ("swinir-iste", "swinir-liif", "swinir-lte", "edsr-iste", "rdn-iste")


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_configs_count_epochs_so_the_iteration_count_follows_the_dataset(name):
    cfg = load_train_config(name)
    assert (cfg.run.epochs, cfg.run.repeat, cfg.run.batch_size) == (1000, 20, 4)
    assert cfg.optim.lr == 2e-4 and cfg.data.min_tissue == 0  # published lr; uniform crops
    # the published trainer: ceil(images x 20 / 4) steps per epoch, milestones in epochs
    tma, tcga = resolve_schedule(cfg, 460), resolve_schedule(cfg, 320)
    assert (tma.steps, tcga.steps) == (2_300_000, 1_600_000)
    assert tma.milestones == (1_150_000, 1_840_000, 2_070_000, 2_185_000)
    assert resolve_schedule(cfg, 461).steps_per_epoch == 2305  # a short last batch
    assert resolve_schedule(cfg, 460, world=2).steps == 1_150_000  # global batch 8
    with pytest.raises(ValueError, match="whole-slide"):
        resolve_schedule(cfg, None)


def test_a_run_in_epochs_takes_the_steps_its_data_needs_and_keeps_the_best_weights(folder,
                                                                                   tmp_path):
    from iste.train.schedule import resolve_schedule as plan_for
    from iste.train.state import BEST_FILE

    raw = tiny_train_dict(folder, checkpoint_every=100, val_every=2)
    raw["run"].pop("steps")
    raw["run"].update(epochs=2, repeat=3)  # 3 images x 3 / batch 2 -> 5 steps per epoch
    raw["optim"]["milestones"] = [1]
    raw["data"].update(val=[str(folder)], val_tile=64, val_tiles=1, val_scales=[2.0])
    cfg = parse_train_config(raw)
    assert plan_for(cfg, 3).milestones == (5,)
    assert train(cfg, tmp_path / "run", progress=False)["step"] == 10
    log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in log if "lr" in r}
    assert lrs[4] == pytest.approx(1e-3) and lrs[5] == pytest.approx(5e-4)  # halved at epoch 1
    vals = [(r["psnr_x2"], r["step"]) for r in log if "psnr_x2" in r]
    assert [s for _, s in vals] == [2, 4, 6, 8, 10]
    best = load_model(tmp_path / "run" / BEST_FILE)
    assert best.checkpoint_meta["step"] == max(vals)[1]
    assert best.checkpoint_meta["val_mean_psnr"] == pytest.approx(max(vals)[0])
    state = torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)
    assert state["best"] == {"step": max(vals)[1], "psnr": pytest.approx(max(vals)[0])}


def test_every_rank_waits_for_the_validation_at_a_barrier(folder, tmp_path, monkeypatch):
    # under torchrun the other ranks waited for rank 0's validation in the next gradient
    # sync, under torch's collective timeout (30 min on gloo, 10 on NCCL), not at a barrier
    from iste import distributed

    waits = []  # at a barrier, or where the ranks agree on a number (a validation cut short)
    monkeypatch.setattr(distributed, "barrier", lambda info: waits.append(info))
    monkeypatch.setattr(distributed, "largest", lambda info, n: waits.append(info) or n)
    counts = {}
    for name, val in (("plain", []), ("validated", [str(folder)])):
        raw = tiny_train_dict(folder, steps=4, checkpoint_every=100, val_every=2)
        raw["data"].update(val=val, val_tile=64, val_tiles=1, val_scales=[2.0])
        waits.clear()
        train(parse_train_config(raw), tmp_path / name, progress=False)
        counts[name] = len(waits)
    assert counts["validated"] == counts["plain"] + 2  # after the validations of steps 2, 4


@pytest.mark.parametrize("rank", ["0", "1"])
def test_only_rank_0_says_where_the_weights_are(tmp_path, monkeypatch, capsys, rank):
    """Under torchrun every rank printed "step N: weights in ..."; rank 0 writes them and
    alone says so (the training itself stubbed: what it returns is all the command uses)."""
    import iste.train.loop as loop
    from iste.cli.main import main
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr(loop, "train", lambda cfg, run_dir, **kw: {"step": 3, "steps": 3})
    assert main(["train", "compact-iste", "--run-dir", str(tmp_path / "run")]) == 0
    said = capsys.readouterr().out
    assert ("step 3: weights in" in said) == (rank == "0")


def test_a_run_stopped_before_its_end_says_how_it_continues(tmp_path, monkeypatch, capsys):
    # after --stop-after it said "step 3: weights in ...", as a finished run does
    import iste.train.loop as loop
    from iste.cli.main import main
    monkeypatch.setattr(loop, "train", lambda cfg, run_dir, **kw: {"step": 3, "steps": 2000})
    run = tmp_path / "run"
    assert main(["train", "compact-iste", "--run-dir", str(run), "--stop-after", "3"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"step 3 of 2000: weights in {run / 'model.safetensors'}; the run continues with: "
        f"iste train compact-iste --run-dir {run} --resume")
    # a run extended by --steps: the config's own steps (2000 here) would end it at once
    # ("the run is at step 2003, past the 2000 steps asked for"); a name with a space, quoted
    monkeypatch.setattr(loop, "train", lambda cfg, run_dir, **kw: {"step": 2003, "steps": 3000})
    run = tmp_path / "my run"
    assert main(["train", "compact-iste", "--run-dir", str(run), "--resume", "--steps", "3000",
                 "--stop-after", "3"]) == 0
    assert capsys.readouterr().out.strip().endswith(
        f"iste train compact-iste --run-dir '{run}' --resume --steps 3000")


def test_validating_on_training_data_is_named(folder, tmp_path):
    # data.val = data.train (the same slide, or a folder and a file in it) was taken silently:
    # validation scores and the best checkpoint came from training images
    import shutil
    import warnings

    inside = next(p for p in sorted(folder.iterdir()) if p.suffix == ".png")
    for val, says in (([str(folder)], f"data.val {folder} is data.train {folder}"),
                      ([str(inside)], f"data.val {inside} shares images with data.train")):
        cfg = parse_train_config({**tiny_train_dict(folder), "data": {
            **tiny_train_dict(folder)["data"], "val": val, "val_tile": 32, "val_tiles": 1}})
        with pytest.warns(UserWarning, match=rf"{re.escape(says)}.* are on training data"):
            train(cfg, tmp_path / f"r{len(says)}", stop_after=1, progress=False)
    apart = tmp_path / "val"
    shutil.copytree(folder, apart)
    cfg = parse_train_config({**tiny_train_dict(folder), "data": {
        **tiny_train_dict(folder)["data"], "val": [str(apart)], "val_tile": 32,
        "val_tiles": 1}})
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        train(cfg, tmp_path / "apart", stop_after=1, progress=False)


def test_steps_and_epochs_are_alternatives():
    with pytest.raises(ConfigError, match="alternatives"):
        parse_train_config(tiny_train_dict(Path("x"), epochs=3))
    with pytest.raises(ConfigError, match="repeat"):
        parse_train_config(tiny_train_dict(Path("x"), repeat=3))


@pytest.mark.parametrize("patch,message", [
    ({"run": {"stepz": 3}}, "stepz"),
    ({"data": {"patch": "48"}}, "data.patch"),
    ({"optim": {"lr": -1.0}}, "lr"),
    ({"model": {"head": "iste", "encoder": "edsr-baseline", "head_args": {"hidden": 3}}}, "hidden"),
    ({"extra": {}}, "extra"),
    ({"data": {"scale_min": 3.0, "scale_max": 2.0}}, "scale_min"),
    ({"run": {"precision": "fp16"}}, "run.precision"),
    ({"run": {"seed": -1}}, "run.seed"),  # failed at the first sample, after the model
    ({"run": {"seed": 2**70}}, "run.seed"),
    ({"optim": {"milestones": [-5, 3]}}, "milestones\\[0\\]"),  # never reached: ignored
    ({"data": {"scale_min": 1.0, "scale_max": 1.0}}, "scale_max > 1"),  # identity only
])
def test_config_errors_are_caught_before_work(folder, patch, message):
    data = tiny_train_dict(folder)
    for k, v in patch.items():
        data[k] = {**data.get(k, {}), **v} if k != "model" else v
    with pytest.raises(ConfigError, match=message):
        parse_train_config(data)


def test_dataset_too_small_is_a_clear_error(tmp_path):
    small = synthetic_folder(tmp_path / "small", n=1, size=100)
    cfg = parse_train_config(tiny_train_dict(small))
    with pytest.raises(ValueError, match="too small"):
        CropDataset([open_source(str(small))], cfg.data, seed=0, length=4)


def test_a_validation_folder_too_small_for_its_tiles_names_the_key_and_the_sizes(tmp_path):
    """HistoSR's 192 x 192 patches with data.val_tile 256: "validation data too small for
    256 x 256 tiles", naming neither the folder nor what it holds."""
    from iste.train.dataset import validation_tiles

    small = synthetic_folder(tmp_path / "val", n=2, size=100)
    said = rf"data.val_tile 128: .*\({re.escape(str(small))}: 100 px\)"
    with pytest.raises(ValueError, match=said):
        validation_tiles([open_source(str(small), role="validation")], size=128, count=2,
                         min_tissue=0)


def test_samples_are_a_pure_function_of_the_index(folder):
    cfg = parse_train_config(tiny_train_dict(folder))
    ds = CropDataset([open_source(str(folder))], cfg.data, seed=0, length=10)
    a, b = ds[7], ds[7]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["lr"].shape == (3, 48, 48) and a["coord"].shape == (64, 2) and a["gt"].shape == (64, 3)
    assert not torch.equal(ds[3]["lr"], a["lr"])


def _fixed_loss(model, folder) -> float:
    cfg = parse_train_config(tiny_train_dict(folder))
    ds = CropDataset([open_source(str(folder))], cfg.data, seed=99, length=8)
    batch = {k: torch.stack([ds[i][k] for i in range(8)]) for k in ds[0]}
    with torch.no_grad():
        pred = model(normalize(batch["lr"]), batch["coord"], batch["cell"])
    return float((pred - normalize(batch["gt"])).abs().mean())


def test_a_few_steps_lower_the_loss(folder, tmp_path):
    cfg = parse_train_config(tiny_train_dict(folder, steps=40, checkpoint_every=40, batch_size=4))
    train(cfg, tmp_path / "run", stop_after=1, progress=False)
    first = _fixed_loss(load_model(tmp_path / "run" / "model.safetensors"), folder)
    train(cfg, tmp_path / "run", resume=True, progress=False)
    last = _fixed_loss(load_model(tmp_path / "run" / "model.safetensors"), folder)
    assert last < 0.8 * first
    log = [json.loads(line)
           for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 41))


def test_run_precision_sets_the_forward_autocast_and_keeps_fp32_weights(folder, tmp_path,
                                                                        monkeypatch):
    from iste.models.heads.iste import ISTE

    seen = []
    forward = ISTE.forward

    def spy(self, inp, *args, **kwargs):
        # the autocast of the device the run picked (CUDA where present)
        seen.append((self.training, torch.is_autocast_enabled(inp.device.type)))
        return forward(self, inp, *args, **kwargs)

    monkeypatch.setattr(ISTE, "forward", spy)
    weights = {}
    for precision in ("fp32", "bf16"):
        seen.clear()
        cfg = parse_train_config(tiny_train_dict(folder, steps=2, precision=precision))
        result = train(cfg, tmp_path / precision, progress=False)
        assert seen and all(s == (True, precision == "bf16") for s in seen)
        assert torch.isfinite(torch.tensor(result["loss"]))
        model = load_model(tmp_path / precision / "model.safetensors")
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        weights[precision] = torch.cat([p.flatten() for p in model.parameters()])
    diff = (weights["fp32"] - weights["bf16"]).abs().max()
    assert 0 < diff < 0.05  # the same training, bf16 rounding in the forward pass


def test_resume_continues_exactly(folder, tmp_path):
    # on the CPU: CUDA's backward kernels add in no fixed order (train_straight_and_split)
    cfg, cpu = parse_train_config(tiny_train_dict(folder)), torch.device("cpu")
    train(cfg, tmp_path / "straight", progress=False, device=cpu)
    train(cfg, tmp_path / "split", stop_after=3, progress=False, device=cpu)
    with pytest.raises(CheckpointError, match="--resume"):
        train(cfg, tmp_path / "split", progress=False, device=cpu)
    result = train(cfg, tmp_path / "split", resume=True, progress=False, device=cpu)
    assert result["step"] == 6
    a = torch.load(tmp_path / "straight" / "train_state.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "train_state.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["torch_rng"], b["torch_rng"])


def test_ctrl_c_saves_the_step_it_stops_at_and_the_run_resumes_exactly(folder, tmp_path,
                                                                        monkeypatch, capsys):
    """Ctrl-C (or a scheduler's SIGTERM) in the middle of a step stopped the run at once: the
    steps since the last checkpoint were lost. It now stops after the step under way, saves
    it, and exits 130 (143 for SIGTERM); the resumed run ends as an uninterrupted one."""
    import iste.train.loop as loop
    from iste.cli.main import main

    config = tmp_path / "c.json"
    config.write_text(json.dumps(tiny_train_dict(folder, checkpoint_every=100)))
    loss, _ = _signals_at_call(monkeypatch, loop, "_query_loss", 2, signal.SIGINT)  # in step 2
    run, cpu = tmp_path / "split", ["--device", "cpu", "--threads", "1", "-q"]
    assert main(["train", str(config), "--run-dir", str(run), *cpu]) == 130
    assert capsys.readouterr().err.splitlines() == [
        f"iste: interrupted at step 2 of 6, saved in {run / 'train_state.pt'}; the run "
        f"continues with: iste train {config} --run-dir {run} --resume"]
    assert torch.load(run / "train_state.pt", weights_only=True)["step"] == 2
    monkeypatch.setattr(loop, "_query_loss", loss)
    assert main(["train", str(config), "--run-dir", str(run), "--resume", *cpu]) == 0
    assert main(["train", str(config), "--run-dir", str(tmp_path / "straight"), *cpu]) == 0
    a, b = (torch.load(tmp_path / r / "train_state.pt", weights_only=True)
            for r in ("straight", "split"))
    assert a["step"] == b["step"] == 6 and torch.equal(a["torch_rng"], b["torch_rng"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    losses = [[json.loads(x)["loss"] for x in (tmp_path / r / "metrics.jsonl").read_text()
               .splitlines()] for r in ("straight", "split")]
    assert len(losses[0]) == 6 and losses[0] == losses[1]


def test_a_second_ctrl_c_or_sigterm_does_not_cut_the_save_short(folder, tmp_path, monkeypatch,
                                                                 capsys):
    """Decided: signals after the first one only wait for the step and its save. Under srun +
    torchrun a rank gets each signal twice (from Slurm and from torchrun), and the second, had
    it ended the process, would have lost the steps the first asked to save (kill -9 ends it
    at once, the files whole: every write is atomic)."""
    import iste.train.loop as loop
    from iste.cli.main import main

    config = tmp_path / "c.json"
    config.write_text(json.dumps(tiny_train_dict(folder, checkpoint_every=100)))
    _signals_at_call(monkeypatch, loop, "_query_loss", 2,  # in step 2
                     signal.SIGINT, signal.SIGINT, signal.SIGTERM)
    run = tmp_path / "r"
    assert main(["train", str(config), "--run-dir", str(run), "--device", "cpu", "-q"]) == 130
    assert capsys.readouterr().err.startswith("iste: interrupted at step 2 of 6, saved in ")
    assert torch.load(run / "train_state.pt", weights_only=True)["step"] == 2


def _signals_at_call(monkeypatch, module, name: str, call: int, *signums: int):
    """Make ``module.name`` send ``signums`` to this process in its ``call``-th call (from 1);
    returns it as it was and the list that counts its calls."""
    real, calls = getattr(module, name), []

    def signalled(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            for signum in signums:
                os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, signalled)
    return real, calls


def _records(run: Path) -> list[dict]:
    """metrics.jsonl's records, less the times (the wall clock's)."""
    return [{k: v for k, v in json.loads(line).items() if k not in ("time", "samples_per_s")}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("at", [4, 6])  # a validation in the run, the one after its last step
def test_a_sigterm_during_a_validation_saves_the_step_at_once_and_the_resume_redoes_it(
        folder, tmp_path, monkeypatch, capsys, at):
    """A SIGTERM during a validation (every run.val_every steps) waited for all of it before
    the step was saved: with a large data.val a scheduler's grace period (then SIGKILL) ran
    out first. It now ends at the next tile and the step is saved, its validation pending;
    the resumed run does it first and ends as the uninterrupted run: its metrics, best and
    last weights, generator. At the last step the validation cut short is a stop too."""
    import iste.train.validate as validation
    from iste.cli.main import main
    from iste.train.state import BEST_FILE

    raw = tiny_train_dict(folder, checkpoint_every=100, val_every=2)
    raw["data"].update(val=[str(folder)], val_tile=64, val_tiles=3, val_scales=[2.0, 3.0])
    config = tmp_path / "c.json"
    config.write_text(json.dumps(raw))
    # 6 tiles per validation (3 tiles x 2 scales): SIGTERM in the second of step at's
    signalled = (at // 2 - 1) * 6 + 2
    upscale, tiles = _signals_at_call(monkeypatch, validation, "upscale_to", signalled,
                                      signal.SIGTERM)
    run, cpu = tmp_path / "split", ["--device", "cpu", "--threads", "1", "-q"]
    assert main(["train", str(config), "--run-dir", str(run), *cpu]) == 143
    assert len(tiles) - signalled == 0  # tiles begun after the signal (4 until session 38)
    assert capsys.readouterr().err.startswith(f"iste: stopped by SIGTERM at step {at} of 6, ")
    state = torch.load(run / "train_state.pt", weights_only=True)
    assert (state["step"], state["val_pending"], state["format"]) == (at, at, 2)
    assert [r["step"] for r in _records(run) if "psnr_x2" in r] == list(range(2, at, 2))
    saved = (run / "train_state.pt").read_bytes()
    # the resumed run's validation of step at, stopped again at its first tile: as saved
    monkeypatch.setattr(validation, "upscale_to", upscale)
    _, tiles = _signals_at_call(monkeypatch, validation, "upscale_to", 1, signal.SIGTERM)
    assert main(["train", str(config), "--run-dir", str(run), "--resume", *cpu]) == 143
    assert len(tiles) == 1 and (run / "train_state.pt").read_bytes() == saved
    monkeypatch.setattr(validation, "upscale_to", upscale)
    assert main(["train", str(config), "--run-dir", str(run), "--resume", *cpu]) == 0
    assert main(["train", str(config), "--run-dir", str(tmp_path / "straight"), *cpu]) == 0
    a, b = (torch.load(tmp_path / r / "train_state.pt", weights_only=True)
            for r in ("straight", "split"))
    assert a["step"] == b["step"] == 6 and torch.equal(a["torch_rng"], b["torch_rng"])
    assert a["best"] == b["best"] and "val_pending" not in b and b["format"] == 1
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert _records(tmp_path / "straight") == _records(run)
    assert [r["step"] for r in _records(run) if "psnr_x2" in r] == [2, 4, 6]
    best = [load_model(tmp_path / r / BEST_FILE) for r in ("straight", "split")]
    assert best[0].checkpoint_meta["step"] == best[1].checkpoint_meta["step"] == a["best"]["step"]
    assert all(torch.equal(x, y) for x, y in zip(best[0].state_dict().values(),
                                                  best[1].state_dict().values()))


def test_a_resume_killed_after_its_pending_validation_logs_it_once(folder, tmp_path):
    """The resumed run writes the pending validation's record, then saves the step: killed
    in between, the next resume does the validation again, and its first record goes."""
    from iste.train.loop import MetricsLog

    log = MetricsLog(tmp_path, True)
    for step, values in ((2, {"loss": 1.0}), (2, {"psnr_x2": 30.0}), (4, {"loss": 0.5}),
                         (4, {"psnr_x2": 31.0})):
        log.write(step, **values)
    log.keep_until(4, validated=False)
    assert [(r["step"], *r) for r in _records(tmp_path)] == [
        (2, "step", "loss"), (2, "step", "psnr_x2"), (4, "step", "loss")]


def test_resume_refuses_another_number_of_processes(folder, tmp_path):
    """A run of 2 ranks resumed by 1 went on silently: step t drew samples t x batch x world
    on, so the second half of the first half's samples came again, the rest never."""
    cfg, run = parse_train_config(tiny_train_dict(folder)), tmp_path / "r"
    stopped = train(cfg, run, stop_after=3, progress=False)
    assert (stopped["step"], stopped["steps"]) == (3, cfg.run.steps) and cfg.run.steps > 3
    state = torch.load(run / "train_state.pt", weights_only=True)
    assert state["world"] == 1
    for world, says in ((2, r"trained by 2 process\(es\), this run has 1: resume it with 2 "
                            r"processes \(torchrun --nproc_per_node 2 on one machine\)"),
                        ("2", "damaged")):
        torch.save({**state, "world": world}, run / "train_state.pt")
        with pytest.raises(CheckpointError, match=says):
            train(cfg, run, resume=True, progress=False)
    del state["world"]  # written before the number was recorded: not checked
    torch.save(state, run / "train_state.pt")
    assert train(cfg, run, resume=True, progress=False)["step"] == 6
    assert torch.load(run / "train_state.pt", weights_only=True)["world"] == 1


def test_resume_refuses_another_config_but_may_extend_the_run(folder, tmp_path):
    train(parse_train_config(tiny_train_dict(folder)), tmp_path / "r", stop_after=3, progress=False)
    other = parse_train_config(tiny_train_dict(folder, batch_size=3))
    with pytest.raises(CheckpointError, match="different config"):
        train(other, tmp_path / "r", resume=True, progress=False)
    longer = parse_train_config(tiny_train_dict(folder, steps=8, checkpoint_every=4))
    assert train(longer, tmp_path / "r", resume=True, progress=False)["step"] == 8


def test_sigkill_then_resume_loses_at_most_the_steps_since_the_checkpoint(folder, tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_train_dict(folder, steps=400, checkpoint_every=4)))
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "iste", "train", str(cfg_path), "--run-dir", str(run_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = run_dir / "train_state.pt"
    deadline = time.time() + 120
    while time.time() < deadline:
        if state.exists() and torch.load(state, weights_only=True)["step"] >= 8:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(state, weights_only=True)["step"]
    logged = max(json.loads(x)["step"]
                 for x in (run_dir / "metrics.jsonl").read_text().splitlines())
    assert saved >= 8 and saved % 4 == 0 and logged - saved < 4 + 1
    done = subprocess.run([*cmd, "--resume", "--stop-after", "2"], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert torch.load(state, weights_only=True)["step"] == saved + 2
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, saved + 3))  # nothing lost, nothing logged twice


def _steps_logged(run_dir: Path) -> list[int]:
    """The steps of metrics.jsonl's whole records (a line being written is left out)."""
    path, steps = run_dir / "metrics.jsonl", []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(ValueError):
            steps.append(json.loads(line)["step"])
    return steps


def test_a_sigterm_to_the_whole_job_saves_the_step_every_rank_stopped_at(folder, tmp_path):
    """A scheduler's preemption signals every process of the job (torchrun, the ranks, their
    loader workers; torchrun sends the ranks its own SIGTERM again) and kills what is left
    after a grace period: the run lost every step since its last checkpoint. Each rank now
    stops at the step they agree on, which is saved (a stopped run resumes exactly:
    test_ctrl_c_saves_the_step_it_stops_at_and_the_run_resumes_exactly)."""
    cfg_path, run_dir = tmp_path / "cfg.yaml", tmp_path / "run"
    cfg_path.write_text(yaml.safe_dump(tiny_train_dict(folder, steps=400, workers=1,
                                                       checkpoint_every=1000)))
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
              "--nproc_per_node", "2", "-m", "iste"]
    cmd = [*launch, "train", str(cfg_path), "--run-dir", str(run_dir), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while len(_steps_logged(run_dir)) < 2 and time.time() < deadline \
                and proc.poll() is None:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    state = torch.load(run_dir / "train_state.pt", weights_only=True)
    step = state["step"]
    assert step >= 2 and state["world"] == 2 and _steps_logged(run_dir)[-1] == step
    said = [x for x in err.splitlines() if x.startswith("iste: stopped by SIGTERM")]
    assert said == [f"iste: stopped by SIGTERM at step {step} of 400, saved in "
                    f"{run_dir / 'train_state.pt'}; the run continues with: iste train "
                    f"{cfg_path} --run-dir {run_dir} --resume"], err[-2000:]
    assert proc.returncode != 0  # torchrun's own (its ranks ended with 143)


def test_two_process_ddp_keeps_replicas_identical_and_logs_the_whole_batchs_loss(folder,
                                                                                tmp_path):
    """2 ranks of batch 2 train as 1 process of batch 4 (the same samples, the gradient's mean
    over them); the logged loss was rank 0's half of the batch alone."""
    two_ranks(worker("ddp_worker.py"), str(folder), str(tmp_path))
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    start = load_model(tmp_path / "run" / "model.safetensors")  # written by rank 0 at step 3
    assert all(torch.equal(start.state_dict()[k], r0[k]) for k in r0)
    one = parse_train_config(tiny_train_dict(folder, steps=3, checkpoint_every=100,
                                             batch_size=4))  # ddp_worker's config, batch 2 x 2
    train(one, tmp_path / "one", progress=False, device=torch.device("cpu"))
    alone = load_model(tmp_path / "one" / "model.safetensors").state_dict()
    assert all(torch.allclose(alone[k], r0[k], atol=1e-5) for k in r0)  # float rounding
    losses = [[json.loads(x)["loss"] for x in (tmp_path / run / "metrics.jsonl").read_text()
               .splitlines()] for run in ("run", "one")]
    assert len(losses[0]) == 3 and losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_each_rank_draws_its_own_stochastic_depth(folder, tmp_path):
    """SwinIR's stochastic depth drew from torch's global generator, seeded alike on every
    rank: rank 1's samples dropped the branches rank 0's did, step after step."""
    two_ranks(worker("ddp_draws_worker.py"), str(folder), str(tmp_path))
    kept = [torch.load(tmp_path / f"kept{rank}.pt") for rank in (0, 1)]
    assert len(kept[0]) == len(kept[1]) == 6  # 2 draws with a rate above 0 in each of 3 steps
    assert {k for draw in kept[0] + kept[1] for k in draw} == {True, False}
    assert kept[0] != kept[1]


def test_one_torchrun_process_trains_run_after_run_and_a_ddp_run_resumes_exactly(folder,
                                                                                  tmp_path):
    """Each run tears its process group down; the next run's group, made on the same keys of
    torchrun's store, waited forever in its first barrier (or could not connect)."""
    two_ranks(worker("ddp_rerun_worker.py"), str(folder), str(tmp_path))
    a, b = (torch.load(tmp_path / run / "train_state.pt", weights_only=True)
            for run in ("straight", "split"))
    assert a["step"] == b["step"] == 3 and a["world"] == b["world"] == 2
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_stop_during_rank_0s_validation_stops_every_rank_at_its_step(folder, tmp_path):
    """Rank 0 alone validates: a stop it got during a validation must stop every rank at
    that step, its validation pending, and the resumed 2-rank run ends as a straight one."""
    two_ranks(worker("ddp_val_stop_worker.py"), str(folder), str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["tiles"] == 2 and ranks[1]["tiles"] == 0  # none after the stop
    assert [r["stopped"]["step"] for r in ranks] == [2, 2]
    assert [r["stopped"]["stopped"] for r in ranks] == [int(signal.SIGTERM)] * 2
    assert [r["resumed"]["step"] for r in ranks] == [4, 4]
    a, b = (torch.load(tmp_path / run / "train_state.pt", weights_only=True)
            for run in ("straight", "split"))
    assert a["world"] == b["world"] == 2 and a["best"] == b["best"]
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert _records(tmp_path / "straight") == _records(tmp_path / "split")


def test_the_ranks_wait_for_rank_0s_own_work_before_training_beyond_torchs_timeout(folder,
                                                                                    tmp_path):
    """Rank 0 alone reads the validation tiles and checks a resumed run's best record; the
    other ranks waited for it in their first collective (DDP's first broadcast), under torch's
    collective timeout (10 min on NCCL): a large data.val folder stopped every rank."""
    done = two_ranks(worker("ddp_slow_start_worker.py"), str(folder), str(tmp_path / "run"))
    assert sorted(done.stdout.splitlines()) == ["rank 0 done", "rank 1 done"]
    assert torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)["step"] == 4


def test_a_loss_turning_nan_on_one_rank_stops_both_before_the_step_is_saved(folder, tmp_path):
    """Rank 1's loss alone NaN at step 4 (its gradients finite): rank 1 stopped, rank 0 saw
    finite loss and weights, saved the diverged step's checkpoint and lost rank 1."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_train_dict(folder, steps=8, checkpoint_every=2,
                                                  log_every=2)))
    run, logs = tmp_path / "run", tmp_path / "logs"
    options = ("--monitor-interval", "2",  # torchrun ends the other ranks once one has failed
               "--log-dir", str(logs), "--redirects", "3")  # each rank's output in its own files
    done = two_ranks(worker("ddp_diverge_worker.py"), str(cfg), str(run), options=options,
                     check=False)
    assert done.returncode != 0
    said = (f"iste: error: training diverged: the loss was NaN or Inf at step 4; {run} keeps "
            "the checkpoint of step 2. Lower optim.lr (or set optim.clip_grad_norm) and start "
            "a new run")
    for rank in (0, 1):
        out, = logs.glob(f"*/attempt_0/{rank}/stdout.log")
        err = (out.parent / "stderr.log").read_text().splitlines()
        assert out.read_text() == f"rank {rank} exit 2\n", err
        assert [line for line in err if not line.startswith("iste: train:")] == [said]
    assert torch.load(run / "train_state.pt", weights_only=True)["step"] == 2
    assert load_model(run / "model.safetensors").state_dict()  # finite, of step 2


def test_a_loss_written_for_one_network_is_refused_for_a_head(tmp_path):
    raw = {**tiny_train_dict(tmp_path), "loss": {"kind": "swdnet"}}
    with pytest.raises(ConfigError, match="swdnet is the loss of swdnet, not of iste/"):
        parse_train_config(raw)


def test_a_run_records_where_its_training_data_lies(folder, tmp_path, monkeypatch):
    """data.train as written is relative to the folder the run started in, so the checkpoint
    could not say later which images it was trained on (iste eval compares them with its
    test data): train_sources and val_sources hold them resolved."""
    from iste.models.checkpoint import load_model

    monkeypatch.chdir(folder.parent)
    plain = tiny_train_dict(Path(folder.name))
    val = next(p for p in sorted(folder.iterdir()) if p.suffix == ".png")
    cfg = parse_train_config({**plain, "data": {
        **plain["data"], "val": [f"{folder.name}/{val.name}"], "val_tile": 32, "val_tiles": 1}})
    with pytest.warns(UserWarning, match="are on training data"):  # val lies in train here
        train(cfg, tmp_path / "run", stop_after=1, progress=False)
    meta = load_model(tmp_path / "run" / "model.safetensors").checkpoint_meta
    assert meta["train_sources"] == [str(folder.resolve())]
    assert meta["val_sources"] == [str(val.resolve())]
    assert meta["train_config"]["data"]["train"] == [folder.name]


def test_a_configs_paths_beyond_ascii_are_found_under_an_ascii_locale(tmp_path):
    """Under PYTHONUTF8=0 LC_ALL=C the config was read right (YAML is UTF-8) but its paths
    could not be encoded: data.train [Präparat] was "training source Pr\\xe4parat does not
    exist" beside the folder, and run.init the same. They are taken as their UTF-8 bytes."""
    folder = synthetic_folder(tmp_path / "Präparat", n=1, size=64)
    (tmp_path / "Gewichte_ä.safetensors").write_bytes(b"")
    config = tiny_train_dict(Path("Präparat"), init="Gewichte_ä.safetensors")
    (tmp_path / "cfg.yaml").write_bytes(yaml.safe_dump(config, allow_unicode=True).encode())
    assert folder.is_dir()
    code = ("from pathlib import Path; from iste.train.config import load_train_config; "
            "from iste.train.sources import open_source; from iste.data.places import place; "
            "cfg = load_train_config('cfg.yaml'); src = open_source(cfg.data.train[0]); "
            "print(src.images, Path(place(cfg.data.train[0])).is_dir(), "
            "Path(cfg.run.init).is_file())")
    env = {**os.environ, "PYTHONUTF8": "0", "LC_ALL": "C"}
    env.pop("PYTHONIOENCODING", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.split()) == (0, ["1", "True", "True"]), done.stderr
