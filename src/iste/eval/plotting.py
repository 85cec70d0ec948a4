"""Figure plumbing shared by every report figure (evaluation, explanation, downstream):
matplotlib figures without pyplot's global state, saved as PNG through an atomic write."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from iste.eval.files import write_atomic

__all__ = ["new_figure", "panel_row", "save_png"]


def new_figure(n_rows: int, n_cols: int, *, panel: float = 2.1, extra_w: float = 0.0):
    """(figure, axes): ``axes`` a (n_rows, n_cols) array of tick-less panels of ``panel``
    inches (plus 0.45 inch per row for titles), ``extra_w`` inches wider (for a colour bar)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel * n_cols + extra_w, (panel + 0.45) * n_rows),
                 layout="constrained")
    axes = np.atleast_2d(fig.subplots(n_rows, n_cols, squeeze=False))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def save_png(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` as a 100-dpi PNG (temp file, then rename); returns ``path``.
    Its texts are drawn as they encode: a file name that is not UTF-8 (its bytes kept by
    Python as lone surrogates) shows its bytes as escapes (``caf\\xe9.png``), where matplotlib
    refused to draw it and the report stopped."""
    from matplotlib.text import Text

    from iste.files import shown

    for text in fig.findobj(Text):
        text.set_text(shown(text.get_text()))
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path


def panel_row(panels, title: str, path: Path, *, panel: float = 2.1) -> Path:
    """One row of titled images, nearest-neighbour shown, under ``title``, saved to ``path``.

    panels: (title, image) or (title, image, colour map) per panel; images HxWx3 uint8 or float
    in [0, 1], or HxW with a colour map."""
    fig, axes = new_figure(1, len(panels), panel=panel)
    for ax, (name, shown, *cmap) in zip(axes.flat, panels):
        ax.imshow(shown, cmap=cmap[0] if cmap else None, interpolation="nearest")
        ax.set_title(name, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save_png(fig, path)
