"""Query engine: features once per input, output pixels in bounded chunks.

For heads that declare ``uses_key_set`` (ISTE's STF), every output pixel's keys are fixed by its
position alone (DESIGN.md section 3): the output is cut into *key windows*, each covering
``stf_window`` x ``stf_window`` LR pixels; the keys of a window are the output pixels inside it
whose global row and column indices are multiples of :func:`key_stride` (about ``stf_keys``
keys per window), queried with the same cell as everything else. Hence the result does not
depend on the chunk size, on the order of queries, or on how an image is cut into tiles (as
long as each tile's features cover whole windows plus a halo).
"""

from __future__ import annotations

import math
import operator
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Callable, Literal, NamedTuple, get_args

import torch
from torch import nn

from iste import runtime
from iste.data.coords import denormalize, normalize
from iste.engine.frame import Frame, axis_coord, axis_window, key_stride
from iste.engine.parallel import ChunkQueue, chunk_workers, map_chunks
from iste.models.heads.base import Features, KeySet, KeyWork, SRHead
from iste.typed import excerpt

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
NARROW_WIDTH = 128
"""A model whose widest Linear layer has fewer outputs is *narrow* (the compact shipped model:
64; the paper-size heads: 256). Its time goes to gathers, the sine (both float32) and the
fixed cost of each model call rather than to matmuls, so bf16 does not pay there (measured on
an AVX512-BF16 CPU: the paper-size heads 1.4-1.5x faster in bf16, the shipped model no
faster: :func:`auto_precision`) and larger query chunks do (:func:`default_chunk`);
docs/performance.md."""


def check_stf_keys(given: bool, models: dict[str, bool], *, what: str = "methods") -> None:
    """Refuse ``stf_keys`` asked for (``--stf-keys``) when none of ``models`` (name -> whether
    it has STF key windows, ``uses_key_set``) has them: it would run as if not given while
    the output's provenance recorded it. The one rule of ``iste upscale`` (``what``
    "model": its one model) and ``iste eval`` (its methods).

    Raises:
        ValueError: one line naming the models.
    """
    if not given or any(models.values()):
        return
    names = list(models)
    who = (f"model {names[0]} has none" if what == "model" else
           f"none of the {what} ({', '.join(names)}) has it")
    raise ValueError(f"--stf-keys applies to models with STF (ISTE); {who}")


@dataclass(frozen=True)
class QueryOptions:
    """chunk: queries per model call (the result does not depend on it); ``None`` picks by
        device and model (:func:`default_chunk`). Small chunks keep each call's activations in
        the CPU cache (heads decode the 4 ensemble neighbours of a chunk together, 4 x chunk
        rows), large ones spread each call's fixed cost; a GPU is used better by large ones.
    stf_window, stf_keys: ISTE key windows (LR pixels per side) and keys per window.
    cell_clip: scales above this query with the cell of this scale (the LIIF family's
        practice for out-of-distribution scales; the models were trained up to x4); not for
        heads that read the scale from the cell (``SRHead.reads_scale_from_cell``: CLIT).
    precision: "bf16" runs matmuls in bfloat16 (autocast) — faster on CPUs with bf16 units;
        "auto" (default) picks per model and device (:func:`auto_precision`).
    workers: threads running whole query chunks side by side, each with one intra-op thread
        (:mod:`iste.engine.parallel`); ``None``: torch's intra-op threads on CPU, 1 on
        accelerators (:func:`iste.engine.parallel.chunk_workers`). 1 runs the chunks one after
        another with torch's intra-op threads. The result does not depend on it.
    """

    chunk: int | None = None
    stf_window: int = 48
    stf_keys: int = 2304
    cell_clip: float | None = 4.0
    precision: Precision = "auto"
    workers: int | None = None

    def __post_init__(self):
        for name in ("chunk", "stf_window", "stf_keys", "workers"):
            value = getattr(self, name)
            if value is not None:  # numpy and tensor integers become ints; 2.5, "64", True fail
                object.__setattr__(self, name, _whole_number(name, value))
        if self.cell_clip is not None:
            clip = _real_number("cell_clip", self.cell_clip)
            if not (math.isfinite(clip) and clip >= 1):
                raise ValueError(f"cell_clip must be None or a scale >= 1, got {self.cell_clip!r}")
            object.__setattr__(self, "cell_clip", clip)
        if (self.chunk is not None and self.chunk < 1) or self.stf_window < 1 or self.stf_keys < 1:
            raise ValueError("chunk, stf_window and stf_keys must be positive")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"chunk workers must be >= 1, got {self.workers}")
        if (self.chunk or 0) > MAX_CHUNK or self.stf_window > 1024 or self.stf_keys > MAX_STF_KEYS:
            raise ValueError(f"--chunk must be <= {MAX_CHUNK}, --stf-keys <= {MAX_STF_KEYS} and "
                             "the STF window <= 1024 (memory grows with each)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, "
                             f"got {self.precision!r}")

    @property
    def pixel_key(self) -> list:
        """What of these options decides the output's pixels, for the keys of cached and
        resumed results: [stf_window, stf_keys, cell_clip, precision] (resolve "auto" first,
        :meth:`resolved`); chunk and workers change only the speed, so results made with
        other ones are reused."""
        return [self.stf_window, self.stf_keys, self.cell_clip, self.precision]

    def resolved(self, model: nn.Module) -> "QueryOptions":
        """These options with ``precision="auto"`` replaced by :func:`auto_precision` and no
        chunk by :func:`default_chunk` for ``model`` on its device."""
        device = next(model.parameters()).device
        return replace(self, chunk=self.chunk or default_chunk(device, model),
                       precision=(auto_precision(model) if self.precision == "auto"
                                  else self.precision))


