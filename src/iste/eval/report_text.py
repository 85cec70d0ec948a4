"""The text of ``report.md``: protocol, methods, test images, tables, figures, runtimes."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from iste.data.metrics import shave_width
from iste.eval.methods import seen_notes
from iste.eval.stats import exact_notes
from iste.eval.tables import markdown_code, markdown_table, markdown_text, scale_label

__all__ = ["render_report"]

_SSIM_WINDOW = {
    "uniform": "scikit-image's defaults (7 x 7 uniform window, sample covariances)",
    "gaussian": "the Gaussian window of Wang et al. 2004 (11 x 11, sigma 1.5, population "
                "covariances)",
}
_SSIM_CHANNELS = {
    "rgb": "the mean of the SSIMs of R, G and B (`channel_axis=-1`)",
    "y": "the BT.601 luma Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255",
}


def _ssim_text(variant: str) -> str:
    window, channels = variant.split("-")
    return (f"SSIM (`{variant}`): `skimage.metrics.structural_similarity(data_range=255)` on "
            f"{_SSIM_CHANNELS[channels]}, with {_SSIM_WINDOW[window]}. The paper does not say "
            "how it computed SSIM and the published test code computes none; choose the "
            "variant of the papers you compare with (`--ssim`).")


def _scoring(request, shaves: str) -> list[str]:
    if request.metric_precision == "float":
        what = ("- **Scores are computed on the float SR, clamped to [0, 1]** (not quantised), "
                "as the published test code does; `--metric-precision uint8` scores the 8-bit "
                "image a user gets instead.")
    else:
        what = ("- **The SR output is clamped to [0, 1] and quantised to uint8 (rounded) before "
                "any metric** — the image a user gets (`--metric-precision uint8`; the "
                "published test scores the float prediction).")
    if request.geometry == "published":
        border = "8 pixels per side at every scale, as the published test shaves"
    else:
        border = f"ceil(s)+6 pixels per side ({shaves})"
    return [what, f"- PSNR (dB) on RGB, 255 range, after shaving {border}. "
            + _ssim_text(request.ssim_variant)]


def _precision_text(request, records: Sequence[dict], methods: Sequence) -> str:
    """The precision the models ran in, as their results record it (``auto`` resolved per
    model and machine: :meth:`iste.eval.protocol.Protocol.precision_for`)."""
    asked = request.options.precision
    per_model = {m.name: sorted({r.get("precision", asked) for r in records
                                 if r["method"] == m.name})
                 for m in methods if not m.is_bicubic}
    used = sorted({p for ps in per_model.values() for p in ps})
    if asked != "auto":
        return f"precision={asked}"
    if len(used) == 1:
        return f"precision={used[0]} (`--precision auto` on this machine)"
    each = ", ".join(f"{name} {'/'.join(ps)}" for name, ps in per_model.items() if ps)
    return f"precision `--precision auto`, resolved per model on this machine: {each}"


def _models_line(request, clip: str, precision: str, stf: Sequence[str]) -> str:
    """``stf``: the methods with STF, to which alone the STF key options apply."""
    o = request.options
    if request.geometry == "published":
        beyond = ("; at non-integer scales, where the published code cannot run, the grid is "
                  "the HR's pixel centres continued over the padding"
                  if any(not float(s).is_integer() for s in request.scales) else "")
        return ("- Models: **the published test's geometry** (`--protocol published`, "
                "`iste.eval.published`): LR flip-padded to the next multiple of 8, the padded "
                "output grid queried in chunks of 30 000 (which are STF's key sets), cropped to "
                f"the HR size{beyond}; cells above ×4 clipped to ×4's; {precision}.")
    keys = (f"; STF key windows of {', '.join(map(markdown_text, stf))}: "
            f"stf_window={o.stf_window}, stf_keys={o.stf_keys}" if stf else "")
    return ("- Models: `iste.engine.render.super_resolve` with query options "
            f"{precision}{keys}; cell clipping: {clip}.")


def _degradation_text(name: str) -> str:
    from iste.data.degradations import parse_degradation

    degradation = parse_degradation(name, allow_random=False)
    if degradation.kind == "paper":
        return ""
    mode = ("YCbCr with 4:2:0 chroma subsampling" if degradation.mode == "ycbcr420"
            else "Aperio's RGB mode (no colour transform, no chroma subsampling)")
    deblocked = (", **then deblocked** with that JPEG's own quantisation tables "
                 "(`iste.data.deblock`, as `iste upscale` treats JPEG-compressed input)"
                 if degradation.deblock else "")
    return (f" **Then JPEG-compressed at quality {degradation.quality}** in {mode}, block grid "
            f"at the LR image's top-left corner, by libjpeg through imagecodecs{deblocked} "
            f"(`--degradation {degradation.name}`, `iste.data.degradations`); bicubic and the "
            "models all see this compressed LR.")


def _protocol(request, reference: str, fid_used: bool, precision: str,
              stf: Sequence[str]) -> list[str]:
    o = request.options
    scales = ", ".join(scale_label(s) for s in request.scales)
    shaves = ", ".join(f"{scale_label(s)}: {shave_width(s)}" for s in sorted(request.scales))
    clip = "none" if o.cell_clip is None else f"cells of scales above ×{o.cell_clip:g} are " \
        f"clipped to the cell of ×{o.cell_clip:g}, as the published test does"
    return [
        "## Protocol",
        "",
        f"- Scales: {scales}. Scales up to ×4 are in the training distribution, larger ones "
        "out of it.",
        "- HR: each test image cropped to round(floor(H/s)·s) × round(floor(W/s)·s) "
        "(`iste.data.degrade.crop_to_scale`). LR: Gaussian blur of radius (s−1)/2 then PIL "
        "bicubic resize to floor(H/s) × floor(W/s) (`iste.data.degrade.degrade`, the paper's "
        "degradation)." + _degradation_text(request.degradation),
        "- **bicubic** = PIL's bicubic resize of the LR image to the HR size "
        "(`iste.data.degrade.bicubic_upscale`, the same resampler as the degradation).",
        _models_line(request, clip, precision, stf),
        *_scoring(request, shaves),
        "- Tables: mean ± sample std (ddof 1) over images; p-values of paired two-sided "
        "Student's t-tests (`scipy.stats.ttest_rel`, paired by image) against "
        f"**{markdown_text(reference)}**.",
        "- FID: " + ("Frechet distance (scipy) between Inception pool3 features of the SR and "
                     "HR images of each scale, network "
                     f"{markdown_code(Path(request.fid).name)}. With few images FID is "
                     "dominated by estimation bias; compare methods only within this report."
                     if fid_used else "not computed (no Inception network given with --fid; "
                     "weights are never downloaded)."),
        "",
    ]


def _training_note(meta: dict) -> str:
    """The training a checkpoint records in its metadata (by ``iste train``): its steps x
    batch, and the weights it started from; "" when it records none (converted weights)."""
    run = (meta.get("train_config") or {}).get("run") or {}
    if not isinstance(meta.get("step"), int) or not isinstance(run.get("batch_size"), int):
        return ""
    step, batch = meta["step"], run["batch_size"]
    note = f"trained {step} steps x batch {batch} ({step * batch} crops)"
    init = meta.get("init_sha256")
    return note + (f", starting from weights {init[:12]}" if isinstance(init, str) else
                   ", from scratch")


def _methods(methods) -> list[str]:
    rows = []
    for m in methods:
        if m.is_bicubic:
            rows.append([markdown_text(m.name), "bicubic (PIL)", "—", "—", "0", ""])
            continue
        parts = [m.at(s) for s in sorted(m.fixed_scales)] or [m]
        source = "shipped default" if m.spec.split("=")[-1] == "default" else \
            ", ".join(markdown_code(os.path.basename(str(p.path))) for p in parts)
        note = "**RANDOM-INITIALISED (untrained)**" if m.untrained else \
            "; ".join(n for n in dict.fromkeys(_training_note(p.meta) for p in parts) if n)
        digest = "— (seed 0)" if m.untrained else ", ".join(p.fingerprint[:12] for p in parts)
        params = " / ".join(f"{p.parameters / 1e6:.2f}M" for p in parts)
        rows.append([markdown_text(m.name), m.architecture, source, digest, params, note])
    return ["## Methods", "",
            markdown_table(["Name", "Model", "Weights", "sha256", "Params", "Note"], rows), ""]


def _images(test_set) -> list[str]:
    names = [t.name for t in test_set.images]
    shown = ", ".join(map(markdown_code, names[:40])) + (" ..." if len(names) > 40 else "")
    return ["## Test images", "",
            f"{markdown_text(test_set.description)}. {len(names)} images: {shown}", ""]


def _runtimes(records, methods, seconds: dict, outcome) -> list[str]:
    per = defaultdict(list)
    for r in records:
        per[(r["method"], float(r["scale"]))].append(r["sr_seconds"])
    scales = sorted({float(r["scale"]) for r in records})
    rows = [[markdown_text(m.name), *[f"{sum(per[(m.name, s)]) / len(per[(m.name, s)]):.2f}"
                       if per[(m.name, s)] else "—" for s in scales]] for m in methods]
    lines = ["## Runtimes", "",
             "Mean seconds of one SR per image (as measured when the result was computed; "
             "results from the cache keep their original time):", "",
             markdown_table(["Method", *[scale_label(s) for s in scales]], rows), ""]
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    lines += [f"Wall time of this run: {parts}; {outcome.computed} SR results computed, "
              f"{len(records) - outcome.computed} taken from the cache.", ""]
    return lines


def _figure_image_choice(request, n_images: int) -> str:
    """How the figures' image was chosen (:func:`iste.eval.report._figure_image`)."""
    from iste.eval.figures import FIGURE_CANDIDATES

    if request.figure_image is not None:
        return "chosen with --figure-image"
    if n_images <= FIGURE_CANDIDATES:
        return "the test image with the most texture; another with --figure-image"
    return (f"the most textured of the first {FIGURE_CANDIDATES} of the {n_images} test images; "
            "another with --figure-image")


