"""What iste reads of a source OME-TIFF's OME-XML: the pixel size and the objective's
magnification, which tiffslide and OpenSlide do not read (the OME-XML iste writes is
:mod:`iste.slides.omexml`'s). Where the OME-XML records them they win over the TIFF's
resolution tags, as in Bio-Formats (QuPath), which reads the OME-XML alone: a writer's
default tags (72 dpi: 352.8 um) beside its OME-XML's 0.25 um were taken for the pixel size."""

from __future__ import annotations

import warnings

from iste.slides.scale import mpp_pair, positive

__all__ = ["ome_mpp", "ome_objective_power", "ome_scale"]


_UM_PER_UNIT = {"µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4,
                "m": 1e6, "pm": 1e-6, "Å": 1e-4, "\u212b": 1e-4, "dm": 1e5, "in": 25400.0,
                "thou": 25.4, "li": 25400.0 / 12, "pt": 25400.0 / 72}
"""Microns per unit of the OME schema's UnitsLength a microscope's pixel can be given in
(electron microscopy's Å and pm; inches, points, lines and thou of a scanner's dpi); a
PhysicalSize in another (pixel, reference frame, light years) is taken as unknown, with a
warning. Until session 34 Å, pm and inches were dropped without a word."""


def _ome_image(xml: str | None, series: int):
    """(root, Image element) of image ``series`` in an OME-XML document, or None."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml or "")
        return root, [e for e in root.iter() if _local(e.tag) == "Image"][series]
    except (ET.ParseError, IndexError):
        return None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def ome_mpp(xml: str | None, series: int) -> tuple[float, float] | None:
    """Microns per pixel (x, y) from an OME-XML's PhysicalSizeX/Y (and their units, microns
    by default) of image ``series``, or None."""
    found = _ome_image(xml, series)
    pixels = None if found is None else next(
        (e for e in found[1] if _local(e.tag) == "Pixels"), None)
    if pixels is None:
        return None
    sizes = []
    for axis in "XY":
        name = pixels.get(f"PhysicalSize{axis}Unit", "µm")
        value = positive(pixels.get(f"PhysicalSize{axis}"))
        if value is None:
            return None
        if name not in _UM_PER_UNIT:
            warnings.warn(f"the OME-XML gives the pixel size in {name!r}, not a length iste "
                          "converts to microns: taken as unknown", stacklevel=3)
            return None
        sizes.append(value * _UM_PER_UNIT[name])
    return mpp_pair(*sizes)


def ome_objective_power(xml: str | None, series: int) -> float | None:
    """The NominalMagnification of the Objective that image ``series`` of an OME-XML names in
    its ObjectiveSettings (what Bio-Formats and QuPath read), or None."""
    found = _ome_image(xml, series)
    if found is None:
        return None
    root, image = found
    wanted = next((e.get("ID") for e in image if _local(e.tag) == "ObjectiveSettings"), None)
    objective = next((e for e in root.iter() if _local(e.tag) == "Objective"
                      and e.get("ID") == wanted), None) if wanted else None
    return None if objective is None else positive(objective.get("NominalMagnification"))


def ome_scale(xml: str | None, series: int, mpp: tuple[float, float] | None,
              power: float | None) -> tuple[tuple[float, float] | None, float | None]:
    """(mpp (x, y), objective power) of image ``series`` of an OME-TIFF: its OME-XML's where
    it records them, else ``mpp`` and ``power`` (what a library read from the TIFF's tags)."""
    return ome_mpp(xml, series) or mpp, ome_objective_power(xml, series) or power
