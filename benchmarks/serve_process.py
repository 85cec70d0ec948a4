"""``iste serve`` as a subprocess for the viewer benchmarks (load test, screenshot).

``start_server(slide, model, cache_dir)`` starts it on a free loopback port with a fresh disk
cache, echoes its stderr, and returns (process, port) once it announces its URL.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

LOOPBACK = "127.0.0.1"


def start_server(slide: str, model: str | None, cache_dir: Path) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "iste", "serve", slide, "--host", LOOPBACK, "--port", "0",
           "--cache-dir", str(cache_dir)]
    if model:
        cmd += ["--model", model]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        sys.stderr.write(line)
        m = re.search(r"serving \d+ slide\(s\) at http://127\.0\.0\.1:(\d+)/", line)
        if m:
            threading.Thread(target=lambda: [sys.stderr.write(x) for x in proc.stderr],
                             daemon=True).start()
            return proc, int(m.group(1))
    raise SystemExit(f"iste serve did not start (exit code {proc.wait()})")
