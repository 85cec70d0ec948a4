"""iste inside another program: its multiprocessing and its torch settings are the host's."""

import multiprocessing

import numpy as np
import pytest
import torch

import iste
from iste.engine import budget
from iste.models.checkpoint import save_model
from iste.models.layers import linear
from iste.models.registry import build_model
from model_zoo import tiny_config


@pytest.fixture(scope="module")
def rgb():
    return (np.random.default_rng(0).random((21, 18, 3)) * 255).astype(np.uint8)


@pytest.fixture
def float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def test_a_forked_worker_runs_a_model_its_parent_loaded(rgb):
    # GNU OpenMP cannot run a parallel region in a forked child once the parent ran one (a
    # model load does): with more than one thread the child's first convolution never ended
    torch.manual_seed(0)
    model = build_model(tiny_config("liif")).eval()
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ref = iste.upscale(rgb, 2, model)  # the parent's OpenMP threads exist from here on
        with multiprocessing.get_context("fork").Pool(1) as pool:
            assert pool.apply(torch.get_num_threads) == 1  # asked before any work in the child
            got = pool.apply_async(iste.upscale, (rgb, 2, model)).get(timeout=600)
    finally:
        torch.set_num_threads(old)
    np.testing.assert_array_equal(got, ref)


def test_a_float64_default_dtype_loads_and_upscales_as_float32(tmp_path, monkeypatch):
    # a host's torch.set_default_dtype(torch.float64) built float64 weights and probes: "Input
    # type (double) and bias type (float) should be the same"
    rgb = (np.random.default_rng(1).random((96, 80, 3)) * 255).astype(np.uint8)
    torch.manual_seed(0)
    model = build_model(tiny_config("lit")).eval()  # LIT: buffers made at construction
    save_model(model, tmp_path / "lit.safetensors")
    # memory measured by a probe of the model, as where less than 16 GB is free
    monkeypatch.setattr(budget, "available_memory", lambda device: 8 << 30)
    tiled_plan = budget.ImagePlan(True, 0, 32)  # the tile-by-tile pass and its halo probe

    def whole_and_tiled():  # the float prediction, and its rounding to 8 bits
        model = iste.load(tmp_path / "lit.safetensors")
        whole = [iste.upscale(rgb, 2.5, model, dtype=dtype) for dtype in (None, "float32")]
        with monkeypatch.context() as patch:
            patch.setattr(budget, "plan_image", lambda *args, **kwargs: tiled_plan)
            return whole + [iste.upscale(rgb, 2.5, iste.load(tmp_path / "lit.safetensors"))]

    expected = whole_and_tiled()
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        dtypes = {t.dtype for t in iste.load(tmp_path / "lit.safetensors").state_dict().values()}
        got = whole_and_tiled()
    finally:
        torch.set_default_dtype(old)
    assert dtypes == {torch.float32}
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_the_fused_linear_checks_answer_alike_under_a_float64_default(float64_default):
    checks = (linear._fused_op, linear._fused_gelu_ok)
    torch.set_default_dtype(torch.float32)
    for check in checks:
        check.cache_clear()
    expected = [check() for check in checks]
    for check in checks:
        check.cache_clear()
    torch.set_default_dtype(torch.float64)
    try:
        assert [check() for check in checks] == expected  # cached for the whole process
    finally:
        for check in checks:
            check.cache_clear()


@pytest.mark.parametrize("head", ["liif", "iste"])
def test_a_default_device_of_the_host_leaves_loading_and_upscaling_as_they_were(head, rgb,
                                                                                tmp_path):
    # a notebook's torch.set_default_device("cuda") put the loader's and the engine's index
    # tensors on the GPU (in the calling thread only) beside a CPU model: torch's device
    # errors; "meta" stands for that device on a machine without one
    torch.manual_seed(0)
    save_model(build_model(tiny_config(head)).eval(), tmp_path / "m.safetensors")
    model = iste.load(tmp_path / "m.safetensors", device="cpu")
    tensor = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    expected = [iste.upscale(rgb, 2.5, model), iste.upscale(tensor, 2.5, model)]
    torch.set_default_device("meta")
    try:
        loaded = iste.load(tmp_path / "m.safetensors", device="cpu")
        got = [iste.upscale(rgb, 2.5, loaded), iste.upscale(tensor, 2.5, loaded)]
        assert torch.get_default_device().type == "meta"  # the host's setting, as it was
    finally:
        torch.set_default_device(None)
    np.testing.assert_array_equal(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1], rtol=0, atol=0)
