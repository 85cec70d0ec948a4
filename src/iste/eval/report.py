"""One evaluation end to end: test set + methods -> results, tables, figures, cost, report.md.

Layout of the report folder ``OUT``::

    results.json            one record per (method, image, scale): method, image, scale, psnr,
                            ssim, hr_hw, lr_hw, sr_seconds, and how it was scored: protocol,
                            metric_precision, ssim_variant, degradation
    report.md               protocol, methods, test images, all tables and figures, runtimes
    tables/<key>.{md,csv,json}
    figures/fig6_comparison.png, figures/fig7_scales.png
    cache/                  resumable per-result cache (git-ignored; delete to start afresh)

Everything is validated (scales, data, checkpoints, FID network) before the first SR is run.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from iste.engine.render import QueryOptions, check_stf_keys
from iste.eval import tables as tbl
from iste.eval.datasets import TestSet, open_test_set
from iste.eval.fid import (FID_MISSING_MESSAGE, FID_TOO_FEW_MESSAGE, fid_from_features,
                           load_feature_extractor)
from iste.eval.files import write_json_atomic, write_text_atomic
from iste.eval.methods import Method, load_methods, warn_seen
from iste.eval.report_text import render_report
from iste.eval.protocol import Protocol
from iste.eval.published import PUBLISHED_CHUNK
from iste.eval.runner import EvalOutcome, check_sizes, evaluate, load_kept_sr
from iste.eval.stats import exact_notes
from iste.locks import folder_lock
from iste.paths import check_output_file, ensure_dir
from iste.refusals import FileSystemError

__all__ = ["DEFAULT_SCALES", "EvalRequest", "EvalReport", "run_evaluation", "parse_scales",
           "fid_scores", "default_reference", "report_writes"]

DEFAULT_SCALES = (2.0, 3.0, 4.0, 6.0, 8.0, 1.5, 2.4, 3.3, 4.2, 5.1)


def parse_scales(text: str) -> tuple[float, ...]:
    """"2,3.3" -> (2.0, 3.3); every scale a finite number > 1, no duplicates."""
    from iste.engine.frame import check_scale

    items = [s.strip() for s in text.split(",")]
    if not text.strip() or any(not s for s in items):
        raise ValueError(f"--scales must be a comma-separated list of numbers > 1, got {text!r}")
    scales = tuple(check_scale(s) for s in items)
    if len(set(scales)) != len(scales):
        raise ValueError(f"--scales lists a scale twice: {text!r}")
    return scales


@dataclass(frozen=True)
class EvalRequest:
    """Everything ``iste eval`` needs; see the CLI help for each field."""

    data: str
    methods: tuple[str, ...]
    out: Path
    scales: tuple[float, ...] = DEFAULT_SCALES
    reference: str | None = None
    device: str | None = None
    fid: Path | None = None
    ssim_variant: str = "uniform-rgb"
    metric_precision: str = "float"
    geometry: str = "iste"
    degradation: str = "paper"
    options: QueryOptions = QueryOptions(precision="fp32")
    figures: bool = True
    figure_image: str | None = None
    cost: bool = True
    cost_repeats: int | None = None
    """Timed runs per cost cell (None: 3); refused without the cost table."""
    max_images: int | None = None
    tile: int | None = None
    min_tissue: float | None = None
    """``wsi:`` data only (None: 256 pixels, 0.5): refused for other data, which has no tiles."""
    progress: bool = True
    stf_keys_given: bool = False
    """``options.stf_keys`` was asked for (``--stf-keys``): refused when no method has STF."""


@dataclass
class EvalReport:
    """What was written, and the numbers behind it."""

    out: Path
    outcome: EvalOutcome
    reference: str | None
    files: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def default_reference(methods: Sequence[Method]) -> str:
    """The first full ISTE model (every component of Table 4), else the first ISTE model, else
    the last method: the paper compares everything to the full ISTE, and an ablation listed
    before it was the reference of every table and t-test."""
    iste = [m for m in methods if m.head == "iste"]
    full = [m for m in iste if tbl.ablation_variant(m.config) == "full"]
    return (full or iste or methods[-1:])[0].name


def fid_scores(outcome: EvalOutcome) -> dict[tuple[str, float], float]:
    """FID per (method, scale) between the SR and HR features of the same images."""
    out = {}
    for (method, scale), by_image in outcome.sr_feats.items():
        names = sorted(by_image)
        if len(names) < 2:
            continue
        hr = outcome.hr_feats[scale]
        out[(method, scale)] = fid_from_features(
            [by_image[n] for n in names], [hr[n] for n in names])
    return out


def _figures(request: EvalRequest, test_set: TestSet, methods: Sequence[Method],
             outcome: EvalOutcome, image_name: str) -> list[Path]:
    from iste.eval.figures import comparison_figure, scale_strip_figure

    records = {(r["method"], float(r["scale"])): r for r in outcome.records
               if r["image"] == image_name}
    hr = next(t for t in test_set.images if t.name == image_name).load()

    def sr(method: str, scale: float):
        return load_kept_sr(outcome, method, image_name, scale)

    # scales some method was evaluated at (fixed-scale networks only have their own)
    scales = [s for s in sorted(request.scales) if any(m.supports(s) for m in methods)]
    ints = [s for s in scales if float(s).is_integer()]
    fig6_scale = 4.0 if 4.0 in scales else (ints or scales)[len(ints or scales) // 2]
    frac = [s for s in scales if not float(s).is_integer()] or scales
    folder = request.out / "figures"
    at_fig6 = [m.name for m in methods if m.supports(fig6_scale)]
    at_frac = [m.name for m in methods if all(m.supports(s) for s in frac)]
    figures = [comparison_figure(hr, fig6_scale, at_fig6, sr, records,
                                 folder / _FIGURES[0], image_name=image_name,
                                 degradation=request.degradation)]
    if at_frac:  # no method runs at every non-integer scale: no strip to draw
        figures.append(scale_strip_figure(hr, frac, at_frac, sr, records,
                                          folder / _FIGURES[1], image_name=image_name))
    return figures


def _figure_image(request: EvalRequest, test_set: TestSet) -> str | None:
    if not request.figures:
        return None
    names = [t.name for t in test_set.images]
    if request.figure_image is not None:
        if request.figure_image not in names:
            raise ValueError(f"--figure-image {request.figure_image!r} is not in the test set")
        return request.figure_image
    from iste.eval.figures import FIGURE_CANDIDATES, pick_figure_image

    loaders = {t.name: t.load for t in test_set.images[:FIGURE_CANDIDATES]}
    return pick_figure_image(list(loaders), lambda n: loaders[n]())


def _check_request(request: EvalRequest, names: Sequence[str]) -> str:
    if request.reference is not None and request.reference not in names:
        raise ValueError(f"--reference {request.reference!r} is not one of the methods "
                         f"({', '.join(names)})")
    if request.cost_repeats is not None and request.cost_repeats < 1:
        raise ValueError("--cost-repeats must be >= 1")
    return request.reference or ""


def _check_out_beside_data(out: Path, data) -> None:
    """A report inside a test folder would become test images of the next run (its figures
    and cached SR images): refused; so is a test folder inside what the report writes
    (``OUT/figures``, ``OUT/cache`` ...)."""
    folder = Path(str(data))
    if not folder.is_dir():
        return
    out, folder = Path(out).resolve(), folder.resolve()
    if out == folder or folder in out.parents:
        raise ValueError(f"--out {out} is inside --data {folder}: its figures and cached SR "
                         "images would be read as test images next time; write the report "
                         "elsewhere")
    if out in folder.parents and report_writes(folder.relative_to(out).parts[0]):
        # --data OUT/figures: the report's figures were written among the test images (and
        # an earlier run's fig*.png there removed as stale)
        raise ValueError(f"--data {folder} lies inside --out {out}, in the "
                         f"{folder.relative_to(out).parts[0]} the report writes: its files "
                         "would mix with the test images; write the report elsewhere")


_REPORT_FILES = ("results.json", "report.md")
_REPORT_FOLDERS = ("tables", "figures", "cache")


def report_writes(name: str) -> bool:
    """Whether an evaluation may write ``name`` directly in its report folder: its files and
    folders, the folder's ``.lock``, a temporary (a dot first)."""
    return name in _REPORT_FILES + _REPORT_FOLDERS or name.startswith(".")


