"""iste.children: a child process that a measurement waits for is reaped however the wait
ends."""

import os
import signal
import subprocess
import sys
import time

import pytest

from iste.children import run_to_end


def test_a_finished_child_gives_its_output_and_exit_code():
    done = run_to_end([sys.executable, "-c", "import sys; print('out'); "
                       "print('err', file=sys.stderr); sys.exit(3)"])
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")


def test_a_child_of_an_interrupted_wait_is_killed_and_reaped(tmp_path):
    # subprocess.run killed it on Ctrl-C but did not wait: 'subprocess N is still running'
    # was printed at exit, and the child stayed a zombie until then
    pid_file = tmp_path / "pid"
    child = [sys.executable, "-c", f"import os, time; open({str(pid_file)!r}, 'w')"
             ".write(str(os.getpid())); time.sleep(60)"]

    def interrupt(signum, frame):
        if not pid_file.exists() or not pid_file.read_text():  # the child not started yet (a
            signal.setitimer(signal.ITIMER_REAL, 0.1)  # loaded machine): Ctrl-C a bit later
            return
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            run_to_end(child)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - started < 30
    pid = int(pid_file.read_text())
    with pytest.raises(ChildProcessError):  # already reaped: no zombie left
        os.waitpid(pid, os.WNOHANG)
    with pytest.raises(subprocess.TimeoutExpired):
        run_to_end([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5)
