"""Markdown tables of the benchmark's figures (the same dicts the JSON report holds)."""

from __future__ import annotations

import math

from iste.models.registry import HEADS


def _label(method: str) -> str:
    return HEADS[method].label if method in HEADS else method


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _num(value, fmt: str) -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return "–" if missing else format(value, fmt)


def _per_cpu_s(res: dict) -> float | None:
    return res["mpx"] / res["cpu_seconds"] if res.get("cpu_seconds") else None


def engine_table(rows: list[dict]) -> str:
    out = []
    for r in rows:
        size = f"{r['out_hw'][1]} x {r['out_hw'][0]}"
        if "error" in r:
            out.append([_label(r["method"]), f"x{r['scale']:g}", r["precision"], size,
                        r["error"], "", "", ""])
            continue
        out.append([_label(r["method"]), f"x{r['scale']:g}", r["precision"], size,
                    _num(r["mpx_per_s"], ".4f"), _num(_per_cpu_s(r), ".4f"),
                    _num(r["peak_mb"], ".0f"), _num(r.get("load_1min"), ".1f")])
    return _table(["method", "scale", "precision", "output (W x H)", "Mpx/s", "Mpx per CPU-s",
                   "peak RSS MB", "load"], out)


def comparison_table(rows: list[dict]) -> str:
    ref = {(r["method"], r.get("scale")): r for r in rows
           if r["kind"] == "published" and r["chunk"] == 4096 and "error" not in r}
    out = []
    for r in rows:
        who = "published" if r["kind"] == "published" else "ours"
        scale = f"x{r['scale']:g}" if r.get("scale") is not None else "–"
        label = [_label(r["method"]), scale, who, r["precision"], str(r["chunk"])]
        if "error" in r:
            out.append(label + [r["error"], "", "", "", "", ""])
            continue
        base = ref.get((r["method"], r.get("scale")))
        ratio = base["seconds"] / r["seconds"] if base else None
        cpu_ratio = base["cpu_seconds"] / r["cpu_seconds"] if base else None
        diff = r.get("max_abs_diff_vs_published")
        out.append(label + [_num(r["mpx_per_s"], ".4f"), _num(r["peak_mb"], ".0f"),
                            _num(ratio, ".1f") + ("x" if ratio else ""),
                            _num(cpu_ratio, ".1f") + ("x" if cpu_ratio else ""),
                            _num(diff, ".1e"), _num(r.get("load_1min"), ".1f")])
    return _table(["method", "scale", "code", "precision", "chunk", "Mpx/s", "peak RSS MB",
                   "speed vs published (wall)", "(CPU time)", "max |diff| vs published",
                   "load"], out)


def _first_per_scale(rows: list[dict]) -> dict[float, dict]:
    """The reference row of each scale: its first fp32 row (the reference key count)."""
    ref: dict[float, dict] = {}
    for r in rows:
        if r["precision"] == "fp32":
            ref.setdefault(r["scale"], r)
    return ref


def keys_table(rows: list[dict]) -> str:
    ref = _first_per_scale(rows)
    out = []
    for r in rows:
        base = ref[r["scale"]]
        psnr_ref = "identical" if math.isinf(r["psnr_ref"]) else f"{r['psnr_ref']:.2f}"
        out.append([f"x{r['scale']:g}", str(r["stf_keys"]), r["precision"], f"{r['seconds']:.1f}",
                    f"{r['seconds'] / base['seconds']:.2f}", f"{r['psnr_hr']:.3f}",
                    f"{r['psnr_hr'] - base['psnr_hr']:+.3f}", psnr_ref, str(r["max_diff_ref"])])
    return _table(["scale", "STF keys", "precision", "time s", "time vs ref", "PSNR vs HR dB",
                   "Δ PSNR dB", "PSNR vs ref output dB", "max |Δ| vs ref (8-bit)"], out)


def key_timing_table(rows: list[dict]) -> str:
    ref = _first_per_scale(rows)
    return _table(["scale", "STF keys", "precision", "time s", "Mpx/s", "time vs ref"],
                  [[f"x{r['scale']:g}", str(r["stf_keys"]), r["precision"], f"{r['seconds']:.1f}",
                    f"{r['mpx_per_s']:.4f}", f"{r['seconds'] / ref[r['scale']]['seconds']:.2f}"]
                   for r in rows])


def contention_table(rows: list[dict]) -> str:
    out = []
    for r in rows:
        if "error" in r:
            out.append([r["load"], r["setting"], r["error"], "", ""])
            continue
        vs_old = r.get("vs_old_default")
        out.append([r["load"], r["setting"], _num(r["mpx_per_s"], ".4f"),
                    f"{r['fraction_of_best']:.0%}", "" if vs_old is None else f"{vs_old:.2f}x",
                    _num(r.get("load_1min"), ".1f")])
    return _table(["machine", "setting", "Mpx/s", "of the best under this load",
                   "defaults vs iste before #15", "load"], out)


