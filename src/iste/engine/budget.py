"""Memory of an in-memory super-resolution, estimated before any work: whole, tiled or refused.

A whole-image pass holds the encoder's features of every LR pixel (tens of channels, and for
ISTE several 256-channel tables) plus float copies of the output; a 9000 x 9000 image needs
hundreds of GB that way. The tiled pass (:func:`iste.engine.tiles.render_tiles`, the tiles of
the slide pipeline, same pixels) holds one tile's work plus the input and the output: a float
output, or for an 8-bit result (:func:`super_resolve_to_uint8`, the command line's plain
images) each tile quantised into a uint8 one, 3 bytes an output pixel. So:

- whole when its estimate fits in half the memory available on the model's device (the
  common case: small images, evaluation, validation);
- else tiled, when the input and output arrays and one tile's work fit;
- else refused with a one-line error saying how much it would need.

Estimates are upper-bound-ish, not exact: the features per LR pixel are measured once per
model by encoding a small probe (:func:`feature_bytes_per_pixel`), and the encoder's
intermediate activations are counted as ``_ACTIVATION_FACTOR`` times that. The query chunks
in flight at once (one per chunk worker, :mod:`iste.engine.parallel`; N threads, N chunks)
add N x chunk x the peak working memory of one query, measured once per model on a probe
chunk (:func:`query_bytes_per_query`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from iste.data.tensors import rgb_to_tensor, tensor_to_rgb
from iste.data.imageformats import DECODE_BYTES
from iste.data.memory import host_memory_available

__all__ = ["ImagePlan", "MAX_OUTPUT_PIXELS", "DECODE_BYTES", "available_memory",
           "check_decode_fits", "check_output_pixels",
           "chunk_bytes_in_flight", "feature_bytes_per_pixel", "plan_image",
           "query_bytes_per_query", "super_resolve_within_memory", "super_resolve_to_uint8"]

MAX_OUTPUT_PIXELS = 1 << 30
"""Largest output an in-memory (plain image) job writes: 1 Gpx, 3 GB as uint8. Larger
outputs belong in a pyramidal TIFF (the whole-slide path streams them tile by tile)."""

_SMALL_OUT = 1 << 22  # outputs up to 4 Mpx from inputs up to 1 Mpx: whole, without measuring
_SMALL_LR = 1 << 20
_SMALL_BUDGET = 16 << 30  # ... where this much is available: under a tighter cgroup limit
# nothing else would check the pass (the shipped model's of a 1024 x 1024 input to 2048 x 2048
# is estimated at 4.1 GiB and peaked at 1.5 GiB resident; a wider model's holds more)
_ACTIVATION_FACTOR = 3
# an encoder's copy of the uint8 output: PIL holds RGB pixels in 4 bytes (PNG, JPEG)
_ENCODER_BYTES = 4
_OUT_BYTES_WHOLE = 3 * 4 * 2 + 3 + _ENCODER_BYTES  # two float copies, the uint8 output
_OUT_BYTES_TILED = 3 * 4 + 3 + _ENCODER_BYTES  # the float output and the uint8 one
_OUT_BYTES_TILED_UINT8 = 3 + _ENCODER_BYTES  # tiles quantised into the uint8 output
_LR_BYTES = 3 + 3 * 4  # uint8 input and its float tensor
_PROBE_QUERIES = 256
_probe_cache: "weakref.WeakKeyDictionary[torch.nn.Module, int]" = weakref.WeakKeyDictionary()
_query_probe_cache: "weakref.WeakKeyDictionary[torch.nn.Module, int]" = \
    weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class ImagePlan:
    """tiled: render tile by tile (tiles of ``tile`` output pixels, :func:`iste.engine.tiles.
    default_tile` for the scale; 0 for a whole pass); estimate: bytes."""

    tiled: bool
    estimate: int
    tile: int = 0


def available_memory(device: torch.device | None = None, *, proc: str = "/proc/self") -> int:
    """Bytes available to a new allocation on ``device``: for the CPU (or None) the host's
    (:func:`iste.data.memory.host_memory_available`); for a CUDA device the lesser of that
    and the device's free memory (what the driver has free plus what torch's caching
    allocator holds unused), since the features, the queries and the float output of either
    pass live there.
    ``proc``: the process's proc folder (its cgroups and limits)."""
    host = host_memory_available(proc)
    if device is None or device.type != "cuda":
        return host
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return min(host, free + cached)


