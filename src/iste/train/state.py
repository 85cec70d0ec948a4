"""Resumable training state: one atomically written file per checkpoint.

``train_state.pt`` holds everything a resumed run needs — model and optimiser state dicts,
scheduler state, the torch RNG state, the step, the config and the best validation so far —
saved with ``torch.save`` and
read back with ``torch.load(weights_only=True)`` (no arbitrary unpickling). Data sampling
needs no saved state: sample i is a pure function of (seed, i). ``model.safetensors`` beside
it is the same weights in our release format, for ``iste upscale --model``.
``best.safetensors`` holds the weights of the best validation (mean PSNR over the validation
scales), with that step and PSNR in its metadata. A run stopped in the middle of a validation
saves its step at once, the validation pending (``val_pending``): the resumed run does it
first, as the uninterrupted run did before going on.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from iste.temps import remove_stale_temps
from iste.models.checkpoint import (MODEL_FILE, STATE_FILE, CheckpointError, load_model,
                                    load_torch_file, read_metadata, save_model,
                                    write_torch_state)
from iste.provenance import written_by

STATE_FORMAT = 2
"""The newest layout of the state :func:`save_state` writes (its ``format``; a state without
one, written before it was recorded, is format 1). Raise it when the layout changes: an older
iste then refuses the state instead of misreading it. Format 2 adds ``val_pending``, the step
whose validation a stop cut short: an iste of format 1 would resume without it (its metrics
and best weights not those of the uninterrupted run), so a state with one is format 2 and any
other still format 1, which every iste resumes alike (a later layout raises both)."""
SCORE_PREFIX = "psnr_x"
"""The prefix of a validation's keys that hold the model's PSNR, one a scale and degradation
(:func:`iste.train.validate.validate` writes them; :func:`mean_psnr` scores them)."""
PENDING = "val_pending"
"""The state's entry: the step whose validation a stop cut short (None: none pending)."""
BEST_FILE = "best.safetensors"
_STATE_KEYS = ("step", "config", "model", "optimizer", "scheduler", "torch_rng")
RUN_FILES = (STATE_FILE, MODEL_FILE, BEST_FILE, "metrics.jsonl")
"""What a run leaves in its folder; a new run refuses a folder that holds any of them."""
RUN_WRITES = (*RUN_FILES, "config.json", "tb", ".lock")
"""Every name a run writes directly in its folder: its files, TensorBoard's folder ``tb``
and the folder's lock (besides temporaries, whose names begin with a dot)."""


def run_writes(name: str) -> bool:
    """Whether a run may write ``name`` directly in its folder (:data:`RUN_WRITES`, or a
    temporary: a dot first)."""
    return name in RUN_WRITES or name.startswith(".")


def save_state(run_dir: Path, *, model, optimizer, scheduler, step: int,
               config: dict, meta: dict, best: dict | None = None, world: int = 1,
               pending: bool = False, extra: dict | None = None) -> None:
    """Write the resumable state, then the release weights (both atomic). ``best``: the
    record of :func:`keep_best`, carried across resumes; ``world``: the processes training
    (:func:`check_world`); ``pending``: the validation of ``step`` is still to be done
    (:data:`PENDING`); ``extra``: more entries of the state (a training objective's own
    state: Li et al.'s critic)."""
    state = {
        "format": STATE_FORMAT if pending else 1,  # 1: read alike by every iste (STATE_FORMAT)
        "step": step,
        **({PENDING: step} if pending else {}),
        "world": world,
        "best": best,
        "config": config,
        "meta": meta,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "written_by": written_by(),  # the iste and torch versions (read back as plain strings)
        **(extra or {}),
    }
    write_torch_state(run_dir / STATE_FILE, state)
    save_model(model, run_dir / MODEL_FILE, meta={**meta, "step": step})


def clean_leftovers(run_dir: Path) -> None:
    """Remove the temporary files of a checkpoint write that was killed (run by the one
    process that writes checkpoints, before it writes any)."""
    for name in (*RUN_FILES, "config.json"):
        remove_stale_temps(run_dir / name, locked=True)


def mean_psnr(values: dict[str, float]) -> float:
    """The score that picks ``best.safetensors``: the mean of a validation's ``psnr_x*``."""
    scores = [v for k, v in values.items() if k.startswith(SCORE_PREFIX)]
    return float(sum(scores) / len(scores))


def is_validation(record: dict) -> bool:
    """Whether a record of metrics.jsonl holds a validation's values (its ``psnr_x*``)."""
    return any(key.startswith(SCORE_PREFIX) for key in record)


def keep_best(run_dir: Path, model, values: dict[str, float], step: int, best: dict | None,
              *, meta: dict) -> dict:
    """Save ``best.safetensors`` when the mean of the ``psnr_x*`` validation values beats
    ``best`` (``{"step", "psnr"}`` or None); returns the best record after this validation."""
    score = mean_psnr(values)
    if best is not None and score <= best["psnr"]:
        return best
    record = {"step": step, "psnr": float(score)}
    save_model(model, run_dir / BEST_FILE,
               meta={**meta, "step": step, "val_mean_psnr": float(score)})
    return record


