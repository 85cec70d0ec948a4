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
