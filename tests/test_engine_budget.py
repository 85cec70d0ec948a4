"""The memory plan counts the query chunks in flight side by side (iste.engine.budget)."""

import math
import re

import numpy as np
import pytest
import torch

from iste.engine import budget
from iste.engine.render import QueryOptions
from iste.models.registry import HEADS, build_model
from model_zoo import tiny_config


def test_the_tracker_counts_live_bytes_and_its_peak():
    with budget._PeakLiveBytes() as tracker:
        a = torch.zeros(1000)  # 4000 bytes
        b = a + 1  # 8000 live
        del a
        c = b * 2  # a was freed: still 8000 live
        view = c[:10]  # a view is no new memory
        c.add_(1)  # nor an in-place result
    assert tracker.peak == 8000
    assert view.numel() == 10


@pytest.mark.parametrize("head", sorted(HEADS))
def test_a_querys_working_memory_is_measured_per_query(head, monkeypatch):
    model = build_model(tiny_config(head)).eval()
    per_query = budget.query_bytes_per_query(model)
    assert per_query > 0
    budget._query_probe_cache.pop(model)
    monkeypatch.setattr(budget, "_PROBE_QUERIES", 2 * budget._PROBE_QUERIES)
    twice = budget.query_bytes_per_query(model)
    assert 0.7 * per_query <= twice <= 1.3 * per_query  # per query, not per probe


def test_wider_decoders_need_more_memory_per_query():
    narrow = build_model(tiny_config("liif", hidden=[32, 32])).eval()
    wide = build_model(tiny_config("liif", hidden=[256, 256])).eval()
    assert budget.query_bytes_per_query(wide) > 4 * budget.query_bytes_per_query(narrow)


def test_the_plan_counts_one_chunk_per_worker():
    model = build_model(tiny_config("iste")).eval()
    lr, out = (1000, 1000), (4000, 4000)
    ample = 1 << 50

    def estimate(workers, chunk=1024):
        return budget.plan_image(model, lr, out, budget=ample,
                                 options=QueryOptions(chunk=chunk, workers=workers)).estimate

    per_chunk = 1024 * budget.query_bytes_per_query(model)
    assert estimate(4) - estimate(1) == 3 * per_chunk
    assert estimate(1, chunk=4096) - estimate(1) == 3 * per_chunk
    # a budget the whole pass fits in with one worker, but not with 64 chunks in flight
    assert not budget.plan_image(model, lr, out, budget=2 * estimate(1),
                                 options=QueryOptions(chunk=1024, workers=1)).tiled
    assert budget.plan_image(model, lr, out, budget=2 * estimate(1),
                             options=QueryOptions(chunk=1024, workers=64)).tiled
    # without a chunk the model's default counts (2048 for this narrow model)
    assert estimate(1, chunk=None) - estimate(1) == per_chunk


def test_fixed_scale_networks_have_no_chunks_in_flight():
    from model_zoo import tiny_fixed

    model = build_model(tiny_fixed("edsr", 2)).eval()
    assert budget.query_bytes_per_query(model) == 0


def test_on_a_gpu_the_budget_is_the_devices_free_memory_when_less_than_the_hosts(monkeypatch):
    # the features, queries and float output of either pass live on the model's device: a
    # 24 GB card in a 128 GB host must tile what does not fit on the card
    gib = 2**30
    monkeypatch.setattr(budget, "host_memory_available", lambda proc: 100 * gib)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1 * gib, 24 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 3 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 1 * gib)
    assert budget.available_memory(torch.device("cuda", 0)) == 3 * gib  # free + cached unused
    assert budget.available_memory(torch.device("cpu")) == 100 * gib
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (99 * gib, 141 * gib))
    assert budget.available_memory(torch.device("cuda", 0)) == 100 * gib  # the host's, less


def test_a_refusal_says_how_much_more_the_tiled_pass_needs():
    """A budget just short of the tiled pass: the two figures of the message differ (at one
    decimal both read 0.3 GiB here: "needs about 0.3 GiB ...; 0.3 GiB are available")."""
    model = build_model(tiny_config("liif")).eval()
    lr, out = (1500, 1500), (3000, 3000)
    whole = budget.plan_image(model, lr, out, budget=1 << 50).estimate
    tiled = budget.plan_image(model, lr, out, budget=2 * whole - 2)
    assert tiled.tiled
    with pytest.raises(ValueError, match="even tile by tile") as err:
        budget.plan_image(model, lr, out, budget=tiled.estimate - (1 << 20))
    needs, available = re.findall(r"([0-9.]+) GiB", str(err.value))
    assert float(needs) > float(available)


