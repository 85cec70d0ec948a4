"""Tables shaped like the paper's: Markdown for reading, CSV and JSON (long format) for tools.

- Table 1: integer scales, PSNR and SSIM as mean +- std over images; scales up to x4 are
  in distribution (the training range), larger ones (x6, x8) out of distribution (marked †).
- Table 2: the same at non-integer scales.
- Table 3: FID per scale (lower is better).
- Table 4: ablations — only when the methods include ISTE checkpoints with different
  component switches (read from each checkpoint's ``head_args``).
- Table 8: cost by query batch size, as the paper measures it; Table 8b: cost of whole outputs
  with our engine (see :mod:`iste.eval.cost`).

A cell without results (a fixed-scale method at another scale) shows "—" in the Markdown
tables and has no row in the long format; its p-value is "n/a". The best value of each column
is **bold** (ties, at the displayed precision, all bold). Below
Tables 1, 2 and 4, two-sided p-values of paired t-tests (:func:`iste.eval.stats.paired_ttest`,
paired by image) of every method against the reference method.

Long format rows (CSV/JSON): ``table, method, scale, metric, mean, std, n, p_value,
reference, best``.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from iste.eval.methods import Method
from iste.eval.stats import Summary, paired_ttest, paired_values, summarize
from iste.text import one_line

__all__ = ["TableOut", "IN_DISTRIBUTION_MAX", "integer_table", "noninteger_table",
           "fid_table", "ablation_table", "ablation_flags", "ablation_variant", "write_table",
           "markdown_table", "markdown_text", "markdown_code", "best_keys"]

IN_DISTRIBUTION_MAX = 4.0  # training scales are U(1, 4)
LONG_FIELDS = ("table", "method", "scale", "metric", "mean", "std", "n", "p_value", "reference",
               "best")
# metric: (column label, digits shown, higher is better)
METRICS = {"psnr": ("PSNR↑", 2, True), "ssim": ("SSIM↑", 4, True)}


@dataclass
class TableOut:
    """One rendered table: ``markdown`` text and ``rows`` in long format."""

    key: str
    title: str
    markdown: str
    rows: list[dict[str, Any]] = field(default_factory=list)


# Markdown's emphasis, code, link and HTML marks, and '_' where it can open or close emphasis
# (not between two letters or digits: CommonMark never reads an intraword '_' as a mark)
_MARKDOWN_MARKS = re.compile(r"[\\`*\[\]<>]|(?<![^\W_])_|_(?![^\W_])")


def markdown_text(text: str) -> str:
    """``text`` (a method, setting or file name) escaped to show as itself in Markdown: a name
    such as ``st*r*`` was read as emphasis and lost its asterisks (``a|b`` inside a table is
    :func:`markdown_table`'s to escape); its line breaks as escapes (:func:`one_line`)."""
    return _MARKDOWN_MARKS.sub(lambda m: "\\" + m.group(0), one_line(text))


def markdown_code(text: str) -> str:
    """``text`` (a file name) as a Markdown code span that shows it as itself: fenced by one
    backtick more than the longest run it holds (a name such as ``q`x.png`` closed a
    one-backtick span early, the rest read as Markdown), with a space inside a fence that
    it starts or ends at (CommonMark strips one each side), and its line breaks as escapes
    (:func:`one_line`: a file name's line break ended the table row it stood in)."""
    text = one_line(text)
    fence = "`" * (1 + max(map(len, re.findall("`+", text)), default=0))
    padded = text[:1] == "`" or text[-1:] == "`" or (
        text[:1] == text[-1:] == " " and text.strip(" ") != "")
    pad = " " if padded else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table; a '|' in a cell is escaped (in a name such as ``a|b``
    it ended the cell and shifted every column after it)."""
    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [row(header), "|" + "|".join("---" for _ in header) + "|"]
    lines += [row(r) for r in rows]
    return "\n".join(lines)


def scale_label(scale: float) -> str:
    """"×2.4": the shortest text that reads back as ``scale`` (``:g`` keeps 6 digits, which
    showed x2.0000001 as "×2" in the non-integer table and two scales under one label)."""
    text = f"{scale:g}"
    return f"×{text if float(text) == scale else repr(float(scale))}"


def _p_text(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return "<1e-300" if p == 0 else f"{p:.2g}"


def best_keys(values: Mapping[str, float], digits: int, higher: bool) -> set[str]:
    """The keys whose value is best (highest if ``higher``) once rounded to ``digits`` as the
    table shows it, so displayed ties are all best; NaN values never are."""
    finite = {k: round(v, digits) for k, v in values.items() if not math.isnan(v)}
    if not finite:
        return set()
    target = max(finite.values()) if higher else min(finite.values())
    return {k for k, v in finite.items() if v == target}


def _cell(s: Summary, digits: int, bold: bool) -> str:
    text = f"{s.mean:.{digits}f}" + ("" if math.isnan(s.std) else f" ± {s.std:.{digits}f}")
    return f"**{text}**" if bold else text


def _by_cell(records: Sequence[dict]) -> dict[tuple[str, float], dict[str, dict]]:
    out: dict[tuple[str, float], dict[str, dict]] = {}
    for r in records:
        out.setdefault((r["method"], float(r["scale"])), {})[r["image"]] = r
    return out


def _metric_table(key: str, title: str, records: Sequence[dict], names: Sequence[str],
                  scales: Sequence[float], reference: str | None, *,
                  mark_beyond_training: bool = False,
                  lead: Mapping[str, Sequence[str]] | None = None,
                  lead_header: Sequence[str] = ()) -> TableOut:
    """Rows = methods ``names``; per scale a PSNR and an SSIM column (``†`` on scales beyond
    the training range if ``mark_beyond_training``); p-values below."""
    cells = _by_cell(records)
    header = ["Method", *lead_header]
    body = {n: [markdown_text(n), *(lead or {}).get(n, ())] for n in names}
    p_rows = {n: [markdown_text(n)] for n in names if n != reference}
    rows: list[dict[str, Any]] = []
    for scale in scales:
        for metric, (label, digits, higher) in METRICS.items():
            mark = "†" if mark_beyond_training and scale > IN_DISTRIBUTION_MAX else ""
            header.append(f"{scale_label(scale)}{mark} {label}")
            values = {n: {img: r[metric] for img, r in cells.get((n, scale), {}).items()}
                      for n in names}
            summaries = {n: summarize(list(v.values())) for n, v in values.items() if v}
            best = best_keys({n: s.mean for n, s in summaries.items()}, digits, higher)
            for n in names:
                s = summaries.get(n)
                body[n].append("—" if s is None else _cell(s, digits, n in best))
                p = math.nan
                if reference in values and n != reference and s is not None:
                    p = paired_ttest(*paired_values(values[n], values[reference])).pvalue
                if n in p_rows:
                    p_rows[n].append(_p_text(p))
                if s is not None:
                    rows.append({"table": key, "method": n, "scale": scale, "metric": metric,
                                 "mean": s.mean, "std": s.std, "n": s.n,
                                 "p_value": None if n == reference else p,
                                 "reference": reference, "best": n in best})
    md = [f"**{title}**", "", markdown_table(header, list(body.values()))]
    if any("—" in row for row in body.values()):
        md += ["", "— no result: a fixed-scale method is evaluated only at the scales it was "
                   "trained for (as in the paper's Table 1)."]
    if reference is not None and p_rows:
        p_header = ["Method", *[h for h in header[1 + len(lead_header):]]]
        md += ["", f"p-values, paired two-sided t-test against **{markdown_text(reference)}** "
                   "(per image):",
               "", markdown_table(p_header, list(p_rows.values()))]
    return TableOut(key, title, "\n".join(md), rows)


def integer_table(records: Sequence[dict], names: Sequence[str], scales: Sequence[float],
                  reference: str | None) -> TableOut | None:
    """Paper Table 1: integer scales; † marks out-of-distribution scales (> x4)."""
    ints = sorted(s for s in scales if float(s).is_integer())
    if not ints:
        return None
    title = ("Table 1. Integer scales: PSNR (dB) and SSIM, mean ± std over images "
             "(† out of distribution: beyond the training scales ×1–×4). Best in bold.")
    return _metric_table("table1_integer", title, records, names, ints, reference,
                         mark_beyond_training=True)


def noninteger_table(records: Sequence[dict], names: Sequence[str], scales: Sequence[float],
                     reference: str | None) -> TableOut | None:
    """Paper Table 2: non-integer scales."""
    frac = sorted(s for s in scales if not float(s).is_integer())
    if not frac:
        return None
    title = ("Table 2. Non-integer scales: PSNR (dB) and SSIM, mean ± std over images "
             "(† beyond ×4). Best in bold.")
    return _metric_table("table2_noninteger", title, records, names, frac, reference,
                         mark_beyond_training=True)


def fid_table(fids: Mapping[tuple[str, float], float] | None, names: Sequence[str],
              scales: Sequence[float], *, note: str = "") -> TableOut:
    """Paper Table 3: FID per (method, scale), lower is better; ``fids`` None = not computed."""
    title = "Table 3. FID (lower is better). Best in bold."
    if not fids:
        return TableOut("table3_fid", title, f"**{title}**\n\n{note}")
    scales = sorted(scales)
    body = {n: [markdown_text(n)] for n in names}
    rows = []
    for scale in scales:
        col = {n: fids[(n, scale)] for n in names if (n, scale) in fids}
        best = best_keys(col, 2, higher=False)
        for n in names:
            v = col.get(n)
            body[n].append("—" if v is None else (f"**{v:.2f}**" if n in best else f"{v:.2f}"))
            if v is not None:
                rows.append({"table": "table3_fid", "method": n, "scale": scale, "metric": "fid",
                             "mean": v, "std": None, "n": None, "p_value": None,
                             "reference": None, "best": n in best})
    md = markdown_table(["Method", *[scale_label(s) for s in scales]], list(body.values()))
    return TableOut("table3_fid", title, f"**{title}**\n\n{md}" + (f"\n\n{note}" if note else ""),
                    rows)


def ablation_flags(config: Mapping[str, Any]) -> dict[str, bool]:
    """Paper Table 4's component columns for an ISTE model config (head_args + defaults)."""
    from iste.models.heads.iste import ISTEConfig
    from iste.typed import parse_dataclass

    cfg = parse_dataclass(ISTEConfig, config.get("head_args", {}), where="head_args")
    return {"dual-branch": cfg.pixel_branch and cfg.texture != "none",
            "TL": cfg.texture == "sine", "LFI": cfg.lfi, "STF": cfg.stf, "LTD": cfg.ltd,
            "LPD": cfg.pixel_branch}


def ablation_variant(config: Mapping[str, Any]) -> str:
    """The paper's name of an ISTE model config's variant ("full", "no-stf", ...; "custom"
    for other mixes of its switches)."""
    return _variant_name(ablation_flags(config))


def _variant_name(flags: Mapping[str, bool]) -> str:
    from iste.models.heads.iste import ABLATIONS

    for name, overrides in ABLATIONS.items():
        if ablation_flags({"head_args": overrides}) == dict(flags):
            return name
    return "custom"


def ablation_table(records: Sequence[dict], methods: Sequence[Method], scales: Sequence[float],
                   reference: str | None) -> TableOut | None:
    """Paper Table 4, when >= 2 ISTE checkpoints differ in their component switches.

    Columns: the variant, branches, ✓/× per component, then PSNR/SSIM at the evaluated
    in-distribution integer scales (all evaluated scales when there are none).
    """
    iste = [m for m in methods if m.head == "iste"]
    flags = {m.name: ablation_flags(m.config) for m in iste}
    if len(iste) < 2 or len({tuple(f.values()) for f in flags.values()}) < 2:
        return None
    chosen = [s for s in sorted(scales) if float(s).is_integer() and s <= IN_DISTRIBUTION_MAX]
    chosen = chosen or sorted(scales)
    names = [m.name for m in iste]
    if reference not in names:
        full = [n for n in names if _variant_name(flags[n]) == "full"]
        reference = full[0] if full else None
    mark = {True: "✓", False: "×"}
    lead = {n: [_variant_name(f), "dual" if f["dual-branch"] else "single",
                *[mark[f[c]] for c in ("TL", "LFI", "STF", "LTD", "LPD")]]
            for n, f in flags.items()}
    title = "Table 4. Ablations of ISTE (components read from each checkpoint). Best in bold."
    return _metric_table("table4_ablation", title, records, names, chosen, reference, lead=lead,
                         lead_header=["Variant", "Branches", "TL", "LFI", "STF", "LTD", "LPD"])


def write_table(table: TableOut, folder: Path) -> list[Path]:
    """Write ``<key>.md``, ``<key>.csv`` and ``<key>.json`` atomically into ``folder``."""
    from iste.eval.files import write_json_atomic, write_text_atomic

    folder.mkdir(parents=True, exist_ok=True)
    md, csv_path, json_path = (folder / f"{table.key}.{ext}" for ext in ("md", "csv", "json"))
    write_text_atomic(md, table.markdown + "\n")
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for row in table.rows for k in row)) or list(LONG_FIELDS)
    writer = csv.DictWriter(buf, fieldnames=fields, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(table.rows)
    write_text_atomic(csv_path, buf.getvalue())
    write_json_atomic(json_path, {"key": table.key, "title": table.title, "rows": table.rows})
    return [md, csv_path, json_path]
