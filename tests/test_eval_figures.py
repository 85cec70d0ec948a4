"""The report figures' content: what each panel shows, and texts drawn whole and as written."""

import numpy as np
import pytest

from eval_helpers import texture
from iste.eval.plotting import new_figure, save_png

LONG = "A_very_long_method_name_that_goes_on_and_on_and_on_forever"


def test_long_titles_and_labels_are_wrapped_to_their_panels(tmp_path):
    """A long method name ran over its neighbours' titles and out of the figure (fig6's
    titles, fig7's row labels, a narrow figure's title)."""
    fig, axes = new_figure(2, 3)
    for ax in axes.flat:
        ax.imshow(np.zeros((8, 8, 3), np.uint8))
        ax.set_title(f"|{LONG} − HR|\nmean 47.1", fontsize=9)
    axes[1, 0].set_ylabel(LONG, fontsize=10)
    fig.suptitle(f"img1.png, ×2: 32 x 32 HR px at (x=8, y=8); {LONG}", fontsize=10)
    save_png(fig, tmp_path / "f.png")

    renderer = fig.canvas.get_renderer()
    for ax in axes.flat:
        width = ax.get_window_extent(renderer).width
        assert ax.title.get_window_extent(renderer).width <= width + 1
        assert ax.title.get_text().replace("\n", "") == f"|{LONG} − HR|mean 47.1"
    label = axes[1, 0].yaxis.label
    assert label.get_window_extent(renderer).height <= axes[1, 0].get_window_extent(
        renderer).height + 1
    assert label.get_text().replace("\n", "") == LONG
    assert fig._suptitle.get_window_extent(renderer).width <= fig.bbox.width
    assert (tmp_path / "f.png").stat().st_size > 0


@pytest.mark.parametrize("name", ["x$^$y", "cost$5$x"])
def test_dollar_signs_in_names_are_drawn_as_written(tmp_path, name):
    """matplotlib read '$...$' in a name as a formula: 'cost$5$x' was drawn 'cost5x' and
    'x$^$y' stopped iste eval after every SR with a multi-line parser traceback."""
    fig, axes = new_figure(1, 1)
    axes[0, 0].set_title(name)
    fig.suptitle(f"{name}.png, ×2")
    save_png(fig, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 0
    assert not axes[0, 0].title.get_parse_math() and not fig._suptitle.get_parse_math()


@pytest.mark.parametrize("scale", [4.0, 2.5])
def test_the_lr_panel_shows_the_lr_under_the_hr_crop(tmp_path, monkeypatch, scale):
    """Fig. 6's LR panel started at the LR pixel holding the crop's corner, shifted by up to
    one LR pixel (3 HR px at x4 from y=19), and at a non-integer scale showed a wider area
    (12 LR pixels x 3 for a 30-px crop at x2.5) than the HR beside it."""
    import re

    from iste.data.degrade import bicubic_upscale
    from iste.data.degradations import degradation_pair, parse_degradation
    from iste.eval import figures

    hr_full = np.full((90, 90, 3), 200, np.uint8)
    hr_full[33:77, 19:63] = texture(3, 44)  # the region lands off the LR grid
    lr, hr = degradation_pair(hr_full, scale, parse_degradation("paper"))
    drawn = []
    monkeypatch.setattr(figures, "save_png", lambda fig, path: drawn.append(fig) or path)
    figures.comparison_figure(hr_full, scale, ["bicubic"],
                              lambda m, s: bicubic_upscale(lr, hr.shape[:2]), {},
                              tmp_path / "f.png", image_name="t", region_size=30)
    (fig,) = drawn
    size, x, y = map(int, re.search(r"(\d+) x \d+ HR px at \(x=(\d+), y=(\d+)\)",
                                    fig._suptitle.get_text()).groups())
    hr_panel, lr_panel = (ax.images[0].get_array() for ax in (fig.axes[0], fig.axes[2]))
    np.testing.assert_array_equal(hr_panel, hr[y:y + size, x:x + size])
    # the LR pixel under the centre of each HR pixel of the crop
    rows = np.floor((np.arange(y, y + size) + 0.5) * lr.shape[0] / hr.shape[0]).astype(int)
    cols = np.floor((np.arange(x, x + size) + 0.5) * lr.shape[1] / hr.shape[1]).astype(int)
    assert (y % scale, x % scale) != (0, 0)
    np.testing.assert_array_equal(lr_panel, lr[rows][:, cols])


def test_error_maps_say_where_their_colour_scale_stops(tmp_path, monkeypatch):
    """Fig. 6's colour scale stops at the 99.5th percentile of the errors: larger ones were
    drawn at its top colour with no sign that they exist (a 250-level error read as 60), and
    the error map's mean, of the crop, sat under titles of whole-image scores."""
    from iste.data.degradations import degradation_pair, parse_degradation
    from iste.eval import figures

    hr_full = texture(4, 60)
    _, hr = degradation_pair(hr_full, 2.0, parse_degradation("paper"))
    sr = hr.copy()
    sr[20:22, 20:22] = 255 - sr[20:22, 20:22]  # a few pixels far off, the rest exact
    drawn = []
    monkeypatch.setattr(figures, "save_png", lambda fig, path: drawn.append(fig) or path)
    figures.comparison_figure(hr_full, 2.0, ["m"], lambda m, s: sr, {}, tmp_path / "f.png",
                              image_name="t", region_size=40)
    error_map = drawn[0].axes[3]
    shown = error_map.images[0]
    assert shown.get_array().max() > shown.norm.vmax
    assert shown.colorbar.extend == "max"
    assert error_map.get_title().endswith(f"crop mean {shown.get_array().mean():.1f}")


def test_many_methods_go_on_several_rows_each_beginning_with_hr_and_lr(tmp_path, monkeypatch):
    """Fig. 6 of 13 methods (docs/eval-sample) was one row 3000 pixels wide: on a page each
    panel was some 60 pixels. Rows now hold at most 6 methods, each row of SRs beginning with
    the HR and its error maps with the LR."""
    from iste.eval import figures

    hr_full = texture(5, 60)
    methods = [f"m{i}" for i in range(13)]
    drawn = []
    monkeypatch.setattr(figures, "save_png", lambda fig, path: drawn.append(fig) or path)
    figures.comparison_figure(hr_full, 2.0, methods, lambda m, s: hr_full, {},
                              tmp_path / "f.png", image_name="t", region_size=40)
    rows = {}
    for ax in drawn[0].axes:
        spec = ax.get_subplotspec()
        if spec is not None and ax.images:
            rows.setdefault(spec.rowspan.start, []).append(ax.get_title().split("\n")[0])
    assert len(rows) == 2 * 3 and all(len(titles) <= 6 + 1 for titles in rows.values())
    sr_rows = [rows[r] for r in sorted(rows)[::2]]
    assert all(titles[0] == "HR (ground truth)" for titles in sr_rows)
    assert [t for titles in sr_rows for t in titles[1:]] == methods
    assert all(rows[r][0].startswith("LR input") for r in sorted(rows)[1::2])
