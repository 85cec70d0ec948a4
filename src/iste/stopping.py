"""Requests to stop: Ctrl-C, SIGTERM and SIGHUP, raised in the main thread as exceptions.

The command line (:mod:`iste.cli.main`) turns SIGTERM and SIGHUP into :class:`Terminated`, Ctrl-C
into ``KeyboardInterrupt``, and notes each signal here with :func:`note`. Such an exception can
be lost where the signal handler raises it: torch's C import clears a failed import of numpy,
and an exception raised in a weakref callback (the import lock's, a finalizer) is printed as
"Exception ignored" and dropped. The job then ran on to exit code 0, and a scheduler's second
SIGTERM, now the default action, ended it with nothing cleaned up. So the command line raises a
noted signal again once its modules are imported, and the main thread's long loops do at each
unit of work (:meth:`iste.progress.Progress.update`): :func:`raise_if_stopped`.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["Terminated", "note", "forget", "raise_if_stopped"]

_received: list[int] = []


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a scheduler's time limit, ``kill``, a closed terminal), raised in
    the main thread like Ctrl-C's KeyboardInterrupt: what is being written is cleaned up and
    a slide job's work folder kept the same way; the exit code is 128 + the signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def note(signum: int) -> None:
    """A signal asked the process to stop (called by the signal handler)."""
    _received.append(signum)


def forget() -> None:
    """Start (or end) a command with no stop requested."""
    _received.clear()


def raise_if_stopped() -> None:
    """In the main thread, raise the stop a noted signal asked for (its exception was lost
    where the handler raised it, or this is the first place that sees it)."""
    if _received and threading.current_thread() is threading.main_thread():
        signum = _received[0]
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)