def render_report(*, request, test_set, methods: Sequence, records: Sequence[dict], tables,
                  costs: Sequence, figures: Sequence[Path], figure_image: str | None,
                  reference: str, outcome, fid_used: bool, seconds: dict, device: str,
                  environment: str) -> str:
    lines = [f"# Evaluation report: {markdown_text(request.data)}", "",
             f"`iste eval` on {device}; {environment}.", ""]
    if any(m.untrained for m in methods):
        lines += ["> **Warning:** at least one model is RANDOM-INITIALISED (no trained weights "
                  "installed); its numbers and images say nothing about the method.", ""]
    for note in seen_notes(methods, test_set.places):  # names and paths in plain prose
        lines += [f"> **Warning:** {markdown_text(note)}.", ""]
    for note in exact_notes(records):
        lines += [f"> **Note:** {markdown_text(note)}.", ""]
    stf = [m.name for m in methods if m.has_stf]
    lines += _protocol(request, reference, fid_used, _precision_text(request, records, methods),
                       stf)
    lines += _methods(methods)
    lines += _images(test_set)
    lines += ["## Results", ""]
    for table in tables:
        lines += [table.markdown, ""]
    for cost in costs:
        lines += [cost.markdown, ""]
    if costs:
        lines += ["Memory: on CPU the peak resident set during the SR call "
                  "minus the resident set before it (Linux `VmHWM`, reset before the call; "
                  "`ru_maxrss` elsewhere), measured in a fresh subprocess per cell; "
                  "on CUDA `torch.cuda.max_memory_allocated` minus the allocation before the "
                  "call. Time: median of repeated calls after a warm-up. Shared machines make "
                  "timings noisy: compare ratios within this table.", ""]
    if figures:
        lines += ["## Figures", "", f"Image {markdown_code(figure_image)} "
                  f"({_figure_image_choice(request, len(test_set.images))}).", ""]
        for path in figures:
            rel = path.relative_to(request.out).as_posix()
            lines += [f"![{path.stem}]({rel})", ""]
    lines += _runtimes(records, methods, seconds, outcome)
    lines += ["## Files", "",
              "`results.json` (one record per method, image and scale), `tables/*.md|csv|json`, "
              "`figures/*.png`; `cache/` lets an interrupted run resume (an entry is reused "
              "only for the same model weights, image pixels, scale and protocol, and only "
              "while it matches the sha256 written with it) and is git-ignored.", ""]
    return "\n".join(lines)
