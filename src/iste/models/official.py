"""Import checkpoints of the published code of every registered head.

A published checkpoint is a torch pickle ``{'model': {'name', 'args', 'sd'}, ...}`` written by
the LIIF training script (the code of the other methods reuses it). It is read with
``torch.load(weights_only=True)``, which refuses arbitrary objects. Our modules keep the
published parameter names wherever the structure is the same; each head's converter
(:mod:`iste.models.published`) renames the others and drops modules the published model builds
but never uses (they are listed in the result).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from iste.models.encoders import encoder_args_from_official, official_encoder_state_dict
from iste.models.registry import ModelConfig, build_model, head_for_published
from iste.typed import ConfigError, clip_text


@dataclass(frozen=True)
class Converted:
    config: ModelConfig
    state: dict[str, torch.Tensor]
    dropped: tuple[str, ...]


def convert_spec(spec: dict[str, Any]) -> Converted:
    """Convert a published ``{'name', 'args', 'sd'}`` model spec to our config and weights.

    The head's part goes through the converter of its registry entry
    (:attr:`iste.models.registry.PublishedCode.convert`)."""
    name, args, sd = spec.get("name"), dict(spec.get("args", {})), spec.get("sd")
    if sd is None:
        raise ConfigError("the checkpoint's model spec has no 'sd' (state dict)")
    head, entry = head_for_published(name)
    enc_spec = args.pop("encoder_spec", None)
    if not enc_spec:
        raise ConfigError("the checkpoint's model spec has no encoder_spec")
    enc_name, enc_args = encoder_args_from_official(enc_spec["name"], dict(enc_spec.get("args", {})))
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


def load_official(path: str | os.PathLike) -> Converted:
    """Read a published ``.pth`` checkpoint safely and convert it."""
    from iste.models.checkpoint import CheckpointError

    try:
        with warnings.catch_warnings():  # torch's guesses about a damaged file: our error says it
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint not found: {path}") from err
    except IsADirectoryError as err:
        raise CheckpointError(f"checkpoint {path} is a folder") from err
    except Exception as err:  # pickle, zip, safetensors (torch.load dispatches on the suffix)...
        first = clip_text(str(err).strip()) or type(err).__name__
        raise CheckpointError(f"{path} is not a readable published checkpoint: {first}") from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path}: expected a dict with a 'model' spec ({{'name', 'args', 'sd'}})")
    try:
        return convert_spec(ckpt["model"])
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from err


def build_converted(conv: Converted) -> torch.nn.Module:
    """A model with the converted weights loaded (strict)."""
    from iste.models.checkpoint import load_state

    model = build_model(conv.config)
    load_state(model, conv.state, source="converted checkpoint")
    return model.eval()
