"""iste.progress: the log lines of long jobs."""

import logging

from iste.progress import Progress


def test_log_lines_give_rates_to_three_figures(caplog, monkeypatch):
    # the pyramid's lines read '38.3618 tile/s'
    now = [0.0]
    monkeypatch.setattr("iste.progress.time.monotonic", lambda: now[0])
    with caplog.at_level(logging.INFO, logger="iste"):
        with Progress(7, desc="pyramid out.tiff", unit="tile", show=False) as bar:
            now[0] = 3.0
            bar.update(7)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pyramid")]
    assert lines and lines[-1] == "pyramid out.tiff: 100% (7/7 tile, 2.33 tile/s)", lines


def test_the_bar_shows_a_file_name_on_one_line(capsys):
    # a slide named 'a\nb.svs' drew the bar's description over two lines, each redraw
    # leaving a stray line on the terminal
    with Progress(4, desc="x2 a\nb.svs", unit="tile", show=True) as bar:
        bar.update(2)
        bar.write("warning: tile 1 of a\nb.svs redone")
    err = capsys.readouterr().err
    assert "x2 a\\nb.svs" in err and "tile 1 of a\\nb.svs redone" in err
    assert "a\nb.svs" not in err
