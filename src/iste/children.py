"""Child processes that a measurement runs and waits for, reaped however the wait ends.

``subprocess.run`` interrupted by Ctrl-C kills its child but waits only a quarter of a second
for it, so a child that takes longer to die was left unreaped and Python warned
"subprocess N is still running" at exit, although the child was gone a moment later.
"""

from __future__ import annotations

import subprocess
from typing import Sequence

__all__ = ["run_to_end"]


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
