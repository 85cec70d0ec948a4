"""The training loop: paper protocol, resumable, DDP under torchrun."""

from __future__ import annotations

import contextlib
import json
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from iste.data.coords import normalize
from iste.data.places import place, recorded, shared
from iste.engine.parallel import chunk_workers
from iste.engine.render import autocast_for
from iste.files import write_bytes_atomic
from iste.locks import folder_lock
from iste.refusals import folder_removed, refusal
from iste.models.checkpoint import CheckpointError
from iste.models.checkpoint import load_state as load_weights
from iste.models.layers.randomness import drawing_from, seeded_generators
from iste.models.registry import FixedConfig, build_model, count_parameters, is_earlier_stage
from iste.progress import Progress
from iste import stopping
from iste.text import error_line
from iste import distributed as dist_util
from iste.train.config import DataConfig, OptimConfig, RunConfig, TrainConfig
from iste.typed import excerpt, to_plain
from iste.train.dataset import CropDataset, validation_tiles
from iste.train.sources import check_sources_exist, close_sources, files_digest, open_source
from iste.train.objectives import FixedObjective, LossConfig
from iste.train.parts import backward_in_parts, batch_parts
from iste.train.schedule import Schedule, follow_plan, make_scheduler, resolve_schedule
from iste.train.state import (PENDING, RUN_FILES, STATE_FILE, VAL_TILES, best_for_tiles,
                              check_optimizer, check_progress, check_scheduler, check_world,
                              clean_leftovers, is_validation, keep_best, load_state, mean_psnr,
                              restore_rng, save_state, tiles_digest)
from iste.train.validate import validate


def _load_init(model, cfg: TrainConfig) -> tuple[str, list[str]]:
    """Load ``run.init`` (``default`` or a checkpoint) into ``model``; returns its sha256 and
    the places of its training data (:func:`iste.data.places.recorded`): the run's weights
    learnt from those images too."""
    from iste.models.checkpoint import load_state as load_weights
    from iste.models.checkpoint import (read_metadata, read_unchanged, read_weights,
                                        refuse_absurd_output)

    path = _init_path(cfg)

    def read(p: Path):
        return read_metadata(p), read_weights(p)

    # the digest recorded is that of the weights loaded (another run may rewrite the file)
    ((config, meta), state), digest = read_unchanged(path, read)
    if _init_fits(config, cfg, path):  # the stages the init lacks keep their random initialisation
        state = {**{k: v for k, v in model.state_dict().items() if k not in state}, **state}
    load_weights(model, state, source=str(path))
    # finite weights scaled absurdly (a converter's wrong factor) trained from garbage until
    # the loss guard stopped the run: refused as a model file given to iste upscale is
    was_training = model.training
    try:
        refuse_absurd_output(model.eval(), source=f"run.init {path}")
    finally:
        model.train(was_training)
    return digest, recorded(meta)


def _init_path(cfg: TrainConfig) -> Path:
    """The checkpoint ``run.init`` names (``default``: the installed default weights)."""
    from iste.default_model import default_weights_path

    path = default_weights_path() if cfg.run.init == "default" else Path(cfg.run.init)
    if path is None:
        raise CheckpointError("run.init is 'default' but no default weights are installed")
    return path


def _init_fits(config, cfg: TrainConfig, path: Path) -> bool:
    """Whether the model config ``config`` of the checkpoint ``path`` is an earlier stage of
    ``cfg.model`` (True) or the same (False); CheckpointError for any other architecture."""
    earlier = config != cfg.model and is_earlier_stage(config, cfg.model)
    if config != cfg.model and not earlier:
        raise CheckpointError(f"run.init {path}: its architecture differs from the config's "
                              f"model ({_init_differs(config, cfg.model)})")
    return earlier


