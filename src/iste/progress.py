"""Progress of long jobs, readable on a terminal and in a log file alike.

On an interactive terminal a tqdm bar is drawn (unless bars are switched off); in any case the
``iste`` logger receives one plain line at every tenth of the work (or at most every
``LOG_EVERY_S`` seconds), e.g. ``x2.5 slide.svs: 40% (1.05/2.62 Mpx, 0.31 Mpx/s)``: no carriage
returns in logs, files or CI output. The command line decides where those lines go
(:mod:`iste.cli.runlog`).
"""

from __future__ import annotations

import logging
import sys
import time

from iste.text import message_line
from iste.stopping import raise_if_stopped

__all__ = ["Progress", "set_bars"]

LOG_EVERY_S = 60.0
log = logging.getLogger("iste")
_bars: bool | None = None  # None: draw a bar when stderr is a terminal


def set_bars(enabled: bool | None) -> None:
    """Whether to draw tqdm bars: True, False, or None (only on a terminal)."""
    global _bars
    _bars = enabled


def bars_enabled() -> bool:
    return sys.stderr.isatty() if _bars is None else _bars


class Progress:
    """Counts ``total`` units of work; a context manager.

    Args:
        total: units of the whole job; initial: units already done (a resumed job).
        desc: what is being done (first word of every line), shown as one line (a file name's
            line break drew the bar over two lines); unit: "px" or "tile" ...
        show: draw a bar (None: as :func:`set_bars` says; False: log lines only).
        enabled: False counts silently (no bar, no lines: e.g. ranks other than the first).
    """

    def __init__(self, total: int, *, desc: str, unit: str = "px", initial: int = 0,
                 show: bool | None = None, enabled: bool = True):
        self.total, self.desc, self.unit = max(0, int(total)), message_line(desc), unit
        self.enabled = enabled
        self.done = int(initial)
        self._t0 = self._last_t = time.monotonic()
        self._start = self.done
        self._last_tenth = self._tenth()
        self._bar = None
        if enabled and (bars_enabled() if show is None else show):
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.done, unit=unit, unit_scale=True,
                             desc=self.desc, smoothing=0.1, dynamic_ncols=True, file=sys.stderr)

    @property
    def draws_bar(self) -> bool:
        return self._bar is not None

    def _tenth(self) -> int:
        return 10 * self.done // self.total if self.total else 10

    def update(self, n: int = 1) -> None:
        raise_if_stopped()  # a Ctrl-C or SIGTERM whose exception was lost (iste.stopping)
        self.done += int(n)
        if self._bar is not None:
            self._bar.update(n)
        now = time.monotonic()
        tenth = self._tenth()
        if self.enabled and (tenth > self._last_tenth or now - self._last_t >= LOG_EVERY_S):
            self._last_tenth, self._last_t = tenth, now
            self._log(now)

    def set_postfix_str(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def _log(self, now: float) -> None:
        pct = 100 * self.done / self.total if self.total else 100.0
        rate = (self.done - self._start) / max(now - self._t0, 1e-9)
        big = self.unit == "px"
        f = (lambda v: f"{v / 1e6:.3g}") if big else (lambda v: f"{v:g}")
        unit = "Mpx" if big else self.unit
        speed = rate / 1e6 if big else rate  # 3 figures: "38.4 tile/s", not "38.3618"
        log.info("%s: %.0f%% (%s/%s %s, %.3g %s/s)", self.desc, pct, f(self.done), f(self.total),
                 unit, speed, unit, extra={"progress": True, "bar": self._bar is not None})

    def write(self, message: str) -> None:
        """A message between bar updates (a line in the log; above the bar on a terminal)."""
        if not self.enabled:
            return
        message = message_line(message)
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        log.info(message, extra={"bar": self._bar is not None})

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
