"""Computing a row-wise function once per distinct input row.

Heads whose per-query MLPs take only the query's position relative to its LR pixels (and the
scale) see few distinct inputs on an output grid: at an integer scale a query sits at one of
s x s positions inside its pixel, and a position repeats wherever its float32 value does.
Running the MLP on the distinct rows and gathering gives the same rows as running it on
all of them.
"""

from __future__ import annotations

import torch


def distinct_rows(x: torch.Tensor, key: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows of x (N, D) and each row's index among them: (U, D), (N,), so that
    ``f(x) == f(distinct)[which]`` for any row-wise f, computed U times instead of N.

    key: (N, K) columns that determine a row of x (fewer columns to compare; the caller's
    construction must guarantee it), by default x itself. Rows are coded column by column
    (1-D uniques, fast where ``unique(dim=0)`` compares row by row)."""
    if x.shape[0] == 0:
        return x, torch.zeros(0, dtype=torch.long, device=x.device)
    which, size = None, 1
    for column in (x if key is None else key).detach().unbind(-1):
        values, code = torch.unique(column, return_inverse=True)
        if which is not None and size * values.numel() >= 1 << 62:  # compact first
            which = torch.unique(which, return_inverse=True)[1]
            size = int(which.max()) + 1
        which = code if which is None else which * values.numel() + code
        size *= values.numel()
    which = torch.unique(which, return_inverse=True)[1]
    count = int(which.max()) + 1
    first = torch.full((count,), x.shape[0], device=x.device, dtype=torch.long)
    first.scatter_reduce_(0, which, torch.arange(x.shape[0], device=x.device), "amin")
    return x[first], which