def _whole_number(name: str, value) -> int:
    """``value`` as an int (Python, numpy or a 0-d tensor; not a bool), else a ValueError."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a whole number, got {excerpt(value)}") from None


def _real_number(name: str, value) -> float:
    """``value`` as a float (not a bool or a string), else a ValueError."""
    if isinstance(value, (bool, str, bytes)):
        raise ValueError(f"{name} must be a number, got {excerpt(value)}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {excerpt(value)}") from None


def model_width(model: nn.Module) -> int:
    """Outputs of the model's widest Linear layer (0 without any): see :data:`NARROW_WIDTH`."""
    return max((m.out_features for m in model.modules() if isinstance(m, nn.Linear)), default=0)


def auto_precision(model: nn.Module) -> Literal["fp32", "bf16"]:
    """bf16 where the model's device has native bf16 units (:func:`iste.runtime.bf16_is_fast`)
    and the model is not narrow (:data:`NARROW_WIDTH`); fp32 otherwise."""
    device = next(model.parameters()).device
    wide = model_width(model) >= NARROW_WIDTH
    return "bf16" if wide and runtime.bf16_is_fast(device) else "fp32"


CPU_CHUNK, NARROW_CPU_CHUNK, GPU_CHUNK = 1024, 2048, 65536
MAX_CHUNK = 1 << 22  # queries per call; activations grow linearly with it
MAX_STF_KEYS = 1 << 16  # keys per STF window; the similarity matrix grows linearly with it
WINDOWS_AHEAD = 2
"""Key windows whose work is queued behind the one the renderer waits for, at each of the two
stages (key tables, then queries): enough that the chunk workers never wait for the calling
thread's serial work (planning a window, stacking its tables, placing its pixels), while at
most 2 * WINDOWS_AHEAD + 1 windows' key tables and outputs are held at once."""


def default_chunk(device: torch.device | str, model: nn.Module | None = None) -> int:
    """Queries per model call when none is given: 65536 on accelerators; on CPU 1024, or 2048
    for a narrow ``model`` (:data:`NARROW_WIDTH`), whose calls' fixed cost (~0.9 ms of Python
    and dispatch for the shipped model) is a third of a 1024-query call: its whole images
    ran 1.04-1.11x and its warm viewer tiles 1.1-1.25x faster with 2048, the paper-size ISTE
    0.98x (docs/performance.md)."""
    if torch.device(device).type != "cpu":
        return GPU_CHUNK
    narrow = model is not None and model_width(model) < NARROW_WIDTH
    return NARROW_CPU_CHUNK if narrow else CPU_CHUNK


