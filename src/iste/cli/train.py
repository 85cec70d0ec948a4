"""``iste train CONFIG``: train by the paper's protocol (resumable; DDP under torchrun).

On a CPU with 2 or more threads (and no more than the batch size), each batch runs in
slices side by side, one per thread: the same gradient up to float rounding, so a run is
reproducible at a given --threads; --threads 1 keeps the batch whole.

SIGTERM (a scheduler's preemption or time limit), SIGHUP and Ctrl-C stop the run after the
step under way and save it, then exit with 128 + the signal (143, 129, 130) and one line
naming the command that continues it; under torchrun every rank stops at the same step."""

from __future__ import annotations

from pathlib import Path

from iste.cli.options import describe
from iste.cli.runlog import (Written, images_read, record, say, say_stopped,
                             shell_join)


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="train a model (paper protocol; torchrun for several GPUs)",
                       description=describe(__doc__, whole=True))
    p.add_argument("config", help="YAML config, or a bundled config name "
                                  "(compact-iste, compact-liif, swinir-iste, ...)")
    p.add_argument("--run-dir", help="where checkpoints and logs go (default: runs/<config>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--stop-after", type=int,
                   help="stop after N steps of this invocation (default: run to run.steps)")
    p.add_argument("--steps", type=int, help="override run.steps (e.g. to extend a finished run "
                                             "with --resume)")
    p.set_defaults(run=run, written_paths=written_paths)


def run_dir_of(args) -> Path:
    """The run folder: --run-dir, else runs/<the config's name>."""
    return Path(args.run_dir or Path("runs") / Path(args.config).stem)


def written_paths(args) -> list[Written]:
    """What no --log-file or --json-summary may name (:func:`iste.cli.runlog.run_logging`):
    the run folder's own names (:func:`iste.train.state.run_writes`: a log named
    ``RUN/metrics.jsonl`` was overwritten by the metrics, one named ``RUN/model.safetensors``
    made the run refuse its own folder as 'already holds a run'), and what the run reads:
    the config's training and validation images, slides and folders (a log appended to a
    training image damaged it; one written as an image in a data folder became training
    data) and its run.init checkpoint. A config that cannot be read leaves the run folder
    alone to check (the command says why)."""
    from iste.train.config import load_train_config
    from iste.train.state import run_writes

    run_dir = run_dir_of(args)
    written = [Written(run_dir, f"{run_dir}, the run folder", claims=run_writes)]
    try:
        cfg = load_train_config(args.config)
    except (ValueError, OSError):  # the command says why
        return written
    for key, sources in (("data.train", cfg.data.train), ("data.val", cfg.data.val)):
        written += [_read(spec, key) for spec in sources if not spec.startswith("sample:")]
    if cfg.run.init not in (None, "default"):
        written.append(Written(Path(cfg.run.init), f"the run.init checkpoint {cfg.run.init}",
                               reads=True))
    return written


def _read(spec: str, key: str) -> Written:
    """A data source the run reads, as a path no log may take: a folder's images (any image
    suffix directly in it), or the file itself."""
    path = Path(spec)
    if path.is_dir():
        return images_read(path, f"{spec}, a {key} folder")
    return Written(path, f"the {key} source {spec}", reads=True)


def run(args) -> int:
    from iste.distributed import launched_rank
    from iste.models.checkpoint import STATE_FILE
    from iste.runtime import pick_device
    from iste.train.config import load_train_config
    from iste.train.loop import check_before_work, train

    cfg = load_train_config(args.config)
    if args.steps is not None:
        from dataclasses import replace

        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        if cfg.run.epochs is not None:
            raise ValueError(f"{args.config} counts its run in epochs (run.epochs): change "
                             "run.epochs in a copy of it instead of --steps")
        cfg = replace(cfg, run=replace(cfg.run, steps=args.steps))
    run_dir = run_dir_of(args)
    # said with the config's name, before torch builds the model or any data is indexed
    config = Path(args.config)
    check_before_work(cfg, run_dir, resume=args.resume, where=config.name,
                      config_dir=config.parent if config.is_file() else None)
    result = train(cfg, run_dir, resume=args.resume,
                   device=pick_device(args.device) if args.device else None,
                   stop_after=args.stop_after)
    step, steps, stopped = result["step"], result["steps"], result.get("stopped")
    # with the --steps it was given: the config's own would end it before this step
    again = shell_join(["iste", "train", args.config, "--run-dir", str(run_dir), "--resume",
                        *(["--steps", str(args.steps)] if args.steps is not None else [])])
    record(outputs=[str(run_dir / "model.safetensors")], step=step)
    if stopped:  # SIGTERM or Ctrl-C: every rank saved the step they agreed on; rank 0 says so
        return say_stopped(stopped, step, steps, run_dir / STATE_FILE, again)
    if launched_rank() == 0:  # under torchrun rank 0 writes the weights, and says so
        if step < steps:  # --stop-after: the run is not finished
            say(f"step {step} of {steps}: weights in {run_dir / 'model.safetensors'}; the "
                f"run continues with: {again}")
        else:
            say(f"step {step}: weights in {run_dir / 'model.safetensors'}")
    return 0