VAL_TILES = "val_tiles"
"""The state's entry holding :func:`tiles_digest` of the validation tiles its best record
was scored on."""


def tiles_digest(tiles: Sequence[np.ndarray]) -> str | None:
    """sha256 of the validation tiles (each (H, W, 3) uint8: shapes and bytes, in order), or
    None without any: what a best record's PSNR was measured on."""
    if not tiles:
        return None
    h = hashlib.sha256()
    for tile in tiles:
        h.update(repr(tile.shape).encode())
        h.update(np.ascontiguousarray(tile).tobytes())
    return h.hexdigest()


def best_for_tiles(run_dir: Path, best: dict | None, saved: str | None,
                   tiles: Sequence[np.ndarray], score: Callable[[torch.nn.Module], float],
                   device) -> dict | None:
    """A resumed run's best record, true of ``best.safetensors`` and comparable with this
    run's validations: ``best`` as saved where the file is the record's step and the state's
    validation tiles (``saved``, their :func:`tiles_digest`; None in a state from before it)
    are this run's ``tiles``; else the file scored again on them (``score``: the model's
    :func:`mean_psnr`), with a warning; None (the next validation writes one) where it does
    not load. The validation images changed on disk, the record's PSNR was measured on other
    tiles; the file removed or replaced, the record named weights no longer there: either way
    the resumed run compared its scores with a record of nothing it held."""
    now = tiles_digest(tiles)
    if best is None or now is None:
        return best
    found = _best_step(run_dir / BEST_FILE)
    if found == best["step"] and saved in (None, now):
        return best
    why = (f"the validation tiles differ from those the saved run scored (data.val's images "
           f"changed): {BEST_FILE} of step {best['step']} ({best['psnr']:.2f} dB on them)"
           if found == best["step"] else
           f"{BEST_FILE} is not the best weights the saved run recorded (step {best['step']}, "
           f"{best['psnr']:.2f} dB): " + ("it is missing or unreadable" if found is None
                                          else f"it holds step {found}'s"))
    try:
        rescored = score(load_model(run_dir / BEST_FILE, device=device))
    except (CheckpointError, OSError) as err:
        warnings.warn(f"{why}; it cannot be scored ({err}): the next validation writes it",
                      stacklevel=3)
        return None
    warnings.warn(f"{why}; it scores {rescored:.2f} dB on this run's validation tiles, and "
                  "later validations are compared with that", stacklevel=3)
    return {"step": best["step"] if found is None else found, "psnr": rescored}


def _best_step(path: Path) -> int | None:
    """The step ``best.safetensors`` records (:func:`keep_best`), or None where it has none or
    does not read."""
    try:
        step = read_metadata(path)[1].get("step")
    except (CheckpointError, OSError):
        return None
    try:
        return int(step)
    except (TypeError, ValueError):
        return None


def load_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: {path} does not exist")
    return read_state(path, _STATE_KEYS, writer="iste train", newest=STATE_FORMAT,
                      advice="remove it or choose another run folder")