def _check_report_folder(out: Path) -> None:
    """Refuse, before any work, a report folder whose files or folders cannot be written
    there: a folder where ``results.json`` or ``report.md`` goes, a file where ``tables/``,
    ``figures/`` or ``cache/`` goes, or a folder the file system does not let us write. A
    folder not there yet is left to the lock to make (:func:`iste.locks.folder_lock`): it
    goes again when the run fails before writing a result (made here, a run refused by a
    full disk left ``--out`` holding only ``.lock``)."""
    if not os.path.lexists(out):
        return
    ensure_dir(out, what="--out")
    for name in _REPORT_FOLDERS + _REPORT_FILES:
        path, folder = out / name, name in _REPORT_FOLDERS
        if path.exists() and path.is_dir() != folder:
            raise FileSystemError(f"--out {out}: {path} is a {'file' if folder else 'folder'} "
                                  f"where the report writes a {'folder' if folder else 'file'}; "
                                  "remove it or choose another --out")
    for name in _REPORT_FILES:
        check_output_file(out / name, "report file")


# the figures a report draws: paper Figs. 6 and 7 (`iste figures` draws Figs. 8-10, which a
# user may keep in the same folder)
_FIGURES = ("fig6_comparison.png", "fig7_scales.png")


def _drawn_here(path: Path) -> bool:
    """Whether a file of a report's tables/ or figures/ folder is one a report writes."""
    if path.parent.name == "figures":
        return path.name in _FIGURES
    return path.match("table*") and path.suffix in (".md", ".csv", ".json")


