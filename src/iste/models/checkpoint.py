"""Our checkpoint format: one safetensors file = weights + JSON config in its metadata.

Nothing is unpickled at load time. The metadata holds ``format`` (= "iste"), ``version``,
``config`` (a :class:`ModelConfig` or :class:`FixedConfig` as JSON), ``meta`` (free JSON: training data, steps...) and
``written_by`` (JSON: the iste and torch versions that wrote the file; loaded models carry it as
``model.checkpoint_written_by``, empty for files written before it was recorded).
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

from iste.files import link_note, sha256_file, write_bytes_atomic
from iste.models.registry import AnyModelConfig, build_model, parse_model_config
from iste.typed import ConfigError

FORMAT_VERSION = "1"
UNTRAINED = "untrained"  # checkpoint_meta key: the weights are a random initialisation
MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
"""A training run's weights and resumable state in its folder (:mod:`iste.train.state`), named
here, below the trainer, so that a checkpoint's errors can tell a run's files apart."""


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not match its declared architecture."""


def save_model(model: torch.nn.Module, path: str | os.PathLike, *,
               meta: dict[str, Any] | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` (built by :func:`build_model`) atomically to ``path``.

    dtype: store floating tensors in this dtype (e.g. float16 to halve the file); loading
    always returns float32 weights.
    """
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
    return write_safetensors(path, tensors, metadata)


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str]) -> Path:
    """``tensors`` (contiguous, on the CPU) as a safetensors file at ``path``, atomically.
    Serialised in memory and written by :func:`iste.files.write_bytes_atomic`: safetensors'
    own file writer reports a full disk as a SafetensorError (a traceback), not the OSError
    the file system's one-line refusals are made from."""
    return write_bytes_atomic(path, save(tensors, metadata=metadata))


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
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint (a .safetensors file; a "
                              f"training run's weights are its {MODEL_FILE})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}{link_note(path)}")
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
        raise CheckpointError(f"{path} is not a safetensors checkpoint ({_short(err)}){hint}"
                              ) from err
    if metadata.get("format") != "iste" or "config" not in metadata:
        raise CheckpointError(f"{path} has no iste model config in its metadata "
                              "(convert published .pth files with `iste convert-official`)")
    if metadata.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint version {metadata.get('version')!r}")
    try:
        config = parse_model_config(json.loads(metadata["config"]), where=f"{path.name}:model")
    except (ConfigError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: invalid model config: {err}") from err
    try:
        meta = json.loads(metadata.get("meta", "{}"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: invalid metadata ({_short(err)})") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: invalid metadata (meta is a JSON "
                              f"{type(meta).__name__}, not an object)")
    return config, meta


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (float32, eval mode)."""
    config, meta = read_metadata(path)
    model = build_model(config)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable weights ({_short(err)})") from err
    state = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    load_state(model, state, source=str(path))
    model.checkpoint_meta = meta
    model.checkpoint_written_by = checkpoint_written_by(path)
    return model.to(device).eval()


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
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Strict load with a one-line error naming what does not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    # float weights stored as integers or booleans would be cast without a word
    kind = sorted(k for k in set(own) & set(state)
                  if own[k].is_floating_point() and not state[k].is_floating_point())
    if missing or unexpected or wrong or kind:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected),
                            ("wrong shape", wrong), ("not floating point", kind)):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}")
        raise CheckpointError(f"{source}: weights do not match the architecture ({'; '.join(parts)})")
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if bad:
        raise CheckpointError(f"{source}: weights contain NaN or Inf ({', '.join(bad[:4])}"
                              f"{' ...' if len(bad) > 4 else ''}): the file is damaged or the "
                              "training diverged; refusing to use them")
    model.load_state_dict(state, strict=True)


def is_torch_file(path: Path) -> bool:
    """Whether ``path`` looks like ``torch.save`` output: a zip archive or a bare pickle."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return head == b"PK" or head[:1] == b"\x80"


def _short(err: BaseException, limit: int = 200) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text if len(text) <= limit else text[:limit] + "..."
