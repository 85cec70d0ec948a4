"""Whole-slide super-resolution on the real sample SVS: geometry, fidelity, speed, memory.

    python benchmarks/bench_wsi.py [--model CKPT] [--threads 1] [--section all|sample|speed|rss]

Sections (each configuration runs in a fresh subprocess, so its peak RSS is its own):

- sample: the sample SVS (cmu_small_region.svs, 2220 x 2967, 0.499 mpp) at x2 and x2.5: the
  whole-slide output plan (size, levels, mpp) and an actual run on a tissue region written as
  a lossless pyramid, read back through tiffslide and OpenSlide and compared with the model's
  own whole-region output.
- speed: throughput in output Mpx/s on a region that is part tissue, part glass, with and
  without the background fast path (JPEG tiles, the default).
- rss: peak RSS of x2 vs x4 of the same region (the output grows 4x).

Numbers on a shared machine are noisy: compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

SAMPLE_REGION = (700, 1300, 384, 384)  # level-0 x, y, width, height; ~60 % tissue
SPEED_REGION = (256, 1280, 768, 768)  # 4 of the 9 x2 tiles (512 px) touch tissue
RSS_REGION = (1000, 1500, 512, 512)  # tissue


def child(cfg: dict) -> dict:
    """One configuration; returns what it measured (runs in its own process)."""
    import torch

    import iste
    from iste.data.samples import sample_path
    from iste.process_memory import peak_rss_bytes
    from iste.slides import open_slide
    from iste.slides.job import SlideJob
    from iste.slides.pipeline import upscale_slide

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    warnings.simplefilter("ignore")
    model = iste.load(cfg["model"], device="cpu")
    out = Path(cfg["out"])
    job = SlideJob(cfg["scale"], region=tuple(cfg["region"]), codec=cfg["codec"],
                   tissue=cfg["tissue"], tile=cfg["tile"])
    with open_slide(sample_path("cmu-svs")) as slide:
        res = upscale_slide(slide, out, model, job, progress=False)
        lr = slide.read_region(cfg["region"][:2], 0, cfg["region"][2:])
    report = {"size": res.size, "levels": res.levels, "mpp_written": res.mpp,
              "tiles": res.tiles, "model_tiles": res.tiles_model,
              "background_tiles": res.tiles_background, "seconds": round(res.seconds_tiles, 1),
              "mpx_per_s": round(res.mpx_per_s, 4),
              "peak_rss_mb": round(peak_rss_bytes() / 2**20)}
    if cfg.get("check"):
        report.update(_readback(model, out, lr, res.size))
    return report


def _readback(model, out: Path, lr, size) -> dict:
    """Compare a 256 x 256 crop read through both backends with the model's direct output."""
    import numpy as np
    import torch

    from iste.data.coords import denormalize, normalize
    from iste.engine.frame import Frame
    from iste.engine.render import Renderer
    from iste.slides import open_slide

    w, h = size
    x0, y0 = w // 2 - 128, h // 2 - 128
    with torch.no_grad():
        t = torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255
        feats = model.encode(normalize(t))
        frame = Frame(tuple(lr.shape[:2]), (h, w))
        ref = denormalize(Renderer(model, feats, frame).render(range(y0, y0 + 256),
                                                               range(x0, x0 + 256)))
    ref = (ref[0].clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    found = {}
    for backend in ("tiffslide", "openslide"):
        with open_slide(out, backend=backend) as s:
            got = s.read_region((x0, y0), 0, (256, 256))
            diff = np.abs(got.astype(int) - ref)
            found[backend] = {"dimensions": s.dimensions, "levels": s.level_dimensions,
                              "mpp": s.mpp, "max_abs_diff_vs_model": int(diff.max()),
                              "pixels_within_1": round(float((diff <= 1).all(-1).mean()), 5)}
    return {"readback": found}


def run_child(cfg: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sample_section(base: dict, tmp: Path) -> None:
    from iste.data.samples import sample_path
    from iste.slides import open_slide
    from iste.slides.job import SlideJob, make_plan
    from iste.slides.writer import PyramidSpec

    print("== sample SVS: whole-slide plan and a region run (deflate, read back) ==")
    with open_slide(sample_path("cmu-svs")) as slide:
        for scale in (2.0, 2.5):
            plan = make_plan(slide, SlideJob(scale))
            levels = PyramidSpec(*plan.out_size, tile=plan.tiff_tile).level_sizes
            print(f"x{scale:g} whole slide: {plan.out_size[0]} x {plan.out_size[1]} px, "
                  f"{len(levels)} levels {levels}, mpp {plan.mpp[0]:.4f}")
    for scale in (2.0, 2.5):
        r = run_child({**base, "scale": scale, "region": SAMPLE_REGION, "codec": "deflate",
                       "tissue": True, "out": str(tmp / f"sample_x{scale:g}.tiff"),
                       "check": True})
        print(f"x{scale:g} region {SAMPLE_REGION}: {json.dumps(r)}")


def speed_section(base: dict, tmp: Path) -> None:
    print("== throughput (output Mpx/s), JPEG tiles ==")
    for tissue in (False, True):
        r = run_child({**base, "scale": 2.0, "region": SPEED_REGION, "codec": "jpeg",
                       "tissue": tissue, "out": str(tmp / f"speed_{tissue}.tiff")})
        label = "with background fast path" if tissue else "model on every tile     "
        print(f"x2 {SPEED_REGION} {label}: {r['mpx_per_s']} Mpx/s ({r['model_tiles']} model + "
              f"{r['background_tiles']} background tiles, {r['seconds']} s, "
              f"peak RSS {r['peak_rss_mb']} MB)")


def rss_section(base: dict, tmp: Path) -> None:
    print("== peak RSS: x2 vs x4 of the same region ==")
    for scale in (2.0, 4.0):
        r = run_child({**base, "scale": scale, "region": RSS_REGION, "codec": "jpeg",
                       "tissue": False, "out": str(tmp / f"rss_x{scale:g}.tiff")})
        w, h = r["size"]
        print(f"x{scale:g}: output {w} x {h} ({w * h / 1e6:.2f} Mpx, {w * h * 3 / 2**20:.0f} MB "
              f"raw), peak RSS {r['peak_rss_mb']} MB, {r['mpx_per_s']} Mpx/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="checkpoint; default: the shipped model")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--section", choices=["all", "sample", "speed", "rss"], default="all")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    base = {"model": args.model, "threads": args.threads, "tile": args.tile}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in (("sample", sample_section), ("speed", speed_section),
                         ("rss", rss_section)):
            if args.section in ("all", name):
                fn(base, Path(tmp))
    print(f"({time.time() - t0:.0f} s; threads={args.threads or 'torch default'}, "
          f"tile={args.tile})")


if __name__ == "__main__":
    main()