def _remove_stale(out: Path, written: Sequence[Path], log: Callable[[str], None]) -> None:
    """Remove the tables and figures an earlier run wrote into ``out`` that this run did not
    (another method list, scales, or no figures): the report folder then holds this report's
    files only. Files of other names (a user's notes) are left."""
    keep = {Path(p).resolve() for p in written}
    for sub in ("tables", "figures"):
        folder = out / sub
        if not folder.is_dir():
            continue
        stale = sorted(p for p in folder.iterdir() if _drawn_here(p)
                       and p.is_file() and p.resolve() not in keep)
        for path in stale:
            path.unlink()
        if stale:
            log(f"removed {len(stale)} {sub[:-1]} files of an earlier run from {folder} "
                f"({', '.join(sorted({p.stem for p in stale}))})")


def run_evaluation(request: EvalRequest, *, log: Callable[[str], None] = print) -> EvalReport:
    """Validate, evaluate (resuming from the cache), then write the whole report, holding the
    report folder's lock: a second evaluation into it is refused (two would mix their
    results, tables and figures, and take each other's tables for an earlier run's)."""
    _check_out_beside_data(request.out, request.data)
    _check_options_apply(request)
    with contextlib.ExitStack() as hold:  # the lock, taken once the request is checked
        return _run_evaluation(request, log=log, hold=hold)


def _check_options_apply(request: EvalRequest) -> None:
    """Refuse options that would change nothing in this run (they ran as if not given)."""
    if not request.data.startswith("wsi:"):
        given = [f"--{name}" for name, value in (("tile", request.tile),
                                                 ("min-tissue", request.min_tissue))
                 if value is not None]
        if given:
            raise ValueError(f"{' and '.join(given)} appl{'ies' if len(given) == 1 else 'y'} "
                             f"to the tiles of --data wsi:SLIDE; {request.data} has none")
    if request.cost_repeats is not None and not request.cost:
        raise ValueError("--cost-repeats times the cost table; --no-cost measures none")
    if request.figure_image is not None and not request.figures:
        raise ValueError("--figure-image chooses the image of the figures; --no-figures "
                         "draws none")
    if request.stf_keys_given and request.geometry == "published":
        raise ValueError("--stf-keys does not apply to --protocol published: its query chunks "
                         f"of {PUBLISHED_CHUNK} are STF's key sets, as in the published test")


