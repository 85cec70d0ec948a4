"""``iste downstream glas|pcam``: do SR images serve diagnosis? (paper Tables 5, 6; Fig. 11).

Examples:
  iste downstream glas --data "Warwick QU Dataset (Released 2016_07_08)" \\
      --methods Bicubic=bicubic,ISTE=default --out glas-report
  iste downstream pcam --data pcam/ --methods Bicubic=bicubic,LIIF=liif.safetensors,ISTE=default \\
      --out pcam-report
Reruns resume (training runs, SR images and predictions are cached and verified). Under
torchrun the networks train with DDP; SR and testing run on rank 0.

SIGTERM (a scheduler's preemption or time limit), SIGHUP and Ctrl-C stop a network's
training after the step under way and save it, then exit with 128 + the signal (143, 129,
130) and one line naming the command that continues it (the same command).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from iste.cli.options import (add_common_options, add_run_options, describe, query_options,
                              whole_number)
from iste.cli.runlog import (Written, checkpoints_read, command_line, record, say,
                             say_stopped)

log = logging.getLogger("iste")


def _common(p, *, data_help: str, scale: float, steps: int, batch: int, lr: float) -> None:
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--methods", required=True,
                   help="comma-separated SR methods as in `iste eval`: bicubic, default, PATH, "
                        "LABEL=PATH (e.g. Bicubic=bicubic,ISTE=default)")
    p.add_argument("--out", required=True, help="output folder (created; reruns resume)")
    p.add_argument("--scale", type=float, default=scale,
                   help=f"SR scale (default and the paper's: x{scale:g})")
    p.add_argument("--degradation", choices=["bicubic", "paper"], default="bicubic",
                   help="LR from HR: bicubic downsampling (the paper's downstream text) or the "
                        "SR protocol's blur + bicubic (default: %(default)s)")
    p.add_argument("--steps", type=whole_number(1), default=steps,
                   help="training steps (default: %(default)s)")
    p.add_argument("--batch-size", type=whole_number(1), default=batch,
                   help="samples per step per process (default: %(default)s)")
    p.add_argument("--lr", type=float, default=lr, help="Adam learning rate, cosine decay "
                   "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes "
                   "(default: %(default)s)")
    add_run_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="downstream tasks on SR images: GlaS segmentation, PCam "
                                  "tumour detection (paper Tables 5, 6)",
                       description=describe(__doc__, whole=True),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = p.add_subparsers(dest="task", required=True, metavar="TASK")
    g = tasks.add_parser("glas", help="U-Net gland segmentation on GlaS (Table 5, Fig. 11)")
    _common(g, data_help="the GlaS (Warwick QU) folder: train_N.bmp, *_anno.bmp, Grade.csv",
            scale=4.0, steps=10000, batch=8, lr=1e-4)
    g.add_argument("--crop", type=int, default=256, help="training crop side in pixels "
                   "(default: %(default)s)")
    g.add_argument("--unet-width", type=int, default=64, help="U-Net first-level channels "
                   "(default: %(default)s)")
    g.add_argument("--opening-radius", type=int, default=2,
                   help="glands = connected components of the predicted foreground after an "
                        "opening with a disk of this radius (0: none; default: %(default)s)")
    g.add_argument("--min-area", type=int, default=100,
                   help="drop predicted glands smaller than this many pixels "
                        "(default: %(default)s)")
    g.add_argument("--max-images", type=int, help="use only the first N images of each split")
    g.add_argument("--figure-image", help="test image shown in Fig. 11 (default: the one with "
                                          "the most glands)")
    g.set_defaults(run=run_glas)
    c = tasks.add_parser("pcam", help="ResNet-50 tumour detection on PCam (Table 6)")
    _common(c, data_help="folder of camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5 "
                         "(gunzipped)", scale=2.0, steps=12000, batch=64, lr=1e-4)
    c.add_argument("--resnet-width", type=int, default=64, help="ResNet first-stage width "
                   "(default: %(default)s)")
    c.add_argument("--block", type=int, default=1024, help="test patches read per block "
                   "(default: %(default)s)")
    c.add_argument("--max-train", type=int, help="train on the first N training patches only")
    c.add_argument("--max-test", type=int, help="test on the first N test patches only")
    c.set_defaults(run=run_pcam)
    for task in (g, c):
        add_common_options(task, nested=True)
        task.set_defaults(written_paths=written_paths)


def written_paths(args) -> list[Written]:
    """What no --log-file or --json-summary may name (:func:`iste.cli.runlog.run_logging`):
    the names the experiment writes in --out (:func:`~iste.downstream.experiments.common.
    out_writes`: a summary named ``OUT/results_glas.json`` replaced the results) and the
    methods' checkpoints it reads (a log appended to one damaged it)."""
    from iste.downstream.experiments.common import out_writes

    out = Path(args.out)
    return [Written(out, f"{out}, the experiment's --out folder", claims=out_writes),
            *checkpoints_read(args.methods, "--methods")]


