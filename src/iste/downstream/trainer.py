"""Supervised training of the downstream networks: seeded, resumable, DDP under torchrun.

The SR trainer's pieces are reused: process-group setup (:mod:`iste.distributed`), the
step-indexed batch sampler (:class:`iste.train.loop.StepBatches`: sample ``i`` of the run is
a pure function of ``(seed, i)``, so a resumed run draws exactly the samples it would have),
the metrics log, the one-line errors of loader workers, and the RNG restore of
:mod:`iste.train.state`.

A run folder holds ``train_state.pt`` (model, optimiser, scheduler, RNG, step, config; read
back with ``weights_only=True``), ``weights.safetensors`` (the weights with the network spec
in the metadata) and ``metrics.jsonl``. Calling :func:`fit` on a folder whose saved config
matches resumes it (a finished run returns at once, writing its weights again from the state
when they are missing or do not match it); a different config is an error.

Under the command line's signal handler, SIGTERM, SIGHUP and Ctrl-C stop a run as they stop
``iste train`` (:mod:`iste.stopping`): after the step under way, which is saved, and every
rank raises :class:`~iste.stopping.StoppedSaved`; resumed, the run ends as an uninterrupted
one. A stopped run returns no model, so nothing of a partly trained network is scored or
cached as if it were finished.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from iste.models.checkpoint import CheckpointError, write_safetensors, write_torch_state
from iste import distributed as dist_util
from iste import stopping
from iste.train.loop import (MetricsLog, StepBatches, leave_stops_to_the_run, loader_batches,
                             next_batch)
from iste.typed import MAX_LOADER_WORKERS, check_size
from iste.train.state import check_world, read_state, restore_rng
from iste.text import error_line
from iste.typed import clip_text

__all__ = ["FitConfig", "fit", "check_run_settings", "STATE_FILE", "WEIGHTS_FILE"]

_logger = logging.getLogger("iste")

STATE_FILE = "train_state.pt"
WEIGHTS_FILE = "weights.safetensors"
RUN_ONLY = ("checkpoint_every", "log_every", "workers")  # may change when a run resumes
_STATE_KEYS = ("step", "spec", "model", "optimizer", "scheduler", "torch_rng")  # see _save
STATE_FORMAT = 1  # the layout _save writes (none recorded: 1); raised when it changes


@dataclass(frozen=True)
class FitConfig:
    """steps x batch_size samples per process; Adam with cosine decay of ``lr`` to 0."""

    steps: int = 10000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 50
    workers: int = 0

    def __post_init__(self):
        if min(self.steps, self.batch_size, self.checkpoint_every, self.log_every) < 1:
            raise ValueError("steps, batch size, checkpoint and log intervals must be >= 1")
        if not 0 < self.lr <= 1:  # inf passed '> 0' and trained to NaN
            raise ValueError(f"lr must be in (0, 1], got {self.lr}")
        if not 0 <= self.weight_decay <= 1:
            raise ValueError(f"weight decay must be in [0, 1], got {self.weight_decay}")
        # numpy's generators take no negative seed: -5 failed at the first training sample,
        # after the SR images were made
        check_size("seed", self.seed, low=0, high=2**64 - 1)
        check_size("workers", self.workers, low=0, high=MAX_LOADER_WORKERS)


def _save(run_dir: Path, model: nn.Module, opt, sched, step: int, spec: dict,
          world: int) -> None:
    state = {"format": STATE_FORMAT, "step": step, "world": world, "spec": spec,
             "model": model.state_dict(),
             "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    write_torch_state(run_dir / STATE_FILE, state)
    _write_weights(run_dir, model, step, spec)


def _weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _write_weights(run_dir: Path, model: nn.Module, step: int, spec: dict) -> None:
    meta = {"format": "iste-downstream", "spec": json.dumps(spec), "step": str(step)}
    tensors = _weights_of(model)
    write_safetensors(run_dir / WEIGHTS_FILE, tensors, meta)


def _weights_hold(run_dir: Path, model: nn.Module, step: int, spec: dict) -> bool:
    """Whether ``weights.safetensors`` of ``run_dir`` is ``model``'s weights at ``step`` under
    ``spec`` (False when it is missing or unreadable)."""
    from safetensors import safe_open

    path = run_dir / WEIGHTS_FILE
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            saved = {k: f.get_tensor(k) for k in f.keys()}
        same_meta = (meta.get("format") == "iste-downstream" and meta.get("step") == str(step)
                     and json.loads(meta.get("spec", "null")) == spec)
    except Exception:  # missing, damaged or foreign: written again from the state
        return False
    want = _weights_of(model)
    return (same_meta and saved.keys() == want.keys()
            and all(torch.equal(saved[k], v) for k, v in want.items()))


def _load_state(run_dir: Path) -> dict:
    """The saved state of ``run_dir``, checked as :func:`iste.train.state.read_state` checks
    an SR run's: a damaged or foreign file is a one-line :class:`CheckpointError`."""
    return read_state(run_dir / STATE_FILE, _STATE_KEYS, writer="iste downstream",
                      newest=STATE_FORMAT, advice="remove it to start the run over")