def test_the_plan_budgets_the_memory_of_the_models_device(monkeypatch):
    model = build_model(tiny_config("liif")).eval()
    seen = []

    def available(device=None):
        seen.append(device)
        return 1 << 20  # 1 MiB: even the tiled pass does not fit

    monkeypatch.setattr(budget, "available_memory", available)
    with pytest.raises(ValueError, match="even tile by tile"):
        budget.plan_image(model, (1500, 1500), (3000, 3000))
    assert seen == [torch.device("cpu")]


def _proc_in_cgroup_v1(tmp_path, limit: int, usage: int, inactive_file: int) -> str:
    """A fake ``/proc/self`` in cgroup v1's memory cgroup /job/step (the limit on /job, as a
    batch scheduler sets it), with no address-space limit of its own."""
    proc, memory = tmp_path / "proc", tmp_path / "memory"
    (memory / "job" / "step").mkdir(parents=True)
    proc.mkdir()
    (proc / "cgroup").write_text("4:memory:/job/step\n0::/\n")
    (proc / "mountinfo").write_text(
        f"35 31 0:32 / {memory} rw,relatime - cgroup cgroup rw,memory\n")
    (proc / "status").write_text("Name:\tpython\nVmSize:\t  1000 kB\n")
    for folder, text in ((memory, str(2**63 - 4096)), (memory / "job", str(limit)),
                         (memory / "job" / "step", str(2**63 - 4096))):
        (folder / "memory.limit_in_bytes").write_text(text + "\n")
        (folder / "memory.usage_in_bytes").write_text(f"{usage}\n")
        (folder / "memory.stat").write_text(f"cache 5\ntotal_inactive_file {inactive_file}\n")
    return str(proc)


def test_the_budget_is_what_the_processs_cgroup_leaves_not_the_machines(tmp_path):
    # only MemAvailable was read: in a 4 GiB cgroup on a 24 GB machine a 12000 x 9000 PNG x2
    # (tiled, ~9 GiB) was started and killed by the kernel at 40 % without a word (exit 137)
    gib = 2**30
    proc = _proc_in_cgroup_v1(tmp_path, 4 * gib, usage=2 * gib, inactive_file=gib)
    assert budget.available_memory(torch.device("cpu"), proc=proc) == 3 * gib
    model = build_model(tiny_fixed_edsr()).eval()
    with pytest.raises(ValueError, match="even tile by tile"):
        budget.plan_image(model, (9000, 12000), (18000, 24000),
                          budget=budget.available_memory(proc=proc))


def tiny_fixed_edsr() -> dict:
    from model_zoo import tiny_fixed

    return tiny_fixed("edsr", 2)


def test_a_small_image_is_planned_whole_unmeasured_only_where_memory_is_ample(monkeypatch):
    # a 1024 x 1024 input to 2048 x 2048 went whole without an estimate whatever was free,
    # so nothing checked it against a tight cgroup limit (the shipped model's pass there
    # peaks at 1.5 GiB resident, a wider model's at more)
    model = build_model(tiny_config("liif")).eval()
    lr, out = (1024, 1024), (2048, 2048)
    whole = budget.plan_image(model, lr, out, budget=1 << 50).estimate
    monkeypatch.setattr(budget, "available_memory", lambda device=None: 2 * whole - 1)
    plan = budget.plan_image(model, lr, out)
    assert plan.tiled and plan.estimate > 0
    monkeypatch.setattr(budget, "available_memory", lambda device=None: 1 << 50)
    assert budget.plan_image(model, lr, out) == budget.ImagePlan(False, 0)