def _fit(args):
    from iste.downstream.trainer import FitConfig

    return FitConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                     workers=args.workers, checkpoint_every=min(1000, args.steps),
                     weight_decay=1e-5 if args.task == "pcam" else 0.0)


def _base(args) -> dict:
    from iste.eval.methods import parse_method_list

    return dict(data=Path(args.data), methods=tuple(parse_method_list(args.methods)),
                out=Path(args.out), scale=args.scale, degradation=args.degradation,
                device=args.device, fit=_fit(args),
                progress=not (args.no_progress or args.quiet), options=query_options(args))


def _report(run, request) -> int:
    """Run the experiment ``run(request)`` and say its table (or where a signal stopped it,
    :class:`~iste.stopping.StoppedSaved`); returns the exit code."""
    from iste.stopping import StoppedSaved

    try:
        result = run(request, log=lambda msg: log.info("downstream: %s", msg))
    except StoppedSaved as stop:  # every rank saved its network at the step they agreed on
        return say_stopped(stop.signum, stop.step, stop.steps, stop.state, command_line())
    if result:  # rank 0 (the other ranks of a torchrun job only train)
        for line in result["table"].markdown.splitlines():
            say(line)
        say(f"wrote {len(result['files'])} files")
        record(outputs=[str(f) for f in result["files"]])
    return 0


def _at_least(bounds: dict[str, tuple[int | None, int]]) -> None:
    """One-line errors for options below their least sensible value: {option: (value,
    least)}; a value of None was not given."""
    for name, (value, least) in bounds.items():
        if value is not None and value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")


def run_glas(args) -> int:
    from iste.downstream.experiments.glas import GlasRequest, run_glas as run
    from iste.engine.frame import check_scale

    check_scale(args.scale)
    _at_least({"--crop": (args.crop, 32), "--max-images": (args.max_images, 1),
               "--unet-width": (args.unet_width, 1), "--opening-radius": (args.opening_radius, 0),
               "--min-area": (args.min_area, 0)})
    request = GlasRequest(**_base(args), crop=args.crop, unet_width=args.unet_width,
                          opening_radius=args.opening_radius, min_area=args.min_area,
                          max_images=args.max_images, figure_image=args.figure_image)
    return _report(run, request)


def run_pcam(args) -> int:
    from iste.downstream.experiments.pcam import PCamRequest, run_pcam as run
    from iste.engine.frame import check_scale

    check_scale(args.scale)
    _at_least({"--block": (args.block, 1), "--max-train": (args.max_train, 1),
               "--max-test": (args.max_test, 1), "--resnet-width": (args.resnet_width, 1)})
    request = PCamRequest(**_base(args), resnet_width=args.resnet_width, block=args.block,
                          max_train=args.max_train, max_test=args.max_test)
    return _report(run, request)
