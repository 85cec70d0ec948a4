"""The model ``iste upscale`` uses when none is given: the shipped weights, if present."""

from __future__ import annotations

import os
import warnings
from importlib import resources
from pathlib import Path

import torch

from iste.digest import sha256_file
from iste.models.checkpoint import CheckpointError, load_model, mark_untrained
from iste.models.registry import ModelConfig, build_model

DEFAULT_WEIGHTS = "default.safetensors"
# the release's weights (docs/model-card.md): a copy damaged in the install still loads
# (safetensors checks the layout, not the numbers) and would upscale wrongly without a word
DEFAULT_SHA256 = "4266eb64a145b51dedca12aed0da019f2257d6f735afa729a1e96587ecd03a92"
# the bundled config of the shipped weights' last stage
DEFAULT_CONFIG = "scanner-iste-deep16-anneal"


def compact_config() -> ModelConfig:
    """The model config of the shipped weights (docs/model-card.md)."""
    from iste.train.config import load_train_config

    return load_train_config(DEFAULT_CONFIG).model


class UntrainedModelWarning(UserWarning):
    """The default model has no trained weights: outputs are not meaningful."""


def _installed_weights() -> Path:
    return Path(str(resources.files("iste") / "weights" / DEFAULT_WEIGHTS))


UNTRAINED_ENV = "ISTE_UNTRAINED_DEFAULT"
"""Set to 1, the default model without installed weights is a random-initialised one (with a
warning; outputs record it): for tests and development only. Unset, it is an error."""


def default_weights_path() -> Path | None:
    """The shipped default weights inside the package, or None when nothing is there.

    Raises:
        CheckpointError: something other than the release's weights file is there: a folder
            or another kind of file, one that cannot be read, or one whose sha256 differs
            from ``DEFAULT_SHA256`` (damaged in the install, or replaced).
    """
    path = _installed_weights()
    if not os.path.lexists(path):
        return None
    if not path.is_file():  # a folder, a link to nothing: the install is damaged
        raise CheckpointError(f"the shipped default weights {path} are {_kind_of(path)}, not "
                              "the release's weights file: reinstall iste, or give a model "
                              "with --model")
    try:
        digest = sha256_file(path)
    except OSError as err:
        raise CheckpointError(f"cannot read the shipped default weights {path}: "
                              f"{err.strerror or err}; reinstall iste (or fix its permissions),"
                              " or give a model with --model") from None
    if digest != DEFAULT_SHA256:
        raise CheckpointError(f"the shipped default weights {path} are not the release's "
                              f"(sha256 {digest[:12]}..., the release's {DEFAULT_SHA256[:12]}"
                              "...): damaged or replaced; reinstall iste, or give a model "
                              "with --model")
    return path


def _kind_of(path: Path) -> str:
    if path.is_dir():
        return "a folder"
    if path.is_symlink() and not path.exists():
        return "a link to nothing"
    return "a special file"


def load_default(device: str | torch.device = "cpu") -> torch.nn.Module:
    """The shipped default model; a random-initialised compact ISTE (loudly) only where no
    weights are installed and :data:`UNTRAINED_ENV` asks for it.

    Raises:
        CheckpointError: the weights are missing (without :data:`UNTRAINED_ENV`), damaged or
            replaced (:func:`default_weights_path`): a random model's output, taken for
            super-resolution, is garbage with nothing but a warning line to tell.
    """
    path = default_weights_path()
    if path is not None:
        return load_model(path, device=device)
    if os.environ.get(UNTRAINED_ENV, "").strip() != "1":
        raise CheckpointError(f"no trained default weights are installed ({_installed_weights()}"
                              f" is missing): reinstall iste, or give a model with --model "
                              f"({UNTRAINED_ENV}=1 runs a RANDOM-INITIALISED model instead, "
                              "for tests only: its output is not a meaningful "
                              "super-resolution)")
    warnings.warn(f"no trained default weights are installed and {UNTRAINED_ENV}=1: using a "
                  "RANDOM-INITIALISED model; its output is NOT a meaningful super-resolution",
                  UntrainedModelWarning, stacklevel=2)
    return mark_untrained(build_model(compact_config())).to(device).eval()


def load_model_or_default(path: str | os.PathLike | None = None, *,
                          device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model of our checkpoint at ``path``, or :func:`load_default` when ``path`` is None."""
    return load_default(device) if path is None else load_model(path, device=device)
