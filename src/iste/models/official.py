"""Import checkpoints of the published code of every registered head and fixed-scale network.

Two layouts, both read with ``torch.load(weights_only=True)``, which refuses arbitrary objects:

- ``{'model': {'name', 'args', 'sd'}, ...}`` written by the LIIF training script (the code of
  the other arbitrary-scale methods reuses it; LIIF's ``edsr`` / ``edsr-baseline`` / ``rdn``
  with ``no_upsampling: false`` are fixed-scale networks). The spec names the architecture.
- a bare state dict, or one wrapped as ``{'params': sd}`` / ``{'params_ema': sd}`` (SwinIR,
  BasicSR), ``{'state_dict': sd}`` or ``{'model_state_dict': sd}``, with any ``module.``
  prefix of ``DataParallel`` removed. Nothing in it names the architecture: the caller names a
  fixed-scale one (``iste convert-official --arch NAME``, a key of
  :data:`iste.models.registry.FIXED`), and its converter reads the sizes and the scale from
  the tensors' shapes.

Our modules keep the published parameter names wherever the structure is the same; each
converter (:mod:`iste.models.published`) renames the others and drops what the published model
builds but never uses (they are listed in the result).
"""

from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from iste.models.encoders import encoder_args_from_official, official_encoder_state_dict
from iste.models.registry import (FIXED, AnyModelConfig, FixedConfig, ModelConfig,
                                  fixed_for_published, head_for_published)
from iste.text import error_line
from iste.typed import ConfigError, clip_text


@dataclass(frozen=True)
class Converted:
    """config and state: ours; dropped: the published entries left out; source: the file
    they came from, which :func:`build_converted`'s errors name."""

    config: AnyModelConfig
    state: dict[str, torch.Tensor]
    dropped: tuple[str, ...]
    source: str = "converted checkpoint"


def check_state_dict(sd: dict[str, Any]) -> None:
    """ConfigError unless every entry of a published state dict is a tensor, floating-point
    ones stored in a type iste reads (:data:`iste.models.checkpoint.STORED_FLOATS`): checked
    before the converters, which cast them to float32 and would hide the type."""
    from iste.models.checkpoint import float_storage_problem

    other = next((k for k, v in sd.items() if not isinstance(v, torch.Tensor)), None)
    if other is not None:
        raise ConfigError(f"the state dict's entry {clip_text(str(other))!r} is not a tensor "
                          f"(a {type(sd[other]).__name__})")
    problem = float_storage_problem(sd)
    if problem:
        raise ConfigError(problem)


def convert_spec(spec: dict[str, Any]) -> Converted:
    """Convert a published ``{'name', 'args', 'sd'}`` model spec to our config and weights.

    The head's part goes through the converter of its registry entry
    (:attr:`iste.models.registry.PublishedCode.convert`)."""
    name, args, sd = spec.get("name"), spec.get("args", {}), spec.get("sd")
    if not isinstance(args, dict):
        raise ConfigError(f"the checkpoint's model spec is malformed: its 'args' are a "
                          f"{type(args).__name__}, not a mapping")
    if not isinstance(sd, dict):
        raise ConfigError("the checkpoint's model spec has no 'sd' (state dict) mapping")
    check_state_dict(sd)
    args = dict(args)
    head, entry = head_for_published(name)
    enc_spec = args.pop("encoder_spec", None)
    if not enc_spec:
        raise ConfigError("the checkpoint's model spec has no encoder_spec")
    if not isinstance(enc_spec, dict) or "name" not in enc_spec \
            or not isinstance(enc_spec.get("args", {}), dict):
        raise ConfigError("the checkpoint's model spec is malformed: its encoder_spec needs a "
                          "'name' and 'args' (a mapping)")
    enc_name, enc_args = encoder_args_from_official(enc_spec["name"],
                                                    dict(enc_spec.get("args", {})))
    converted = entry.published.convert(args, {k: v for k, v in sd.items()
                                                if not k.startswith("encoder.")})
    if args:
        raise ConfigError(f"unsupported args for published {name}: {sorted(args)}")

    encoder_sd = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    kept_encoder = official_encoder_state_dict(encoder_sd)
    dropped = [f"encoder.{k}" for k in encoder_sd if k not in kept_encoder]
    dropped += converted.dropped
    state = {f"encoder.{k}": v for k, v in kept_encoder.items()}
    state.update(converted.state)
    config = ModelConfig.from_dict({"head": head, "encoder": enc_name,
                                    "head_args": converted.head_args, "encoder_args": enc_args})
    return Converted(config=config, state=state, dropped=tuple(sorted(dropped)))