def check_before_work(cfg: TrainConfig, run_dir: Path, *, resume: bool = False,
                      where: str | None = None, config_dir: Path | None = None) -> None:
    """What a run needs from the file system, checked before the model is built or any data
    indexed (minutes for large folders): every data.train and data.val source exists, and the
    checkpoint of run.init (unless a resume takes its weights from the run) is one of this
    model's architecture (its header alone is read). where: the config's file, to begin
    each error with (``iste train`` checks with it before :func:`train` checks again);
    config_dir: its folder, where a missing relative source may be found
    (:func:`~iste.train.sources.check_sources_exist`)."""
    from iste.models.checkpoint import read_metadata

    try:
        check_sources_exist(cfg.data.train, cfg.data.val, config_dir=config_dir)
        if cfg.run.init is not None and not (resume and (run_dir / STATE_FILE).exists()):
            path = _init_path(cfg)
            try:
                config = read_metadata(path)[0]
            except CheckpointError as err:  # "checkpoint not found: x" named no key
                raise CheckpointError(f"run.init: {err}") from None
            _init_fits(config, cfg, path)
    except ValueError as err:
        if where is None:
            raise
        raise ValueError(f"{where}: {err}") from None  # the command's one line, exit 2


def _init_differs(init, model) -> str:
    """How the model config ``init`` differs from ``model``, in words: "a LIIF + edsr-baseline,
    the config's ISTE + edsr-baseline", or the keys that differ where both are one method."""
    from iste.models.registry import model_label

    ours, theirs = model_label(init), model_label(model)
    if ours != theirs:
        return f"a {ours}, the config's {theirs}"
    keys = _differences(init.to_dict(), model.to_dict())
    return f"both {ours}; {', '.join(keys)} {'differs' if len(keys) == 1 else 'differ'}"


class TrainingDiverged(ValueError):
    """The loss or the weights became NaN or Inf (a learning rate too high for the model)."""


class StepBatches(Sampler[list[int]]):
    """Batches of global sample indices for steps [start, steps): this rank's slice of each
    step's global batch, so every sample is drawn exactly once across ranks and resumes."""

    def __init__(self, start: int, steps: int, batch: int, rank: int, world: int):
        self.start, self.steps, self.batch, self.rank, self.world = start, steps, batch, rank, world

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __iter__(self):
        gb = self.batch * self.world
        for t in range(self.start, self.steps):
            first = t * gb + self.rank * self.batch
            yield list(range(first, first + self.batch))