def check_output_pixels(out_hw: tuple[int, int], batch: int = 1) -> None:
    """Refuse an in-memory output above :data:`MAX_OUTPUT_PIXELS` (``batch`` images of
    ``out_hw`` in all), before any work.

    Raises:
        ValueError: one line with the size and what to do instead.
    """
    h, w = out_hw
    if batch * h * w > MAX_OUTPUT_PIXELS:
        images = f"{batch} images of " if batch > 1 else ""
        raise ValueError(f"output would be {images}{w} x {h} px ({batch * h * w / 1e9:.3g} "
                         "Gpx), beyond the "
                         f"{MAX_OUTPUT_PIXELS / 1e9:.3g} Gpx an image file is written whole; "
                         "use a smaller scale, or save the input as a tiled TIFF and upscale it "
                         "as a whole-slide image (a pyramidal .tiff is written tile by tile)")


def check_decode_fits(lr_hw: tuple[int, int], out_hw: tuple[int, int], *,
                      budget: int | None = None) -> None:
    """Refuse, from the sizes in the file's header and before decoding, a plain-image job
    whose least memory exceeds ``budget`` (default: the host's available memory,
    :func:`available_memory`): decoding the input (:data:`DECODE_BYTES` an input pixel),
    then the uint8 input beside a tiled pass's uint8 output and its encoder's copy (the
    model's working set comes on top: :func:`plan_image`, once the model is loaded). Without
    it a decoder that ran out of memory failed with half the machine's memory taken, or the
    kernel killed the process without a word.

    Raises:
        ValueError: one line with the GiB needed and available.
    """
    n_lr, n_out = lr_hw[0] * lr_hw[1], out_hw[0] * out_hw[1]
    floor = max(n_lr * DECODE_BYTES, n_lr * 3 + n_out * _OUT_BYTES_TILED_UINT8)
    budget = available_memory() if budget is None else budget
    if floor > budget:
        raise ValueError(f"super-resolving {lr_hw[1]} x {lr_hw[0]} px to {out_hw[1]} x "
                         f"{out_hw[0]} px needs at least {floor / 2**30:.3g} GiB to decode the "
                         f"input and hold the output; {budget / 2**30:.3g} GiB are available; "
                         "use a smaller scale or upscale the input as a whole-slide image "
                         "(tiled TIFF)")


