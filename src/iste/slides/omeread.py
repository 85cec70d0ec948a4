"""What iste reads of a source OME-TIFF's OME-XML: the pixel size and the objective's
magnification, which tiffslide and OpenSlide do not read (the OME-XML iste writes is
:mod:`iste.slides.omexml`'s). Where the OME-XML records them they win over the TIFF's
resolution tags, as in Bio-Formats (QuPath), which reads the OME-XML alone: a writer's
default tags (72 dpi: 352.8 um) beside its OME-XML's 0.25 um were taken for the pixel size."""

from __future__ import annotations

from iste.slides.scale import mpp_pair, positive

__all__ = ["ome_mpp", "ome_objective_power", "ome_scale"]


_UM_PER_UNIT = {"µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4,
                "m": 1e6}


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
        unit = _UM_PER_UNIT.get(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        value = positive(pixels.get(f"PhysicalSize{axis}"))
        if unit is None or value is None:
            return None
        sizes.append(value * unit)
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
