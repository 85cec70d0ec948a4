"""The methods an evaluation compares: "bicubic" and SR models, from command-line specs.

A spec is one of

- ``bicubic`` — PIL's bicubic resize of the LR image to the HR size
  (:func:`iste.data.degrade.bicubic_upscale`, the same resampler as the degradation);
- ``default`` — the shipped default model (:func:`iste.load`); without trained weights it is
  a random-initialised model, built after ``torch.manual_seed(0)`` so runs are reproducible;
- ``PATH`` — one of our safetensors checkpoints (ISTE, LIIF, LTE, ablations, any encoder);
- ``LABEL=PATH`` or ``LABEL=default`` — the same, shown as ``LABEL`` in tables.

A fixed-scale checkpoint (EDSR, RDN, SwinIR, ...: :class:`~iste.models.registry.FixedConfig`)
is evaluated at its own scale only; the tables show "—" in its other cells, as the paper's
Table 1 does. One method may be given as several fixed-scale checkpoints, one per scale, by
repeating its label: ``EDSR=edsr_x2.safetensors,EDSR=edsr_x3.safetensors,EDSR=edsr_x4.safetensors``
is one row "EDSR" with x2, x3 and x4 filled. A label given twice for anything else is an error.

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
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from iste.engine.fixed import is_fixed_scale
from iste.engine.image import upscale_to
from iste.data.degrade import bicubic_upscale
from iste.data.places import recorded, shared
from iste.engine.render import QueryOptions
from iste.digest import sha256_file
from iste.models.checkpoint import UNTRAINED

__all__ = ["Method", "parse_method_list", "method_files", "load_methods", "warn_seen",
           "seen_notes"]

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

    fixed_scales: dict[float, "Method"] = field(default_factory=dict)
    """For a fixed-scale method: scale -> the checkpoint evaluated at that scale (a Method of
    the same name; itself for a single checkpoint). Empty: any scale (arbitrary-scale models,
    bicubic)."""

    @property
    def is_bicubic(self) -> bool:
        return self.model is None

    @property
    def has_stf(self) -> bool:
        """Whether its model has STF key windows (``uses_key_set``): the methods that
        ``stf_window`` / ``stf_keys`` (``--stf-keys``) apply to."""
        return self.model is not None and self.model.uses_key_set

    @property
    def is_fixed_scale(self) -> bool:
        return bool(self.fixed_scales)

    def trained_on(self, places: tuple[str, ...]) -> str | None:
        """How the test data at ``places`` (:attr:`iste.eval.datasets.TestSet.places`) stands
        to the data its checkpoints were trained and picked on (the ``train_sources`` and
        ``val_sources`` a training run records: ``"test data X is its training source Y"``),
        or None when they share no image or the checkpoints do not say (bicubic, converted
        checkpoints; older ones say only the sample sets of their config; a list that is not
        of places, as a foreign file may hold, says nothing: :func:`iste.data.places.recorded`)."""
        parts = self.fixed_scales.values() if self.fixed_scales else (self,)
        for role, key in (("training", "train_sources"), ("validation", "val_sources")):
            for seen in dict.fromkeys(s for m in parts for s in recorded(m.meta, key)):
                for test in places:
                    how = shared(test, seen)
                    if how is not None:
                        return f"test data {test} {how} its {role} source {seen}"
        return None

    def supports(self, scale: float) -> bool:
        """Whether this method has an SR at ``scale`` (fixed-scale: only its own scales)."""
        return not self.fixed_scales or float(scale) in self.fixed_scales

    def at(self, scale: float) -> "Method":
        """The method that runs at ``scale``: the checkpoint for that scale of a fixed-scale
        method given as several, else this one.

        Raises:
            ValueError: a fixed-scale method without that scale.
        """
        if not self.fixed_scales:
            return self
        if float(scale) not in self.fixed_scales:
            raise ValueError(f"method {self.name} has no model for x{scale:g} (it has "
                             f"{', '.join(f'x{s:g}' for s in sorted(self.fixed_scales))})")
        return self.fixed_scales[float(scale)]

    @property
    def architecture(self) -> str:
        """What it is, for reports: "ISTE + swinir", "CLIT + edsr-baseline", "ISTE (no-lfi) +
        swinir", "EDSR x2, x3", "bicubic (PIL)"."""
        if self.is_bicubic:
            return "bicubic (PIL)"
        if self.fixed_scales:  # one architecture (its parts' variants: each part's name)
            arch = ", ".join(dict.fromkeys(p.model.model_config.method_label
                                           for p in self.fixed_scales.values()))
            return f"{arch} " + ", ".join(f"x{s:g}" for s in sorted(self.fixed_scales))
        return self.model.architecture

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
        model = self.model
        if self.fixed_scales:  # the checkpoint whose scale gives exactly hr_hw (else refused)
            h, w = lr.shape[:2]
            model = next((m.model for s, m in self.fixed_scales.items()
                          if (int(s) * h, int(s) * w) == tuple(hr_hw)), model)
        return upscale_to(lr, hr_hw, model, options=options, dtype=dtype)


