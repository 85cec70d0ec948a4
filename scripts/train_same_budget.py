"""Train several methods from scratch at one equal budget, one after the other, resumably.

    python scripts/train_same_budget.py [--steps 500] [--batch 8] [--out runs/same-budget]
                                        [--base compact-iste] [CONFIG | NAME=CONFIG ...]

CONFIG: a bundled config name or a YAML file (default: the six arbitrary-scale compacts,
``compact-{liif,lte,lmi,itsrn,lit,iste}``). The *method* comes from each config: its ``model``,
its ``loss`` and its optimiser (each paper's own; the lr schedule stretched from the config's
``run.steps`` to the budget's, e.g. compact-iste's milestones 1500/1800 of 2000 steps become
450/540 of 600), and the data fields that say which scales it trains at (``scale_min``,
``scale_max``, ``val_scales``: a fixed-scale network trains at its own scale). Everything else —
training and validation data, degradation, crops, sampled queries, seed, checkpoints — is the
base config's (``--base``, default compact-iste) with the budget applied: ``run.steps = --steps``,
``run.batch_size = --batch``, validation only at the end. So every run sees the same crops in the
same order, and the runs differ only in the method.

Each run goes to ``OUT/NAME`` (NAME: the config's stem, or the given NAME). A finished run
(``train_state.pt`` at the last step) is skipped; an interrupted one is resumed from its last
checkpoint; resuming with another budget or method is refused by the training loop.
``OUT/NAME/same-budget-run.json`` records the run's parameters, the wall time of each invocation
that trained it, the final validation and the sha256 of ``model.safetensors``;
``OUT/same-budget.json`` gathers the budget and every run's record (several invocations may train
different runs into one OUT at the same time: each writes only its own runs' records).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import replace
from pathlib import Path

ARBITRARY_SCALE = ("compact-liif", "compact-lte", "compact-lmi", "compact-itsrn", "compact-lit",
                   "compact-iste")
METHOD_DATA_FIELDS = ("scale_min", "scale_max", "val_scales")
SUMMARY_FILE = "same-budget.json"
RECORD_FILE = "same-budget-run.json"


def budget_config(base, method, *, steps: int, batch: int, val_every: int | None = None):
    """``method``'s model, loss, optimiser (schedule stretched to ``steps``) and scales;
    ``base``'s data and run with the budget applied; validation at the end only, or also every
    ``val_every`` steps (a learning curve; it changes nothing in the training)."""
    own_steps = method.run.steps
    if own_steps is None:
        raise ValueError("a method's config must count its run in steps (run.steps), so that "
                         "its lr schedule can be stretched to the budget")
    stretch = steps / own_steps
    optim = replace(method.optim,
                    milestones=tuple(sorted({max(1, round(m * stretch))
                                             for m in method.optim.milestones})),
                    step_every=None if method.optim.step_every is None else
                    max(1, round(method.optim.step_every * stretch)))
    data = replace(base.data, **{f: getattr(method.data, f) for f in METHOD_DATA_FIELDS})
    run = replace(base.run, steps=steps, epochs=None, repeat=1, batch_size=batch, init=None,
                  checkpoint_every=min(base.run.checkpoint_every, steps),
                  val_every=steps if val_every is None else min(val_every, steps))
    return replace(base, model=method.model, loss=method.loss, data=data, run=run, optim=optim)


def parse_entries(specs: list[str]) -> list[tuple[str, str]]:
    """``NAME=CONFIG`` or ``CONFIG`` (NAME: the config's stem) -> [(NAME, CONFIG)]."""
    entries = []
    for spec in specs:
        name, _, config = spec.rpartition("=")
        entries.append((name or Path(config).stem, config))
    names = [n for n, _ in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"run names must be unique, got {names}")
    return entries


def finished_step(run_dir: Path) -> int:
    """The step of the run's last complete checkpoint (0 when there is none)."""
    from iste.train.state import STATE_FILE, load_state

    if not (run_dir / STATE_FILE).exists():
        return 0
    return int(load_state(run_dir)["step"])


def read_record(run_dir: Path) -> dict | None:
    """The run's record, or None when it has none yet."""
    path = run_dir / RECORD_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record.get("segments"), list):
            raise ValueError("no 'segments' list")
    except ValueError as err:
        raise SystemExit(f"train_same_budget: {path} is damaged ({err}); remove it to start "
                         "its record again (the run itself is kept)") from None
    return record