def slide_table(study: dict, command_threads: int | None = None) -> str:
    """The tissue (model) and glass (bicubic) tiles' rates on the sample slide, and the
    typical slide's projected hours at the study's threads; ``command_threads``: those
    ``iste upscale`` would use here, named where they differ."""
    out = [[kind, f"{r['tiles']}", f"{r['out_mpx']:.2f}", f"{r['seconds']:.2f}",
            _num(r["mpx_per_s"], ".4f"), _num(r.get("peak_rss_mb"), ".0f")]
           for kind, r in study["tiles"].items()]
    table = _table(["tiles", "timed", "output Mpx", "seconds", "Mpx/s", "peak RSS MB"], out)
    s, p = study["sample"], study["projection"]
    w, h = p["slide"]
    return (f"{table}\n\nThe sample ({s['size'][0]} x {s['size'][1]} output, "
            f"{s['tiles_model']} model and {s['tiles_background']} bicubic tiles of "
            f"{study['tile']} px): pyramid {study['assembly_s_per_mpx']:.3f} s per output Mpx, "
            f"tissue detection {s['detect_seconds']:.1f} s. Projected: a {w} x {h} slide at "
            f"{p['tissue']:.0%} tissue ({p.get('model_share', p['tissue']):.0%} of its area in "
            f"model tiles, as on the sample), x{study['scale']:g} ({p['out_mpx']:.0f} output Mpx, "
            f"precision {study['precision']}, {study.get('chunk', '?')} queries per call): "
            f"**{p['hours']:.1f} h** on this machine{_threads(study, command_threads)} "
            f"({p['hours_tiles']:.1f} h of tiles, {p['hours_pyramid']:.2f} h of pyramid).")


def _threads(study: dict, command_threads: int | None) -> str:
    threads = study.get("threads")
    if threads is None:
        return ""
    if command_threads is None or command_threads == threads:
        return f" with {threads} threads"
    return (f" with {threads} threads (`iste upscale` uses {command_threads} here: "
            f"--threads {command_threads} measures that)")


def viewer_table(study: dict) -> str:
    """p50 / p95 ms per scale: a view's first tile (cold), the others (warm), x4 under an x2
    view (deeper), the tile alone; and alone / shared per pair (median). Each cell names its
    sample count; too few samples for a p95 (:func:`iste.serve.latency.summary_ms`): "–" and
    the largest."""
    def cell(row, kind):
        got = row.get(kind)
        if not got:
            return ""
        if got.get("p95") is None:
            return f"{got['p50']} / – (n={got['n']}, max {got['max']})"
        return f"{got['p50']} / {got['p95']} (n={got['n']})"

    out = []
    for scale, row in study["ms"].items():
        ratios = ", ".join(f"{k} {v:.2f}"
                           for k, v in row.get("alone/shared (median of pairs)", {}).items())
        view = f"{row['view s (median)']:.1f}"
        if "view alone s (median)" in row:
            view += f" / {row['view alone s (median)']:.1f}"
        out.append([scale, cell(row, "cold"), cell(row, "warm"), cell(row, "deeper"),
                    cell(row, "alone"), ratios, view])
    table = _table(["scale", "cold p50 / p95 ms", "warm p50 / p95 ms", "deeper p50 / p95 ms",
                    "alone p50 / p95 ms", "alone / shared (median of pairs)",
                    "a whole view, s: shared / alone"], out)
    diff = study.get("max_abs_diff_8bit")
    return table + ("" if diff is None else f"\n\nLargest 8-bit difference between the paths: "
                                            f"{diff}.")


def train_table(rows: list[dict]) -> str:
    out = []
    for r in rows:
        if "error" in r:
            out.append([r["encoder"], r["code"], r["error"], "", "", "", "", ""])
            continue
        floor = r.get("floor_s_per_step")
        out.append([r["encoder"], r["code"], _num(r["samples_per_s"], ".3f"),
                    _num(r["seconds_per_step"], ".2f"),
                    "–" if r.get("vs_published") is None else f"{r['vs_published']:.2f}x",
                    "–" if r.get("warmup_s") is None else f"{r['warmup_s']:.0f}",
                    "–" if floor is None else f"{floor:.2f} ({r['step_gflop']:.0f} GFLOP)",
                    "–" if floor is None else f"{r['floor_over_step']:.0%}"])
    # warm-up: the uncounted first steps (start-up, heap growth); floor: our step's dense
    # products at the best one-thread GEMM rate on every thread (iste.bench.training.step_floor)
    return _table(["encoder", "code", "samples/s", "s/step", "vs published", "warm-up s",
                   "floor s/step (products)", "floor / s/step"], out)
