"""Our checkpoint format: one safetensors file = weights + JSON config in its metadata.

Nothing is unpickled at load time. The metadata holds ``format`` (= "iste"), ``version``,
``config`` (a :class:`ModelConfig` or :class:`FixedConfig` as JSON), ``meta`` (free JSON:
training data, steps...) and ``written_by`` (JSON: the iste and torch versions that wrote the
file; loaded models carry it as ``model.checkpoint_written_by``, empty for files written before
it was recorded).
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from safetensors import safe_open

from iste.digest import sha256_file
from iste.files import write_bytes_atomic
from iste.paths import link_note
from iste.text import error_line
from iste.models.registry import AnyModelConfig, build_model, parse_model_config
from iste.typed import ConfigError

FORMAT_VERSION = "1"
UNTRAINED = "untrained"  # checkpoint_meta key: the weights are a random initialisation
MODEL_FILE = "model.safetensors"
STORED_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
"""The types a checkpoint's floating-point weights may be stored as: each is read as float32
without losing what the model needs. Another one (float8, an exponent-only scale type) holds
a few bits of each weight, and the model built from them would upscale wrongly without a
word: such weights are refused (:func:`load_state`), and never written (:func:`save_model`)."""
STATE_FILE = "train_state.pt"
"""A training run's weights and resumable state in its folder (:mod:`iste.train.state`), named
here, below the trainer, so that a checkpoint's errors can tell a run's files apart."""


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not match its declared architecture."""


def save_model(model: torch.nn.Module, path: str | os.PathLike, *,
               meta: dict[str, Any] | None = None, dtype: torch.dtype | None = None,
               replace: bool = True) -> Path:
    """Write ``model`` (built by :func:`build_model`) atomically to ``path``.

    dtype: store floating tensors in this dtype (e.g. float16 to halve the file), one of
    :data:`STORED_FLOATS`; loading always returns float32 weights. replace: False: a file
    another process put at ``path`` meanwhile is kept (FileExistsError).
    """
    if dtype is not None and dtype not in STORED_FLOATS:
        raise ValueError(f"weights are stored as {_names(STORED_FLOATS)}, not {dtype}")
    path = Path(path)
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    from iste.provenance import written_by

    metadata = {"format": "iste", "version": FORMAT_VERSION,
                "config": json.dumps(model.model_config.to_dict()),
                "meta": json.dumps(meta or {}), "written_by": json.dumps(written_by())}
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_safetensors(path, tensors, metadata, replace=replace)


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str], *, replace: bool = True) -> Path:
    """``tensors`` (contiguous, on the CPU) as a safetensors file at ``path``, atomically.
    Serialised in memory and written by :func:`iste.files.write_bytes_atomic` (``replace``
    as there): safetensors' own file writer reports a full disk as a SafetensorError (a
    traceback), not the OSError the file system's one-line refusals are made from."""
    return write_bytes_atomic(path, save(tensors, metadata=metadata), replace=replace)


def write_torch_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """``state`` (a training run's resumable state: tensors, numbers, strings) as a
    ``torch.save`` file at ``path``, atomically. Serialised in memory and written by
    :func:`iste.files.write_bytes_atomic`, as :func:`write_safetensors`: torch's own zip
    writer reports a full disk as a RuntimeError (``unexpected pos ...``, a traceback), not
    the OSError the file system's one-line refusals are made from."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return write_bytes_atomic(path, buffer.getbuffer())


def load_torch_file(source) -> Any:
    """What ``torch.save`` wrote to ``source`` (a path or an open file), read on the CPU with
    ``weights_only=True`` (tensors and plain containers; a pickle of code is refused unread,
    as ``pickle.UnpicklingError``). Torch's warnings while it reads (its guesses about a
    damaged or foreign file, such as "Detected pickle protocol 4 ...") are dropped: the
    caller's one-line error says what is wrong with the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(source, map_location="cpu", weights_only=True)


