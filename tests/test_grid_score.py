"""iste.data.deblock.block_grid_score: neighbour differences across 8-pixel block edges over
elsewhere."""

from __future__ import annotations

import numpy as np

from iste.data.deblock import block_grid_score as grid_score


def test_blocks_score_above_one_and_noise_near_one():
    rng = np.random.default_rng(0)
    noise = rng.normal(128, 10, (96, 96, 3))
    blocks = noise + np.kron(rng.normal(0, 30, (12, 12)), np.ones((8, 8)))[..., None]
    assert abs(grid_score(noise, 1.0) - 1) < 0.05
    assert grid_score(blocks, 1.0) > 1.5
    # upscaled x3 by pixel repetition, the block edges move to multiples of 24
    big = np.repeat(np.repeat(blocks, 3, axis=0), 3, axis=1)
    assert grid_score(big, 3.0) > 1.5 * grid_score(np.repeat(np.repeat(noise, 3, 0), 3, 1), 3.0)