def read_state(path: Path, keys: Sequence[str], *, writer: str, newest: int,
               advice: str) -> dict[str, Any]:
    """The training state saved at ``path`` (``torch.load``, ``weights_only``), checked to be a
    dict of a ``format`` up to ``newest`` (the writer's latest; a state without one is format
    1) holding ``keys``; else a one-line :class:`CheckpointError` naming ``path``, the
    ``writer`` expected (e.g. "iste train") and ending in ``advice`` (what to remove); a
    newer format names both and the iste that wrote it."""
    try:
        state = load_torch_file(path)
    except Exception as err:  # a damaged file must not look resumable (torch's own message
        # is several lines of advice about weights_only: only its kind is worth a line here)
        raise CheckpointError(f"{path} is not a readable training state (damaged, or not "
                              f"written by {writer}: {type(err).__name__}); {advice}") from None
    version = state.get("format", 1) if isinstance(state, dict) else 1
    if type(version) is not int or version < 1:
        raise CheckpointError(f"{path} is not an iste training state (format {version!r}); "
                              f"{advice}")
    if version > newest:  # another layout: its keys cannot be read as this version's
        by = state.get("written_by")
        by = by.get("iste") if isinstance(by, dict) else None
        raise CheckpointError(f"{path} is a training state of format {version}, newer than "
                              f"format {newest} that this iste reads (written by "
                              f"{f'iste {by}' if by else 'a newer iste'}); resume it with "
                              "that version")
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not an iste training state (it lacks "
                              f"{', '.join(missing)}); {advice}")
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Torch's CPU generator and each visible GPU's, as saved. A run saved with more GPUs
    visible than now (torchrun on 8, resumed on 1) restores the GPUs it has."""
    torch.set_rng_state(state["torch_rng"])
    if torch.cuda.is_available() and state.get("cuda_rng"):
        for index, gpu_state in enumerate(state["cuda_rng"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(gpu_state, index)


def check_progress(state: dict[str, Any]) -> None:
    """ValueError unless the state's ``step`` is a count of steps, its ``best`` None or the
    record :func:`keep_best` writes (a step up to it, a PSNR: finite, or inf for validation
    tiles reproduced exactly, a white background tile) and its :data:`PENDING` None or its
    step (before the best record of that step's validation)."""
    step, best, pending = state["step"], state.get("best"), state.get(PENDING)
    if type(step) is not int or step < 0:
        raise ValueError(f"step {step!r} is not a count of steps")
    if best is not None and not (isinstance(best, dict) and type(best.get("step")) is int
                                 and 0 < best["step"] <= step
                                 and isinstance(best.get("psnr"), float)
                                 and -math.inf < best["psnr"] <= math.inf):
        raise ValueError(f"best {best!r} is not a validation record")
    if pending is not None and not (type(pending) is int and pending == step
                                    and (best is None or best["step"] < step)):
        raise ValueError(f"{PENDING} {pending!r} is not the state's step {step}")


def check_world(state: dict[str, Any], world: int, run_dir: Path) -> None:
    """CheckpointError unless a run resumes with the number of processes that trained it (the
    state's ``world``; one from before it was recorded is not checked): step t's samples are
    the (t x batch x world)th on (sample i a function of the seed and i), so another number
    drew samples again or skipped them, and changed the global batch (and the steps of an
    epoch). ValueError for a ``world`` that is not a number of processes (a damaged state)."""
    saved = state.get("world")
    if saved is None or saved == world:
        return
    if type(saved) is not int or saved < 1:
        raise ValueError(f"world {saved!r} is not a number of processes")
    how = ("without torchrun" if saved == 1 else
           f"with {saved} processes (torchrun --nproc_per_node {saved} on one machine)")
    raise CheckpointError(f"{run_dir} was trained by {saved} process(es), this run has "
                          f"{world}: resume it {how}; another number changes the batch and "
                          "the samples of each step")


def check_optimizer(optimizer: torch.optim.Optimizer, fresh: list[dict[str, Any]], *,
                    name: str = "optimizer") -> None:
    """After a saved state is loaded into ``optimizer``: ValueError unless each parameter
    group's settings have the kinds of ``fresh`` (the groups, less their params, of the
    optimiser as made) and each per-parameter tensor has its parameter's shape and finite
    values (a NaN moment would turn every weight it touches into NaN at the first step).
    name: the optimiser's, for the messages (e.g. "critic optimizer")."""
    if len(optimizer.param_groups) != len(fresh):
        raise ValueError(f"{name}: another number of parameter groups")
    for n, (group, like) in enumerate(zip(optimizer.param_groups, fresh)):
        _check_like({k: v for k, v in group.items() if k != "params"}, like,
                    f"{name} group {n}")
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if not isinstance(value, torch.Tensor):
                    raise ValueError(f"{name} state {key} is not a tensor")
                want = () if key == "step" else param.shape
                if value.shape != want:
                    raise ValueError(f"{name} state {key} of shape {tuple(value.shape)} "
                                     f"for a parameter of shape {tuple(param.shape)}")
                if value.is_floating_point() and not torch.isfinite(value).all():
                    raise ValueError(f"{name} state {key} holds NaN or Inf")


def check_scheduler(scheduler, fresh: dict[str, Any], step: int, *,
                    name: str = "scheduler") -> None:
    """After a saved state is loaded into ``scheduler``: ValueError unless its values have the
    kinds of ``fresh`` (the state of the scheduler as made) and it has been stepped once per
    optimisation step (``step`` times). name: the scheduler's, for the messages."""
    _check_like(scheduler.state_dict(), fresh, name)
    if scheduler.last_epoch != step:
        raise ValueError(f"{name} at step {scheduler.last_epoch!r}, the run at {step}")


def _check_like(value: Any, like: Any, where: str) -> None:
    """ValueError unless ``value`` is of the kind of ``like``: the same type (an int or a float
    for a number, which must be finite), and for a dict or a sequence the same kind of item
    under each key both have (keys one lacks are left to the version that wrote it)."""
    if isinstance(like, dict):
        if not isinstance(value, dict):
            raise ValueError(f"{where} is not a mapping")
        for key in like.keys() & value.keys():
            _check_like(value[key], like[key], f"{where}.{key}")
    elif isinstance(like, (list, tuple)):
        if not isinstance(value, (list, tuple)) or len(value) != len(like):
            raise ValueError(f"{where}: {value!r} is not a list of {len(like)}")
        for n, (v, w) in enumerate(zip(value, like)):
            _check_like(v, w, f"{where}[{n}]")
    elif isinstance(like, (int, float)) and not isinstance(like, bool):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise ValueError(f"{where}: {value!r} is not a finite number")
    elif like is not None and type(value) is not type(like):
        raise ValueError(f"{where}: {value!r} is not a {type(like).__name__}")