def autocast_for(device: torch.device, precision: Precision, *, cache: bool = True):
    """bf16 autocast for "bf16" (with a warning where it is emulated:
    :func:`iste.runtime.warn_if_bf16_is_emulated`); for "fp32", autocast switched off, so that
    a caller's own ``torch.autocast`` does not lower it (resolve "auto" first:
    :meth:`QueryOptions.resolved`). ``cache=False`` casts a weight that requires grad at each
    use instead of keeping its bf16 copy: torch's cache of those copies is one for all
    threads, and training parts side by side through it gave other weights from run to run."""
    if precision == "auto":
        raise ValueError("precision 'auto' must be resolved for a model first")
    if precision == "bf16":
        runtime.warn_if_bf16_is_emulated(device)
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                              cache_enabled=cache)
    return torch.autocast(device_type=device.type, enabled=False)


def _cell(frame: Frame, crop_hw: tuple[int, int], clip: float | None, device) -> torch.Tensor:
    """(2,) output cell in the crop's normalised units, clipped at scale ``clip``."""
    out = []
    for n_out, n_lr, n_crop in zip(frame.out_hw, frame.lr_hw, crop_hw):
        pixel_in_lr = n_lr / n_out  # one output pixel, in LR pixels
        if clip is not None:
            pixel_in_lr = max(pixel_in_lr, 1 / clip)
        out.append(2 * pixel_in_lr / n_crop)
    return torch.tensor(out, dtype=torch.float32, device=device)


