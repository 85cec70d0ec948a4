"""Load test of ``iste serve`` on loopback: N concurrent clients request tiles for a bounded time.

Starts ``iste serve`` (a subprocess, 127.0.0.1 only, a fresh disk cache), then runs N client
threads, each with one keep-alive HTTP connection, for ``--duration`` seconds. A client
behaves like a viewer: it picks a view (a level and a position on the slide) and requests
the 3 x 3 tiles around it one after the other, then pans by one tile or jumps elsewhere.
Levels are drawn so that most views are at or below the scan's resolution or bicubic above it,
and a share ``--sr-share`` are super-resolved (each SR tile costs the model seconds on a CPU).
After the deadline no new request starts; requests under way finish (they count).

Reports requests/s, latency percentiles (all, and per tile kind), errors (non-200 replies or
failed connections: must be 0) and the server's peak resident memory (VmHWM of the server
process, Linux). Run from the repository root:

    .venv/bin/python benchmarks/load_serve.py --clients 8 --duration 20
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

from serve_process import LOOPBACK, start_server

def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read()


def peak_rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024


class Client(threading.Thread):
    def __init__(self, port: str, slide: dict, deadline: float, seed: int, sr_share: float):
        super().__init__(daemon=True)
        self.port, self.slide, self.deadline = port, slide, deadline
        self.rng = random.Random(seed)
        self.sr_share = sr_share
        self.samples: list[tuple[str, float]] = []  # (kind, seconds)
        self.errors: list[str] = []

    def pick_view(self):
        s = self.slide
        top, native = s["level_count"] - 1, s["first_sr_level"] - 1
        r = self.rng.random()
        if r < self.sr_share:
            kind, level = "sr", self.rng.randint(native + 1, top)
        elif r < 0.3:
            kind, level = "bicubic", self.rng.randint(native + 1, top)
        else:
            kind, level = "scan", self.rng.randint(max(0, native - 4), native)
        w, h = (-(-d // 2 ** (top - level)) for d in s["dzi_size"])
        cols, rows = -(-w // s["tile"]), -(-h // s["tile"])
        return kind, level, cols, rows, self.rng.randrange(cols), self.rng.randrange(rows)

    def run(self):
        conn = http.client.HTTPConnection(LOOPBACK, int(self.port), timeout=600)
        view = self.pick_view()
        while time.monotonic() < self.deadline:
            kind, level, cols, rows, c0, r0 = view
            for dc in (-1, 0, 1):
                for dr in (-1, 0, 1):
                    c, r = c0 + dc, r0 + dr
                    if not (0 <= c < cols and 0 <= r < rows) or time.monotonic() >= self.deadline:
                        continue
                    self.request(conn, kind, level, c, r)
            if self.rng.random() < 0.5:  # pan by one tile, else jump to another view
                view = (kind, level, cols, rows, min(cols - 1, c0 + 1), r0)
            else:
                view = self.pick_view()
        conn.close()

    def request(self, conn, kind: str, level: int, col: int, row: int) -> None:
        name = "bicubic" if kind == "scan" else kind  # scan levels are shared by both
        path = f"/slides/{self.slide['id']}/{name}_files/{level}/{col}_{row}.jpeg"
        t0 = time.perf_counter()
        try:
            status, body = get(conn, path)
        except (OSError, http.client.HTTPException) as err:
            self.errors.append(f"{path}: {err}")
            return
        self.samples.append((kind, time.perf_counter() - t0))
        if status != 200 or not body.startswith(b"\xff\xd8"):
            self.errors.append(f"{path}: HTTP {status}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def report(clients: list[Client], seconds: float, rss: float, status: dict, args) -> dict:
    samples = [x for c in clients for x in c.samples]
    errors = [e for c in clients for e in c.errors]
    lat = [t for _, t in samples]
    out = {"clients": args.clients, "duration_s": args.duration, "wall_s": round(seconds, 1),
           "requests": len(samples), "requests_per_s": round(len(samples) / seconds, 1),
           "p50_ms": round(1000 * percentile(lat, 50), 1),
           "p99_ms": round(1000 * percentile(lat, 99), 1),
           "max_ms": round(1000 * max(lat, default=float("nan")), 1),
           "errors": len(errors), "peak_rss_mb": round(rss, 1), "by_kind": {}}
    for kind in ("scan", "bicubic", "sr"):
        ks = [t for k, t in samples if k == kind]
        out["by_kind"][kind] = {"requests": len(ks), "p50_ms": round(1000 * percentile(ks, 50), 1),
                                "p99_ms": round(1000 * percentile(ks, 99), 1)}
    out["server"] = {k: status.get(k, 0) for k in ("memory_hits", "coalesced", "disk_hits",
                                                   "rendered_cheap", "rendered_model")}
    if errors:
        out["first_errors"] = errors[:5]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slide", default="sample:cmu-svs", help="slide to serve")
    p.add_argument("--model", help="checkpoint (default: the shipped model)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of new requests")
    p.add_argument("--sr-share", type=float, default=0.05, help="share of views that are SR")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args()
    if not (1 <= args.clients <= 256 and 0 < args.duration <= 300):
        raise SystemExit("--clients must be 1..256 and --duration 0..300 s")
    with tempfile.TemporaryDirectory(prefix="iste-load-") as tmp:
        proc, port = start_server(args.slide, args.model, Path(tmp) / "cache")
        try:
            conn = http.client.HTTPConnection(LOOPBACK, int(port), timeout=60)
            slide = json.loads(get(conn, "/api/slides")[1])["slides"][0]
            t0 = time.monotonic()
            clients = [Client(port, slide, t0 + args.duration, args.seed + i, args.sr_share)
                       for i in range(args.clients)]
            for c in clients:
                c.start()
            for c in clients:
                c.join()
            seconds = time.monotonic() - t0
            # a new connection: the first one idled out
            conn = http.client.HTTPConnection(LOOPBACK, int(port), timeout=60)
            status = json.loads(get(conn, "/api/status")[1])
            rss = peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    out = report(clients, seconds, rss, status, args)
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
