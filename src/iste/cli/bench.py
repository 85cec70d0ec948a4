"""``iste bench``: engine throughput and peak memory, published code side by side, STF key cost.

Example (all sections, published checkouts exported from their git repositories):
    iste bench --published-liif ../liif --published-lte ../lte --published-iste ../ISTE \\
        --published-lit ../CLIT --published-itsrn ../ITSRN/code --published-lmi ../COZ \\
        --published-pythonpath ../pylib --model runs/compact-iste/model.safetensors \\
        --json bench.json --markdown bench.md
Every configuration of the engine and published sections runs in a fresh process (peak RSS is
its own); timings on a shared machine are noisy: compare ratios measured in one run. A run
some of whose rows failed (their errors are in the report) writes the whole report, then exits 1.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from pathlib import Path

from iste.bench.suite import MAX_INPUT_SIZE
from iste.cli.options import describe, file_path, load_model_for, whole_number
from iste.cli.runlog import echo, error
from iste.engine.frame import check_scale
from iste.engine.render import MAX_CHUNK
from iste.paths import check_distinct_outputs, check_not_input, check_output_file
from iste.text import decimal

SECTIONS = ("engine", "published", "keys", "precision", "slide", "train", "contention",
            "viewer")
DEFAULT_SECTIONS = ("engine", "published", "keys")


def _listed(convert, name: str):
    """An argparse ``type``: a comma list, each item read by ``convert`` (its ValueError the
    option's usage error)."""
    def parse(text: str) -> tuple:
        try:
            return tuple(convert(x) for x in text.split(",") if x)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name
    return parse


# each as a user writes a number: float() and int() read --scales 2_0 as x20, --keys 1_024
_floats = _listed(check_scale, "scales")
_ints = _listed(functools.partial(decimal, whole=True), "whole numbers")


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


BENCH_THREADS = 2  # a fixed default, so that runs on different machines compare
THREADS_DEFAULT = f"{BENCH_THREADS} per measuring run, whatever the core count"


def add_parser(sub, name: str) -> None:
    from iste.bench.published import BENCHABLE
    from iste.bench.suite import METHODS
    from iste.models.registry import HEADS

    p = sub.add_parser(name, help="benchmark speed and memory (and the published code); "
                       "--threads: torch threads per run (default ISTE_THREADS, else "
                       f"{BENCH_THREADS})",
                       description=describe(__doc__),
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="\n".join((__doc__ or "").split("\n")[2:]))
    p.add_argument("--sections", type=_names, default=DEFAULT_SECTIONS,
                   help=f"comma list of {', '.join(SECTIONS)} (default: "
                        f"{','.join(DEFAULT_SECTIONS)})")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--input-size", type=whole_number(16, MAX_INPUT_SIZE), default=256,
                   help=f"engine: LR side, 16..{MAX_INPUT_SIZE} (default 256)")
    p.add_argument("--scales", type=_floats, default=(2.0, 3.3, 4.0),
                   help="engine: comma list of scales (default 2,3.3,4)")
    p.add_argument("--methods", type=_names, default=METHODS,
                   help=f"comma list of {', '.join(METHODS)} (default: all)")
    p.add_argument("--precisions", type=_names, default=("fp32", "bf16"),
                   help="precision: comma list of fp32, bf16 (default: both)")
    p.add_argument("--chunk", type=whole_number(1, MAX_CHUNK),
                   help="queries per model call (default: the engine's)")
    p.add_argument("--repeats", type=whole_number(1), default=1,
                   help="timed calls in each measuring process (engine, key counts, both sides "
                        "of the published comparison), fastest kept: 1 (default) times the "
                        "first full-size call after a small warm-up, 2 or more also the calls "
                        "after it (the allocator warm)")
    g = p.add_argument_group("published code (exported work trees of the published repositories)")
    for method in BENCHABLE:
        code = HEADS[method].published
        g.add_argument(f"--published-{method}", metavar="DIR",
                       help=f"checkout of {code.repository}")
    g.add_argument("--published-pythonpath", action="append", default=[], metavar="DIR",
                   help="extra import path for the published code's child processes (einops)")
    g.add_argument("--published-iste-chunks", type=_ints, default=(4096, 30000),
                   help="query chunks of the published ISTE (default 4096,30000; 30000 ~ 8 GB)")
    g.add_argument("--compare-size", type=whole_number(16, MAX_INPUT_SIZE), default=64,
                   help=f"LR side, 16..{MAX_INPUT_SIZE} (default 64)")
    g.add_argument("--compare-scales", type=_floats, default=(4.0,),
                   help="scales of the comparison (default 4)")
    g.add_argument("--compare-repeats", type=whole_number(1), default=3,
                   help="interleaved rounds (default 3)")
    k = p.add_argument_group("STF key count (ISTE)")
    k.add_argument("--model", help="trained ISTE checkpoint (default: the shipped model)")
    k.add_argument("--keys", type=_ints, default=(2304, 1024, 576, 256, 64),
                   help="comma list of key counts, reference first (default "
                        "2304,1024,576,256,64)")
    k.add_argument("--key-scales", type=_floats, default=(2.0, 3.3, 4.0),
                   help="comma list of scales (default 2,3.3,4)")
    k.add_argument("--key-tiles", type=int, help="use the first N CMU test tiles (default all)")
    k.add_argument("--key-timing-size", type=int, default=128,
                   help="LR side for timing the key counts on the paper-size ISTE (default "
                        "128; 0: skip)")
    p.add_argument("--train-steps", type=int, default=3,
                   help="train: timed steps per side, after two warm-up steps (default 3)")
    p.add_argument("--json", type=file_path, help="write all figures here")
    p.add_argument("--markdown", type=file_path, help="write the tables here")
    p.set_defaults(run=run, threads_default=THREADS_DEFAULT)  # for --threads' help


