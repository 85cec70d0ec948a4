"""Deterministic pseudo-random weights from a formula (no RNG, no stored tensors).

Used by parity fixtures whose networks are too large to store (the published RDN has at least
3 M parameters in every configuration it accepts): the fixture stores the published key names,
shapes and outputs; the weights are this function of (seed, key order, index), which the
fixture's generator applied to the published module before computing its outputs.

Value j of the tensors, counted over all tensors in key order, is a 32-bit integer hash of
(seed, j) (the murmur3 finaliser) mapped to a uniform value in [-1, 1), times 1 / sqrt(fan_in)
(fan_in = the product of shape[1:], 1 for vectors), rounded to float16 (so float32 holds it
exactly).
"""

import torch

_M32 = 0xFFFFFFFF


def _mix(h: torch.Tensor) -> torch.Tensor:
    h = h & _M32
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def hashed_weights(shapes: dict[str, list[int]], seed: int) -> dict[str, torch.Tensor]:
    """{key: float32 tensor of shape} in the key order of ``shapes``."""
    out, offset = {}, 0
    for key, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        j = torch.arange(offset, offset + n, dtype=torch.int64)
        h = _mix(_mix(j + seed * 0x9E3779B1) + 0x27D4EB2F)
        u = (h >> 8).double() / float(1 << 24) * 2 - 1
        fan_in = 1
        for d in shape[1:]:
            fan_in *= d
        out[key] = (u / fan_in ** 0.5).float().half().float().reshape(shape)
        offset += n
    return out