class MetricsLog:
    """metrics.jsonl (always) and TensorBoard (when installed), written by rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:
                pass

    def keep_until(self, step: int, *, validated: bool = True) -> None:
        """Drop records after ``step`` (a resumed run redoes them; a fresh run keeps none),
        and ``step``'s validation unless ``validated`` (a stop cut it short, and the resumed
        run does it first: one written by a resume killed before its next checkpoint).

        A torn last line (a kill in the middle of a write) is dropped with a warning; a
        damaged line before it is an error naming the file and the line.
        """
        if not self.enabled or not self.path.exists():
            return
        lines = self.path.read_text(errors="replace").splitlines()
        kept = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                record_step = int(record["step"])
            except (ValueError, TypeError, KeyError):
                if n == len(lines):
                    warnings.warn(f"{self.path}: dropped a torn last line (an interrupted "
                                  "write); the training state is intact", stacklevel=2)
                    continue
                raise CheckpointError(f"{self.path}:{n}: not a metrics record; fix or remove "
                                      "the line (or the file) to resume") from None
            if record_step < step or record_step == step and (validated
                                                              or not is_validation(record)):
                kept.append(line)
        write_bytes_atomic(self.path, "".join(ln + "\n" for ln in kept).encode())

    def write(self, step: int, **values) -> None:
        if not self.enabled:
            return
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
        except OSError as exc:  # a full disk, said with the file (a torn line: resume drops it)
            tail = "; rerun with --resume (from the last checkpoint) once it can be written"
            what = f"cannot write {self.path}"
            raise (refusal(exc, what, tail) or folder_removed(exc, self.path, what)
                   or exc) from None
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)


RUN_LENGTH_KEYS = ("steps", "epochs", "checkpoint_every", "val_every", "log_every", "workers")


def _without_run_length(config: dict) -> dict:
    """The parts of a config a resumed run must share with the saved one."""
    run = {k: v for k, v in config["run"].items() if k not in RUN_LENGTH_KEYS}
    return {**config, "run": run}


_SECTIONS = {"data": DataConfig, "optim": OptimConfig, "run": RunConfig, "loss": LossConfig}


def _with_new_defaults(saved: dict) -> dict:
    """A saved config with the data/optim/run keys added since it was written filled in with
    their defaults (a new key's default keeps the behaviour from before it existed)."""
    defaults = {k: to_plain(like()) for k, like in _SECTIONS.items()}
    return {**saved, **{k: {**v, **saved.get(k, {})} for k, v in defaults.items()}}


def _check_known_keys(state: dict, run_dir: Path) -> None:
    """CheckpointError when the saved config has keys this version does not know: a run
    written by a newer iste, whose meaning this one cannot follow."""
    config = state["config"]
    unknown = sorted(set(config) - {"model", *_SECTIONS})
    unknown += [f"{section}.{key}" for section, like in _SECTIONS.items()
                for key in sorted(set(config.get(section) or {}) - set(to_plain(like())))]
    if unknown:
        by = state.get("written_by", {}).get("iste", "another version")
        raise CheckpointError(f"{run_dir / STATE_FILE} was written by iste {by}: its config "
                              f"has keys this iste does not know ({', '.join(unknown[:4])}); "
                              "resume it with that version")


def _spelled_as_saved(current: dict, saved: dict, state: dict) -> dict:
    """``current`` with each data.train and data.val entry written as the saved config's
    where both name the same place (``hr``, ``./hr``, its absolute path, a link to it): a
    resumed run is compared on what its data is, not on its spelling. The saved places are
    the state's ``data_places``, one per entry; a state from before them has its
    ``train_sources`` (data.train's places first) and ``val_sources``."""
    meta = state.get("meta", {})
    kept = state.get("data_places")
    kept = kept if isinstance(kept, dict) else {}
    data = dict(current["data"])
    for key, fallback in (("train", "train_sources"), ("val", "val_sources")):
        before, now = saved.get("data", {}).get(key), data.get(key)
        # one place per entry: train_sources as saved, not the sample sets recorded() reads
        # from the config of a state without them (which would stand at other entries)
        where = recorded(kept, key) or (recorded(meta, fallback) if fallback in meta else [])
        if not (isinstance(before, list) and isinstance(now, list)) or len(before) != len(now):
            continue
        data[key] = [b if n != b and i < len(where) and place(n) == where[i] else n
                     for i, (b, n) in enumerate(zip(before, now))]
    return {**current, "data": data}


def _differences(saved: dict, current: dict, where: str = "") -> list[str]:
    """The dotted keys whose values differ between two configs (nested dicts)."""
    out = []
    for key in sorted(saved.keys() | current.keys()):
        a, b = saved.get(key), current.get(key)
        name = f"{where}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, name + ".")
        elif a != b:
            out.append(name)
    return out


def _at(config: dict, key: str):
    """The value at dotted ``key`` of a nested config (None where a level lacks it)."""
    value = config
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def loader_batches(loader: DataLoader):
    """The loader's batches; an error in a loader worker process (which torch re-raises with
    the worker's whole traceback as its message) is raised again with its own message."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except Exception as err:
            text = str(err)
            if "in DataLoader worker process" not in text:
                raise
            last = text.strip().splitlines()[-1]  # "module.ErrorType: its message"
            message = last.split(": ", 1)[1] if ": " in last else last
            try:
                again = type(err)(message)
            except TypeError:  # an error type that takes other arguments
                again = ValueError(message)
            raise again from None
        yield batch


def next_batch(batches, info):
    """The next step's batch from ``batches`` (None after the last), and the signal that stops
    the run before it (0: none), agreed by every rank: a rank whose batch would be trained
    while another rank stops waited for its gradients forever. Every rank must call it once
    per step. A batch lost to the stop (a loader worker the signal ended) is the stop too.
    Read by this loop and the downstream trainer's (:func:`iste.downstream.trainer.fit`)."""
    try:
        batch = next(batches, None)
    except Exception:
        if stopping.requested() is None:
            raise
        batch = None
    return batch, dist_util.largest(info, stopping.requested() or 0)


def leave_stops_to_the_run(worker: int) -> None:
    """In each data loader worker process: Ctrl-C, SIGTERM and SIGHUP ignored. A scheduler or
    a terminal signals every process of the job: a worker the signal ended took the run's
    next batch with it, or torch raised its death as an error in the middle of a step. The
    run stops itself between steps (:func:`iste.stopping.at_boundaries`) and ends its workers;
    a worker whose run is gone ends itself (torch's workers watch their parent). The
    downstream trainer's workers too."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def _query_loss(net, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """L1 on sampled queries in the normalised range (every arbitrary-scale head); fixed-scale
    networks take their loss from :class:`~iste.train.objectives.FixedObjective`."""
    pred = net(normalize(batch["lr"]), batch["coord"], batch["cell"])
    return F.l1_loss(pred.float(), normalize(batch["gt"]))


def _rank_draws(info, device: torch.device) -> contextlib.AbstractContextManager:
    """Under torchrun: the random draws of this step's forward (SwinIR's stochastic depth)
    from a generator of this rank's own, seeded from torch's global generator. Every rank
    draws all the ranks' seeds, so their global generators stay equal (the checkpoint keeps
    rank 0's for all) and each takes its own: seeded alike, every rank drew the same masks
    for its own samples (rank 1's first sample dropped what rank 0's first did). Nothing
    without torchrun (:mod:`iste.train.parts` draws a generator per part the same way)."""
    if not info.enabled:
        return contextlib.nullcontext()
    return drawing_from(seeded_generators(info.world, device)[info.rank])


def train(cfg: TrainConfig, run_dir: Path, *, resume: bool = False,
          device: torch.device | None = None, stop_after: int | None = None,
          progress: bool = True) -> dict:
    """Train (or resume) into ``run_dir``; returns the last logged values, with ``step`` (the
    last step run) and ``steps`` (the run's total), and ``stopped``: the signal (SIGTERM,
    SIGINT, SIGHUP) that stopped the run at ``step``, saved there, where the caller's signal
    handler notes signals in :mod:`iste.stopping` (``iste train``'s does).

    stop_after: stop after this many steps of *this invocation* (to split a run; the schedule
    still follows the config's length, :func:`~iste.train.schedule.resolve_schedule`).

    Besides the last state (``train_state.pt``, ``model.safetensors``), the weights with the
    best mean validation PSNR so far are kept in ``best.safetensors`` (as the published
    trainer keeps ``epoch-best.pth``).
    """
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"--stop-after must be >= 1 (steps of this invocation), got {stop_after}")
    check_before_work(cfg, run_dir, resume=resume)
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg.model)  # before anything is written: a bad model fails here
    with dist_util.process_group(device) as (info, device):
        data = _open_data(cfg, info)  # so are bad images: no run folder is made for them
        # the other ranks wait here for rank 0's validation tiles (data.val indexed and read,
        # minutes for a large folder), not in their first collective under torch's timeout
        dist_util.barrier(info)
        try:  # the lock makes the folder, and removes it again if the run fails having
            # written nothing there (a run.init that cannot be loaded left only .lock)
            with _run_lock(run_dir, info.is_main):
                return _train(cfg, run_dir, model, data, info, device, resume=resume,
                              stop_after=stop_after, progress=progress)
        finally:
            close_sources(data.dataset.sources)


@dataclass(frozen=True)
class _RunData:
    """What a run reads from its data, before anything is written: the training images
    (their count: None for slides; ``files``: their :func:`~iste.train.sources.files_digest`),
    the step plan, the crops and the validation tiles."""

    images: int | None
    plan: Schedule
    dataset: CropDataset
    val_tiles: list
    files: dict[str, str]


def _open_data(cfg: TrainConfig, info) -> _RunData:
    sources = [open_source(s, downsample=d) for s in cfg.data.train for d in cfg.data.downsamples]
    counts = [s.images for s in sources]
    images = None if None in counts else sum(counts)
    plan = resolve_schedule(cfg, images, world=info.world)
    total = plan.steps * cfg.run.batch_size * info.world
    dataset = CropDataset(sources, cfg.data, seed=cfg.run.seed, length=total,
                          whole_hr=isinstance(cfg.model, FixedConfig))
    val_tiles = []  # read now: a bad validation image stops the run before anything is written
    if info.is_main and cfg.data.val:
        _warn_shared_sources(cfg.data.train, cfg.data.val)
        val_sources = [open_source(s, role="validation") for s in cfg.data.val]
        try:
            val_tiles = validation_tiles(val_sources, size=cfg.data.val_tile,
                                         count=cfg.data.val_tiles,
                                         min_tissue=cfg.data.min_tissue)
        finally:
            close_sources(val_sources)
    return _RunData(images, plan, dataset, val_tiles, files_digest(sources))


def _warn_shared_sources(train: list[str], val: list[str]) -> None:
    """Warn when a validation source is, holds or lies in a training source (the same slide,
    a folder and an image in it): its scores, and the best checkpoint picked by them, would
    be on training data."""
    for v in val:
        for t in train:
            how = shared(place(v), place(t))
            if how is not None:
                warnings.warn(f"data.val {v} {how} data.train {t}: validation scores, and the "
                              "best checkpoint they pick, are on training data", stacklevel=2)


def _changed_files(saved, now: dict[str, str]) -> str | None:
    """How the training files differ from the saved run's (``saved``: its
    :func:`~iste.train.sources.files_digest`; None in a state from before it, not compared):
    "files" (other names or sizes), "times" (other modification times alone) or None. A
    resumed run with images edited or replaced in place, their count the same, trained on
    other data unsaid."""
    if not isinstance(saved, dict) or saved == now:
        return None
    return "files" if saved.get("names_sizes") != now["names_sizes"] else "times"


def _resumed_sources(state: dict, sources: list[str], *, said: bool,
                     files: str | None = None) -> list[str]:
    """The places a resumed run has trained on: the saved run's ``train_sources`` and
    ``sources`` (data.train resolved now), which differ when the run is resumed from another
    folder (data.train as written is relative to it) or its data moved; both kept, since the
    weights learnt from both. Said (when ``said``) in one warning with ``files``
    (:func:`_changed_files`): data copied elsewhere without its times was two warnings of one
    event. A state from before train_sources was recorded has ``sources`` alone. ValueError
    for a train_sources that is not a list of places (a damaged state)."""
    saved = state.get("meta", {}).get("train_sources", sources)
    if not (isinstance(saved, list) and all(isinstance(s, str) for s in saved)):
        raise ValueError(f"train_sources {saved!r} is not a list of places")
    new = [s for s in sources if s not in saved]
    if said and new:
        holds = {None: "", "times": ", with the saved run's file names and sizes (copied "
                 "without their modification times: cp -p and rsync -a keep them)",
                 "files": ", with files of other names or sizes than the saved run's, as many"}
        warnings.warn(f"data.train now lies at {', '.join(new)}, the saved run's at "
                      f"{', '.join(saved)} (resumed from another folder, or the data moved)"
                      f"{holds[files]}: the rest of the run trains on the new data; both are "
                      "recorded as its training data", stacklevel=3)
    elif said and files is not None:
        how = ("files of other names or sizes than the saved run's, as many (images edited, "
               "replaced or renamed)" if files == "files" else
               "the saved run's file names and sizes with other modification times (images "
               "edited in place, or the data copied without its times: cp -p and rsync -a "
               "keep them)")
        warnings.warn(f"data.train holds {how}: the rest of the run trains on the data as it "
                      "is now, and the run records it", stacklevel=3)
    return list(dict.fromkeys([*saved, *sources]))


def _run_lock(run_dir: Path, held: bool):
    """An exclusive lock on ``run_dir`` while one run trains into it; ``held``: taken by the
    process that writes (rank 0 under DDP)."""
    return folder_lock(run_dir, f"another process is training into {run_dir}; wait for it "
                                "or choose another run directory",
                       held=held, error=CheckpointError, what="run folder")


def _train(cfg: TrainConfig, run_dir: Path, model, data: _RunData, info, device, *,
           resume: bool, stop_after: int | None, progress: bool) -> dict:
    if info.is_main:
        clean_leftovers(run_dir)
    images, plan, dataset, val_tiles = data.images, data.plan, data.dataset, data.val_tiles
    fixed = isinstance(cfg.model, FixedConfig)
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                           weight_decay=cfg.optim.weight_decay)
    sched = make_scheduler(opt, cfg, plan)
    objective = (FixedObjective(cfg, model, device=device, total_steps=plan.steps,
                                distributed=info.enabled, rank=info.rank) if fixed else None)
    start, best, pending = 0, None, False
    sources = [place(s) for s in cfg.data.train]  # where data.train lies, resolved now
    restart = resume and not (run_dir / STATE_FILE).exists()
    if restart:
        if info.is_main:  # every rank finds the same: one warning, not one per rank
            warnings.warn(f"nothing to resume in {run_dir}: no {STATE_FILE} (the run stopped "
                          "before its first checkpoint was complete); starting from step 0",
                          stacklevel=2)
        resume = False
    if resume:
        state = load_state(run_dir)
        try:  # the state's values as iste wrote them: anything else is a damaged file
            _check_known_keys(state, run_dir)
            saved = _with_new_defaults(state["config"])
            current = _spelled_as_saved(cfg.to_dict(), saved, state)
            saved, current = _without_run_length(saved), _without_run_length(current)
            differ = _differences(saved, current)
            if differ:
                more = f"; and {len(differ) - 4} more" if len(differ) > 4 else ""
                told = "; ".join(f"{key}: {excerpt(_at(saved, key), 40)} saved, "
                                 f"{excerpt(_at(current, key), 40)} now" for key in differ[:4])
                raise CheckpointError(f"{run_dir}: the saved run used a different config "
                                      f"({told}{more}); resume with "
                                      "the same config (only run.steps and the logging/"
                                      "checkpoint intervals may change) or start a new run")
            check_progress(state)
            check_world(state, info.world, run_dir)
            start, best = state["step"], state.get("best")
            pending = state.get(PENDING) is not None  # its validation cut short by a stop
            saved_images = state.get("meta", {}).get("train_images")
            changed = None not in (saved_images, images) and saved_images != images
            if start > plan.steps:  # an epoch run's steps follow its images (--steps refused)
                why = (f"of {cfg.run.epochs} epochs over {images} images"
                       + (f" (the saved run had {saved_images})" if changed else "")
                       if cfg.run.epochs is not None else "asked for")
                more = ("raise run.epochs (in a copy of the config)" if cfg.run.epochs
                        is not None else "give more steps (--steps)")
                raise CheckpointError(f"{run_dir}: the run is at step {start}, past the "
                                      f"{plan.steps} steps {why}; {more} to extend it")
            if changed and info.is_main:  # the same on every rank: said once
                warnings.warn(f"the training folders now hold {images} images, the saved run "
                              f"had {saved_images}: the rest of the run samples the new set "
                              f"({plan.steps} steps in all)", stacklevel=2)
            files = None if changed else _changed_files(
                state.get("meta", {}).get("train_files"), data.files)
            sources = _resumed_sources(state, sources, said=info.is_main, files=files)
            load_weights(model, state["model"], source=str(run_dir / STATE_FILE))
            fresh_groups = [{k: v for k, v in g.items() if k != "params"}
                            for g in opt.param_groups]
            fresh_sched = sched.state_dict()
            opt.load_state_dict(state["optimizer"])
            check_optimizer(opt, fresh_groups)
            sched.load_state_dict(state["scheduler"])
            check_scheduler(sched, fresh_sched, start)
            follow_plan(sched, plan)  # a run extended (--steps) or re-planned: its new length
            if objective is not None:
                objective.load_state_dict(state.get("objective", {}), step=start)
            restore_rng(state)
        except CheckpointError:
            raise
        except (TypeError, KeyError, AttributeError, IndexError, RuntimeError,
                ValueError) as err:
            raise CheckpointError(f"{run_dir / STATE_FILE} is damaged ({error_line(err, 200)}):"
                                  " remove it and rerun with --resume to start over from "
                                  "step 0, or choose another run folder") from None
        if info.is_main:  # its best record was scored on the tiles it validated on
            best = best_for_tiles(run_dir, best, state.get(VAL_TILES), val_tiles,
                                  lambda m: mean_psnr(validate(m, val_tiles, cfg.data.val_scales,
                                                               cfg.data.val_degradations)),
                                  device)
    elif not restart and any((run_dir / name).exists() for name in RUN_FILES):
        held = ", ".join(n for n in RUN_FILES if (run_dir / n).exists())
        raise CheckpointError(f"{run_dir} already holds a run ({held}): pass --resume to "
                              "continue it, or choose another run directory")
    init_sha = None
    if not resume and cfg.run.init is not None:
        init_sha, inherited = _load_init(model, cfg)
        sources = list(dict.fromkeys([*sources, *inherited]))
    if info.is_main:
        write_bytes_atomic(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2).encode())

    end = plan.steps if stop_after is None else min(plan.steps, start + stop_after)
    loader = DataLoader(dataset, batch_sampler=StepBatches(start, end, cfg.run.batch_size,
                                                           info.rank, info.world),
                        num_workers=cfg.run.workers, worker_init_fn=leave_stops_to_the_run,
                        # its own generator: the loader must not draw from the global RNG, whose
                        # state the checkpoint restores (samples are seeded by index anyway)
                        generator=torch.Generator().manual_seed(cfg.run.seed))
    # as after _open_data: for rank 0's work since (a resumed best record scored again)
    dist_util.barrier(info)
    if fixed:
        net = objective.net
    else:
        net = DistributedDataParallel(model) if info.enabled else model
    log = MetricsLog(run_dir, info.is_main)
    log.keep_until(start, validated=not pending)
    meta = {"train_config": cfg.to_dict(), "parameters": count_parameters(model),
            "steps_total": plan.steps, "steps_per_epoch": plan.steps_per_epoch,
            "train_images": images, "train_files": data.files,
            # where data.train and data.val (which picks best.safetensors) lie, resolved: what
            # iste eval compares its test data with
            "train_sources": sources, "val_sources": [place(s) for s in cfg.data.val]}
    # the places of data.train and data.val, one per entry: what a resume compares its own
    # data with (:func:`_spelled_as_saved`)
    data_places = {"train": [place(s) for s in cfg.data.train], "val": meta["val_sources"]}
    if resume:
        init_sha = state.get("meta", {}).get("init_sha256")
    if init_sha is not None:
        meta["init_sha256"] = init_sha

    saved = [start if resume else None]  # the step of the last checkpoint in run_dir
    # the first step whose loss was not finite (0: none yet), kept on the device: read where
    # the loop waits for the device anyway (logging, validation, checkpoints)
    nonfinite = torch.zeros((), dtype=torch.long, device=device)

    never = torch.iinfo(torch.long).max

    def stop_if_diverged(step):
        """TrainingDiverged when a loss so far (on any rank) or a weight now is NaN or Inf:
        nothing of a diverged run is saved (a checkpoint, the release or the best weights).
        Every rank calls it at the same steps, and all stop together: under DDP a loss can be
        NaN on one rank alone (its gradients finite), which the others did not see."""
        finite = torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()
        seen = dist_util.all_min(info, torch.stack([  # the first NaN step of any rank
            torch.where(nonfinite == 0, never, nonfinite), finite.long()]))
        first = 0 if int(seen[0]) == never else int(seen[0])
        if not first and bool(seen[1]):
            return
        what = (f"the loss was NaN or Inf at step {first}" if first else
                f"the weights hold NaN or Inf after step {step}")
        kept = ("nothing was saved" if saved[0] is None else
                f"{run_dir} keeps the checkpoint of step {saved[0]}")
        raise TrainingDiverged(f"training diverged: {what}; {kept}. Lower optim.lr (or set "
                               "optim.clip_grad_norm) and start a new run")

    def checkpoint(step):
        stop_if_diverged(step)
        if info.is_main:
            save_state(run_dir, model=model, optimizer=opt, scheduler=sched, step=step,
                       config=cfg.to_dict(), meta=meta, best=best, world=info.world,
                       pending=pending,
                       extra={"data_places": data_places, VAL_TILES: tiles_digest(val_tiles),
                              **({"objective": objective.state_dict()} if fixed else {})})
        saved[0] = step
        dist_util.barrier(info)

    bar = Progress(plan.steps, initial=start, unit="step", desc="train",
                   show=None if progress else False, enabled=info.is_main)
    last: dict = {}

    def validation(step) -> int:
        """Rank 0 validates the weights of ``step``: logs the values and keeps the best
        weights. A stop ends it at the next tile, nothing of it kept: a scheduler's grace
        period after SIGTERM (often 30 s) is for the step's save, and a large data.val took
        it all. Returns that stop's signal on every rank (0: the validation is done); the
        other ranks wait here for rank 0, as long as it takes (in the next gradient sync
        torch's timeout ended them)."""
        nonlocal best
        cut = 0
        if info.is_main and val_tiles:
            values = validate(model, val_tiles, cfg.data.val_scales,
                              cfg.data.val_degradations, stop=stopping.requested)
            if values is None:
                cut = stopping.requested() or 0
            else:
                log.write(step, **values)
                last.update(values)
                best = keep_best(run_dir, model, values, step, best, meta=meta)
                bar.write(f"step {step}: "
                          + ", ".join(f"{k} {v:.2f}" for k, v in values.items()))
        return dist_util.largest(info, cut)

    step, t0, seen = start, time.perf_counter(), 0
    trained = [p for p in model.parameters() if p.requires_grad]
    # each batch in slices side by side on CPU threads (iste.train.parts); not under DDP,
    # whose gradient reduction runs inside backward(), nor for the fixed-scale objectives
    workers = 1 if fixed or info.enabled else chunk_workers(device)
    model.train()
    batches, stopped = loader_batches(loader), 0
    with stopping.at_boundaries():  # a signal stops the run between steps, saved (below)
        if pending:  # the saved step's validation, first, as the uninterrupted run did
            stopped = validation(start)
            pending = bool(stopped)
            if not pending:  # its best record saved: the validation is not done again
                checkpoint(start)
        while not pending:
            batch, stopped = next_batch(batches, info)
            if stopped or batch is None:
                break
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            opt.zero_grad(set_to_none=True)
            slices = batch_parts(batch["lr"].shape[0], workers)
            parts = {}
            if slices:
                loss = backward_in_parts(
                    lambda part: _query_loss(net, part), batch, trained, slices,
                    lambda: autocast_for(device, cfg.run.precision, cache=False))
            else:
                with autocast_for(device, cfg.run.precision), _rank_draws(info, device):
                    if fixed:
                        loss, parts = objective.loss(batch, step)
                    else:
                        loss = _query_loss(net, batch)
                loss.backward()
            nonfinite = torch.where((nonfinite == 0) & ~torch.isfinite(loss.detach()),
                                    step + 1, nonfinite)
            if cfg.optim.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad_norm)
            opt.step()
            sched.step()
            if fixed:
                parts.update(objective.after_step())
            step += 1
            seen += batch["lr"].shape[0] * info.world
            bar.update(1)
            if step % cfg.run.log_every == 0 or step == end:
                stop_if_diverged(step)  # on every rank: the weights are the same on all
                rate = seen / (time.perf_counter() - t0)
                # the step's whole batch: rank 0 logged its own part's loss alone
                logged = {"loss": loss.detach(), **parts}
                last = {**dist_util.mean_over_ranks(info, logged, device),
                        "lr": sched.get_last_lr()[0], "samples_per_s": rate}
                bar.set_postfix_str(f"loss={last['loss']:.4f}, sps={rate:.1f}")
                log.write(step, **last)
            validating = cfg.data.val and (step % cfg.run.val_every == 0 or step == plan.steps)
            if validating:
                stop_if_diverged(step)  # on every rank, as each check
                stopped = validation(step)
                if stopped:  # saved at once, its validation pending (below)
                    pending = True
                    break
            # after this step's validation, so that the state carries its best record (a run
            # resumed from here must not take worse weights for the best)
            if step % cfg.run.checkpoint_every == 0 and step != end:
                checkpoint(step)
        bar.close()
        if saved[0] != step:  # a stop right after a checkpoint has nothing more to save
            checkpoint(step)
    # after the last step the signal came too late to stop anything, unless it cut the
    # step's validation short
    stopped = 0 if step == end and not pending else stopped
    return {"step": step, "steps": plan.steps, **last,
            **({"stopped": stopped} if stopped else {})}
