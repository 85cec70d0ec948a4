"""The small Python API: ``iste.load``, ``iste.upscale`` and ``iste.upscale_to``.

Images in, images of the same kind out:

=====================  ==========================================================================
input                  output
=====================  ==========================================================================
``np.ndarray`` uint8   uint8, same layout: (h, w) gray, (h, w, 3) RGB or (h, w, 4) RGBA
``np.ndarray`` float   same dtype, values in [0, 1] (clamped), not rounded to 8 bits; (h, w, 2)
                       is gray with alpha
``PIL.Image``          ``PIL.Image``: L, LA, RGB, RGBA and F (float gray in [0, 1]) keep their
                       mode (L and RGB with a transparent colour, ``info["transparency"]``,
                       come back LA and RGBA); 1 comes back L; P, PA and other colour modes
                       come back RGB (RGBA where they have transparency; CMYK converted
                       through its CMYK profile where it has one); 16- and 32-bit
                       integer modes (I;16, I) are refused (convert them to 8 bits or to a
                       float array first), and
                       so is an 8-bit image PIL decoded from a 16-bit file (the high byte of
                       a 16-bit RGB PNG or TIFF: :func:`iste.data.images.pil_refusal`); an
                       ICC profile (``info["icc_profile"]``) of the output's colour space
                       (RGB, gray) is carried, so that ``save`` embeds it; pixels come back
                       in stored order with the EXIF orientation (``info["exif"]``, that tag
                       alone): ``ImageOps.exif_transpose`` turns them upright, as
                       ``iste upscale`` writes them
``np.ma.MaskedArray``  refused: fill it (``image.filled(value)``), the model reads every pixel
``torch.Tensor``       same dtype and device: (C, h, w) or a batch (B, C, h, w), C in 1-4 as
                       for numpy; float in [0, 1] or uint8
=====================  ==========================================================================

Gray images run through the model as three equal channels and come back as their mean; an alpha
channel is not super-resolved by the model but resized bicubically (the same pixel-centre
geometry) and reattached. The model runs on its own device; tensors come back on theirs. A batch
whose images do not fit in memory together runs image by image.

``dtype="float32"`` overrides the output's dtype: numpy, PIL and uint8 inputs then come back as
the model's prediction clamped to [0, 1] and *not* rounded to 8 bits (numpy float32; a tensor
float32), which is what the published test code and ``iste eval`` score.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Callable

import numpy as np
import torch

from iste.data.tensors import unit_to_uint8
from iste.default_model import load_model_or_default
from iste.engine.fixed import check_fixed_scale
from iste.engine.frame import MAX_SCALE, Frame, check_scale
from iste.engine.budget import super_resolve_within_memory
from iste.engine.image import resize_alpha
from iste.engine.render import QueryOptions
from iste.models.base import SRModel
from iste.runtime import (pick_device, requested_threads, set_threads,
                           warn_unusable_thread_variables)

__all__ = ["load", "upscale", "upscale_to", "check_scale", "pick_device"]

try:
    set_threads()  # ISTE_THREADS where OMP_NUM_THREADS was also set
except ValueError:
    pass  # an invalid ISTE_THREADS is refused where it is used: the CLI and iste.load()

Image = Any  # np.ndarray | PIL.Image.Image | torch.Tensor


def load(path: str | os.PathLike | None = None, *, device: str | torch.device | None = None):
    """A model from our safetensors checkpoint, or the shipped default when ``path`` is None.
    ValueError for an unknown or absent device, or an invalid ``ISTE_THREADS``; TypeError for
    a path or a device of another type. A warning where ``OMP_NUM_THREADS`` or
    ``MKL_NUM_THREADS`` holds no thread count (as the command line says)."""
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a checkpoint's path (str or os.PathLike) or None, got "
                        f"{type(path).__name__}")
    requested_threads()  # an invalid ISTE_THREADS is an error here, not ignored
    warn_unusable_thread_variables()
    device = pick_device(device)
    with _cpu_default_device():
        return load_model_or_default(path, device=device)


def upscale(image: Image, scale: float, model: torch.nn.Module | None = None, *,
            options: QueryOptions = QueryOptions(), dtype: str | None = None,
            progress: Callable[[int], None] | None = None) -> Image:
    """Super-resolve an image by ``scale``, a real number with 1 < scale <= 8 (e.g. 2.5; the
    models are trained up to x4).

    image: see the module docstring (numpy, PIL or torch; gray, RGB or RGBA; batches).
    Returns the same kind, (round(h * s), round(w * s)) pixels; with ``dtype="float32"`` the
    clamped float prediction in [0, 1] (numpy float32 for numpy and PIL inputs).
    model: a loaded model (:func:`load`, or one of ours in eval mode), or the path of a
    checkpoint to load; the shipped default when None.
    options: :class:`iste.engine.render.QueryOptions` (chunk, precision, workers ...).
    progress: called with the number of output pixels done since its last call; the calls
    add up to B x round(h * s) x round(w * s) for a batch of B images (1 otherwise).

    Raises:
        TypeError: ``model``, ``options`` or ``progress`` of the wrong type.
        ValueError: an image, scale or ``dtype`` it does not take (one line naming it),
            including :class:`iste.models.checkpoint.CheckpointError` for a ``model`` path
            that is not a checkpoint.
    """
    scale = check_scale(scale)
    _check_arguments(options, dtype, progress)
    h, w = _height_width(image)
    if min(h, w) < 1:
        raise ValueError(f"image is empty: {_describe(image)}")
    model = _model(model)
    if model is not None:
        check_fixed_scale(model, scale)
    return upscale_to(image, Frame.for_scale((h, w), scale).out_hw, model, options=options,
                      dtype=dtype, progress=progress)


def upscale_to(image: Image, out_hw: tuple[int, int], model: torch.nn.Module | None = None, *,
               options: QueryOptions = QueryOptions(), dtype: str | None = None,
               progress: Callable[[int], None] | None = None) -> Image:
    """Super-resolve an image to exactly ``out_hw`` = (height, width) pixels (any aspect
    change allowed, e.g. the evaluation protocol's HR size). Same kinds as :func:`upscale`.
    A side shorter than the input's samples the model's continuous image at the output's
    pixel centres, without the low-pass filter of a resize (aliasing): use a resize to
    reduce an image."""
    _check_arguments(options, dtype, progress)
    out_hw = _check_size(out_hw)
    model = _model(model)
    batch, restore = _to_batch(image, as_float=dtype == "float32")  # refused before a load
    model = load() if model is None else model
    device = next(model.parameters()).device
    h, w = batch.shape[-2:]
    ratio = max(out_hw[0] / h, out_hw[1] / w)
    if ratio > MAX_SCALE:
        raise ValueError(f"output size {out_hw[1]} x {out_hw[0]} is x{ratio:.4g} the input's "
                         f"{w} x {h}, beyond what the models can reach (max x{MAX_SCALE:g})")
    with _cpu_default_device():
        sr = _upscale_batch(batch.to(device), out_hw, model, options, progress)
    return restore(sr)


def _cpu_default_device():
    """A context in which torch's default device is the CPU, as the loader and the engine
    expect: they make their index tensors there and place what the model needs on its device.
    A host program's ``torch.set_default_device("cuda")`` (or ``"meta"``) moved them, in the
    calling thread only (the engine's chunk workers still saw the CPU), and a CPU model or the
    workers then met tensors of another device, deep in torch. Nothing is entered where the
    default is already the CPU (a device context intercepts every torch call)."""
    if torch.get_default_device().type == "cpu":
        return contextlib.nullcontext()
    return torch.device("cpu")


def _check_arguments(options, dtype, progress) -> None:
    """TypeError / ValueError naming the argument, before any work."""
    if options is not None and not isinstance(options, QueryOptions):
        raise TypeError(f"options must be iste.engine.render.QueryOptions(...), got "
                        f"{type(options).__name__}")
    if dtype not in (None, "float32"):
        raise ValueError(f"dtype must be None (the input's) or 'float32', got {dtype!r}")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be a function of the pixels done, got "
                        f"{type(progress).__name__}")


def _model(model) -> SRModel | None:
    """``model`` as given (None: the default, loaded later), loaded from a checkpoint path,
    a TypeError for an object that is not one of our models, or a ValueError for one that is
    not float32 or is in training mode."""
    if model is None or isinstance(model, SRModel):
        if model is not None and next(model.parameters()).dtype != torch.float32:
            raise ValueError(f"model weights must be float32 (precision is an option: "
                             f"QueryOptions(precision=...)), got {next(model.parameters()).dtype}")
        if model is not None and model.training:
            # stochastic depth and batch norm would change the pixels (and batch norm its
            # statistics); switching the caller's model to eval here would race other threads
            raise ValueError("model is in training mode: call model.eval() first (stochastic "
                             "depth and batch norm would change the output)")
        return model
    if isinstance(model, (str, os.PathLike)):
        return load(model)
    raise TypeError(f"model must be a model from iste.load() or a checkpoint path, got "
                    f"{type(model).__name__}")


def _check_size(out_hw) -> tuple[int, int]:
    try:
        # a set or a dict has no order to tell the height from the width by
        values = () if isinstance(out_hw, (set, frozenset, dict)) else tuple(out_hw)
    except TypeError:
        values = ()
    if len(values) != 2 or not all(_is_whole(v) for v in values):
        raise ValueError(f"output size must be (height, width) in whole pixels, got "
                         f"{str(out_hw)[:60]}")
    h, w = (int(v) for v in values)
    if h < 1 or w < 1:
        raise ValueError(f"output size must be positive, got {out_hw!r}")
    return h, w


def _is_whole(v) -> bool:
    """An integer (Python, numpy or a 0-d tensor; not a bool), or a float with no fraction."""
    if isinstance(v, (bool, np.bool_)):
        return False
    if isinstance(v, torch.Tensor):
        return v.ndim == 0 and _is_whole(v.item())
    if isinstance(v, (int, np.integer)):
        return True
    return isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v).is_integer()


def _upscale_batch(x: torch.Tensor, out_hw: tuple[int, int], model, options: QueryOptions,
                   progress) -> torch.Tensor:
    """x: float (B, C, h, w) in [0, 1] with C = 1 (gray), 2 (gray, alpha), 3 (RGB) or 4 (RGBA)
    -> float (B, C, H, W) in [0, 1]."""
    c = x.shape[1]
    gray = c in (1, 2)
    rgb = x[:, :1].expand(-1, 3, -1, -1) if gray else x[:, :3]
    sr = super_resolve_within_memory(model, rgb.contiguous(), out_hw, options=options,
                                     progress=progress)
    if gray:
        sr = sr.mean(dim=1, keepdim=True)
    if c in (2, 4):
        sr = torch.cat([sr, resize_alpha(x[:, c - 1:], out_hw)], dim=1)
    return sr


def _height_width(image: Image) -> tuple[int, int]:
    if isinstance(image, np.ndarray) and image.ndim in (2, 3):
        return image.shape[0], image.shape[1]
    if isinstance(image, torch.Tensor):
        _check_dense(image)
    if isinstance(image, torch.Tensor) and image.ndim in (3, 4):
        return image.shape[-2], image.shape[-1]
    if _is_pil(image):
        return image.height, image.width
    raise ValueError(f"image must be a numpy array (h, w[, 1-4]), a PIL image or a tensor "
                     f"([B,] C, h, w); got {_describe(image)}")


def _to_batch(image: Image, *, as_float: bool = False
              ) -> tuple[torch.Tensor, Callable[[torch.Tensor], Image]]:
    """(float (B, C, h, w) in [0, 1] on the CPU or the tensor's device, a function turning a
    result of that form back into the input's kind; float32 when ``as_float``)."""
    if isinstance(image, torch.Tensor):
        return _tensor_batch(image, as_float)
    if _is_pil(image):
        return _pil_batch(image, as_float)
    if isinstance(image, np.ma.MaskedArray):  # its data under the mask would be upscaled
        raise ValueError("image is a masked numpy array, whose masked pixels would be read "
                         "as they are: pass image.filled(value) with the value they should "
                         "have")
    if isinstance(image, np.ndarray):
        return _numpy_batch(image, as_float)
    raise ValueError(f"image must be a numpy array, a PIL image or a torch tensor; got "
                     f"{_describe(image)}")


def _numpy_batch(arr: np.ndarray, as_float: bool = False, what: str = "numpy image"):
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4)) \
            or 0 in arr.shape:
        raise ValueError(f"numpy image must be (h, w), (h, w, C) with C = 1 (gray), 2 (gray, "
                         f"alpha), 3 (RGB) or 4 (RGBA), got {arr.shape}")
    if arr.dtype != np.uint8 and not (arr.dtype.kind == "f" and arr.dtype.itemsize in (2, 4, 8)):
        raise ValueError(f"numpy image must be uint8 or float in [0, 1], got {arr.dtype}")
    gray = arr.ndim == 2
    hwc = arr[..., None] if gray else arr
    native = np.array(hwc, dtype=hwc.dtype.newbyteorder("="))  # a copy in this CPU's byte order
    x = _to_unit_float(torch.from_numpy(native), what=what)
    batch = x.permute(2, 0, 1)[None]

    def restore(sr: torch.Tensor) -> np.ndarray:
        dtype = np.float32 if as_float else arr.dtype
        out = _from_unit_float(sr[0].permute(1, 2, 0), dtype).cpu().numpy()
        return out[..., 0] if gray else out

    return batch, restore


def _tensor_batch(t: torch.Tensor, as_float: bool = False):
    _check_dense(t)
    if t.ndim in (3, 4) and t.shape[-3] in (1, 2, 3, 4) and 0 in t.shape:  # a valid layout
        raise ValueError(f"image is empty: {_describe(t)}")
    if t.ndim not in (3, 4) or t.shape[-3] not in (1, 2, 3, 4):
        raise ValueError(f"tensor image must be (C, h, w) or (B, C, h, w) with C in 1-4; "
                         f"got {tuple(t.shape)}")
    single = t.ndim == 3
    batch = _to_unit_float(t.detach()[None] if single else t.detach(), what="tensor image")

    def restore(sr: torch.Tensor) -> torch.Tensor:
        out = _from_unit_float(sr, torch.float32 if as_float else t.dtype).to(t.device)
        return out[0] if single else out

    return batch, restore


def _check_dense(t: torch.Tensor) -> None:
    """ValueError for a tensor that is not a dense one holding data: meta, sparse or nested
    (whose ``.shape`` raised torch's "Internal error ... Please file an issue")."""
    if t.layout != torch.strided or t.is_meta or t.is_nested:
        kind = "meta" if t.is_meta else "nested" if t.is_nested else \
            str(t.layout).replace("torch.", "")
        hint = ": pass the images one by one, or same-size ones as a (B, C, h, w) batch" \
            if t.is_nested else ""
        raise ValueError(f"tensor image must be a dense tensor holding data, got a {kind} "
                         f"tensor{hint}")


def _pil_batch(img, as_float: bool = False):
    from PIL import Image as PILImage

    # tifffile: not on every `import iste`
    from iste.data.imagemeta import cmyk_to_rgb, orientation_exif, pil_orientation, profile_for
    from iste.data.images import pil_refusal

    mode = _pil_mode(img)
    refusal = pil_refusal(img)  # before the pixels are read: PIL forgets the depth then
    if refusal is not None:
        raise ValueError(f"PIL image {_pil_name(img)}is not supported: {refusal}, or pass "
                         "a float numpy array in [0, 1]")
    arr = (cmyk_to_rgb(np.asarray(img), img.info.get("icc_profile")) if img.mode == "CMYK"
           else np.asarray(img if img.mode == mode else img.convert(mode)))
    batch, restore_array = _numpy_batch(arr, as_float, what=f"PIL image (mode {img.mode})")
    if as_float:
        return batch, restore_array
    # the source's profile where it describes the pixels as stored and as returned: not a
    # CMYK one (the pixels come back RGB), nor an RGB one of gray pixels
    profile = profile_for(img.info.get("icc_profile"), img.mode, mode)
    # the pixels come back in stored order, as PIL gives them: the orientation goes with them,
    # so that ImageOps.exif_transpose turns the output upright as `iste upscale` writes it
    exif = orientation_exif(pil_orientation(img))

    def restore(sr: torch.Tensor):
        out = PILImage.fromarray(restore_array(sr), mode=mode)
        if profile:  # saved with the image (PNG, JPEG, TIFF), as iste upscale writes it
            out.info["icc_profile"] = profile
        if exif is not None:
            out.info["exif"] = exif
        return out

    return batch, restore


def _pil_name(img) -> str:
    """The file a PIL image was opened from, quoted, and a space; "" for none."""
    name = getattr(img, "filename", None)
    return f"{str(name)!r} " if name else ""


_PIL_ALPHA = {"LA": "LA", "La": "LA", "PA": "RGBA", "RGBa": "RGBA", "RGBA": "RGBA"}


def _pil_mode(img) -> str:
    """The mode a PIL image runs and comes back in (see the module docstring)."""
    from iste.data.images import pil_has_alpha

    if img.mode in ("L", "RGB") and pil_has_alpha(img):  # a transparent colour (PNG tRNS)
        return "LA" if img.mode == "L" else "RGBA"
    if img.mode in ("L", "RGB", "F") or img.mode in _PIL_ALPHA:
        return _PIL_ALPHA.get(img.mode, img.mode)
    if img.mode.startswith("I"):
        raise ValueError(f"PIL image mode {img.mode!r} (16- or 32-bit integers) is not "
                         "supported: convert it to 8 bits (L or RGB) or pass a float numpy "
                         "array in [0, 1]")
    if img.mode == "1":
        return "L"
    return "RGBA" if img.mode == "P" and pil_has_alpha(img) else "RGB"


def _to_unit_float(t: torch.Tensor, *, what: str) -> torch.Tensor:
    if t.dtype == torch.uint8:
        return t.float().div_(255)
    if not t.is_floating_point():
        raise ValueError(f"{what} must be uint8 or float in [0, 1], got {t.dtype}")
    t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} holds NaN or infinite values")
    lo, hi = float(t.min()), float(t.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"float {what} must hold values in [0, 1], found [{lo:.4g}, {hi:.4g}]"
                         " (divide 8-bit data by 255)")
    return t.clamp(0, 1)


def _from_unit_float(t: torch.Tensor, dtype) -> torch.Tensor:
    """float in [0, 1] -> ``dtype`` (torch or numpy): uint8 rounded, floats as they are."""
    if dtype in (np.uint8, torch.uint8):
        return unit_to_uint8(t)
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else \
        torch.from_numpy(np.zeros(0, np.dtype(dtype).newbyteorder("="))).dtype
    return t.clamp(0, 1).to(torch_dtype)


def _is_pil(obj) -> bool:
    try:
        from PIL import Image as PILImage
    except ImportError:  # pragma: no cover - pillow is a dependency
        return False
    return isinstance(obj, PILImage.Image)


def _describe(obj) -> str:
    shape = getattr(obj, "shape", None)
    return f"{type(obj).__name__}{'' if shape is None else ' ' + str(tuple(shape))}"