def convert_fixed(arch: str, sd: dict[str, torch.Tensor], *, name: str | None = None,
                  args: dict[str, Any] | None = None, scale: int | None = None) -> Converted:
    """Convert a published fixed-scale network ``arch`` (a key of :data:`FIXED`): from a
    LIIF-style spec (``name``, ``args``) or a bare state dict (``args`` None). ``scale``: the
    factor the caller says the weights were trained for; required where the weights do not
    tell, checked against them where they do."""
    args = None if args is None else dict(args)
    if not isinstance(sd, dict):
        raise ConfigError("the checkpoint's model spec has no 'sd' (state dict) mapping")
    check_state_dict(sd)
    try:
        converted = FIXED[arch].published.convert(name, args, sd)
    except KeyError as err:
        raise ConfigError(f"the weights are not a published {FIXED[arch].label} (no tensor "
                          f"{err}); check --arch") from None
    if args:
        raise ConfigError(f"unsupported args for published {name}: {sorted(args)}")
    found = converted.scale
    if found is None and scale is None:
        raise ConfigError(f"a published {FIXED[arch].label} does not record the scale it was "
                          "trained for; give it (--scale S)")
    if found is not None and scale is not None and int(scale) != found:
        raise ConfigError(f"--scale {scale}, but the weights are a x{found} "
                          f"{FIXED[arch].label}")
    config = FixedConfig.from_dict({"arch": arch, "scale": found if found is not None else scale,
                                    "args": converted.args})
    return Converted(config=config, state=converted.state, dropped=converted.dropped)


_WRAPPERS = ("params", "params_ema", "state_dict", "model_state_dict")


def bare_state_dict(ckpt: Any) -> dict[str, torch.Tensor] | None:
    """The state dict of a bare or wrapped (``params``, ``params_ema``, ``state_dict``,
    ``model_state_dict``, first found) checkpoint, ``module.`` prefixes removed; None if
    ``ckpt`` is neither."""
    if not isinstance(ckpt, dict):
        return None
    if isinstance(ckpt.get("params"), dict) and isinstance(ckpt.get("params_ema"), dict):
        warnings.warn("the checkpoint holds two sets of weights, 'params' and 'params_ema' (a "
                      "BasicSR / KAIR training with EMA): 'params' is converted, as SwinIR's "
                      "test script loads classical SR weights")
    for key in _WRAPPERS:
        if isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    if not ckpt or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return None
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in ckpt.items()}


def _convert_checkpoint(ckpt: Any, arch: str | None, scale: int | None = None) -> Converted:
    if arch is not None and arch not in FIXED:
        raise ConfigError(f"unknown --arch {arch!r}; expected one of {', '.join(FIXED)}")
    spec = ckpt.get("model") if isinstance(ckpt, dict) else None
    if isinstance(spec, dict) and "name" in spec:
        fixed = fixed_for_published(spec["name"])
        if fixed is None:
            if arch is not None:
                raise ConfigError(f"the file holds a published {spec['name']!r} model, not "
                                  f"{arch}; leave out --arch")
            if scale is not None:  # would be dropped without a word
                raise ConfigError(f"the file holds a published {spec['name']!r} model, which "
                                  "upscales by any factor; leave out --scale (it names a "
                                  "fixed-scale network's factor)")
            return convert_spec(spec)
        if arch is not None and arch != fixed:
            raise ConfigError(f"the file holds a published {spec['name']!r} ({fixed}), not "
                              f"{arch}")
        if spec.get("sd") is None:
            raise ConfigError("the checkpoint's model spec has no 'sd' (state dict)")
        return convert_fixed(fixed, spec["sd"], name=spec["name"], args=spec.get("args", {}),
                             scale=scale)
    sd = bare_state_dict(ckpt)
    if sd is None:
        raise ConfigError("expected a dict with a 'model' spec ({'name', 'args', 'sd'}) or a "
                          "state dict")
    if arch is None:
        raise ConfigError("the file is a bare state dict that does not name its "
                          f"architecture; give --arch NAME (one of {', '.join(FIXED)})")
    return convert_fixed(arch, sd, scale=scale)


