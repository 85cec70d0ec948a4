"""Run a method's published code from a checkout, inside a benchmark child process.

The checkout (an exported work tree of the repository its registry entry names,
:class:`iste.models.registry.PublishedCode`) is imported as is; nothing in it is modified. Patches live only in this process, at run time:

- ``Tensor.cuda`` and ``Module.cuda`` return their object unchanged, so the code's hard-coded
  ``.cuda()`` calls keep everything on the CPU;
- ``tensorboardX`` and ``timm`` (imported at module level by the published utilities and
  SwinIR, never used by these EDSR-baseline models) get empty stand-ins when not installed.

The published ISTE also imports ``einops``, which is not a dependency of iste: put it on the
child's ``PYTHONPATH`` (``iste bench --published-pythonpath DIR``).

The model is built by the published registry from a paper-size spec (the entry's
``bench_args``, EDSR-baseline encoder without upsampler) after ``torch.manual_seed(seed)``; its state dict is saved as a published
checkpoint, which our side reads with :func:`iste.models.official.load_official`, so both run
the same weights. Queries follow the published evaluation loop: features once, then the
output's pixel centres in chunks of ``chunk`` queries, cell (2 / H, 2 / W).
"""

from __future__ import annotations

import sys
import types

import numpy as np
import torch
from torch import nn

from iste.data.coords import make_coord
from iste.models.registry import HEADS

_ENCODER = {"name": "edsr-baseline", "args": {"no_upsampling": True}}

# methods whose published code this benchmark can drive (gen_feat, then query in chunks)
BENCHABLE = tuple(m for m, e in HEADS.items() if e.published.bench_args is not None)


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


def import_published(checkout: str):
    """The published ``models`` package of ``checkout``, importable on a CPU-only machine."""
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    nn.Module.cuda = lambda self, *args, **kwargs: self
    _stub("tensorboardX", SummaryWriter=_unused)
    _stub("timm")
    _stub("timm.models")
    _stub("timm.models.layers", DropPath=_unused, to_2tuple=_unused, trunc_normal_=_unused)
    sys.path.insert(0, checkout)
    import models  # the checkout's registry

    return models


def published_sr_function(job: dict, device: torch.device):
    """``sr(lr uint8 (h, w, 3), (H, W)) -> float32 (H, W, 3)`` through the published code."""
    method, chunk = job["method"], int(job["chunk"])
    models = import_published(job["checkout"])
    torch.manual_seed(job["seed"])
    spec = published_spec(method)
    model = models.make(spec).to(device).eval()
    if job.get("save_ckpt"):
        torch.save({"model": {**spec, "sd": model.state_dict()}}, job["save_ckpt"])
    query = getattr(model, HEADS[method].published.bench_query)

    def sr(lr: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
        x = torch.from_numpy(lr).to(device).permute(2, 0, 1)[None].float() / 255
        coord = make_coord(out_hw, device=device)[None]
        cell = torch.tensor([2 / out_hw[0], 2 / out_hw[1]], device=device).expand_as(coord)
        with torch.no_grad():
            model.gen_feat((x - 0.5) / 0.5)
            preds = [query(coord[:, i:i + chunk], cell[:, i:i + chunk].contiguous())
                     for i in range(0, coord.shape[1], chunk)]
        out = (torch.cat(preds, 1)[0] * 0.5 + 0.5).clamp_(0, 1)
        return out.view(*out_hw, 3).cpu().numpy()

    return sr