def _run_spec(spec: dict, cfg: FitConfig) -> dict:
    """What a run is saved and matched under: the caller's ``spec`` and the fit settings
    that decide its weights."""
    return {**spec, "fit": {k: v for k, v in asdict(cfg).items() if k not in RUN_ONLY}}


def _check_same_spec(state: dict, spec: dict, run_dir: Path) -> None:
    if state["spec"] != spec:
        saved = state["spec"] if isinstance(state["spec"], dict) else {}
        differ = sorted(k for k in {*saved, *spec} if saved.get(k) != spec.get(k))
        raise CheckpointError(f"{run_dir} holds a run with other settings (its "
                              f"{', '.join(differ)} differ); use another --out or remove "
                              "that folder")


def check_run_settings(run_dir: Path, spec: dict, cfg: FitConfig) -> None:
    """The refusal :func:`fit` would give for ``run_dir`` (a run there with another ``spec``
    or fit settings, or a damaged state), given before the work that makes its training
    data, which it would waste.

    Raises:
        CheckpointError: one line naming what differs.
    """
    if (run_dir / STATE_FILE).exists():
        _check_same_spec(_load_state(run_dir), _run_spec(spec, cfg), run_dir)


def fit(build: Callable[[], nn.Module], dataset: Dataset, loss_fn, cfg: FitConfig,
        run_dir: Path, *, spec: dict, device: torch.device | None = None,
        progress: bool = True, desc: str = "train") -> nn.Module:
    """Train ``build()`` on ``dataset`` (sample i -> (x, target) tensors) for ``cfg.steps``
    steps into ``run_dir``, resuming what is there. Returns the trained model (eval mode) on
    this process's device. ``spec`` (JSON-able) describes the network and data; it and ``cfg``
    must match a saved run to resume it. ``loss_fn(logits, target)`` -> scalar.

    Raises:
        StoppedSaved: a signal noted in :mod:`iste.stopping` stopped the run between two
            steps (or after the last one), saved there.
    """
    info, device = dist_util.setup(device)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = _run_spec(spec, cfg)
    torch.manual_seed(cfg.seed)
    model = build().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
    start, resumed = 0, (run_dir / STATE_FILE).exists()
    if resumed:
        state = _load_state(run_dir)
        _check_same_spec(state, spec, run_dir)
        try:  # the state's values as fit wrote them: anything else is a damaged file
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            restore_rng(state)
            start = state["step"]
            if not isinstance(start, int) or start < 0:
                raise TypeError(f"step {clip_text(repr(start))} is not a step count")
            if start < cfg.steps:  # a finished run's weights serve any number
                check_world(state, info.world, run_dir)
        except CheckpointError:
            raise
        except (TypeError, KeyError, AttributeError, IndexError, RuntimeError,
                ValueError) as err:
            raise CheckpointError(f"{run_dir / STATE_FILE} is damaged "
                                  f"({error_line(err, 200)}); remove it to start the run "
                                  "over") from None
    if start >= cfg.steps:
        if info.is_main and not _weights_hold(run_dir, model, start, spec):
            _logger.info("%s: %s was missing or did not match %s: written again from it",
                         run_dir, WEIGHTS_FILE, STATE_FILE)
            _write_weights(run_dir, model, start, spec)
        return model.eval()
    if info.enabled and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = DistributedDataParallel(model) if info.enabled else model
    loader = DataLoader(dataset, batch_sampler=StepBatches(start, cfg.steps, cfg.batch_size,
                                                           info.rank, info.world),
                        num_workers=cfg.workers, worker_init_fn=leave_stops_to_the_run,
                        generator=torch.Generator().manual_seed(cfg.seed))
    log = MetricsLog(run_dir, info.is_main)
    log.keep_until(start)
    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=start, unit="step", desc=desc, file=sys.stderr,
               disable=not (progress and info.is_main), dynamic_ncols=True)
    # the step of the state in run_dir (None: none yet, so that a stop before the first
    # step saves one: the line that follows names it)
    step, saved, t0 = start, start if resumed else None, time.perf_counter()

    def checkpoint():
        if info.is_main:
            _save(run_dir, model, opt, sched, step, spec, info.world)
        dist_util.barrier(info)

    model.train()
    batches, stopped = loader_batches(loader), 0
    with stopping.at_boundaries():  # a signal stops the run between steps, saved (below)
        while True:
            batch, stopped = next_batch(batches, info)
            if stopped or batch is None:
                break
            x, target = (t.to(device, non_blocking=True) for t in batch)
            loss = loss_fn(net(x), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                # the step's whole batch: rank 0 logged its own part's loss alone
                value = dist_util.mean_over_ranks(info, {"loss": loss.detach()}, device)["loss"]
                bar.set_postfix(loss=f"{value:.4f}")
                log.write(step, loss=value, lr=sched.get_last_lr()[0],
                          steps_per_s=(step - start) / (time.perf_counter() - t0))
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                checkpoint()
                saved = step
        # a signal during the last step's save, agreed on as next_batch agrees: the run is
        # finished, and the command stops before its next network or its scoring
        stopped = stopped or dist_util.largest(info, stopping.requested() or 0)
        if stopped and saved != step:
            checkpoint()
    bar.close()
    if stopped:
        raise stopping.StoppedSaved(stopped, step, cfg.steps, str(run_dir / STATE_FILE))
    return model.eval()
