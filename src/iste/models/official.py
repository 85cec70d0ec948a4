"""Import checkpoints of the published LIIF, LTE and ISTE code.

A published checkpoint is a torch pickle ``{'model': {'name', 'args', 'sd'}, ...}`` written by
the LIIF training script (the LTE and ISTE code reuse it). It is read with
``torch.load(weights_only=True)``, which refuses arbitrary objects. Our modules keep the
published parameter names wherever the structure is the same; ISTE's are renamed below, and
modules the published ISTE builds but never uses are dropped (they are listed in the result).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from iste.models.encoders import encoder_args_from_official, official_encoder_state_dict
from iste.models.registry import ModelConfig, build_model
from iste.typed import ConfigError, clip_text

# published ISTE prefix -> ours
_ISTE_RENAME = {
    "liifconv.": "lfic.",
    "coef.": "amp.",
    "freq1.": "freq_x.",
    "freq2.": "freq_y.",
    "phase.": "phase.",
    "imnet_texture.": "ltd.",
    "imnet_rgb.": "lpd.",
    "pix_attn.qk_linear.": "lfi.qk.",
    "pix_attn.kv_linear.": "lfi.kv.",
    "pix_attn.proj.": "lfi.proj.",
    "fusionlinear.": "fusion.",
}
# built by the published ISTE but never used in its forward pass
_ISTE_UNUSED = ("imnet_texture_auxiliary.", "imnet_query.", "pix_attn.depth_conv.")


@dataclass(frozen=True)
class Converted:
    config: ModelConfig
    state: dict[str, torch.Tensor]
    dropped: tuple[str, ...]


def _mlp_hidden(spec: dict | None, default: tuple[int, ...]) -> tuple[int, ...]:
    if not spec:
        return default
    if spec.get("name") != "mlp":
        raise ConfigError(f"unsupported imnet {spec.get('name')!r} (only 'mlp')")
    hidden = spec.get("args", {}).get("hidden_list")
    return tuple(hidden) if hidden is not None else default


def convert_spec(spec: dict[str, Any]) -> Converted:
    """Convert a published ``{'name', 'args', 'sd'}`` model spec to our config and weights."""
    name, args, sd = spec.get("name"), dict(spec.get("args", {})), spec.get("sd")
    if sd is None:
        raise ConfigError("the checkpoint's model spec has no 'sd' (state dict)")
    enc_spec = args.pop("encoder_spec", None)
    if not enc_spec:
        raise ConfigError("the checkpoint's model spec has no encoder_spec")
    enc_name, enc_args = encoder_args_from_official(enc_spec["name"], dict(enc_spec.get("args", {})))
    imnet = args.pop("imnet_spec", None)
    dropped: list[str] = []
    if name == "liif":
        head_args = {"hidden": list(_mlp_hidden(imnet, (256, 256, 256, 256)))}
        for key in ("local_ensemble", "feat_unfold", "cell_decode"):
            if key in args:
                head_args[key] = bool(args.pop(key))
        rename = {}
    elif name == "lte":
        head_args = {"hidden": list(_mlp_hidden(imnet, (256, 256, 256))),
                     "hidden_dim": int(args.pop("hidden_dim", 256))}
        rename = {}
    elif name == "iste":
        for key in ("local_ensemble", "feat_unfold", "cell_decode", "hidden_dim"):
            args.pop(key, None)  # accepted but unused by the published ISTE
        head_args = {"decoder_hidden": list(_mlp_hidden(imnet, (256, 256, 256))),
                     "lfi_layout": "published"}
        rename = _ISTE_RENAME
    else:
        raise ConfigError(f"unsupported published model {name!r} (expected liif, lte or iste)")
    if args:
        raise ConfigError(f"unsupported args for published {name}: {sorted(args)}")

    encoder_sd = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    kept_encoder = official_encoder_state_dict(encoder_sd)
    dropped += [f"encoder.{k}" for k in encoder_sd if k not in kept_encoder]
    state = {f"encoder.{k}": v for k, v in kept_encoder.items()}
    for key, value in sd.items():
        if key.startswith("encoder."):
            continue
        if name == "iste" and key.startswith(_ISTE_UNUSED):
            dropped.append(key)
            continue
        new = key
        for old, ours in rename.items():
            if key.startswith(old):
                new = ours + key[len(old):]
                break
        state[new] = value.float() if value.is_floating_point() else value
    config = ModelConfig.from_dict({"head": name, "encoder": enc_name,
                                    "head_args": head_args, "encoder_args": enc_args})
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
