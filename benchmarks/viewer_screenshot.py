"""Screenshot of ``iste serve`` in headless Chromium (the picture in docs/viewer.md).

Starts ``iste serve`` on 127.0.0.1, opens the viewer in Debian's Chromium (Playwright, no
browser download), moves to a level-0 point at a zoom past the scan's resolution, chooses a
comparison mode, waits until every super-resolved tile in view has arrived, and saves the
page. Run from the repository root, e.g.:

    .venv/bin/python benchmarks/viewer_screenshot.py --model runs/compact-iste/model.safetensors \
        --center 1620,2680 --zoom 4 --mode swipe --out docs/viewer-cmu-svs.png
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from serve_process import LOOPBACK, start_server

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

GO_TO = """([x, y, zoom, mode]) => {
  const it = iste.sr, v = iste.viewer.viewport, s = iste.slide;
  const f = s.dzi_size[0] / s.width;            // top-level pixels per scan pixel
  v.panTo(it.imageToViewportCoordinates(x * f, y * f), true);
  v.zoomTo(it.imageToViewportZoom(zoom / f), null, true);
  v.applyConstraints(true);
  document.querySelector(`button[data-mode=${mode}]`).click();
}"""


# Seconds (page clock) from the move to the first SR tile drawn and to the bicubic view whole.
WATCH = """() => {
  const t0 = performance.now();
  iste.firstSr = null; iste.bicubicAt = null;
  iste.viewer.addHandler("tile-loaded", (e) => {
    if (e.tiledImage === iste.sr && e.tile.level >= iste.slide.first_sr_level &&
        iste.firstSr === null) iste.firstSr = (performance.now() - t0) / 1000;
  });
  const poll = setInterval(() => {
    if (iste.bicubic.getFullyLoaded()) {
      iste.bicubicAt = (performance.now() - t0) / 1000;
      clearInterval(poll);
    }
  }, 100);
}"""


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slide", default="sample:cmu-svs")
    p.add_argument("--model", help="checkpoint (default: the shipped model)")
    p.add_argument("--center", default="1620,2680", help="x,y in level-0 pixels")
    p.add_argument("--zoom", type=float, default=4.0, help="screen pixels per scan pixel")
    p.add_argument("--mode", choices=["sr", "bicubic", "swipe"], default="swipe")
    p.add_argument("--size", default="1280,760", help="browser window width,height")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for SR tiles")
    p.add_argument("--out", default="docs/viewer-cmu-svs.png")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    x, y = (float(v) for v in args.center.split(","))
    width, height = (int(v) for v in args.size.split(","))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="iste-shot-") as tmp:
        proc, port = start_server(args.slide, args.model, Path(tmp) / "cache")
        url = f"http://{LOOPBACK}:{port}/"
        try:
            with sync_playwright() as pw:
                ctx = pw.chromium.launch_persistent_context(
                    str(Path(tmp) / "profile"), executable_path=CHROMIUM, headless=True,
                    args=FLAGS, viewport={"width": width, "height": height})
                page = ctx.pages[0] if ctx.pages else ctx.new_page()
                page.goto(url)
                page.wait_for_function("() => window.iste && window.iste.ready")
                page.evaluate(GO_TO, [x, y, args.zoom, args.mode])
                t0 = time.monotonic()
                page.evaluate(WATCH)
                page.wait_for_timeout(1000)
                page.wait_for_function("() => iste.bicubic.getFullyLoaded() && "
                                       "(!iste.srVisible || iste.srFullyLoaded)",
                                       timeout=args.timeout * 1000)
                seconds = time.monotonic() - t0
                first_sr, bicubic = page.evaluate("() => [iste.firstSr, iste.bicubicAt]")
                page.wait_for_timeout(1000)  # let the last tiles fade in
                print(f"tiles ready after {seconds:.1f} s (bicubic view {_s(bicubic)}, "
                      f"first SR tile {_s(first_sr)}): "
                      f"{page.text_content('#mag')} | {page.text_content('#status')}")
                fd, part = tempfile.mkstemp(dir=out.parent, suffix=".png")
                os.close(fd)
                page.screenshot(path=part)
                os.replace(part, out)
                ctx.close()
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
