"""Requests to stop: Ctrl-C, SIGTERM and SIGHUP, raised in the main thread as exceptions.

The command line (:mod:`iste.cli.main`) turns SIGTERM and SIGHUP into :class:`Terminated`, Ctrl-C
into ``KeyboardInterrupt``, and notes each signal here with :func:`note`. Such an exception can
be lost where the signal handler raises it: torch's C import clears a failed import of numpy,
and an exception raised in a weakref callback (the import lock's, a finalizer) is printed as
"Exception ignored" and dropped. The job then ran on to exit code 0, and a scheduler's second
SIGTERM, now the default action, ended it with nothing cleaned up. So the command line raises a
noted signal again once its modules are imported, and the main thread's long loops do at each
unit of work (:meth:`iste.progress.Progress.update`): :func:`raise_if_stopped`.

A loop that can stop cleanly between units of work (training between steps, which saves a
checkpoint there: a scheduler's SIGTERM is followed by SIGKILL after a grace period, often
30 s) runs in :func:`at_boundaries`: a signal is then only noted, and the loop asks
:func:`requested` at each boundary. Further signals are noted too, a second Ctrl-C included:
Slurm signals every process of a job step and torchrun forwards the signal it got, so each
rank gets one stop twice, and ending at the second lost the steps the first asked to save.
SIGKILL ends the process at once (losing the steps since the last checkpoint; the files stay
whole, every write being atomic).

Such a loop hands its stop to the command line as a result (``iste train``'s ``stopped``) or,
where its callers take no result (the downstream trainer, one network of several), as
:class:`StoppedSaved`; either way the command says :func:`saved_line` and exits with
:func:`exit_code`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

__all__ = ["Terminated", "StoppedSaved", "note", "forget", "raise_if_stopped", "at_boundaries",
           "deferred", "requested", "exit_code", "how_stopped", "saved_line"]

_received: list[int] = []
_deferring: list[bool] = []  # one entry per at_boundaries block open in the main thread


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a scheduler's time limit, ``kill``, a closed terminal), raised in
    the main thread like Ctrl-C's KeyboardInterrupt: what is being written is cleaned up and
    a slide job's work folder kept the same way; the exit code is 128 + the signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StoppedSaved(KeyboardInterrupt):
    """A loop of :func:`at_boundaries` stopped by ``signum`` at ``step`` of ``steps`` and saved
    itself there, in ``state``: raised on every rank once the state is written. A
    KeyboardInterrupt as the signal's own stop is, so that what cleans up after a stop (locks,
    temporaries, process groups) does so here too, and nothing that catches Exception takes
    it for a result."""

    def __init__(self, signum: int, step: int, steps: int, state: str):
        super().__init__(f"{how_stopped(signum)} at step {step} of {steps}")
        self.signum, self.step, self.steps, self.state = signum, step, steps, state


def note(signum: int) -> None:
    """A signal asked the process to stop (called by the signal handler)."""
    _received.append(signum)


def forget() -> None:
    """Start (or end) a command with no stop requested."""
    _received.clear()


def raise_if_stopped() -> None:
    """In the main thread, raise the stop a noted signal asked for (its exception was lost
    where the handler raised it, or this is the first place that sees it)."""
    if _received and not _deferring and threading.current_thread() is threading.main_thread():
        signum = _received[0]
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)


@contextlib.contextmanager
def at_boundaries() -> Iterator[None]:
    """Within the block, in the main thread, a stop is noted and not raised: the block's loop
    stops itself at its next boundary (:func:`requested`). Elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _deferring.append(True)
    try:
        yield
    finally:
        _deferring.pop()


def deferred() -> bool:
    """Whether a signal now is only to be noted (the main thread is in :func:`at_boundaries`;
    asked by the signal handler)."""
    return bool(_deferring) and threading.current_thread() is threading.main_thread()


def requested() -> int | None:
    """The first signal noted since the command began (SIGINT, SIGTERM, SIGHUP), or None."""
    return _received[0] if _received else None


def exit_code(signum: int) -> int:
    """The exit code of a command stopped by ``signum``: 128 + the signal (130 for Ctrl-C,
    143 for SIGTERM), as a shell reports a process the signal ended."""
    return 128 + int(signum)


def how_stopped(signum: int) -> str:
    """How a command stopped by ``signum`` says so: "interrupted" (Ctrl-C) or "stopped by
    SIGTERM" (SIGHUP)."""
    return ("interrupted" if signum == signal.SIGINT
            else f"stopped by {signal.Signals(signum).name}")


def saved_line(signum: int, step: int, steps: int, state: str, again: str) -> str:
    """The one line of a run that ``signum`` stopped at ``step`` of ``steps``, saved in
    ``state`` (a path), that the command ``again`` continues."""
    return (f"iste: {how_stopped(signum)} at step {step} of {steps}, saved in {state}; the run "
            f"continues with: {again}")
