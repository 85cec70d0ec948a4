"""Training configuration: YAML validated into frozen dataclasses before any work starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from iste.data.degrade import cropped_size
from iste.data.samples import CMU_SPLITS
from iste.data.metrics import check_evaluable
from iste.engine.frame import MAX_SCALE
from iste.models.registry import AnyModelConfig, FixedConfig, describe_config, parse_model_config
from iste.train.objectives import ARCH_OF_KIND, LossConfig
from iste.typed import (MAX_LOADER_WORKERS, ConfigError, check_no_repeats, check_not_blank,
                        check_size, check_unused_at_default, excerpt, load_yaml,
                        parse_dataclass, path_from_text, to_plain)


SAMPLE_SOURCES = tuple(f"sample:cmu-{split}" for split in CMU_SPLITS)
"""The sample sets a data.train or data.val entry may name (the CMU region's splits)."""


@dataclass(frozen=True)
class DataConfig:
    """Where training crops come from and how they are made (paper protocol by default).

    train, val: sources — a folder of HR images, a whole-slide image (SVS/TIFF), or a
        sample split ``sample:cmu-train`` / ``sample:cmu-val``.
    patch: LR crop side (48); the HR crop is round(patch * s), s ~ U(scale_min, scale_max).
    sample_q: HR pixels sampled per crop (2304).
    min_tissue: crops with a smaller tissue fraction are redrawn (0 disables).
    val_scales, val_tile, val_tiles: validation PSNR at these scales on up to ``val_tiles``
        tiles of ``val_tile`` pixels cut from the val source.
    degradation: how LR crops are made: ``paper`` (blur + bicubic), ``scanner`` (then noise and
        JPEG as scanners write it), ``mixed`` (either, half each), or a fixed ``jpeg<Q>``
        (:mod:`iste.data.degradations`).
    downsamples: every train source is also used at these reductions of its resolution
        (1 = as stored, 2 = half, e.g. 20x -> 10x); a slide uses its own pyramid level where
        one has that downsample, other sources are box-filtered. Each (source, downsample) pair
        is drawn with equal probability.
    val_degradations: validation PSNR under each of these fixed degradations (``paper``,
        ``jpeg<Q>``); keys of degradations other than paper get a ``_<name>`` suffix.
    """

    train: tuple[str, ...] = ("sample:cmu-train",)
    val: tuple[str, ...] = ("sample:cmu-val",)
    patch: int = 48
    scale_min: float = 1.0
    scale_max: float = 4.0
    sample_q: int = 2304
    augment: bool = True
    min_tissue: float = 0.3
    val_scales: tuple[float, ...] = (2.0, 3.0, 4.0)
    val_tile: int = 192
    val_tiles: int = 6
    degradation: str = "paper"
    downsamples: tuple[float, ...] = (1.0,)
    val_degradations: tuple[str, ...] = ("paper",)

    def __post_init__(self):
        from iste.data.degradations import parse_degradation

        for name in ("train", "val"):  # paths as the file system takes them, any locale
            for n, entry in enumerate(getattr(self, name)):
                check_not_blank(f"data.{name}[{n}]", entry)
                if entry.startswith("sample:") and entry not in SAMPLE_SOURCES:
                    raise ValueError(f"data.{name}[{n}]: unknown sample set {excerpt(entry)}; "
                                     f"use {', '.join(SAMPLE_SOURCES)}")
            object.__setattr__(self, name, tuple(map(path_from_text, getattr(self, name))))
        parse_degradation(self.degradation)
        for name in self.val_degradations:
            parse_degradation(name, allow_random=False)
        if not self.downsamples or any(not 1 <= d <= 64 for d in self.downsamples):
            raise ValueError(f"data.downsamples must be a non-empty list of factors in [1, 64], "
                             f"got {list(self.downsamples)}")
        for name in ("downsamples", "val_scales", "val_degradations"):
            check_no_repeats(f"data.{name}", getattr(self, name))
        if not self.train:
            raise ValueError("data.train needs at least one source")
        if len(self.train) > 10000 or len(self.val) > 10000:
            raise ValueError("data.train and data.val take at most 10000 sources")
        check_size("data.patch", self.patch, low=4, high=1024)
        check_size("data.sample_q", self.sample_q, high=1 << 20)
        check_size("data.val_tile", self.val_tile, low=8, high=8192)
        check_size("data.val_tiles", self.val_tiles, low=0, high=10000)
        if not (1.0 <= self.scale_min <= self.scale_max <= MAX_SCALE and self.scale_max > 1):
            raise ValueError(f"need 1 <= scale_min <= scale_max <= {MAX_SCALE:g} and "
                             f"scale_max > 1 (x1 alone trains no upscaling), got "
                             f"{self.scale_min:.4g}, {self.scale_max:.4g}")
        if len(self.val_scales) > 64 or not all(1 < s <= MAX_SCALE for s in self.val_scales):
            raise ValueError(f"data.val_scales must be at most 64 scales in (1, {MAX_SCALE:g}]")
        if self.val and self.val_tiles:  # scored at the first validation: refused now
            for name in ("val_scales", "val_degradations"):
                if not getattr(self, name):  # the best checkpoint is picked by their mean
                    raise ValueError(f"data.{name} is empty but data.val is set: give at "
                                     "least one, or data.val: [] to train without validation")
            for scale in self.val_scales:
                check_evaluable(cropped_size((self.val_tile, self.val_tile), scale), scale,
                                name=f"data.val_tile ({self.val_tile} px)")
        if self.sample_q > self.patch ** 2:
            raise ValueError(f"data.sample_q ({self.sample_q}) exceeds the HR pixels of the "
                             f"smallest crop ({self.patch}^2)")
        if not 0 <= self.min_tissue < 1:
            raise ValueError("data.min_tissue must be in [0, 1)")


@dataclass(frozen=True)
class OptimConfig:
    """Adam with a learning-rate schedule, counted in optimisation steps, or in epochs when
    ``run.epochs`` is set:

    - ``multistep`` (default): multiplied by ``gamma`` at each of ``milestones``;
    - ``step``: multiplied by ``gamma`` every ``step_every`` (SRMFENet: 0.95 every 2 epochs);
    - ``cosine``: cosine-annealed from ``lr`` to ``lr * min_lr_ratio`` over the run (Li et al.).

    clip_grad_norm: clip the gradients' global norm to this before each step (SWD-Net: 0.4).
    """

    lr: float = 2e-4
    betas: tuple[float, ...] = (0.9, 0.999)
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.5
    schedule: str = "multistep"
    step_every: int | None = None
    min_lr_ratio: float = 0.0
    clip_grad_norm: float | None = None

    def __post_init__(self):
        if not 0 < self.lr <= 1 or len(self.betas) != 2 or not 0 < self.gamma <= 1:
            raise ValueError("optim: 0 < lr <= 1, two betas and 0 < gamma <= 1 are required")
        if not all(0 <= b < 1 for b in self.betas) or not 0 <= self.weight_decay <= 1:
            raise ValueError("optim: betas in [0, 1) and weight_decay in [0, 1] are required")
        if len(self.milestones) > 1000:
            raise ValueError("optim.milestones: at most 1000 entries")
        for n, milestone in enumerate(self.milestones):
            check_size(f"optim.milestones[{n}]", milestone, high=10**9)
        if any(a >= b for a, b in zip(self.milestones, self.milestones[1:])):
            raise ValueError(f"optim.milestones must be strictly increasing, got "
                             f"{excerpt(list(self.milestones))}")
        if self.schedule not in ("multistep", "step", "cosine"):
            raise ValueError(f"optim.schedule must be multistep, step or cosine, got "
                             f"{self.schedule!r}")
        if (self.schedule == "step") != (self.step_every is not None):
            raise ValueError("optim.step_every goes with optim.schedule: step (and only with it)")
        if self.step_every is not None:
            check_size("optim.step_every", self.step_every, high=10**9)
        if self.milestones and self.schedule != "multistep":
            raise ValueError("optim.milestones belong to schedule: multistep")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("optim.min_lr_ratio must be in [0, 1]")
        if self.schedule == "cosine":
            check_unused_at_default(self, ("gamma",), "optim", "schedule: multistep or step")
        else:
            check_unused_at_default(self, ("min_lr_ratio",), "optim", "schedule: cosine")
        if self.clip_grad_norm is not None and not 0 < self.clip_grad_norm <= 1e6:
            raise ValueError("optim.clip_grad_norm must be positive")


TRAIN_PRECISIONS = ("fp32", "bf16")
DEFAULT_STEPS = 1000
"""A run's length when its config gives neither run.steps nor run.epochs."""


@dataclass(frozen=True)
class RunConfig:
    """How long to train: ``steps`` optimisation steps (default 1000), or ``epochs`` passes
    over the training images, each image ``repeat`` times per epoch (the published trainer's
    units: one epoch is ceil(images x repeat / global batch) steps, :func:`iste.train.schedule
    .resolve_schedule`), so the schedule follows the dataset's size. Give one of the two.

    init: start from these weights instead of a random initialisation: ``default`` (the shipped
        model) or a ``.safetensors`` checkpoint; its architecture must equal ``model``, or be
        an earlier stage of a cascade (the same model with fewer ``stages``: CLIT's cumulative
        training, :func:`iste.models.registry.is_earlier_stage`).
    precision: "fp32" (default, as the published trainer) or "bf16": the forward pass and
        the loss under bf16 autocast (matrix products and convolutions in bf16; weights, the
        loss's reduction and Adam in fp32); faster where the device has bf16 units
        (docs/performance.md), not bit-equal to fp32 training.
    """

    steps: int | None = None
    epochs: int | None = None
    repeat: int = 1
    batch_size: int = 16
    checkpoint_every: int = 200
    val_every: int = 500
    log_every: int = 10
    seed: int = 0
    workers: int = 0
    init: str | None = None
    precision: str = "fp32"

    def __post_init__(self):
        if self.init is not None:
            check_not_blank("run.init", self.init)
            object.__setattr__(self, "init", path_from_text(self.init))
        if self.steps is not None and self.epochs is not None:
            raise ValueError("run.steps and run.epochs are alternatives: give one of them")
        for name in ("steps", "epochs", "repeat", "checkpoint_every", "val_every", "log_every"):
            value = getattr(self, name)
            if value is not None:
                check_size(f"run.{name}", value, high=10**9)
        check_size("run.batch_size", self.batch_size, high=65536)
        check_size("run.seed", self.seed, low=0, high=2**64 - 1)  # torch's generators' range
        if self.epochs is None and self.repeat != 1:
            raise ValueError("run.repeat counts images per epoch: it needs run.epochs")
        check_size("run.workers", self.workers, low=0, high=MAX_LOADER_WORKERS)
        if self.precision not in TRAIN_PRECISIONS:
            raise ValueError(f"run.precision must be one of {', '.join(TRAIN_PRECISIONS)}, "
                             f"got {self.precision!r}")


@dataclass(frozen=True)
class TrainConfig:
    model: AnyModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


_SCALE_KEYS = ("scale_min", "scale_max", "val_scales")


def _same_scale(value: Any, own: Any) -> bool:
    try:
        if isinstance(own, list):
            return [float(v) for v in value] == own
        return float(value) == own
    except (TypeError, ValueError):
        return False


def _fixed_scale_data(data: Any, model: FixedConfig, where: str) -> Any:
    """A fixed-scale network trains and validates at its own scale: ``scale_min``,
    ``scale_max`` and ``val_scales`` default to it, and any other value is an error; it
    predicts whole HR crops, so ``sample_q`` is not given (its value is unused)."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        return data  # parse_dataclass names the error
    s = model.scale
    own = {"scale_min": float(s), "scale_max": float(s), "val_scales": [float(s)]}
    for key in _SCALE_KEYS:
        if key in data and not _same_scale(data[key], own[key]):
            raise ConfigError(f"{where}.data.{key}: {model.label} is a fixed-scale network; "
                              f"it trains and validates at x{s} only (leave {key} out)")
    if "sample_q" in data:
        raise ConfigError(f"{where}.data.sample_q: {model.label} predicts whole HR crops; it "
                          "samples no queries (leave sample_q out)")
    own["sample_q"] = min(DataConfig.sample_q, int(data.get("patch", DataConfig.patch)) ** 2)
    return {**own, **{k: v for k, v in data.items() if k not in _SCALE_KEYS}}


def parse_train_config(data: Any, *, where: str = "config") -> TrainConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    if "model" not in data:
        raise ConfigError(f"{where}: missing 'model'")
    model = parse_model_config(data["model"], where=f"{where}.model")
    rest = {k: v for k, v in data.items() if k != "model"}
    unknown = sorted(set(rest) - {"data", "optim", "run", "loss"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: data, loss, model, "
                          "optim, run")
    if isinstance(model, FixedConfig):
        rest["data"] = _fixed_scale_data(rest.get("data"), model, where)
    loss = parse_dataclass(LossConfig, rest.get("loss"), where=f"{where}.loss")
    needs = ARCH_OF_KIND.get(loss.kind)
    arch = model.arch if isinstance(model, FixedConfig) else None  # heads have no arch
    if needs is not None and arch != needs:
        raise ConfigError(f"{where}.loss.kind: {loss.kind} is the loss of {needs}, not of "
                          f"{describe_config(model)}")
    cfg = TrainConfig(
        model=model,
        data=parse_dataclass(DataConfig, rest.get("data"), where=f"{where}.data"),
        optim=parse_dataclass(OptimConfig, rest.get("optim"), where=f"{where}.optim"),
        run=parse_dataclass(RunConfig, rest.get("run"), where=f"{where}.run"),
        loss=loss,
    )
    _check_within_run(cfg.optim, cfg.run, where)
    return cfg


def _check_within_run(optim: OptimConfig, run: RunConfig, where: str) -> None:
    """ConfigError for a learning-rate change the config's own run never reaches: a milestone
    (or ``step_every``) at or past its end, in its units (epochs with run.epochs, else steps),
    was silently never applied (milestones written in epochs for a run counted in steps).
    ``iste train --steps`` may shorten a run past them afterwards (a trial run)."""
    if run.epochs is not None:
        length, unit = run.epochs, f"run.epochs: {run.epochs}"
    else:
        length = run.steps or DEFAULT_STEPS
        unit = f"run.steps: {length}" if run.steps else f"the default {length} steps"
    late = [m for m in optim.milestones if m >= length]
    if late:
        raise ConfigError(f"{where}.optim.milestones: {excerpt(late)} at or past the run's end "
                          f"({unit}) would never apply; milestones count "
                          f"{'epochs' if run.epochs is not None else 'steps'}")
    if optim.step_every is not None and optim.step_every >= length:
        raise ConfigError(f"{where}.optim.step_every: {optim.step_every} is not before the "
                          f"run's end ({unit}): the learning rate would never change")


def bundled_configs() -> dict[str, Path]:
    """Configs shipped with the package: name -> path."""
    root = Path(str(resources.files("iste") / "configs"))
    return {p.stem: p for p in sorted(root.glob("*.yaml"))}


def _near_name(spec: str, names: list[str]) -> str | None:
    """The bundled config name closest to ``spec`` (a case or spelling slip, ``.yaml`` added
    to a bundled name), if one is close."""
    import difflib

    stem = Path(spec).stem if spec.lower().endswith((".yaml", ".yml")) else spec
    lower = {name.lower(): name for name in names}
    near = difflib.get_close_matches(stem.lower(), list(lower), n=1, cutoff=0.85)
    return lower[near[0]] if near else None


def load_train_config(spec: str | Path) -> TrainConfig:
    """A YAML file, or the name of a bundled config (``iste train compact-iste``)."""
    path = Path(spec)
    if not path.exists():
        bundled = bundled_configs()
        if str(spec) not in bundled:
            near = _near_name(str(spec), list(bundled))
            raise ConfigError(f"config {spec} not found{f': did you mean {near}?' if near else ''}"
                              f" (neither a file nor one of the bundled configs: "
                              f"{', '.join(bundled)})")
        path = bundled[str(spec)]
    if not path.is_file():
        raise ConfigError(f"config {path} is not a file")
    return parse_train_config(load_yaml(path), where=path.name)
