"""Child processes: those a measurement runs and waits for, reaped however the wait ends and
said in one line when they fail (:class:`ChildFailed`), and the data loader's workers, whose
death is said in one line too.

``subprocess.run`` interrupted by Ctrl-C kills its child but waits only a quarter of a second
for it, so a child that takes longer to die was left unreaped and Python warned
"subprocess N is still running" at exit, although the child was gone a moment later.
"""

from __future__ import annotations

import re
import signal
import subprocess
from typing import Sequence

__all__ = ["ChildFailed", "run_to_end", "how_it_ended", "lost_child_message"]


class ChildFailed(RuntimeError):
    """A child process that a command ran and waited for failed; the message is one line for
    the user (:func:`how_it_ended` says how)."""


# torch's words for a loader worker that ended without its batches: killed by a signal
# (SIGCHLD's handler, raised wherever the main thread is) or gone when a batch was awaited
_LOST_WORKER = re.compile(r"DataLoader worker \(pid\(?s?\)? ([\d, ]+)\) "
                          r"(?:is killed by signal: ([^.]+)|exited unexpectedly)")


def run_to_end(args: Sequence[str], *, timeout: float | None = None,
               **popen) -> subprocess.CompletedProcess:
    """``args`` run with stdout and stderr captured as text (``popen``: more Popen arguments);
    the finished process. On a timeout (``subprocess.TimeoutExpired``), Ctrl-C or any other
    exception the child is killed and reaped before the exception goes on."""
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          **popen) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            proc.kill()
            proc.communicate()  # reaps it and closes the pipes
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def how_it_ended(done: subprocess.CompletedProcess) -> str:
    """How a failed child ended, said after "its process": killed by a signal (SIGKILL: the
    kernel's out-of-memory killer, most often) or its exit code and last line of stderr. A
    killed child says nothing on stderr: its failure read "exit -9: no output"."""
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        why = (" (the kernel's out-of-memory killer, see dmesg, or a kill)"
               if -done.returncode == signal.SIGKILL else "")
        return f"was killed by {name}{why}"
    last = (done.stderr or "").strip().splitlines()
    return f"exited with code {done.returncode}: {last[-1] if last else 'no output'}"


def lost_child_message(err: BaseException) -> str | None:
    """One line for a child process that failed: a :class:`ChildFailed`, or a data loader
    worker process that died (the kernel's out-of-memory killer ends the largest process with
    SIGKILL, often a worker); None for any other error.
    torch raises it as a RuntimeError wherever the main thread is when SIGCHLD arrives (inside
    ``backward``), which reached the user as a traceback and exit code 1."""
    if isinstance(err, ChildFailed):
        return str(err)
    found = _LOST_WORKER.search(str(err)) if isinstance(err, RuntimeError) else None
    if found is None:
        return None
    how = f"was killed by signal {found[2].strip()}" if found[2] else "exited unexpectedly"
    why = ("shared memory (/dev/shm) too small for its batches" if "Bus error" in how
           else "the kernel's out-of-memory killer (see dmesg) or a kill")
    return (f"a data loader worker process (pid {found[1].strip()}) {how}: {why}; rerun with "
            "fewer loader workers, a smaller batch or more memory (what was saved is kept: "
            "--resume continues)")
