"""Run the selected benchmark sections and assemble their figures (a JSON-able dict)."""

from __future__ import annotations

import platform
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from iste.bench import report
from iste.bench.suite import (SKIPPED, BenchConfig, machine_load, paper_config, run_comparison,
                              run_engine)


def machine_info() -> dict:
    """CPU model, the vector instructions torch's kernels use on it (AVX2, AVX512 ...: the same
    2-core machine runs about half as fast with AVX2 as with AVX-512), whether it has bf16
    units, which library computes fp32 training products, torch version, load."""
    from iste.models.layers.linear import blas_trains_faster
    from iste.runtime import BF16_CPU_FLAGS, cpu_flags, cpu_model

    bf16 = sorted(cpu_flags() & BF16_CPU_FLAGS)
    return {"cpu": cpu_model() or platform.processor() or platform.machine(),
            "vector": torch.backends.cpu.get_cpu_capability(), "bf16_units": bf16 or None,
            "training_products": "BLAS" if blas_trains_faster() else "oneDNN",
            "torch": torch.__version__, "python": platform.python_version(), **machine_load()}


def _real_or_random(size: int, scale: float | None, seed: int) -> tuple[np.ndarray, str]:
    """A real H&E LR image of size x size (a CMU test tile, degraded by ``scale`` if given),
    or random pixels when the sample data is unavailable."""
    from iste.data.degrade import degrade
    from iste.data.samples import SampleUnavailableError
    from iste.slides.samples import cmu_test_images

    hr_size = size if scale is None else round(size * scale)
    try:
        name, tile = cmu_test_images(hr_size)[0]
    except IndexError:  # no test tile that large: the real LR tile itself, not degraded
        if scale is not None:
            return _real_or_random(size, None, seed)
        warnings.warn(f"no real H&E test tile of {size} x {size} px (the CMU test rows are "
                      "768 px high); benchmarking on random pixels")
        return _random(size, seed), "random pixels"
    except SampleUnavailableError as err:
        warnings.warn(f"real H&E sample unavailable ({err}); benchmarking on random pixels")
        return _random(size, seed), "random pixels"
    if scale is None:
        return tile, f"{name} (real H&E)"
    return degrade(tile, scale, (size, size)), f"{name} degraded x{scale:g} (real H&E)"