class _FloatShapes(torch.utils._python_dispatch.TorchDispatchMode):
    """The shapes of the floating-point tensors operations made inside it."""

    def __init__(self):
        super().__init__()
        self.shapes: set[tuple[int, ...]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                self.shapes.add(tuple(t.shape))
        return out


def test_a_tiled_plain_image_holds_no_float_copy_of_its_whole_output(monkeypatch):
    # a 12000 x 9000 PNG x2 to TIFF peaked at 15.1 GiB resident against an estimate of 8.9:
    # the tiles filled a float output (5.2 GB) that the conversion to uint8 copied twice more,
    # from a float copy of the input (1.3 GB)
    import iste.engine.tiles as tiles
    from iste.data.tensors import rgb_to_tensor, tensor_to_rgb
    from iste.engine.image import upscale_to

    model = build_model(tiny_config("liif")).eval()
    lr = np.random.default_rng(0).integers(0, 256, (160, 192, 3), dtype=np.uint8)
    out_hw = (480, 576)
    whole = upscale_to(lr, out_hw, model)
    monkeypatch.setattr(tiles, "default_tile", lambda scale: 128)
    whole_bytes = budget.plan_image(model, lr.shape[:2], out_hw, budget=1 << 50).estimate
    # a budget the whole pass does not fit in (it takes half of it at most), the tiled one does
    monkeypatch.setattr(budget, "available_memory", lambda device=None: 2 * whole_bytes - 1)
    with _FloatShapes() as seen:
        tiled = upscale_to(lr, out_hw, model)
    largest = max(math.prod(shape) for shape in seen.shapes)
    assert largest < 3 * out_hw[0] * out_hw[1]  # never a float image of the output's size
    assert not [s for s in seen.shapes if s[-2:] == lr.shape[:2]]  # nor of the input's
    assert budget.plan_image(model, lr.shape[:2], out_hw, uint8_out=True).tiled
    as_float = budget.super_resolve_within_memory(model, rgb_to_tensor(lr), out_hw)
    assert np.array_equal(tiled, tensor_to_rgb(as_float))  # the float tiles' pixels, quantised
    assert np.abs(tiled.astype(int) - whole).max() <= 1  # the whole pass's, to float rounding


def test_the_plan_of_a_uint8_result_counts_no_float_image_where_tiled():
    model = build_model(tiny_fixed_edsr()).eval()
    lr, out = (9000, 12000), (18000, 24000)
    as_float = budget.plan_image(model, lr, out, budget=64 << 30)
    as_uint8 = budget.plan_image(model, lr, out, budget=64 << 30, uint8_out=True)
    assert as_float.tiled and as_uint8.tiled
    floats = (out[0] * out[1] + lr[0] * lr[1]) * 3 * 4  # of the whole output and input
    held = lr[0] * lr[1] * 3  # the caller's uint8 input, not available to the plan already
    assert as_float.estimate - as_uint8.estimate == floats + held


def test_quantising_holds_one_float_copy_of_the_image():
    from iste.data.tensors import unit_to_uint8

    t = torch.rand(3, 64, 64)
    with budget._PeakLiveBytes() as tracker:
        q = unit_to_uint8(t)
    assert q.dtype == torch.uint8
    assert tracker.peak <= t.nbytes + t.numel()  # the clamped copy and the uint8 result


# A driver for a plain image read under an address-space limit (RLIMIT_AS, as `ulimit -v`)
# of the process's size after its imports plus 300 MB: too little to decode the image below
# (8000 x 8000 px, 0.6 GB decoded, from a 0.2 MB file). argv: "check" or "nocheck" (the
# header's check left out, as if it had let the job through), then the command line.
_LIMITED = r"""
import resource, sys
import iste.data.images as images
import iste.engine.budget as budget
from iste.cli.main import main
from iste.process_memory import proc_kib_bytes
if sys.argv[1] == "nocheck":  # both checks from the header: the job's and the decoder's own
    budget.check_decode_fits = lambda *args, **kwargs: None
    images.decode_memory_problem = lambda hw: None
size = proc_kib_bytes("/proc/self/status", "VmSize")
resource.setrlimit(resource.RLIMIT_AS, (size + (300 << 20),) * 2)
sys.exit(main(sys.argv[2:]))
"""


def _flat_png(path, width: int, height: int):
    """A PNG of ``width`` x ``height`` px of one grey, its data compressed a thousandfold."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    deflate, row = zlib.compressobj(9), b"\0" + b"\xf0" * (3 * width)
    data = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def _upscale_limited(tmp_path, mode: str):
    import subprocess
    import sys

    src = _flat_png(tmp_path / "big.png", 8000, 8000)
    out = tmp_path / "out" / "sr.png"
    proc = subprocess.run([sys.executable, "-c", _LIMITED, mode, "upscale", str(src), "-s", "2",
                           "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    return proc, out


def test_a_plain_image_beyond_the_memory_left_is_refused_from_its_header(tmp_path):
    proc, out = _upscale_limited(tmp_path, "check")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("iste: error: super-resolving 8000 x 8000 px to 16000 x 16000 px "
                               "needs at least"), lines
    assert "GiB to decode the input" in lines[0] and "GiB are available" in lines[0]
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_memory_running_out_while_an_image_is_decoded_is_said_in_one_line(tmp_path):
    proc, out = _upscale_limited(tmp_path, "nocheck")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    # not "corrupt or unreadable (MemoryError)", nor the traceback of an import that failed
    assert lines[0].startswith("iste: error: out of memory (MemoryError)"), lines
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_the_decode_check_counts_the_decoder_and_the_output():
    lr, out = (1000, 1000), (2000, 2000)
    need = max(10**6 * budget.DECODE_BYTES, 10**6 * 3 + 4 * 10**6 * 7)
    budget.check_decode_fits(lr, out, budget=need)
    with pytest.raises(ValueError, match=r"needs at least 0.0\d+ GiB .* GiB are available"):
        budget.check_decode_fits(lr, out, budget=need - 1)
