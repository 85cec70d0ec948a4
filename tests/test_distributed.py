"""torchrun setup (iste.distributed) and the per-GPU random state of a resumed run, on the
GPU paths a CPU machine can reach with torch's CUDA calls stood in for."""

import pytest
import torch

from iste import distributed
from iste.train.state import restore_rng


@pytest.fixture
def two_gpus_rank_1(monkeypatch):
    """Rank 1 of 2 on one node with 2 GPUs; records the GPU set and the backend."""
    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.update(gpu=device))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed, "_join_group",
                        lambda backend: calls.update(backend=backend))
    return calls


def test_a_plain_cuda_device_under_torchrun_is_the_ranks_own_gpu(two_gpus_rank_1):
    # torch.cuda.set_device refuses a device without an index: every rank failed before
    info, device = distributed.setup(torch.device("cuda"))
    assert (info.rank, info.world, info.local_rank) == (1, 2, 1)
    assert device == torch.device("cuda", 1) == two_gpus_rank_1["gpu"]
    assert two_gpus_rank_1["backend"] == "nccl"


def test_another_ranks_gpu_is_refused_in_one_line(two_gpus_rank_1):
    with pytest.raises(ValueError, match=r"cuda:1 for local rank 1.*--device cuda"):
        distributed.setup(torch.device("cuda", 0))
    assert distributed.setup(torch.device("cuda", 1))[1] == torch.device("cuda", 1)
    assert distributed.setup(torch.device("cpu"))[1] == torch.device("cpu")
    assert two_gpus_rank_1["backend"] == "gloo"


def test_a_run_saved_with_more_gpus_resumes_on_fewer(monkeypatch):
    # saved under torchrun with 2 GPUs visible, resumed with 1: set_rng_state_all indexed a
    # GPU that is not there, and the resume called the healthy state damaged
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device: restored.append((device, state[0].item())))
    cpu_state = torch.get_rng_state()
    torch.rand(3)
    saved = [torch.full((16,), 7, dtype=torch.uint8), torch.full((16,), 9, dtype=torch.uint8)]
    restore_rng({"torch_rng": cpu_state, "cuda_rng": saved})
    assert restored == [(0, 7)]
    assert torch.equal(torch.get_rng_state(), cpu_state)


GLOO_RESET = ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
              "[127.0.0.1]:55493: Connection reset by peer. This is typically caused by a "
              "remote worker hanging or bugs in the application.")


def test_another_rank_stopping_is_one_line_naming_this_rank(monkeypatch, capsys):
    import argparse

    import torch.distributed as dist

    from iste.cli.main import _run
    from iste.distributed import lost_peer_message

    def fails(args):
        raise RuntimeError(GLOO_RESET)  # as DDP's gradient hook raises it on the survivor

    assert lost_peer_message(RuntimeError(GLOO_RESET)) is None  # not under torchrun
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert _run(argparse.Namespace(threads=None, run=fails)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("iste: error: rank 1 lost contact with the other ranks "
                          "(Read error [127.0.0.1]:55493: Connection reset by peer)")
    assert "\n" not in err and "pair.cc" not in err
    assert lost_peer_message(dist.DistBackendError("NCCL communicator was aborted")) is not None
    assert lost_peer_message(RuntimeError("shape mismatch")) is None  # a bug stays a traceback


def test_the_process_group_is_destroyed_however_the_block_ends(monkeypatch):
    # a group left standing when a run failed could abort the rank at its exit ('terminate
    # called without an active exception'): the downstream experiments left it so
    state = {"up": False, "destroyed": 0}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: state["up"])
    monkeypatch.setattr(distributed, "_join_group",
                        lambda backend: state.update(up=True, backend=backend))

    def destroy():
        state.update(up=False, destroyed=state["destroyed"] + 1)

    monkeypatch.setattr(distributed.dist, "destroy_process_group", destroy)
    with pytest.raises(ValueError, match="failed"):
        with distributed.process_group(torch.device("cpu")) as (info, device):
            assert state["up"] and state["backend"] == "gloo" and info.world == 2
            raise ValueError("the run failed")
    assert state == {"up": False, "destroyed": 1, "backend": "gloo"}
    with distributed.process_group(None) as (info, device):
        pass
    assert state["destroyed"] == 2 and not state["up"]
    state["up"] = True  # a group the caller made: used, and left to the caller
    with distributed.process_group(None) as (info, device):
        assert info.world == 2
    assert state["destroyed"] == 2 and state["up"]


def test_the_downstream_experiments_hold_the_process_group_for_the_whole_run(tmp_path,
                                                                              monkeypatch):
    from iste.downstream.experiments import glas, pcam

    ended = []
    monkeypatch.setattr(distributed, "teardown", lambda info: ended.append(info))
    for module, request in ((pcam, pcam.PCamRequest), (glas, glas.GlasRequest)):
        req = request(data=tmp_path / "missing", methods=["Bicubic=bicubic"],
                      out=tmp_path / module.__name__.rsplit(".", 1)[1])
        with pytest.raises((OSError, ValueError)):
            getattr(module, f"run_{module.__name__.rsplit('.', 1)[1]}")(req, log=lambda s: None)
    assert len(ended) == 2  # each failed run left the group (here: none) torn down


@pytest.mark.parametrize("env, says", [
    # int()'s "invalid literal for int() with base 10: 'abc'" named no variable
    ({"WORLD_SIZE": "abc"}, r"WORLD_SIZE='abc' in the environment is not a whole number >= 1"),
    ({"WORLD_SIZE": "-1"}, r"WORLD_SIZE='-1' .* not a whole number"),  # was one process
    ({"WORLD_SIZE": "2", "RANK": "x"}, r"RANK='x' in the environment is not a whole number"),
    ({"WORLD_SIZE": "2"}, r"WORLD_SIZE=2 in the environment but no RANK"),  # KeyError: 'RANK'
    ({"WORLD_SIZE": "2", "RANK": "2"}, r"RANK=2 in the environment is not below WORLD_SIZE=2"),
])
def test_launch_variables_torchrun_did_not_set_are_named(monkeypatch, env, says):
    monkeypatch.delenv("RANK", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(distributed, "_join_group", lambda backend: None)
    with pytest.raises(ValueError, match=says):
        distributed.setup(torch.device("cpu"))
    # said from main's handler of RuntimeErrors: must not raise in its turn
    assert isinstance(distributed.lost_peer_message(RuntimeError("gloo: reset")), (str, type(None)))