def write_json(path: Path, value: dict) -> None:
    from iste.files import write_bytes_atomic

    write_bytes_atomic(path, (json.dumps(value, indent=2) + "\n").encode())


def gather_summary(out: Path, budget: dict) -> dict:
    """The budget and the record of every run folder in ``out``; written to SUMMARY_FILE."""
    runs = {d.name: record for d in sorted(out.iterdir())
            if d.is_dir() and (record := read_record(d)) is not None}
    summary = {"budget": budget, "runs": runs}
    write_json(out / SUMMARY_FILE, summary)
    return summary


def train_all(entries: list[tuple[str, str]], *, out: Path, base: str, steps: int, batch: int,
              progress: bool = True, stop_after: int | None = None,
              val_every: int | None = None) -> dict:
    """Train every entry to ``steps`` (skip finished, resume interrupted); returns the summary.
    ``stop_after``: stop each run after that many steps of this call (for tests)."""
    from iste.digest import sha256_file
    from iste.models.registry import build_model, count_parameters
    from iste.train.config import load_train_config
    from iste.train.loop import train

    base_cfg = load_train_config(base)
    configs = {name: budget_config(base_cfg, load_train_config(spec), steps=steps, batch=batch,
                                   val_every=val_every)
               for name, spec in entries}  # every config is read before any training starts
    out.mkdir(parents=True, exist_ok=True)
    budget = {"base": base, "steps": steps, "batch_size": batch, "crops": steps * batch}
    for name, cfg in configs.items():
        run_dir = out / name
        start = finished_step(run_dir)
        if start >= steps:
            print(f"{name}: finished ({start} steps), skipped", flush=True)
            continue
        record = read_record(run_dir) if start else None
        record = record or {"config": dict(entries)[name], "segments": []}
        record["parameters"] = count_parameters(build_model(cfg.model))
        print(f"{name}: {'resuming at step ' + str(start) if start else 'starting'}", flush=True)
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # a run killed before its first checkpoint restarts
            warnings.filterwarnings("ignore", message="nothing to resume")
            result = train(cfg, run_dir, resume=run_dir.is_dir(), progress=progress,
                           stop_after=stop_after)
        wall = time.perf_counter() - t0
        record["segments"].append({"from_step": start, "to_step": result["step"],
                                   "wall_s": round(wall, 1)})
        record["step"] = result["step"]
        record["wall_s"] = round(sum(s["wall_s"] for s in record["segments"]), 1)
        record["validation"] = {k: v for k, v in result.items() if k.startswith("psnr")}
        record["sha256"] = sha256_file(run_dir / "model.safetensors")
        write_json(run_dir / RECORD_FILE, record)
        print(f"{name}: step {result['step']} in {wall / 60:.1f} min", flush=True)
    return gather_summary(out, budget)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="*", default=list(ARBITRARY_SCALE))
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--base", default="compact-iste",
                        help="config whose data and run settings every method shares")
    parser.add_argument("--out", type=Path, default=Path("runs/same-budget"))
    parser.add_argument("--val-every", type=int, default=None,
                        help="also validate every N steps (default: only at the end)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: iste's choice)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or (args.val_every is not None and args.val_every < 1):
        parser.error("--steps, --batch and --val-every must be >= 1")
    from iste.runtime import set_threads

    if args.threads is not None:
        set_threads(args.threads)
    train_all(parse_entries(args.configs), out=args.out, base=args.base, steps=args.steps,
              batch=args.batch, progress=not args.no_progress, val_every=args.val_every)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
