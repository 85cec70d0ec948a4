"""Where iste runs: Linux and macOS (POSIX systems); Windows itself is refused in one clear
message at ``import iste``, naming WSL 2, where it runs as on Linux."""

import subprocess
import sys

# a Windows Python, as far as iste's imports can tell: its platform, and none of the POSIX
# modules iste's file locks and memory figures use
WINDOWS = """
import sys
sys.platform = "win32"
for name in ("fcntl", "resource"):
    sys.modules[name] = None
try:
    import iste.files
except ImportError as exc:
    print(exc)
"""


def test_windows_is_refused_at_import_naming_what_to_run_instead():
    # a Windows PC got "ModuleNotFoundError: No module named 'fcntl'" from inside the package
    # (iste.files, which every command imports), naming neither the cause nor a way out
    proc = subprocess.run([sys.executable, "-c", WINDOWS], capture_output=True, text=True,
                          timeout=120)
    said = proc.stdout.strip()
    assert said.startswith("iste runs on Linux and macOS, not on Windows itself"), said
    assert "run it under WSL 2" in said


# macOS's errno numbers (Linux gives both names 95): its kernel answers ENOTSUP for what a
# file system lacks, hard links on an exFAT or FAT disk, locks on NFS mounted nolocks
MACOS_UNSUPPORTED = """
import errno, os, sys, warnings
from pathlib import Path
errno.ENOTSUP, errno.EOPNOTSUPP = 45, 102
from iste import files, locks

def unsupported(*args, **kwargs):
    raise OSError(45, "Operation not supported")

locks.fcntl.flock = os.link = unsupported
out = Path(sys.argv[1])
with warnings.catch_warnings(record=True) as said:
    warnings.simplefilter("always")
    with locks.folder_lock(out / "run", "busy"):
        files.write_bytes_atomic(out / "run" / "sr.png", b"sr", replace=False)
print((out / "run" / "sr.png").read_bytes().decode(), *[str(w.message) for w in said])
"""


def test_a_disk_without_links_or_locks_on_macos_is_written_as_on_linux(tmp_path):
    # on macOS an output on an exFAT USB disk (no hard links) or an NFS share mounted
    # nolocks failed with "[Errno 45] Operation not supported", which Linux's EOPNOTSUPP (95)
    # had been taken for: there the write went on by a rename, with one warning for the lock
    proc = subprocess.run([sys.executable, "-c", MACOS_UNSUPPORTED, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    written, warned = proc.stdout.strip().split(" ", 1)
    assert written == "sr"
    # (the reason in brackets is Linux's text for 45 here)
    assert warned.startswith(f"the file system of {tmp_path / 'run'} keeps no file locks (")
    assert warned.endswith("): another process working on the same files there is not noticed")
