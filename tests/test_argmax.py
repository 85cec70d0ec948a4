"""The two-level CPU argmax gives torch.argmax's indices: values, ties, NaN, ragged widths."""

import pytest
import torch

from iste.models.layers.argmax import GROUP, argmax_last


def _cases(shape, gen):
    x = torch.randn(*shape, generator=gen)
    ties = torch.randint(0, 3, shape, generator=gen).float()  # most rows tie at their maximum
    nan = x.clone()
    rows = nan.view(-1, shape[-1])
    rows[0, -1] = float("nan")  # past the last whole group
    rows[-1, min(3, shape[-1] - 1)] = float("nan")  # inside the first group
    if rows.shape[0] > 2:
        rows[1, 0] = rows[1, -1] = float("nan")  # two NaNs: the first wins
    return {"random": x, "ties": ties, "nan": nan,
            "-inf": torch.full(shape, float("-inf")), "constant": torch.ones(shape)}


@pytest.mark.parametrize("shape", [(1, 1024, 2304), (3, 17, 2300), (2, 5, GROUP),
                                   (4, GROUP - 1), (2, 3, 2 * GROUP + 1), (6, 577), (1, 1, 1)])
def test_same_indices_as_torch_argmax(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    for name, x in _cases(shape, gen).items():
        got = argmax_last(x)
        assert got.dtype == torch.int64 and got.shape == shape[:-1], name
        assert torch.equal(got, x.argmax(-1)), name


def test_empty_rows_and_strided_input():
    assert argmax_last(torch.zeros(0, 2304)).shape == (0,)
    x = torch.randn(40, 300).t()  # non-contiguous (300, 40) -> rows of 40
    assert torch.equal(argmax_last(x), x.argmax(-1))
    y = torch.randn(8, 2304 * 2)[:, ::2]  # strided columns
    assert torch.equal(argmax_last(y), y.argmax(-1))
