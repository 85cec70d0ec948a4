"""The OME-XML of the ``ome`` slide layout: what Bio-Formats (and so QuPath) reads of it.

tifffile's own OME-XML has no instrument, so the objective's magnification, which QuPath shows
and uses to scale its views, could not be recorded; this one is written whole here, with the
standard library. One image per top-level IFD, in the order the writer puts them: the pyramid
(level 0, the lower levels as its SubIFDs, which Bio-Formats reads as its resolutions), then
the associated images. Bio-Formats names each series after its Image's Name; QuPath lists a
one-resolution series named ``label`` or ``macro`` as an associated image, as it does for an
SVS file's.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from iste.text import xml_text

__all__ = ["ome_xml"]

_NS = "http://www.openmicroscopy.org/Schemas/OME/2016-06"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"


def ome_xml(size: tuple[int, int], *, mpp: tuple[float, float] | None,
            objective_power: float | None, description: str = "",
            associated: tuple = ()) -> bytes:
    """The OME-XML document (UTF-8) for a pyramid of level-0 ``size`` (width, height), RGB uint8, at
    ``mpp`` (x, y) microns per pixel (None: not recorded), seen through an objective of
    ``objective_power`` (None: no instrument), with ``description`` (the provenance, as
    text; what XML 1.0 cannot hold, control characters, as escapes: :func:`iste.text.xml_text`)
    and the ``associated`` ((name, uint8 (h, w, 3)), ...) images on the IFDs after it."""
    root = ET.Element("OME", {  # plain names: the namespaces spelled as attributes
        "xmlns": _NS, "xmlns:xsi": _XSI, "xsi:schemaLocation": f"{_NS} {_NS}/ome.xsd",
        "Creator": "iste"})
    if objective_power is not None:
        instrument = ET.SubElement(root, "Instrument", ID="Instrument:0")
        ET.SubElement(instrument, "Objective", ID="Objective:0:0",
                      NominalMagnification=f"{objective_power:g}")
    images = [("iste", size, mpp, description), *(
        (name, (rgb.shape[1], rgb.shape[0]), None, "") for name, rgb in associated)]
    for ifd, (name, (width, height), pixel_size, text) in enumerate(images):
        image = ET.SubElement(root, "Image", ID=f"Image:{ifd}", Name=name)
        if text:  # the schema's order: Description, InstrumentRef, ObjectiveSettings, Pixels
            ET.SubElement(image, "Description").text = xml_text(text)
        if ifd == 0 and objective_power is not None:
            ET.SubElement(image, "InstrumentRef", ID="Instrument:0")
            ET.SubElement(image, "ObjectiveSettings", ID="Objective:0:0")
        pixels = ET.SubElement(image, "Pixels", {
            "ID": f"Pixels:{ifd}", "DimensionOrder": "XYCZT", "Type": "uint8",
            "SizeX": str(width), "SizeY": str(height), "SizeC": "3", "SizeZ": "1",
            "SizeT": "1", "Interleaved": "true", "SignificantBits": "8"})
        if pixel_size is not None:
            pixels.attrib.update(PhysicalSizeX=f"{pixel_size[0]:.10g}", PhysicalSizeXUnit="µm",
                                 PhysicalSizeY=f"{pixel_size[1]:.10g}", PhysicalSizeYUnit="µm")
        channel = ET.SubElement(pixels, "Channel", ID=f"Channel:{ifd}:0",
                                SamplesPerPixel="3")
        ET.SubElement(channel, "LightPath")
        ET.SubElement(pixels, "TiffData", IFD=str(ifd), PlaneCount="1")
    body = ET.tostring(root, encoding="unicode")  # UTF-8 in an ASCII tag (µm), as tifffile
    return ('<?xml version="1.0" encoding="UTF-8"?>' + body).encode()
