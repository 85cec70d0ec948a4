"""What, besides the method and the data, determines an evaluation result: :class:`Protocol`
(SSIM variant, engine options, metric precision, geometry, degradation) and the cache version.

Kept apart from :mod:`iste.eval.runner` so that the command line can offer its choices
without importing the evaluation loop and its libraries at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from iste.data import metrics
from iste.data.degradations import parse_degradation
from iste.engine.render import QueryOptions

__all__ = ["CACHE_VERSION", "Geometry", "GEOMETRIES", "Protocol"]

CACHE_VERSION = 4  # 2: LR size floor(H/s) of the uncropped image; 3: float scores by default;
# 4: LIIF-family weights on the last LR pixel centres (SR rows/columns at x3, x5 changed)
PUBLISHED_GRID_VERSION = 2  # of --protocol published alone: 2, its grid on the HR pixels at
# non-integer scales (iste.eval.published.padded_axis); results of our geometry keep their keys

Geometry = Literal["iste", "published"]
GEOMETRIES: tuple[str, ...] = ("iste", "published")


@dataclass(frozen=True)
class Protocol:
    """What, besides the method and the data, determines a result.

    ssim_variant: :data:`iste.data.metrics.SSIM_VARIANTS`.
    options: our engine's query options (with ``geometry="published"`` only the precision).
    metric_precision: "float" scores the clamped float prediction (as the published test
        does), "uint8" the SR rounded to 8 bits.
    geometry: "iste" (our engine, ceil(s) + 6 shaved) or "published" (the published test:
        :mod:`iste.eval.published`, 8 shaved).
    degradation: a fixed name of :mod:`iste.data.degradations` (paper, jpeg75, ...).
    """

    ssim_variant: metrics.SSIMVariant = "uniform-rgb"
    options: QueryOptions = QueryOptions(precision="fp32")
    metric_precision: metrics.MetricPrecision = "float"
    geometry: Geometry = "iste"
    degradation: str = "paper"

    def __post_init__(self):
        parse_degradation(self.degradation, allow_random=False)
        if self.ssim_variant not in metrics.SSIM_VARIANTS:
            raise ValueError(f"SSIM variant must be one of {metrics.SSIM_VARIANTS}, "
                             f"got {self.ssim_variant!r}")
        if self.metric_precision not in metrics.METRIC_PRECISIONS:
            raise ValueError(f"metric precision must be one of {metrics.METRIC_PRECISIONS}, "
                             f"got {self.metric_precision!r}")
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"protocol must be one of {GEOMETRIES}, got {self.geometry!r}")

    @property
    def border(self) -> int | None:
        """Pixels shaved per side: None = ceil(s) + 6 (:func:`iste.data.metrics.shave_width`)."""
        return metrics.PUBLISHED_BORDER if self.geometry == "published" else None

    def precision_for(self, model: torch.nn.Module | None) -> str:
        """The precision a model runs in under this protocol: "auto" resolved for the model
        and this machine (:func:`iste.engine.render.auto_precision`); "fp32" for bicubic."""
        if model is None:
            return "fp32"
        return self.options.resolved(model).precision

    def uses_stf_options(self, model: torch.nn.Module | None) -> bool:
        """Whether ``options``' STF key windows (``stf_window``, ``stf_keys``) shape the SR
        of ``model``: a model with STF (``uses_key_set``) under our engine's geometry; not
        bicubic (None), other models, nor the published geometry (its query chunks are STF's
        key sets)."""
        return self.geometry == "iste" and model is not None and model.uses_key_set

    def fingerprint(self, model: torch.nn.Module | None = None) -> dict[str, Any]:
        """What keys a cached result besides method, image and scale; the precision as the
        ``model`` runs it ("auto" resolved: a cache filled on a bf16 machine is not read as
        fp32 results elsewhere). The STF options only where they apply
        (:meth:`uses_stf_options`): other results are keyed with their defaults, so they
        keep the keys they had and a run with another ``--stf-keys`` reuses them."""
        from iste import __version__

        o = self.options  # chunk only bounds memory: not part of the fingerprint
        stf = o if self.uses_stf_options(model) else QueryOptions()
        precision = o.precision if model is None else self.precision_for(model)
        found = {"version": CACHE_VERSION, "iste": __version__, "ssim": self.ssim_variant,
                 "stf_window": stf.stf_window,
                 "stf_keys": stf.stf_keys, "cell_clip": o.cell_clip, "precision": precision,
                 "metric_precision": self.metric_precision, "geometry": self.geometry}
        if self.degradation != "paper":  # paper results keep the cache keys they had
            found["degradation"] = self.degradation
        if self.geometry == "published":  # its non-integer-scale grid was off the HR pixels
            found["published_grid"] = PUBLISHED_GRID_VERSION
        return found
