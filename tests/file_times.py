"""The file system's clock, for tests that fake iste's (``iste.digest._now_ns``)."""

from __future__ import annotations

import time
from pathlib import Path


def after_the_tick_of(ctime_ns: int, folder: Path) -> None:
    """Return once a file written in ``folder`` gets a later status-change time than
    ``ctime_ns``. A test that tells ``sha256_file`` a file's times have settled (its clock set
    ahead) must write the next file after that: file times tick coarsely on some systems (a
    kernel before 6.13 stamps them from its jiffy clock, 1-10 ms; some file systems 1-2 s),
    and a file written in the same tick, on the same inode and of the same size, would look
    unchanged."""
    probe = folder / ".tick"
    while True:
        probe.write_bytes(b"tick")  # a new file each time: its times are now
        written = probe.stat().st_ctime_ns
        probe.unlink()
        if written > ctime_ns:
            return
        time.sleep(0.001)
