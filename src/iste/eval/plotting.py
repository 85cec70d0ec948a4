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

    Its texts are drawn as written: a file name that is not UTF-8 (its bytes kept by Python as
    lone surrogates) shows its bytes as escapes (``caf\\xe9.png``), where matplotlib refused to
    draw it and the report stopped; a '$' is a dollar sign, not mathtext (``cost$5$x`` lost its
    dollars, ``x$^$y`` stopped the report with a parser traceback). Titles and labels too long
    for their place are wrapped to it (:func:`_fit_labels`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    from iste.text import shown

    for text in fig.findobj(Text):
        text.set_text(shown(text.get_text()))
        text.set_parse_math(False)
    FigureCanvasAgg(fig)  # the renderer that measures the texts, as savefig draws them
    _fit_labels(fig)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path


def _fit_labels(fig) -> None:
    """Wrap each panel's title and x label to the panel's width, its y label to its height and
    the figure's title to the figure's width (a long method name ran over its neighbours'
    titles, and out of the figure at its edges); the figure grows by the height (width) the
    wrapped lines add to each row (column) of panels, so that the panels keep their size."""
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()  # the layout the PNG would have
    grow_rows: dict[int, float] = {}
    grow_cols: dict[int, float] = {}
    for ax in fig.axes:
        box = ax.get_window_extent(renderer)
        spec = ax.get_subplotspec()
        row, col = (spec.rowspan.start, spec.colspan.start) if spec else (-1, -1)
        added = [_wrap_to(ax.title, box.width, renderer, along="width"),
                 _wrap_to(ax.xaxis.label, box.width, renderer, along="width")]
        grow_rows[row] = max(grow_rows.get(row, 0.0), sum(a[1] for a in added))
        dx, _ = _wrap_to(ax.yaxis.label, box.height, renderer, along="height")
        grow_cols[col] = max(grow_cols.get(col, 0.0), dx)
    suptitle = getattr(fig, "_suptitle", None)  # Figure.suptitle's Text (no public getter)
    if suptitle is not None:
        grow_rows[-2] = _wrap_to(suptitle, fig.bbox.width, renderer, along="width")[1]
    width, height = fig.get_size_inches()
    fig.set_size_inches(width + sum(grow_cols.values()) / fig.dpi,
                        height + sum(grow_rows.values()) / fig.dpi)


def _wrap_to(text, limit: float, renderer, *, along: str) -> tuple[float, float]:
    """Wrap ``text`` (a matplotlib Text) to the most characters a line that keep its extent
    ``along`` its lines ("width", or "height" for a vertical label) within ``limit`` display
    pixels; returns the (width, height) in pixels that wrapping added to it."""
    import textwrap

    original = text.get_text()
    before = text.get_window_extent(renderer)
    if not original or getattr(before, along) <= limit:
        return 0.0, 0.0
    lines = original.split("\n")
    for chars in range(max(map(len, lines)) - 1, 0, -1):
        text.set_text("\n".join("\n".join(textwrap.wrap(line, chars) or [""])
                                for line in lines))
        after = text.get_window_extent(renderer)
        if getattr(after, along) <= limit:
            break
    return max(0.0, after.width - before.width), max(0.0, after.height - before.height)


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
