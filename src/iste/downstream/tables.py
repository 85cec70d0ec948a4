"""Paper Tables 5 and 6 in the evaluation report's formats (Markdown, CSV, JSON long rows).

Table 5 (GlaS): per setting and test split, F1 (from TP/FP/FN pooled over the split), object
Dice and object Hausdorff (over the split's objects, area-weighted, as the challenge pools
them) — see :mod:`iste.downstream.gland_metrics`.
Table 6 (PCam): per setting, accuracy, F1 of the tumour class and ROC AUC.
Best value per column in bold (lowest Hausdorff).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Sequence

from iste.downstream.gland_metrics import GlandCounts, pooled_gland_metrics
from iste.eval.tables import TableOut, best_keys, markdown_table, markdown_text

__all__ = ["table5", "table6"]

# metric: (column label, digits, higher is better)
GLAS_METRICS = {"f1": ("F1↑", 3, True), "object_dice": ("ObjDice↑", 3, True),
                "object_hausdorff": ("ObjHausdorff↓", 2, False)}
PCAM_METRICS = {"accuracy": ("Accuracy↑", 4, True), "f1": ("F1↑", 4, True),
                "auc": ("AUC↑", 4, True)}


def _fmt(value: float, digits: int, bold: bool) -> str:
    text = f"{value:.{digits}f}"
    return f"**{text}**" if bold else text


def table5(records: Sequence[dict], settings: Sequence[str]) -> TableOut:
    """records: per image ``{setting, split, image}`` and the fields of
    :class:`GlandCounts` (``tp``, ``fp``, ``fn``, areas and score sums); rows in the order
    of ``settings``."""
    splits = sorted({r["split"] for r in records})
    pooled = {}
    for s in settings:
        for split in splits:
            counts = [GlandCounts(**{f.name: r[f.name] for f in fields(GlandCounts)})
                      for r in records if r["setting"] == s and r["split"] == split]
            if counts:
                pooled[(s, split)] = pooled_gland_metrics(counts)
    header, body, rows = ["Setting"], {s: [markdown_text(s)] for s in settings}, []
    for metric, (label, digits, higher) in GLAS_METRICS.items():
        for split in splits:
            header.append(f"{label} {split.replace('test', 'Test ')}")
            col = {s: pooled[(s, split)][metric] for s in settings if (s, split) in pooled}
            best = best_keys(col, digits, higher)
            for s in settings:
                body[s].append("—" if s not in col else _fmt(col[s], digits, s in best))
                if s in col:
                    p = pooled[(s, split)]
                    rows.append({"table": "table5_glas", "setting": s, "split": split,
                                 "metric": metric, "value": col[s], "images": p["images"],
                                 "tp": p["tp"], "fp": p["fp"], "fn": p["fn"], "best": s in best})
    title = ("Table 5. Gland segmentation (U-Net) on GlaS: F1 (detections pooled over the split), "
             "object Dice and object Hausdorff (pixels), each over all the split's glands "
             "weighted by area, as the GlaS challenge pools them. Best in bold.")
    return TableOut("table5_glas", title,
                    f"**{title}**\n\n{markdown_table(header, list(body.values()))}", rows)


def table6(results: dict[str, dict[str, float]], n: int) -> TableOut:
    """results: setting -> ``{accuracy, f1, auc}`` over ``n`` test patches (row order kept)."""
    header = ["Setting", *[label for label, _, _ in PCAM_METRICS.values()]]
    body = {s: [markdown_text(s)] for s in results}
    rows = []
    for metric, (_, digits, higher) in PCAM_METRICS.items():
        col = {s: r[metric] for s, r in results.items()}
        best = best_keys(col, digits, higher)
        for s, v in col.items():
            body[s].append(_fmt(v, digits, s in best))
            rows.append({"table": "table6_pcam", "setting": s, "metric": metric, "value": v,
                         "n": n, "best": s in best})
    title = (f"Table 6. Tumour detection (ResNet-50) on PCam, {n} test patches: accuracy, F1 of "
             "the tumour class, ROC AUC. Best in bold.")
    return TableOut("table6_pcam", title,
                    f"**{title}**\n\n{markdown_table(header, list(body.values()))}", rows)