class Renderer:
    """Renders rectangles of the global output from features of an LR crop.

    model: a head (:class:`SRHead`); feats: ``model.encode(crop)`` of the LR crop starting at
    ``crop_origin`` (LR row, col) with ``crop_hw`` pixels.
    key_texture: for heads with key sets, an optional hook (window (row, col), compute) ->
    the window's key texture, through which renders of several tiles share it
    (:mod:`iste.engine.shared`); by default every render computes its own.
    """

    def __init__(self, model: SRHead, feats: Features, frame: Frame, *,
                 crop_origin: tuple[int, int] = (0, 0), crop_hw: tuple[int, int] | None = None,
                 options: QueryOptions = QueryOptions(), batch: int = 1,
                 key_texture: Callable[[tuple[int, int], Callable], object] | None = None):
        self.model, self.frame = model, frame
        # the image's size, for heads that read it (base.py), in the caller's dict: a head
        # keeps there what it computes on first use (LIT's stage grids), which the tiles that
        # share an encoded region reuse (iste.engine.shared); a copy lost it at every tile
        image_hw = tuple(frame.lr_hw)
        self.feats = feats if feats.setdefault("image_hw", image_hw) == image_hw \
            else {**feats, "image_hw": image_hw}
        self.options = options.resolved(model)
        self.key_texture = key_texture
        self.origin = crop_origin
        self.crop_hw = crop_hw or frame.lr_hw
        self.batch = batch
        self.device = next(model.parameters()).device
        clip = None if model.reads_scale_from_cell else options.cell_clip
        self.cell = _cell(frame, self.crop_hw, clip, self.device)

    def coords(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """(len(rows) * len(cols), 2) crop-normalised centres of a grid of output pixels."""
        (h_out, w_out), (h, w) = self.frame.out_hw, self.frame.lr_hw
        r = axis_coord(rows, h_out, h, self.origin[0], self.crop_hw[0]).to(self.device)
        c = axis_coord(cols, w_out, w, self.origin[1], self.crop_hw[1]).to(self.device)
        return torch.stack(torch.meshgrid(r, c, indexing="ij"), -1).reshape(-1, 2)

    def _query(self, coord: torch.Tensor, keys) -> torch.Tensor:
        b = self.batch
        coord = coord.unsqueeze(0).expand(b, -1, -1)
        cell = self.cell.expand_as(coord)
        if keys is None:
            return self.model.query(self.feats, coord, cell)
        return self.model.query(self.feats, coord, cell, keys=keys)

    def _chunks(self, coord: torch.Tensor, done: Callable[[int], None]):
        """(B, Q, 3) predictions at ``coord`` (Q, 2) of a head without key sets, chunk by
        chunk, the chunks run by :func:`iste.engine.parallel.map_chunks` (side by side on
        CPU)."""
        chunk = self.options.chunk  # resolved for the model (default_chunk)
        query = self._in_state(lambda start: self._query(coord[start:start + chunk], None))
        outs = map_chunks(query, range(0, coord.shape[0], chunk),
                          chunk_workers(self.device, self.options.workers),
                          done=lambda start, out: done(out.shape[1]))
        return torch.cat(outs, 1)

    def _in_state(self, fn: Callable) -> Callable:
        """``fn`` run under this render's grad mode and autocast (both are per thread, and
        chunk workers do not inherit the caller's)."""
        device, precision = self.device, self.options.precision

        def run(item):
            with torch.no_grad(), autocast_for(device, precision):
                return fn(item)

        return run

    def _window_keys(self, rows: torch.Tensor, cols: torch.Tensor) -> KeySet:
        (h_out, w_out), (h, w) = self.frame.out_hw, self.frame.lr_hw
        opts = self.options
        sr = key_stride(h_out / h, opts.stf_window, opts.stf_keys)
        sc = key_stride(w_out / w, opts.stf_window, opts.stf_keys)
        key_rows, key_cols = rows[rows % sr == 0], cols[cols % sc == 0]
        if key_rows.numel() == 0:
            key_rows = rows[:1]
        if key_cols.numel() == 0:
            key_cols = cols[:1]
        coord = self.coords(key_rows, key_cols).unsqueeze(0).expand(self.batch, -1, -1)
        return KeySet(coord, self.cell.expand_as(coord))

    def render(self, rows: range, cols: range, *,
               progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """Output pixels rows x cols (global indices) -> (B, 3, len(rows), len(cols)),
        in the model's normalised range."""
        done = progress or (lambda n: None)
        dev = self.device
        r_all = torch.arange(rows.start, rows.stop)
        c_all = torch.arange(cols.start, cols.stop)
        out = torch.empty(self.batch, len(rows), len(cols), 3, device=dev, dtype=torch.float32)
        with torch.no_grad(), autocast_for(dev, self.options.precision):
            if not self.model.uses_key_set:
                pred = self._chunks(self.coords(r_all, c_all), done)
                out[:] = pred.view(self.batch, len(rows), len(cols), 3).float()
            else:
                self._render_windows(r_all, c_all, out, done)
        return out.permute(0, 3, 1, 2)

    def _render_windows(self, r_all, c_all, out, done):
        """Every key window of the output rectangle r_all x c_all, as a pipeline on the chunk
        workers (:class:`~iste.engine.parallel.ChunkQueue`): a window's key-table parts are
        queued as soon as it is planned, its query chunks as soon as its tables are stacked,
        and its pixels placed when they are done, each stage :data:`WINDOWS_AHEAD` windows
        behind the one before, so that the calling thread's serial work overlaps the workers'
        and no window waits for the slowest part of the one before it (a warm x4 viewer tile:
        4-9 windows)."""
        keyed: deque[_Keyed] = deque()
        queried: deque[_Queried] = deque()
        with ChunkQueue(chunk_workers(self.device, self.options.workers)) as queue:
            for window in self._windows(r_all, c_all):
                keyed.append(self._start_keys(queue, window))
                if len(keyed) > WINDOWS_AHEAD:
                    queried.append(self._start_queries(queue, keyed.popleft()))
                if len(queried) > WINDOWS_AHEAD:
                    self._place(queried.popleft(), out, done)
            while keyed:
                queried.append(self._start_queries(queue, keyed.popleft()))
            while queried:
                self._place(queried.popleft(), out, done)

    def _windows(self, r_all: torch.Tensor, c_all: torch.Tensor):
        """The key windows that output rows r_all x cols c_all fall in, row-major."""
        (h_out, w_out), (h, w) = self.frame.out_hw, self.frame.lr_hw
        win = self.options.stf_window
        r_win = axis_window(r_all, h_out, h, win)
        c_win = axis_window(c_all, w_out, w, win)
        every_r, every_c = torch.arange(h_out), torch.arange(w_out)  # whole windows, for keys
        every_r_win = axis_window(every_r, h_out, h, win)
        every_c_win = axis_window(every_c, w_out, w, win)
        for a in torch.unique(r_win).tolist():
            r_sel = (r_win == a).nonzero().squeeze(1)
            whole_r = every_r[every_r_win == a]
            for b in torch.unique(c_win).tolist():
                c_sel = (c_win == b).nonzero().squeeze(1)
                whole_c = every_c[every_c_win == b]
                yield _Window((a, b), r_sel, c_sel, self.coords(r_all[r_sel], c_all[c_sel]),
                              self._window_keys(whole_r, whole_c))

    def _start_keys(self, queue: ChunkQueue, window: "_Window") -> "_Keyed":
        """Queue the window's key-table parts (its keys' texture through the ``key_texture``
        hook, computed here when not shared)."""
        model, feats, keys = self.model, self.feats, window.keys
        texture = None
        if self.key_texture is not None:
            texture = self.key_texture(window.id, lambda: model.key_texture(feats, keys))
        coord = window.coord.unsqueeze(0).expand(self.batch, -1, -1)
        work = model.key_work(feats, keys, coord, texture=texture)
        run = self._in_state(work.run)
        return _Keyed(window, work, [queue.submit(run, item) for item in work.items])

    def _start_queries(self, queue: ChunkQueue, keyed: "_Keyed") -> "_Queried":
        """Stack the window's key tables (waiting for its parts) and queue its query chunks."""
        keys = keyed.work.finish([part.result() for part in keyed.parts])
        coord, chunk = keyed.window.coord, self.options.chunk
        query = self._in_state(lambda start: self._query(coord[start:start + chunk], keys))
        return _Queried(keyed.window, [queue.submit(query, start)
                                       for start in range(0, coord.shape[0], chunk)])

    def _place(self, queried: "_Queried", out: torch.Tensor, done: Callable[[int], None]):
        """Put the window's predictions (waiting for its chunks) into ``out``."""
        preds = []
        for chunk in queried.chunks:
            preds.append(chunk.result())
            done(preds[-1].shape[1])
        r_sel, c_sel = queried.window.r_sel, queried.window.c_sel
        block = torch.cat(preds, 1).view(self.batch, len(r_sel), len(c_sel), 3).float()
        out[:, r_sel[0]:r_sel[-1] + 1, c_sel[0]:c_sel[-1] + 1] = block


class _Window(NamedTuple):
    """One key window's share of a render: ``r_sel``, ``c_sel`` the positions of its output
    rows and columns in the rendered rectangle, ``coord`` (Q, 2) its queries, ``keys``."""

    id: tuple[int, int]
    r_sel: torch.Tensor
    c_sel: torch.Tensor
    coord: torch.Tensor
    keys: KeySet


class _Keyed(NamedTuple):
    window: _Window
    work: KeyWork
    parts: list[Future]


class _Queried(NamedTuple):
    window: _Window
    chunks: list[Future]


def super_resolve(model: SRHead, lr: torch.Tensor, out_hw: tuple[int, int], *,
                  options: QueryOptions = QueryOptions(),
                  progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Whole-image super-resolution.

    lr: (B, 3, h, w) float in [0, 1] on the model's device; out_hw: (H, W).
    Returns (B, 3, H, W) float in [0, 1] (clamped).
    """
    frame = Frame(tuple(lr.shape[-2:]), tuple(out_hw))
    options = options.resolved(model)
    with torch.no_grad(), autocast_for(lr.device, options.precision):
        feats = model.encode(normalize(lr))
    renderer = Renderer(model, feats, frame, options=options, batch=lr.shape[0])
    sr = renderer.render(range(out_hw[0]), range(out_hw[1]), progress=progress)
    return denormalize(sr).clamp_(0, 1)