def _run_evaluation(request: EvalRequest, *, log: Callable[[str], None],
                    hold: contextlib.ExitStack) -> EvalReport:
    from iste.runtime import pick_device

    t_start = time.perf_counter()
    device = pick_device(request.device)
    tiling = {k: v for k, v in (("tile", request.tile), ("min_tissue", request.min_tissue))
              if v is not None}
    test_set = open_test_set(request.data, max_images=request.max_images, **tiling)
    methods = load_methods(request.methods, device=device)
    check_stf_keys(request.stf_keys_given, {m.name: m.has_stf for m in methods})
    for m in methods:  # an all-"—" row is a mistake in the request: say so before any work
        if not any(m.supports(s) for s in request.scales):
            raise ValueError(f"method {m.name} is fixed-scale ({m.architecture}); none of "
                             f"--scales {','.join(f'{s:g}' for s in request.scales)} is its "
                             "scale")
    warn_seen(methods, test_set.places)
    reference = _check_request(request, [m.name for m in methods]) or default_reference(methods)
    fid_net = None if request.fid is None else load_feature_extractor(request.fid, device=device)
    figure_image = _figure_image(request, test_set)
    protocol = Protocol(request.ssim_variant, request.options,
                        metric_precision=request.metric_precision, geometry=request.geometry,
                        degradation=request.degradation)
    check_sizes(test_set, request.scales, protocol)
    _check_report_folder(request.out)
    hold.enter_context(folder_lock(request.out, f"another iste eval is writing {request.out}; "
                                                "wait for it or choose another --out",
                                   what="--out"))
    log(f"{len(test_set.images)} test images x {len(request.scales)} scales x "
        f"{len(methods)} methods on {device}; reference {reference}")
    t_eval = time.perf_counter()
    outcome = evaluate(test_set, methods, request.scales, request.out, protocol=protocol,
                       fid=fid_net, keep_sr_for=[figure_image] if figure_image else [],
                       progress=request.progress, log=log)
    report = EvalReport(request.out, outcome, reference)
    report.seconds["evaluation"] = time.perf_counter() - t_eval
    order = {m.name: i for i, m in enumerate(methods)}
    records = sorted(outcome.records, key=lambda r: (order[r["method"]], r["image"], r["scale"]))
    for note in exact_notes(records):
        warnings.warn(note, stacklevel=2)
    # results.json and report.md are this report's whole record: an earlier run's are removed
    # before its first table is written, so a run stopped on the way (a full disk, Ctrl-C, a
    # cost measurement that failed) leaves no earlier report beside this one's tables. The
    # scores are written first: a failure in the figures or the cost table lost them all
    # (report.md, written last, needs those); a rerun takes them from the cache
    for name in _REPORT_FILES:
        (request.out / name).unlink(missing_ok=True)
    # each record says how it was scored: the file alone (without report.md) tells our
    # protocol from the published one, float from 8-bit scores and the SSIM variant
    scored = {"protocol": protocol.geometry, "metric_precision": protocol.metric_precision,
              "ssim_variant": protocol.ssim_variant, "degradation": protocol.degradation}
    write_json_atomic(request.out / "results.json", [{**r, **scored} for r in records])
    report.files.append(request.out / "results.json")
    fids = fid_scores(outcome) if fid_net is not None else None
    tables = _tables(records, methods, request.scales, reference, fids)
    for table in tables:
        report.files += tbl.write_table(table, request.out / "tables")
    figures = []
    if figure_image is not None:
        t0 = time.perf_counter()
        figures = _figures(request, test_set, methods, outcome, figure_image)
        report.seconds["figures"] = time.perf_counter() - t0
        report.files += figures
    costs = []
    # Table 8 decodes query batches: arbitrary-scale models only (a fixed-scale network has
    # no queries; its cost is that of one forward pass)
    costed = [m for m in methods if not m.is_bicubic and not m.is_fixed_scale]
    if request.cost and costed:
        from iste.eval.cost import WORKLOADS, cost_table, measure_costs

        t0 = time.perf_counter()
        log("measuring cost (Table 8: query batches as the paper; 8b: whole outputs) ...")
        for workload in WORKLOADS:
            rows = measure_costs([m.spec for m in costed],
                                 device=str(device), repeats=request.cost_repeats or 3,
                                 options=request.options, workload=workload)
            costs.append(cost_table(rows))
            report.files += tbl.write_table(costs[-1], request.out / "tables")
        report.seconds["cost"] = time.perf_counter() - t0
    _remove_stale(request.out, report.files, log)
    report.seconds["total"] = time.perf_counter() - t_start
    text = render_report(request=request, test_set=test_set, methods=methods, records=records,
                         tables=tables, costs=costs, figures=figures, figure_image=figure_image,
                         reference=reference, outcome=outcome, fid_used=fid_net is not None,
                         seconds=report.seconds, device=str(device),
                         environment=_environment())
    write_text_atomic(request.out / "report.md", text)
    report.files.append(request.out / "report.md")
    return report


def _tables(records, methods, scales, reference, fids) -> list[tbl.TableOut]:
    names = [m.name for m in methods]
    out = [tbl.integer_table(records, names, scales, reference),
           tbl.noninteger_table(records, names, scales, reference),
           tbl.fid_table(fids, names, scales, note=_fid_note(fids)),
           tbl.ablation_table(records, methods, scales, reference)]
    return [t for t in out if t is not None]


def _fid_note(fids: dict | None) -> str:
    """Why Table 3 is empty, if it is: no network given (None), or too few images ({})."""
    if fids:
        return ""
    return (FID_MISSING_MESSAGE if fids is None else FID_TOO_FEW_MESSAGE) + "."


def _environment() -> str:
    from iste import __version__

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"iste {__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
            f"{torch.get_num_threads()} CPU threads; generated {now}")