def feature_bytes_per_pixel(model: torch.nn.Module, *, probe: int = 32) -> int:
    """Bytes of ``model.encode`` output per LR pixel, measured on a (probe x probe) input.
    For a fixed-scale network (no features kept between calls): an input and an output of
    its widest LR-resolution convolution, float32."""
    from iste.engine.fixed import is_fixed_scale

    if model in _probe_cache:
        return _probe_cache[model]
    if is_fixed_scale(model):
        widest = max((m.out_channels for m in model.modules()
                      if isinstance(m, torch.nn.Conv2d)), default=3)
        _probe_cache[model] = 2 * 4 * widest
        return _probe_cache[model]
    device = next(model.parameters()).device
    with torch.no_grad():
        feats = model.encode(torch.zeros(1, 3, probe, probe, device=device,
                                         dtype=torch.float32))
    tensors = feats.values() if isinstance(feats, dict) else [feats]
    total = sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))
    value = max(1, total // (probe * probe))
    _probe_cache[model] = value
    return value


class _PeakLiveBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storages created inside it and still alive: ``peak`` is
    the most at any operation (outputs that alias an input, views and in-place results, are
    not new memory)."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # nothing runs compiled in here: keeps torch from importing torch._dynamo (seconds)
        # to wrap __torch_dispatch__ (the opt-out torch's TorchDispatchMode documents)
        return False

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.now -= self.live.pop(key)[1]
        inputs = {StorageWeakRef(t.untyped_storage()).cdata
                  for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            ref = StorageWeakRef(t.untyped_storage())
            if ref.cdata in inputs or ref.cdata in self.live:
                continue
            nbytes = t.untyped_storage().nbytes()
            self.live[ref.cdata] = (ref, nbytes)
            self.now += nbytes
        self.peak = max(self.peak, self.now)
        return out


def query_bytes_per_query(model: torch.nn.Module, *, probe: int = 16, scale: float = 4.0) -> int:
    """Peak working memory of one query of a chunk, in bytes: the tensors alive at once while
    ``model.query`` answers a chunk of :data:`_PROBE_QUERIES` queries at ``scale`` on a
    (probe x probe) input (its key set resolved first, as the engine does), divided by the
    chunk. Measured once per model; 0 for a fixed-scale network (it has no queries)."""
    from iste.engine.fixed import is_fixed_scale
    from iste.models.heads.base import KeySet

    if model in _query_probe_cache:
        return _query_probe_cache[model]
    if is_fixed_scale(model):
        _query_probe_cache[model] = 0
        return 0
    device = next(model.parameters()).device
    out = round(probe * scale)
    with torch.no_grad():
        feats = model.encode(torch.zeros(1, 3, probe, probe, device=device,
                                         dtype=torch.float32))
        axis = (torch.arange(out, device=device, dtype=torch.float32) + 0.5) / out * 2 - 1
        grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(1, -1, 2)
        coord = grid[:, :_PROBE_QUERIES]
        cell = torch.full_like(coord, 2 / out)
        kwargs = {}
        if model.uses_key_set:  # every probe pixel a key
            keys = KeySet(grid, torch.full_like(grid, 2 / out))
            kwargs["keys"] = model.prepare_keys(feats, keys, coord)
        with _PeakLiveBytes() as tracker:
            model.query(feats, coord, cell, **kwargs)
    value = max(1, tracker.peak // coord.shape[1])
    _query_probe_cache[model] = value
    return value


def chunk_bytes_in_flight(model: torch.nn.Module, options) -> int:
    """Bytes of the query chunks a render holds at once: one chunk per chunk worker
    (:func:`iste.engine.parallel.chunk_workers`), each ``options.chunk`` queries (the
    model's default on its device when unset) of :func:`query_bytes_per_query`."""
    from iste.engine.parallel import chunk_workers
    from iste.engine.render import default_chunk

    device = next(model.parameters()).device
    chunk = options.chunk or default_chunk(device, model)
    return chunk_workers(device, options.workers) * chunk * query_bytes_per_query(model)


def plan_image(model: torch.nn.Module, lr_hw: tuple[int, int], out_hw: tuple[int, int], *,
               budget: int | None = None, options=None, batch: int = 1,
               uint8_out: bool = False) -> ImagePlan:
    """Whole or tiled, from the estimated memory of each; ``budget`` defaults to the memory
    available on the model's device (:func:`available_memory`); ``options``
    (:class:`iste.engine.render.QueryOptions`, default ones) give the chunk size and the
    chunks in flight. ``batch`` images of these sizes at once:
    "tiled" then means they do not fit in one pass together. ``uint8_out``: the tiled pass
    quantises each tile into a uint8 output from the uint8 input
    (:func:`super_resolve_to_uint8`), holding no float copy of the whole input or output.

    Raises:
        ValueError: the output exceeds :data:`MAX_OUTPUT_PIXELS`, or even the tiled pass
            would not fit in ``budget``.
    """
    check_output_pixels(out_hw, batch)
    n_lr, n_out = batch * lr_hw[0] * lr_hw[1], batch * out_hw[0] * out_hw[1]
    if budget is None:
        budget = available_memory(next(model.parameters()).device)
        if n_out <= _SMALL_OUT and n_lr <= _SMALL_LR and budget >= _SMALL_BUDGET:
            return ImagePlan(False, 0)
    from iste.engine.fixed import is_fixed_scale
    from iste.engine.render import QueryOptions
    from iste.engine.tiles import default_tile

    scale = max(out_hw[0] / lr_hw[0], out_hw[1] / lr_hw[1])
    per_lr = feature_bytes_per_pixel(model) * (1 + _ACTIVATION_FACTOR)
    in_flight = 0
    if not is_fixed_scale(model):  # what the queries build at this scale (CLIT's stage grids)
        per_lr += model.query_bytes_per_pixel(scale)
        in_flight = chunk_bytes_in_flight(model, options or QueryOptions())
    whole = n_lr * (per_lr + _LR_BYTES) + n_out * _OUT_BYTES_WHOLE + in_flight
    if whole <= budget // 2:
        return ImagePlan(False, whole)
    tile = default_tile(scale)  # as the slide pipeline's
    tile_lr = (tile / scale + 2 * 64) ** 2  # a tile's LR crop with a generous halo
    out_bytes = _OUT_BYTES_TILED_UINT8 if uint8_out else _OUT_BYTES_TILED
    # tiles of an 8-bit result read the caller's uint8 input, held (and so counted as not
    # available) already
    lr_bytes = 0 if uint8_out else _LR_BYTES
    tiled = n_lr * lr_bytes + n_out * out_bytes + int(tile_lr * per_lr) \
        + tile * tile * _OUT_BYTES_WHOLE + in_flight
    if tiled > budget:
        raise ValueError(f"super-resolving {lr_hw[1]} x {lr_hw[0]} px to {out_hw[1]} x "
                         f"{out_hw[0]} px needs about {tiled / 2**30:.3g} GiB even tile by tile; "
                         f"{budget / 2**30:.3g} GiB are available; use a smaller scale or "
                         "upscale the input as a whole-slide image (tiled TIFF)")
    return ImagePlan(True, tiled, tile)


def _in_every_image(progress, batch: int):
    """``progress`` for a pass over a batch of ``batch`` images, whose renderers report each
    output pixel position once: the pixels of every image."""
    return lambda n: progress(n * batch)


def super_resolve_within_memory(model: torch.nn.Module, lr: torch.Tensor,
                                out_hw: tuple[int, int], *, options=None,
                                progress=None) -> torch.Tensor:
    """:func:`iste.engine.render.super_resolve` when the whole-image pass fits
    (:func:`plan_image`), else the same pixels tile by tile (:func:`iste.engine.tiles.
    tiled_super_resolve`). A batch that does not fit in one pass runs image by image.

    lr: (B, 3, h, w) float in [0, 1] on the model's device. Returns (B, 3, H, W) in [0, 1].
    progress: called with the number of output pixels done since its last call, B x H x W in
    all (a batch in one pass reports each pixel position once for its B images).

    Raises:
        ValueError: the output is beyond :data:`MAX_OUTPUT_PIXELS` or would not fit even tile
            by tile (before any work).
    """
    from iste.engine.fixed import check_fixed_frame, is_fixed_scale
    from iste.engine.render import QueryOptions
    from iste.engine.tiles import tiled_super_resolve

    options = options or QueryOptions()
    if is_fixed_scale(model):
        check_fixed_frame(model, tuple(lr.shape[-2:]), tuple(out_hw))
    batch = lr.shape[0]
    plan = plan_image(model, tuple(lr.shape[-2:]), tuple(out_hw), options=options, batch=batch)
    if batch > 1 and plan.tiled:  # not all at once: image by image, each within memory
        sr = torch.empty(batch, 3, *out_hw, device=lr.device, dtype=torch.float32)
        for i in range(batch):
            sr[i:i + 1] = super_resolve_within_memory(model, lr[i:i + 1], out_hw,
                                                      options=options, progress=progress)
        return sr
    if progress is not None and batch > 1:
        progress = _in_every_image(progress, batch)
    if not plan.tiled:
        return _whole_pass(model, lr, tuple(out_hw), options, progress)
    return tiled_super_resolve(model, lr, tuple(out_hw), tile_hw=(plan.tile, plan.tile),
                               options=options, on_tile=_on_tile(progress))


def _on_tile(progress):
    """``progress`` (called with the output pixels done) as a tiled pass's ``on_tile``."""
    return None if progress is None else lambda tile: progress(tile.out_hw[0] * tile.out_hw[1])


def _whole_pass(model: torch.nn.Module, lr: torch.Tensor, out_hw: tuple[int, int], options,
                progress) -> torch.Tensor:
    """The whole-image pass: (B, 3, h, w) -> (B, 3, H, W) float in [0, 1]."""
    from iste.engine.fixed import fixed_sr, is_fixed_scale
    from iste.engine.render import autocast_for, super_resolve

    if not is_fixed_scale(model):
        return super_resolve(model, lr, out_hw, options=options, progress=progress)
    precision = options.resolved(model).precision
    with torch.no_grad(), autocast_for(lr.device, precision):
        sr = fixed_sr(model, lr).float().clamp_(0, 1)
    if progress is not None:
        progress(out_hw[0] * out_hw[1])
    return sr


def super_resolve_to_uint8(model: torch.nn.Module, image: np.ndarray, out_hw: tuple[int, int],
                           *, options=None, progress=None) -> np.ndarray:
    """One 8-bit image as :func:`super_resolve_within_memory`, quantised (:func:`iste.data.
    tensors.tensor_to_rgb`). A tiled pass reads each tile's crop from the uint8 input and
    quantises the tile into the uint8 result as it comes: no float copy of the whole input
    (12 bytes an LR pixel) nor of the whole output (12 bytes a pixel, plus the conversion's
    copy; a 12000 x 9000 image x2 peaked at 15.1 GiB resident with them).

    image: uint8 (h, w, 3). Returns (H, W, 3) uint8 on the CPU.

    Raises:
        ValueError: as :func:`super_resolve_within_memory`.
    """
    from iste.engine.fixed import check_fixed_frame, is_fixed_scale
    from iste.engine.render import QueryOptions
    from iste.engine.tiles import tiled_super_resolve

    options = options or QueryOptions()
    device = next(model.parameters()).device
    lr_hw, out_hw = tuple(image.shape[:2]), tuple(out_hw)
    if is_fixed_scale(model):
        check_fixed_frame(model, lr_hw, out_hw)
    plan = plan_image(model, lr_hw, out_hw, options=options, uint8_out=True)
    if not plan.tiled:
        return tensor_to_rgb(_whole_pass(model, rgb_to_tensor(image, device), out_hw, options,
                                         progress))
    lr = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None]
    out = np.empty((*out_hw, 3), np.uint8)
    tiled_super_resolve(model, lr, out_hw, tile_hw=(plan.tile, plan.tile), options=options,
                        on_tile=_on_tile(progress),
                        out=torch.from_numpy(out).permute(2, 0, 1)[None])
    return out
