"""iste inside another program: its multiprocessing and its torch settings are the host's."""

import multiprocessing

import numpy as np
import pytest
import torch

import iste
from iste.models.registry import build_model
from model_zoo import tiny_config


@pytest.fixture(scope="module")
def rgb():
    return (np.random.default_rng(0).random((21, 18, 3)) * 255).astype(np.uint8)


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
