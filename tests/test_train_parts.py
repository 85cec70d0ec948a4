"""A training batch in parts on the chunk workers (iste.train.parts): the same gradient as the
whole batch, reproducible random draws, and the trainer using it on several CPU threads."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

import iste.train.loop as loop
from iste.data.coords import normalize
from iste.models.layers.randomness import drawing_from, training_generator
from iste.models.registry import build_model
from iste.train.config import parse_train_config
from iste.train.loop import train
from iste.train.parts import backward_in_parts, batch_parts
from model_zoo import tiny_config
from train_helpers import synthetic_folder, tiny_train_dict


@contextlib.contextmanager
def threads(n: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def test_batch_parts_cover_the_batch_once_with_sizes_within_one():
    for size in range(1, 10):
        for workers in range(1, 6):
            parts = batch_parts(size, workers)
            if workers < 2 or workers > size:
                assert parts == []
                continue
            assert len(parts) == workers
            covered = [i for part in parts for i in range(part.start, part.stop)]
            assert covered == list(range(size))
            lengths = [part.stop - part.start for part in parts]
            assert max(lengths) - min(lengths) <= 1


def _batch(size: int, queries: int = 40) -> dict:
    g = torch.Generator().manual_seed(5)
    return {"lr": torch.rand(size, 3, 12, 12, generator=g),
            "coord": torch.rand(size, queries, 2, generator=g) * 2 - 1,
            "cell": torch.full((size, queries, 2), 2 / 30),
            "gt": torch.rand(size, queries, 3, generator=g)}


def _loss_of(model):
    def loss(batch):
        pred = model(normalize(batch["lr"]), batch["coord"], batch["cell"])
        return F.l1_loss(pred, normalize(batch["gt"]))
    return loss


def _grads(model) -> list:
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("encoder", ["edsr-baseline", "swinir"])
def test_the_parts_give_the_whole_batch_loss_and_gradient(encoder):
    model = build_model(tiny_config("iste", encoder)).train()
    if encoder == "swinir":
        model.encoder.eval()  # no stochastic depth: the same function on both sides
    batch, loss_of = _batch(3), _loss_of(model)
    whole = loss_of(batch)
    whole.backward()
    expected = _grads(model)
    model.zero_grad(set_to_none=True)
    loss = backward_in_parts(loss_of, batch, list(model.parameters()), batch_parts(3, 2),
                             contextlib.nullcontext)
    assert torch.allclose(loss, whole.detach(), atol=1e-6)
    got = _grads(model)
    assert sum(g is not None for g in got) == sum(g is not None for g in expected) > 0
    for a, b in zip(got, expected):
        if b is not None:
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def _drop_path_model():
    cfg = tiny_config("iste", "swinir")
    cfg["encoder_args"] = {**cfg["encoder_args"], "drop_path_rate": 0.5}
    return build_model(cfg).train()


def test_stochastic_depth_in_the_parts_draws_from_generators_seeded_by_the_caller():
    model = _drop_path_model()
    batch, params = _batch(4), list(model.parameters())
    runs = []
    for seed in (11, 11, 12, 13, 14, 15):
        torch.manual_seed(seed)
        model.zero_grad(set_to_none=True)
        backward_in_parts(_loss_of(model), batch, params, batch_parts(4, 2), contextlib.nullcontext)
        after = torch.get_rng_state()
        torch.manual_seed(seed)
        torch.randint(0, 2 ** 62, (2,))  # the parts' seeds: the only global draw
        assert torch.equal(after, torch.get_rng_state())
        runs.append(_grads(model))
    same = all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]) if a is not None)
    other = any(not torch.equal(a, c) for run in runs[2:]
                for a, c in zip(runs[0], run) if a is not None)
    assert same and other


def test_a_thread_draws_from_its_generator_only_inside_the_block():
    assert training_generator() is None
    g = torch.Generator().manual_seed(3)
    with drawing_from(g):
        assert training_generator() is g
    assert training_generator() is None


def test_training_on_two_threads_runs_each_batch_in_parts_and_resumes_exactly(tmp_path,
                                                                                monkeypatch):
    folder = synthetic_folder(tmp_path / "hr")
    calls = []

    def spy(*args, **kwargs):
        calls.append(len(args[3]))
        return backward_in_parts(*args, **kwargs)

    monkeypatch.setattr(loop, "backward_in_parts", spy)
    model = tiny_config("iste", "swinir")
    model["encoder_args"] = {**model["encoder_args"], "drop_path_rate": 0.5}
    cfg = parse_train_config({**tiny_train_dict(folder), "model": model})
    cpu = torch.device("cpu")  # the parts are the CPU's: a GPU runs the batch whole
    with threads(1):
        train(cfg, tmp_path / "one", stop_after=2, progress=False, device=cpu)
    assert calls == []
    with threads(2):
        train(cfg, tmp_path / "straight", progress=False, device=cpu)
        assert calls == [2] * 6
        train(cfg, tmp_path / "split", stop_after=3, progress=False, device=cpu)
        train(cfg, tmp_path / "split", resume=True, progress=False, device=cpu)
    a = torch.load(tmp_path / "straight" / "train_state.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "train_state.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_the_parts_run_under_the_runs_autocast_in_their_worker_threads(tmp_path, monkeypatch):
    import threading

    from iste.models.heads.iste import ISTE

    seen = []
    forward = ISTE.forward

    def spy(self, *args, **kwargs):
        seen.append((threading.current_thread() is threading.main_thread(),
                     torch.is_autocast_enabled("cpu"), torch.is_grad_enabled()))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(ISTE, "forward", spy)
    folder = synthetic_folder(tmp_path / "hr")
    for precision in ("fp32", "bf16"):
        seen.clear()
        cfg = parse_train_config(tiny_train_dict(folder, steps=2, precision=precision))
        with threads(2):
            train(cfg, tmp_path / precision, progress=False, device=torch.device("cpu"))
        assert len(seen) == 4  # 2 steps x 2 parts, none in the calling thread
        assert all(s == (False, precision == "bf16", True) for s in seen)


def test_bf16_training_in_parts_gives_the_same_weights_run_after_run(tmp_path, monkeypatch):
    """torch's cache of bf16 weight copies is one for all threads: with it, the parts side by
    side gave weights 1.8e-4 apart between two runs of the same 6 steps (the losses equal for
    3 steps). The parts cast their weights without it."""
    from iste.models.heads.iste import ISTE

    cached = []
    forward = ISTE.forward

    def spy(self, *args, **kwargs):
        cached.append(torch.is_autocast_cache_enabled())
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(ISTE, "forward", spy)
    cfg = parse_train_config(tiny_train_dict(synthetic_folder(tmp_path / "hr"), steps=8,
                                             precision="bf16"))
    with threads(2):
        for run in ("a", "b"):
            train(cfg, tmp_path / run, progress=False, device=torch.device("cpu"))
    assert len(cached) == 2 * 8 * 2 and not any(cached)  # runs x steps x parts
    a, b = (torch.load(tmp_path / run / "train_state.pt", weights_only=True)["model"]
            for run in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