def load_official(path: str | os.PathLike, *, arch: str | None = None,
                  scale: int | None = None) -> Converted:
    """Read a published ``.pth`` checkpoint safely and convert it; ``arch`` names the
    fixed-scale architecture of a bare state dict (a key of :data:`FIXED`), ``scale`` the
    factor of a fixed-scale network whose weights do not tell it (:func:`convert_fixed`)."""
    from iste.models.checkpoint import (CheckpointError, check_not_empty, declares_iste,
                                        is_torch_file, load_torch_file, read_metadata)

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder")
    if path.is_file():
        check_not_empty(path)
    torch_file = path.is_file() and is_torch_file(path)
    if path.is_file() and not torch_file and declares_iste(path):
        read_metadata(path)  # one damaged or too new is refused in its words
        raise CheckpointError(f"{path} is already an iste checkpoint: use it as it is "
                              "(--model, iste.load)")
    try:
        if torch_file:  # read as what it holds: torch.load picks safetensors by the name
            with open(path, "rb") as f:
                ckpt = load_torch_file(f)
        else:
            ckpt = load_torch_file(path)
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint not found: {path}") from err
    except pickle.UnpicklingError as err:  # torch's text advises the unsafe load: not repeated
        if "unsupported global" not in str(err).lower():
            raise CheckpointError(f"{path} is not a readable published checkpoint (damaged, or "
                                  "not a PyTorch file)") from err
        raise CheckpointError(f"{path} holds objects other than tensors and plain containers "
                              "(a pickle of code, refused unread): not a published checkpoint "
                              "iste converts") from err
    except Exception as err:  # pickle, zip, safetensors (torch.load dispatches on the suffix)...
        first = error_line(err, 200)
        how = "damaged or truncated: " if torch_file else ""  # a torn copy of a zip archive
        raise CheckpointError(f"{path} is not a readable published checkpoint "
                              f"({how}{first})") from err
    try:
        return replace(_convert_checkpoint(ckpt, arch, scale), source=str(path))
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}{_state_note(path)}") from err
    except CheckpointError:
        raise
    except (TypeError, AttributeError, KeyError, IndexError, ValueError, ArithmeticError) as err:
        # a spec of the published layout whose inner parts are of other types than the
        # published code writes (a string where a dict goes, a list of weights), or tensors
        # of sizes no published network has (0 channels: the sizes read from them divide)
        detail = error_line(err, 200)
        raise CheckpointError(f"{path}: malformed published checkpoint ({detail})") from err


def _state_note(path: Path) -> str:
    """What a training run's resumable state, given where a published checkpoint goes, is."""
    from iste.models.checkpoint import MODEL_FILE, STATE_FILE

    if path.name != STATE_FILE:
        return ""
    return (f"; it is the resumable state of a training run, whose weights "
            f"{path.parent / MODEL_FILE} are already an iste checkpoint")


def build_converted(conv: Converted) -> torch.nn.Module:
    """A model with the converted weights loaded (strict); its errors name ``conv.source``.

    Raises:
        CheckpointError: as :func:`iste.models.checkpoint.load_model` refuses the same
            weights: the model predicts no image (a published file's weights scaled
            absurdly, :func:`iste.models.probe.output_range_problem`); converted, they made
            a file every later load refused."""
    from iste.models.checkpoint import build_fitting, load_state, refuse_absurd_output

    shapes = {k: tuple(v.shape) for k, v in conv.state.items()}
    model = build_fitting(conv.config, shapes, source=conv.source)
    load_state(model, conv.state, source=conv.source)
    return refuse_absurd_output(model.eval(), source=conv.source)
