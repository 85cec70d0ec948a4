"""Run a method's published code from a checkout, inside a benchmark child process.

The checkout (an exported work tree of the repository its registry entry names,
:class:`iste.models.registry.PublishedCode`) is imported as is; nothing in it is modified.
Patches live only in this process, at run time:

- ``Tensor.cuda`` and ``Module.cuda`` return their object unchanged, so the code's hard-coded
  ``.cuda()`` calls keep everything on the CPU;
- ``tensorboardX`` and ``timm`` (imported at module level by the published utilities and
  SwinIR, never used by these EDSR-baseline models) get empty stand-ins when not installed.

The published ISTE and ITSRN also import ``einops``, which is not a dependency of iste: put it
on the child's ``PYTHONPATH`` (``iste bench --published-pythonpath DIR``). A registry without
the benchmark's encoder (ITSRN's has only RDN) borrows it from another checkout given to the
same run (``models/edsr.py`` of the LIIF family: LIIF, LTE, LMI), loaded into the published
registry unmodified.

The model is built by the published registry from a paper-size spec (the entry's
``bench_args``, EDSR-baseline encoder without upsampler) after ``torch.manual_seed(seed)``;
its state dict is saved as a published checkpoint, which our side reads with
:func:`iste.models.official.load_official`, so both run the same weights. Queries follow the
published evaluation loop through the method's calling
convention (:mod:`iste.models.published_calls`): features once, then the output's pixel
centres in chunks of ``chunk`` queries, cell (2 / H, 2 / W).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

from iste.data.coords import make_coord
from iste.models.registry import HEADS

_ENCODER = {"name": "edsr-baseline", "args": {"no_upsampling": True}}
ENCODER_MODULE = "models/edsr.py"  # where LIIF-family checkouts register edsr-baseline

# methods whose published code this benchmark drives: every registry entry
BENCHABLE = tuple(HEADS)


def published_spec(method: str) -> dict:
    """The published ``{'name', 'args'}`` spec of ``method``'s paper-size benchmark model."""
    code = HEADS[method].published
    return {"name": code.name, "args": {"encoder_spec": _ENCODER, **code.bench_args}}


def _stub(name: str, **attrs) -> None:
    try:
        __import__(name)
    except ImportError:
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module


def _unused(*args, **kwargs):
    raise RuntimeError("stand-in for a package the benchmark does not install")


def import_published(checkout: str, device: torch.device | str = "cpu"):
    """The published ``models`` package of ``checkout``, importable on a CPU-only machine:
    its ``.cuda()`` calls move to ``device``, the job's (in place of nothing on a CPU), so
    that on a GPU its code runs there as ours does."""
    device = torch.device(device)
    torch.Tensor.cuda = lambda self, *args, **kwargs: self.to(device)
    nn.Module.cuda = lambda self, *args, **kwargs: self.to(device)
    _stub("tensorboardX", SummaryWriter=_unused)
    _stub("timm")
    _stub("timm.models")
    _stub("timm.models.layers", DropPath=_unused, to_2tuple=_unused, trunc_normal_=_unused)
    sys.path.insert(0, checkout)
    import models  # the checkout's registry

    return models


def _borrow_encoder(donors: list[str]) -> None:
    """Register the benchmark's encoder in the imported published registry from the first
    donor checkout that has :data:`ENCODER_MODULE`."""
    for donor in donors:
        path = Path(donor) / ENCODER_MODULE
        if path.is_file():
            spec = importlib.util.spec_from_file_location("models._borrowed_encoder", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)  # its @register adds to the imported registry
            return
    raise RuntimeError(f"the published registry has no {_ENCODER['name']!r}; give a "
                       "LIIF-family checkout too (--published-liif, --published-lte or "
                       "--published-lmi), whose models/edsr.py registers it")


def build_published(job: dict, models):
    """The paper-size published model of ``job['method']``, seeded by ``job['seed']``."""
    spec = published_spec(job["method"])
    torch.manual_seed(job["seed"])
    try:
        return spec, models.make(spec)
    except KeyError as err:  # the registry lacks the encoder
        if err.args != (_ENCODER["name"],):
            raise
    _borrow_encoder(job.get("encoder_donors", []))
    torch.manual_seed(job["seed"])
    return spec, models.make(spec)


def published_sr_function(job: dict, device: torch.device):
    """``sr(lr uint8 (h, w, 3), (H, W)) -> float32 (H, W, 3)`` through the published code."""
    chunk = int(job["chunk"])
    models = import_published(job["checkout"], device)
    spec, model = build_published(job, models)
    model = model.to(device).eval()
    if job.get("save_ckpt"):
        torch.save({"model": {**spec, "sd": model.state_dict()}}, job["save_ckpt"])
    calls = HEADS[job["method"]].published.calls

    def sr(lr: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
        x = torch.from_numpy(lr).to(device).permute(2, 0, 1)[None].float() / 255
        coord = make_coord(out_hw, device=device)[None]
        cell = torch.tensor([2 / out_hw[0], 2 / out_hw[1]], device=device).expand_as(coord)
        with torch.no_grad():
            calls.encode(model, (x - 0.5) / 0.5)
            preds = [calls.query(model, coord[:, i:i + chunk], cell[:, i:i + chunk].contiguous())
                     for i in range(0, coord.shape[1], chunk)]
        out = (torch.cat(preds, 1)[0] * 0.5 + 0.5).clamp_(0, 1)
        return out.view(*out_hw, 3).cpu().numpy()

    return sr
