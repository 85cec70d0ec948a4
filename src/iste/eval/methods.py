"""The methods an evaluation compares: "bicubic" and SR models, from command-line specs.

A spec is one of

- ``bicubic`` — PIL's bicubic resize of the LR image to the HR size
  (:func:`iste.data.degrade.bicubic_upscale`, the same resampler as the degradation);
- ``default`` — the shipped default model (:func:`iste.load`); without trained weights it is
  a random-initialised model, built after ``torch.manual_seed(0)`` so runs are reproducible;
- ``PATH`` — one of our safetensors checkpoints (ISTE, LIIF, LTE, ablations, any encoder);
- ``LABEL=PATH`` or ``LABEL=default`` — the same, shown as ``LABEL`` in tables.

Every model is loaded up front, so a checkpoint that does not load fails before any work.
A method's *fingerprint* (the checkpoint's sha256; for an untrained default, the hash of its
architecture) keys the result cache: retrained weights written over the same file are never
mistaken for cached results.

SR of a model: :func:`iste.engine.render.super_resolve` with the given
:class:`~iste.engine.render.QueryOptions`, output clamped to [0, 1], as float32 or rounded to
uint8 (what a user gets as a file).
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from iste.engine.image import upscale_to
from iste.data.degrade import bicubic_upscale
from iste.data.samples import sha256_file
from iste.engine.render import QueryOptions
from iste.models.checkpoint import UNTRAINED

__all__ = ["Method", "parse_method_list", "load_methods"]

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class Method:
    """One compared method. ``model`` is None for bicubic."""

    name: str
    spec: str
    fingerprint: str
    model: torch.nn.Module | None = None
    path: Path | None = None
    config: dict[str, Any] | None = None
    parameters: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_bicubic(self) -> bool:
        return self.model is None

    @property
    def head(self) -> str | None:
        return None if self.config is None else self.config.get("head")

    @property
    def untrained(self) -> bool:
        return bool(self.meta.get(UNTRAINED))

    def upscale(self, lr: np.ndarray, hr_hw: tuple[int, int], *,
                options: QueryOptions = QueryOptions(precision="fp32"),
                dtype: str = "uint8") -> np.ndarray:
        """uint8 (h, w, 3) LR -> (H, W, 3) SR of size ``hr_hw`` = (H, W): a model's as ``dtype``
        (:func:`iste.engine.image.upscale_to`: uint8, or float32 in [0, 1]); bicubic's is
        uint8 always (PIL resamples 8-bit images)."""
        if self.model is None:
            return bicubic_upscale(lr, hr_hw)
        return upscale_to(lr, hr_hw, self.model, options=options, dtype=dtype)


def parse_method_list(text: str) -> list[str]:
    """``"bicubic,a.safetensors"`` -> ``["bicubic", "a.safetensors"]``; ValueError if empty."""
    specs = [s.strip() for s in text.split(",")]
    if not text.strip() or any(not s for s in specs):
        raise ValueError(f"--methods must be a comma-separated list without empty items, "
                         f"got {text!r}")
    return specs


def _split_label(spec: str) -> tuple[str | None, str]:
    if "=" in spec:
        label, target = spec.split("=", 1)
        if not _LABEL.match(label):
            raise ValueError(f"method label {label!r} must be letters, digits, '_', '.', '+' "
                             "or '-'")
        return label, target
    return None, spec


def _load_one(spec: str, device: torch.device) -> Method:
    from iste.default_model import default_weights_path, load_default
    from iste.models.checkpoint import load_model
    from iste.models.registry import count_parameters

    label, target = _split_label(spec)
    if target == "bicubic":
        return Method(label or "bicubic", spec, "bicubic-pil")
    if target == "default":
        weights = default_weights_path()
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
            torch.manual_seed(0)  # a random-initialised default is the same in every run
            model = load_default(device)
        if weights:
            fingerprint = sha256_file(weights)
        else:  # random weights: identified by the architecture and the seed
            config = json.dumps(model.model_config.to_dict(), sort_keys=True)
            fingerprint = f"untrained-seed0-{hashlib.sha256(config.encode()).hexdigest()}"
        path = weights
    else:
        path = Path(target)
        model = load_model(path, device=device)
        fingerprint = sha256_file(path)
    name = label or ("default" if target == "default" else path.stem)
    return Method(name, spec, fingerprint, model=model.eval(), path=path,
                  config=model.model_config.to_dict(), parameters=count_parameters(model),
                  meta=dict(model.checkpoint_meta))


def load_methods(specs: Sequence[str], *, device: torch.device | str = "cpu") -> list[Method]:
    """Load every method (models on ``device``); ValueError/CheckpointError on bad specs.

    Names must be unique: two checkpoints with the same file stem need labels.
    """
    device = torch.device(device)
    methods = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # show UntrainedModelWarning once per method
        for spec in specs:
            methods.append(_load_one(spec, device))
    names = [m.name for m in methods]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"method name(s) {', '.join(dupes)} given twice; name them with "
                         "LABEL=PATH")
    return methods