def run(args) -> int:
    import torch

    from iste.bench import runner
    from iste.bench.published import BENCHABLE
    from iste.bench.suite import BenchConfig

    from iste.runtime import pick_device, requested_threads

    pick_device(args.device)  # an unknown or absent device is an error before any run
    if not args.sections:
        raise ValueError(f"no --sections given; expected some of {', '.join(SECTIONS)}")
    published = {m: getattr(args, f"published_{m}") for m in BENCHABLE
                 if getattr(args, f"published_{m}")}
    # what the sections read: the reports, saved after each section, replaced the --model
    # checkpoint the later sections load, or wrote into a published checkout
    read = [p for p in (args.model, *published.values(), *args.published_pythonpath) if p]
    for option, path in (("--json", args.json), ("--markdown", args.markdown)):
        if path is not None:  # refused now, not after the benchmark
            check_output_file(path, option)
            check_not_input(path, read, what=option)
    check_distinct_outputs({"--json": args.json, "--markdown": args.markdown,
                            "--json-summary": args.json_summary, "--log-file": args.log_file})
    bad = set(args.sections) - set(SECTIONS)
    if bad:
        raise ValueError(f"unknown section(s) {sorted(bad)}; expected {', '.join(SECTIONS)}")
    extra = {"chunk": args.chunk} if args.chunk is not None else {}
    threads = requested_threads(args.threads) or BENCH_THREADS  # --threads, ISTE_THREADS
    cfg = BenchConfig(threads=threads, device=args.device, input_size=args.input_size,
                      scales=args.scales, methods=args.methods, precisions=args.precisions,
                      repeats=args.repeats, compare_size=args.compare_size,
                      compare_scales=args.compare_scales, compare_repeats=args.compare_repeats,
                      published={m: str(Path(d).resolve()) for m, d in published.items()},
                      published_pythonpath=tuple(str(Path(d).resolve())
                                                 for d in args.published_pythonpath),
                      published_iste_chunks=args.published_iste_chunks, **extra)
    previous_threads = torch.get_num_threads()  # the start-up choice (iste.runtime)
    command_threads = requested_threads(args.threads) or previous_threads  # as set_threads
    torch.set_num_threads(cfg.threads)
    try:  # restored for callers that run the command in-process (tests, notebooks)
        with tempfile.TemporaryDirectory(prefix="iste-bench-") as tmp:
            results = runner.run_sections(cfg, args.sections, Path(tmp), model_path=args.model,
                                          keys=args.keys, key_scales=args.key_scales,
                                          key_tiles=args.key_tiles,
                                          key_timing_size=args.key_timing_size,
                                          train_steps=args.train_steps,
                                          on_section=lambda partial: _save(args, partial),
                                          above={"viewer": lambda: _viewer_study(args)},
                                          command_threads=command_threads)
    finally:
        torch.set_num_threads(previous_threads)
    echo(_save(args, results))
    failed, rows = runner.row_failures(results)
    if failed:  # after the whole report: a script running the bench sees that it failed
        error(f"{failed} of {rows} benchmark rows failed (their errors are in the report)")
        return 1
    return 0


def _viewer_study(args) -> dict:
    """The viewer's SR tile latency (:mod:`iste.serve.latency`): the model of ``--model``
    (the shipped default without it) on the sample SVS, one 3 x 3 view per scale."""
    from iste.data.samples import sample_path
    from iste.serve.latency import viewer_study

    return viewer_study(load_model_for(args), sample_path("cmu-svs"), views=1, view_size=3)


def _save(args, results: dict) -> str:
    """Write the JSON / markdown reports (atomically); returns the markdown."""
    from iste.bench import runner
    from iste.eval.files import write_json_atomic, write_text_atomic

    text = runner.markdown(results)
    if args.json:
        write_json_atomic(args.json, results)
    if args.markdown:
        write_text_atomic(args.markdown, text)
    return text