def _random(size: int, seed: int) -> np.ndarray:
    """uint8 (size, size, 3) uniform random pixels."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _key_model(model_path: str | None):
    from iste.default_model import load_model_or_default
    from iste.models.checkpoint import is_untrained

    model = load_model_or_default(model_path, device="cpu")
    if is_untrained(model):
        return model, "RANDOM weights (no trained default installed)"
    step = model.checkpoint_meta.get("step")
    where = model_path or "the shipped default model"
    return model, f"{where}" + (f" (trained, step {step})" if step else "")


def check_study_options(*, keys, key_scales, key_tiles: int | None, key_timing_size: int,
                        train_steps: int) -> None:
    """ValueError, before any section runs, for options of the key, precision and training
    studies that would fail (or silently change what is measured) once they are reached:
    ``key_tiles`` < 1 (a negative count dropped tiles from the end, as a slice), key counts
    < 1, a scale :func:`~iste.engine.frame.check_scale` refuses, a timing size below 16
    (0 skips it), fewer than one training step."""
    from iste.engine.frame import check_scale

    if key_tiles is not None and key_tiles < 1:
        raise ValueError(f"--key-tiles must be at least 1 (or left out: all), got {key_tiles}")
    if not keys or min(keys) < 1:
        raise ValueError(f"--keys must be key counts >= 1, got {','.join(map(str, keys))!r}")
    if not key_scales:
        raise ValueError("no --key-scales given: name at least one")
    for scale in key_scales:
        check_scale(scale)
    if key_timing_size and key_timing_size < 16:
        raise ValueError(f"--key-timing-size must be at least 16 pixels (0: skip), got "
                         f"{key_timing_size}")
    if train_steps < 1:
        raise ValueError(f"--train-steps must be at least 1, got {train_steps}")


def run_sections(cfg: BenchConfig, sections, workdir: Path, *, model_path: str | None,
                 keys, key_scales, key_tiles: int | None, key_timing_size: int,
                 train_steps: int = 3, on_section=lambda results: None,
                 above: Mapping[str, Callable[[], dict]] = {},
                 command_threads: int | None = None) -> dict:
    """Figures of every section in ``sections``; ``on_section(results)`` after each one (so a
    long run keeps what it measured). ``above``: sections whose study lives in a layer above
    the bench (the viewer's, in :mod:`iste.serve`), name -> study, run last when selected.
    ``command_threads``: the threads a command (``iste upscale``) would use here, reported
    beside the bench's own."""
    from iste.runtime import startup_report

    check_study_options(keys=keys, key_scales=key_scales, key_tiles=key_tiles,
                        key_timing_size=key_timing_size, train_steps=train_steps)
    results: dict = {"config": asdict(cfg), "machine": machine_info(), "inputs": {},
                     "runtime": {**startup_report(), "command_threads": command_threads}}
    if "engine" in sections:
        lr, what = _real_or_random(cfg.input_size, None, cfg.seed)
        results["inputs"]["engine"] = what
        results["engine"] = run_engine(cfg, lr, workdir)
        on_section({**results, "machine_after": machine_load()})
    if "published" in sections:
        results["published"], inputs = [], []
        for scale in cfg.compare_scales:
            lr, what = _real_or_random(cfg.compare_size, scale, cfg.seed)
            inputs.append(f"x{scale:g}: {what}")
            results["published"] += run_comparison(cfg, lr, scale, workdir)
            results["inputs"]["published"] = "; ".join(inputs)
            on_section({**results, "machine_after": machine_load()})
    if "keys" in sections:
        results["keys"] = _keys_section(cfg, model_path, keys, key_scales, key_tiles,
                                        key_timing_size)
        on_section({**results, "machine_after": machine_load()})
    if "precision" in sections:
        results["precision"] = _precision_section(cfg, model_path, key_scales, key_tiles)
        on_section({**results, "machine_after": machine_load()})
    if "slide" in sections:
        from iste.bench.slide import slide_study

        results["slide"] = slide_study(model_path=model_path, chunk=cfg.chunk)
        on_section({**results, "machine_after": machine_load()})
    if "train" in sections:
        from iste.bench.training import training_study

        results["train"] = training_study(cfg, workdir, steps=train_steps,
                                          rounds=cfg.compare_repeats)
        on_section({**results, "machine_after": machine_load()})
    if "contention" in sections:
        from iste.bench.contention import contention_study
        from iste.runtime import usable_cpus

        lr, what = _real_or_random(cfg.compare_size, 4.0, cfg.seed)
        results["inputs"]["contention"] = what
        results["contention"] = contention_study(cfg, lr, 4.0, workdir, cpus=usable_cpus(),
                                                 rounds=cfg.compare_repeats)
        on_section({**results, "machine_after": machine_load()})
    for name, study in above.items():
        if name in sections:
            results[name] = study()
            on_section({**results, "machine_after": machine_load()})
    results["machine_after"] = machine_load()
    return results


def _keys_section(cfg, model_path, keys, key_scales, key_tiles, key_timing_size) -> dict:
    from iste.bench.keys import key_study, key_timing
    from iste.slides.samples import cmu_test_images
    from iste.models.registry import build_model

    model, described = _key_model(model_path)
    tiles = [t for _, t in cmu_test_images(256)][:key_tiles]
    rows = key_study(model, tiles, scales=key_scales, keys=keys, chunk=cfg.chunk,
                     repeats=cfg.repeats)
    out = {"model": described, "tiles": len(tiles), "rows": [asdict(r) for r in rows]}
    if key_timing_size:
        torch.manual_seed(cfg.seed)
        paper = build_model(paper_config("iste")).eval()
        lr, what = _real_or_random(key_timing_size, None, cfg.seed)
        timing = []
        for precision in cfg.precisions:
            timing += key_timing(paper, lr, scales=(min(key_scales), max(key_scales)), keys=keys,
                                 precision=precision, chunk=cfg.chunk, repeats=cfg.repeats)
        out["paper_timing"] = {"input": what, "rows": timing}
    return out


def _precision_section(cfg, model_path, key_scales, key_tiles) -> dict:
    """bf16 against fp32: PSNR of the shipped model on the held-out CMU test tiles and time,
    for it and for the paper-size ISTE; and what ``--precision auto`` picks for each here."""
    from iste.bench.keys import key_study, key_timing
    from iste.slides.samples import cmu_test_images
    from iste.engine.render import auto_precision
    from iste.models.registry import build_model

    model, described = _key_model(model_path)
    tiles = [t for _, t in cmu_test_images(256)][:key_tiles]
    rows = key_study(model, tiles, scales=key_scales, keys=(2304,), precisions=("bf16",),
                     chunk=cfg.chunk, repeats=cfg.repeats)
    torch.manual_seed(cfg.seed)
    paper = build_model(paper_config("iste")).eval()
    lr, what = _real_or_random(cfg.compare_size * 2, None, cfg.seed)
    timing = []
    for precision in ("fp32", "bf16"):
        timing += key_timing(paper, lr, scales=(2.0, 4.0), keys=(2304,), precision=precision,
                             chunk=cfg.chunk, repeats=cfg.repeats)
    return {"model": described, "tiles": len(tiles), "rows": [asdict(r) for r in rows],
            "auto": {"shipped": auto_precision(model), "paper": auto_precision(paper)},
            "paper_timing": {"input": what, "rows": timing}}


# the sections whose rows are measuring runs, each row its figures or the run's "error"
ROW_SECTIONS = ("engine", "published", "train", "contention")


def row_failures(results: dict) -> tuple[int, int]:
    """(failed, all) rows of the sections of ``results`` that hold rows (:data:`ROW_SECTIONS`):
    a failed row holds an error, which the report shows in place of its figures; a row
    skipped on purpose (:data:`iste.bench.suite.SKIPPED`) has not failed."""
    rows = [r for name in ROW_SECTIONS for r in results.get(name, ())]
    return sum(not str(r.get("error", SKIPPED)).startswith(SKIPPED) for r in rows), len(rows)


def markdown(results: dict) -> str:
    m, cfg = results["machine"], results["config"]
    command_threads = results.get("runtime", {}).get("command_threads")
    parts = [f"Machine: {m['cpu']} ({m['vector']}), {m['cpus']} CPUs, bf16 units: "
             f"{m['bf16_units'] or 'none'}; fp32 training products: "
             f"{m.get('training_products', 'not recorded')}; "
             f"torch {m['torch']}; {cfg['threads']} threads; load average "
             f"{m['load_1min']} at start, {results['machine_after']['load_1min']} at end."]
    if "engine" in results:
        parts += [f"### Engine: paper-size heads, EDSR-baseline, random weights; input "
                  f"{cfg['input_size']} x {cfg['input_size']} ({results['inputs']['engine']})",
                  report.engine_table(results["engine"])]
    if "published" in results:
        scales = ", ".join(f"x{s:g}" for s in cfg["compare_scales"])
        parts += [f"### Published code vs ours, same weights; input {cfg['compare_size']} x "
                  f"{cfg['compare_size']} at {scales} "
                  f"({results['inputs']['published']}); fastest of {cfg['compare_repeats']} "
                  "interleaved rounds", report.comparison_table(results["published"])]
    if "precision" in results:
        p = results["precision"]
        parts += [f"### Precision: {p['model']} on {p['tiles']} held-out CMU test tiles; "
                  f"auto picks {p['auto']['shipped']} for it and {p['auto']['paper']} for the "
                  "paper-size ISTE here", report.keys_table(p["rows"]),
                  f"Paper-size ISTE (random weights), input {p['paper_timing']['input']}:",
                  report.key_timing_table(p["paper_timing"]["rows"])]
    if "slide" in results:
        parts += ["### Whole slide: the shipped model on the sample SVS, its tissue and glass "
                  "tiles, and a typical slide, from a 20x scan (x2) and from a 10x scan (x4)",
                  "\n\n".join(report.slide_table(study, command_threads)
                             for study in results["slide"])]
    if "train" in results:
        parts += ["### Training: samples/s of `iste train` and the published train.py, "
                  "same batch (4), sample_q (2304) and data", report.train_table(results["train"])]
    if "contention" in results:
        parts += [f"### Shared CPU: the shipped model, {cfg['compare_size']} x "
                  f"{cfg['compare_size']} at x4 ({results['inputs']['contention']}), quiet "
                  "(real-time priority, where allowed), as is and beside one busy process; "
                  "fastest of "
                  f"{cfg['compare_repeats']} interleaved rounds",
                  report.contention_table(results["contention"])]
    if "viewer" in results:
        v = results["viewer"]
        parts += [f"### Viewer: SR tile latency (256-px tiles), the shipped model on the sample "
                  f"SVS (deblock {v['deblock']}), {v['views']} view(s) of {v['view_tiles']} tiles "
                  "per scale; each tile also rendered alone, back to back"
                  + ("; freed memory kept, as iste serve keeps it" if v["malloc_keeps_freed"]
                     else ""),
                  report.viewer_table(v)]
    if "keys" in results:
        k = results["keys"]
        parts += [f"### STF key count: {k['model']}, {k['tiles']} CMU test tiles (256 x 256 HR)",
                  report.keys_table(k["rows"])]
        if "paper_timing" in k:
            parts += [f"### STF key count: time of the paper-size ISTE (random weights), input "
                      f"{k['paper_timing']['input']}",
                      report.key_timing_table(k["paper_timing"]["rows"])]
    return "\n\n".join(parts) + "\n"