def seen_notes(methods: Sequence[Method], places: tuple[str, ...]) -> list[str]:
    """``"M has seen the test data in training (...): its scores say nothing of unseen
    images"`` for each method whose checkpoints were trained or picked on the data at
    ``places`` (:meth:`Method.trained_on`): the warning and the report's line."""
    notes = []
    for m in methods:
        seen = m.trained_on(places)
        if seen is not None:
            notes.append(f"{m.name} has seen the test data in training ({seen}): its scores "
                         "say nothing of unseen images")
    return notes


def warn_seen(methods: Sequence[Method], places: tuple[str, ...]) -> None:
    """Warn of each method of :func:`seen_notes`."""
    for note in seen_notes(methods, places):
        warnings.warn(f"method {note}", stacklevel=3)


def parse_method_list(text: str) -> list[str]:
    """``"bicubic,a.safetensors"`` -> ``["bicubic", "a.safetensors"]``; ValueError if empty.
    A comma inside a path that exists is the path's (a sweep's run folder
    ``runs/lr=1e-3,bs=16/model.safetensors``, with or without ``LABEL=``): split at every
    comma, its halves were two checkpoints not found."""
    pieces = text.split(",")
    if not text.strip() or any(not s.strip() for s in pieces):
        raise ValueError(f"--methods must be a comma-separated list without empty items, "
                         f"got {text!r}")
    specs, i = [], 0
    while i < len(pieces):  # the longest run of pieces from i that names a file, else one
        j = next((j for j in range(len(pieces), i + 1, -1)
                  if _names_file(",".join(pieces[i:j]).strip())), i + 1)
        specs.append(",".join(pieces[i:j]).strip())
        i = j
    return specs


def method_files(specs: list[str]) -> list[Path]:
    """The checkpoint files ``specs`` (:func:`parse_method_list`'s) name: not bicubic or
    default. ValueError for a bad label (:func:`load_methods` says the same)."""
    targets = [_split_label(spec)[1] for spec in specs]
    return [Path(t) for t in targets if t not in ("bicubic", "default")]


def _names_file(spec: str) -> bool:
    """Whether ``spec`` (``PATH`` or ``LABEL=PATH``) names a file or folder that exists."""
    if os.path.exists(spec):
        return True
    label, _, path = spec.partition("=")
    return bool(path) and _LABEL.match(label) is not None and os.path.exists(path)


def _split_label(spec: str) -> tuple[str | None, str]:
    # a path that exists is one, '=' and all (runs/lr=1e-3/model.safetensors: split at its
    # '=', it was the label 'runs/lr' or a checkpoint '1e-3/model.safetensors' not found)
    if "=" in spec and not os.path.exists(spec):
        label, target = spec.split("=", 1)
        if not _LABEL.match(label):
            raise ValueError(f"method label {label!r} must be letters, digits, '_', '.', '+' "
                             "or '-'")
        if not target.strip():
            raise ValueError(f"method {label}= names nothing: give bicubic, default or a "
                             "checkpoint after '='")
        return label, target
    return None, spec


def _load_one(spec: str, device: torch.device) -> Method:
    from iste.default_model import default_weights_path, load_default
    from iste.models.checkpoint import load_model, read_unchanged
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
        path = Path(target)  # its digest is that of the weights loaded (a run may rewrite it)
        model, fingerprint = read_unchanged(path, lambda p: load_model(p, device=device))
    name = label or ("default" if target == "default" else path.stem)
    method = Method(name, spec, fingerprint, model=model.eval(), path=path,
                    config=model.model_config.to_dict(), parameters=count_parameters(model),
                    meta=dict(model.checkpoint_meta))
    if is_fixed_scale(model):
        method.fixed_scales = {float(model.scale): method}
    return method


def _merge_fixed(name: str, parts: list[Method]) -> Method:
    """One method from several fixed-scale checkpoints of one label, one per scale."""
    if not all(p.is_fixed_scale for p in parts):
        raise ValueError(f"method name {name} given twice; name them with LABEL=PATH (a label "
                         "may repeat only over fixed-scale checkpoints, one per scale)")
    by_scale: dict[float, Method] = {}
    for part in parts:
        (scale,) = part.fixed_scales
        if scale in by_scale:
            raise ValueError(f"method {name} has two checkpoints for x{scale:g}")
        by_scale[scale] = part
    arches = {p.config["arch"] for p in parts}
    if len(arches) > 1:
        raise ValueError(f"method {name} mixes architectures {sorted(arches)}; one label "
                         "is one method")
    first = parts[0]
    spec = ",".join(p.spec for p in parts)
    return Method(name, spec, first.fingerprint, model=first.model, path=first.path,
                  config=first.config, parameters=first.parameters, meta=first.meta,
                  fixed_scales=by_scale)


def load_methods(specs: Sequence[str], *, device: torch.device | str = "cpu") -> list[Method]:
    """Load every method (models on ``device``); ValueError/CheckpointError on bad specs.

    Names must be unique (two checkpoints with the same file stem need labels), except that
    fixed-scale checkpoints of one architecture and different scales sharing a label form one
    method (in the order of its first spec).
    """
    device = torch.device(device)
    loaded: dict[str, list[Method]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # show UntrainedModelWarning once per method
        for spec in specs:
            method = _load_one(spec, device)
            loaded.setdefault(method.name, []).append(method)
    return [parts[0] if len(parts) == 1 else _merge_fixed(name, parts)
            for name, parts in loaded.items()]
