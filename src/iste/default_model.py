"""The model ``iste upscale`` uses when none is given: the shipped weights, if present."""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path

import torch

from iste.models.checkpoint import load_model, mark_untrained
from iste.models.registry import ModelConfig, build_model

DEFAULT_WEIGHTS = "default.safetensors"
DEFAULT_CONFIG = "scanner-iste-deep16-anneal"  # the bundled config of the shipped weights' last stage


def compact_config() -> ModelConfig:
    """The model config of the shipped weights (docs/model-card.md)."""
    from iste.train.config import load_train_config

    return load_train_config(DEFAULT_CONFIG).model


class UntrainedModelWarning(UserWarning):
    """The default model has no trained weights: outputs are not meaningful."""


def default_weights_path() -> Path | None:
    """The shipped default weights inside the package, or None when not installed."""
    path = Path(str(resources.files("iste") / "weights" / DEFAULT_WEIGHTS))
    return path if path.is_file() else None


def load_default(device: str | torch.device = "cpu") -> torch.nn.Module:
    """The shipped default model, or (loudly) a random-initialised compact ISTE."""
    path = default_weights_path()
    if path is not None:
        return load_model(path, device=device)
    warnings.warn("no trained default weights are installed: using a RANDOM-INITIALISED "
                  "model; its output is NOT a meaningful super-resolution", UntrainedModelWarning,
                  stacklevel=2)
    return mark_untrained(build_model(compact_config())).to(device).eval()


def load_model_or_default(path: str | Path | None = None, *,
                          device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model of our checkpoint at ``path``, or :func:`load_default` when ``path`` is None."""
    return load_default(device) if path is None else load_model(path, device=device)