def read_metadata(path: str | os.PathLike) -> tuple[AnyModelConfig, dict[str, Any]]:
    """The config and free metadata of a checkpoint, without loading its weights."""
    if isinstance(path, str) and not path.strip():  # Path("") is ".": "a folder"
        raise CheckpointError(f"the checkpoint path is empty ({path!r}): give a .safetensors "
                              "file (iste.load() with no path loads the shipped default)")
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint (a .safetensors file; a "
                              f"training run's weights are its {MODEL_FILE})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}{link_note(path)}")
    check_not_empty(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        hint = ""
        if is_torch_file(path):
            hint = (f"; it is the resumable state of a training run, whose weights are "
                    f"{path.parent / MODEL_FILE}" if path.name == STATE_FILE else
                    "; a PyTorch file (.pth) of the published code is converted with "
                    "`iste convert-official`")
        raise CheckpointError(f"{path} is not a safetensors checkpoint "
                              f"({error_line(err, 200)}){hint}") from err
    if metadata.get("format") != "iste" or "config" not in metadata:
        raise CheckpointError(f"{path} has no iste model config in its metadata "
                              "(convert published .pth files with `iste convert-official`)")
    if metadata.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint version {metadata.get('version')!r}")
    try:
        config = parse_model_config(_json(metadata["config"]), where=f"{path.name}:model")
    except (ConfigError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid model config: {err}") from err
    try:
        meta = _json(metadata.get("meta", "{}"))
    except ValueError as err:
        raise CheckpointError(f"{path}: invalid metadata ({error_line(err, 200)})") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: invalid metadata (meta is a JSON "
                              f"{type(meta).__name__}, not an object)")
    return config, meta


def declares_iste(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a safetensors file whose metadata says it is ours (``format``
    "iste"), readable or not: :func:`read_metadata` says what is wrong with one."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == "iste"
    except (SafetensorError, OSError, ValueError):
        return False


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (float32, eval mode).

    Raises:
        CheckpointError: the file cannot be read, its weights do not fit its architecture or
            are not finite, or the model they make predicts no image (finite weights scaled
            absurdly: :func:`iste.models.probe.output_range_problem`)."""
    config, meta = read_metadata(path)
    model = build_fitting(config, stored_shapes(path), source=str(path))
    load_state(model, read_weights(path), source=str(path))
    model.checkpoint_meta = meta
    model.checkpoint_written_by = checkpoint_written_by(path)
    return refuse_absurd_output(model.eval(), source=str(path)).to(device)


def refuse_absurd_output(model: torch.nn.Module, *, source: str) -> torch.nn.Module:
    """``model`` itself, or CheckpointError naming ``source`` where its prediction is no
    image's (:func:`iste.models.probe.output_range_problem`: weights damaged or scaled)."""
    from iste.models.probe import output_range_problem

    problem = output_range_problem(model)
    if problem:
        raise CheckpointError(f"{source}: {problem}: the weights are damaged or scaled "
                              "wrongly; refusing to use them")
    return model


def stored_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """The name and shape of each tensor of a safetensors file, from its header alone."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable weights ({error_line(err, 200)})") from err


def build_fitting(config: AnyModelConfig, shapes: dict[str, tuple[int, ...]], *,
                  source: str) -> torch.nn.Module:
    """:func:`build_model` of ``config``, once the weights' names and ``shapes`` are seen to
    fit it on the meta device (no memory): a config that claims a model far larger than its
    weights (metadata that lies, a damaged spec) is refused before that model is allocated,
    which took gigabytes and seconds for a file of kilobytes."""
    with torch.device("meta"):
        skeleton = build_model(config)
    parts = _layout_parts({k: tuple(v.shape) for k, v in skeleton.state_dict().items()}, shapes)
    if parts:
        raise CheckpointError(f"{source}: weights do not match the architecture "
                              f"({'; '.join(parts)})")
    return build_model(config)


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, as stored (:func:`load_state` checks and casts them);
    CheckpointError naming the file when they cannot be read."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable weights ({error_line(err, 200)})") from err


_T = TypeVar("_T")
_READ_TRIES = 3


def read_unchanged(path: str | os.PathLike, read: Callable[[Path], _T]) -> tuple[_T, str]:
    """``read(path)`` (a model loaded from the file, its weights...) and the sha256 of the file
    it read, hashed before and after: a file replaced in between (a training run's
    model.safetensors, rewritten at each checkpoint) is read again, so that the digest that
    keys caches and provenance is that of the weights used. CheckpointError when it changes
    at every try."""
    path = Path(path)
    for _ in range(_READ_TRIES):
        try:
            digest = sha256_file(path)
        except OSError:  # missing, a folder, unreadable: read(path) says so in its words
            digest = None
        value = read(path)
        if digest is not None and sha256_file(path) == digest:
            return value, digest
    raise CheckpointError(f"{path} changed while it was read, {_READ_TRIES} times (a training "
                          "run writing it?); read it again once it is written")


def mark_untrained(model: torch.nn.Module) -> torch.nn.Module:
    """Record in ``model.checkpoint_meta`` that its weights are a random initialisation."""
    model.checkpoint_meta = {**model.checkpoint_meta, UNTRAINED: True}
    return model


def is_untrained(model: torch.nn.Module) -> bool:
    """Whether ``model`` (built or loaded by this package) has random weights, as the default
    model has when no trained weights are installed (:func:`mark_untrained`)."""
    return bool(model.checkpoint_meta.get(UNTRAINED))


def checkpoint_written_by(path: str | os.PathLike) -> dict[str, str]:
    """{"iste": ..., "torch": ...} recorded by :func:`save_model` ({} for older files)."""
    with safe_open(str(path), framework="pt") as f:
        text = (f.metadata() or {}).get("written_by", "{}")
    try:
        value = _json(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _json(text: str) -> Any:
    """``text`` (a JSON value of a file's metadata) parsed; ValueError for one that is not
    JSON or is nested too deeply for the parser (a RecursionError, a traceback, otherwise)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Strict load with a one-line error naming what does not fit. Floating-point weights may
    be stored as any of :data:`STORED_FLOATS`; they are read as float32. Weights that are all
    zero are refused: a head that adds a bilinear upscale of its input (LTE, LIT) turns them
    into a plausible image, which the output probe does not tell from a model's."""
    own = model.state_dict()
    parts = _layout_parts({k: tuple(v.shape) for k, v in own.items()},
                          {k: tuple(v.shape) for k, v in state.items()})
    # float weights stored as integers or booleans would be cast without a word
    kind = sorted(k for k in set(own) & set(state)
                  if own[k].is_floating_point() and not state[k].is_floating_point())
    if kind:
        parts.append(f"not floating point: {_some(kind)}")
    if parts:
        raise CheckpointError(f"{source}: weights do not match the architecture "
                              f"({'; '.join(parts)})")
    problem = float_storage_problem(state)
    if problem:
        raise CheckpointError(f"{source}: {problem}")
    floats = [v for v in state.values() if v.is_floating_point()]
    if floats and not any(v.any() for v in floats):  # no model is all zero, nor learns to be
        raise CheckpointError(f"{source}: every weight is 0: the file's data was lost (a copy "
                              "or a crash that left zeros); refusing to use them")
    bad = _not_finite(state)
    if bad:
        raise CheckpointError(f"{source}: weights contain NaN or Inf ({_some(bad)}): the file "
                              "is damaged or the training diverged; refusing to use them")
    # float32 holds every value of a narrower float exactly: only wider ones can become Inf
    wider = [k for k, v in state.items() if v.is_floating_point() and v.itemsize > 4]
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    beyond = _not_finite({k: state[k] for k in wider})  # float64 weights Inf in the model
    if beyond:
        raise CheckpointError(f"{source}: weights beyond float32's range ({_some(beyond)}), "
                              "which the model computes in: the file is damaged or the "
                              "training diverged; refusing to use them")
    model.load_state_dict(state, strict=True)


def _layout_parts(own: dict[str, tuple[int, ...]],
                  stored: dict[str, tuple[int, ...]]) -> list[str]:
    """What does not fit between a model's tensors and the weights' (name -> shape): the
    names missing, unexpected and of the wrong shape, a few of each; [] when they fit."""
    missing = sorted(set(own) - set(stored))
    unexpected = sorted(set(stored) - set(own))
    wrong = sorted(k for k in set(own) & set(stored) if own[k] != stored[k])
    return [f"{label}: {_some(keys)}" for label, keys in
            (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]


def _not_finite(state: dict[str, torch.Tensor]) -> list[str]:
    return sorted(k for k, v in state.items()
                  if v.is_floating_point() and not torch.isfinite(v).all())


def float_storage_problem(state: dict[str, Any]) -> str | None:
    """What is wrong with the types ``state``'s floating-point tensors are stored as (one
    outside :data:`STORED_FLOATS`), or None; entries that are not tensors are left to the
    caller."""
    coarse = sorted(k for k, v in state.items() if isinstance(v, torch.Tensor)
                    and v.is_floating_point() and v.dtype not in STORED_FLOATS)
    if not coarse:
        return None
    dtype = str(state[coarse[0]].dtype).removeprefix("torch.")
    return (f"weights stored as {dtype} ({_some(coarse)}), which keeps too few bits of each "
            f"weight for the model to work; iste reads weights stored as "
            f"{_names(STORED_FLOATS)}")


def check_not_empty(path: Path) -> None:
    """CheckpointError for a file of 0 bytes (a download or a copy that never happened), which
    each reader would otherwise call a header too small or an EOFError."""
    try:
        empty = path.stat().st_size == 0
    except OSError:
        return  # unreadable: the reader says so
    if empty:
        raise CheckpointError(f"{path} is empty (0 bytes): a copy or a download that did not "
                              "finish?")


def _some(keys: list[str]) -> str:
    return f"{', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"


def _names(dtypes) -> str:
    names = [str(d).removeprefix("torch.") for d in dtypes]
    return f"{', '.join(names[:-1])} or {names[-1]}"


def is_torch_file(path: Path) -> bool:
    """Whether ``path`` looks like ``torch.save`` output: a zip archive or a bare pickle."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return head == b"PK" or head[:1] == b"\x80"
