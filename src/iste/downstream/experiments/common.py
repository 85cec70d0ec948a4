"""What both downstream experiments share: SR of test/training images through the evaluation
methods (cached and verified), and the per-run bookkeeping under torchrun."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np

from iste import distributed as dist_util
from iste.downstream.cache import cached_array
from iste.downstream.images import Degradation
from iste.engine.render import QueryOptions
from iste.eval.files import pixels_digest
from iste.eval.methods import Method
from iste.locks import folder_lock

__all__ = ["sr_tag", "super_resolve_cached", "setting_runs", "check_method_folders",
           "out_lock", "run_locked", "out_writes"]

OUT_NAMES = ("sr", "runs", "prob", "results_glas.json", "results_pcam.json",
             "fig11_segmentations.png")
"""What an experiment writes directly in its ``--out`` besides its tables (``table*``), the
folder's ``.lock`` and temporaries (a dot first): SR images, training runs, predictions,
results, the figure."""


def out_writes(name: str) -> bool:
    """Whether an experiment may write ``name`` directly in its ``--out``
    (:data:`OUT_NAMES`, a table, the lock, a temporary)."""
    return name in OUT_NAMES or name.startswith(("table", "."))


def out_lock(out: Path):
    """The experiment's ``--out`` locked while this run writes there (rank 0 under torchrun):
    a second run into it is refused (two mixed their training runs and results)."""
    return folder_lock(out, f"another iste downstream run is writing {out}; wait for it or "
                            "choose another --out", held=dist_util.launched_rank() == 0)


def run_locked(req, body: Callable[..., dict], log: Callable[[str], None]) -> dict:
    """``body(req, info, device, log)`` with ``req.out`` locked (:func:`out_lock`) and the
    process group (:func:`iste.distributed.process_group`) open on ``req.device``."""
    from iste.runtime import pick_device

    with out_lock(req.out), \
            dist_util.process_group(pick_device(req.device) if req.device else None) as group:
        return body(req, *group, log)


def sr_tag(method: Method, scale: float, degradation: Degradation,
           options: QueryOptions) -> dict:
    """What an SR result depends on: the weights that run at ``scale`` (of a method given as
    several fixed-scale checkpoints, the one for ``scale``: the first one's digest tagged
    the x4 SR of ``EDSR=x2,EDSR=x4``, so a retrained x4 checkpoint was taken for the cached
    SR), the degradation, and the render options that change outputs, with precision "auto"
    resolved for the model on its device (a cache made in bf16 on a GPU was read as the fp32
    SR on a CPU). The keys are those tags always had: caches made with explicit options
    stay valid.

    Raises:
        ValueError: a fixed-scale method without a checkpoint for ``scale``.
    """
    runs = method.at(scale)
    if runs.model is not None:
        options = replace(options, precision=options.resolved(runs.model).precision)
    opts = {k: v for k, v in asdict(options).items() if k != "chunk"}  # chunk: speed only
    return {"method": runs.fingerprint, "scale": scale, "degradation": degradation, **opts}


def super_resolve_cached(method: Method, lr: np.ndarray, hr_hw: tuple[int, int], path: Path,
                         tag: dict, options: QueryOptions) -> np.ndarray:
    """uint8 (h, w, 3) LR -> uint8 (H, W, 3) SR of ``method`` at size ``hr_hw``, cached at
    ``path`` (.npy) under ``tag`` (see :mod:`iste.downstream.cache`)."""
    return cached_array(path, {**tag, "hr_hw": list(hr_hw), "lr": pixels_digest([lr])},
                        lambda: method.upscale(lr, hr_hw, options=options))


def check_method_folders(methods: list[Method], out: Path, folders: tuple[str, ...]) -> None:
    """Before any work: each method's folders in ``out`` (``folders``: patterns of a name
    under ``out`` such as ``runs/unet-{}``, filled with the method's name) have names the
    file system takes, and are not another method's on a disk that ignores case. A label of
    251 to 255 bytes passed as a folder ``sr/LABEL`` and failed at ``runs/unet-LABEL`` ('file
    name too long'), after the SR of every image; in PCam, at ``prob/LABEL`` after the
    classifier's training.

    Raises:
        FileSystemError: naming the method and the folder.
        ValueError: two method names that differ only by case.
    """
    from iste.paths import check_name_fits
    from iste.refusals import FileSystemError

    first: dict[str, str] = {}
    for m in methods:
        # on macOS's disks (and exFAT, SMB) runs/unet-ISTE and runs/unet-iste are one folder:
        # the second U-Net found the first's run there, after the SR and the first training;
        # PCam's two methods wrote their cached probabilities (prob/ISTE) over each other
        other = first.setdefault(m.name.casefold(), m.name)
        if other != m.name:
            names = ", ".join(f"{folder.format(other)} and {folder.format(m.name)}"
                              for folder in folders)
            raise ValueError(f"method names {other} and {m.name} differ only by case: their "
                             f"folders ({names}) would be one on a disk that ignores case "
                             "(macOS, exFAT, SMB); label them apart (LABEL=...)")
    for m in methods:
        for folder in folders:
            name = folder.format(m.name)
            try:
                check_name_fits(out / name, f"method {m.name}: its folder {name} in --out")
            except FileSystemError as err:
                raise FileSystemError(f"{err}; give it a shorter label (LABEL=PATH)") from None


def setting_runs(methods: list[Method]) -> list[tuple[str, str | None]]:
    """Training sets of the networks: ("hr", None) then (name, method name) per method.

    Raises:
        ValueError: a method labelled "hr", in any case (its network's folder would be the HR
            one's).
    """
    if any(m.name.casefold() == "hr" for m in methods):
        raise ValueError("method name 'hr' is the HR images' own training set; label it "
                         "differently (LABEL=...)")
    return [("hr", None)] + [(m.name, m.name) for m in methods]
