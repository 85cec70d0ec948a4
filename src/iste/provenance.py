"""What made an output: versions, model, settings, source — recorded in every output.

:class:`Provenance` is written as text into a TIFF's ImageDescription (after the slide
header), as XMP (TIFF tag 700), as DICOM attributes (Software Versions, Derivation
Description, Contributing Equipment) and as a JSON sidecar next to plain images
(``out.png.json``). :func:`versions` is what ``iste --version`` prints.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from iste.text import ascii_text, message_line, xml_text

__all__ = ["Provenance", "versions", "written_by", "model_fingerprint", "source_sha256",
           "iste_version", "sidecar_path", "write_sidecar", "write_with_sidecar", "RUN_FIELDS",
           "IMAGE_SHA256", "image_problem",
           "recorded", "differences", "source_problem"]


def iste_version() -> str:
    from iste import __version__

    return __version__


def written_by() -> dict[str, str]:
    """{"iste": ..., "torch": ...}: recorded in every checkpoint iste writes."""
    return {"iste": iste_version(), "torch": str(torch.__version__)}  # a str, not TorchVersion


def versions() -> dict[str, str | None]:
    """Versions of iste, torch and the image / slide libraries (None where not installed)."""
    out: dict[str, str | None] = {"iste": iste_version(), "torch": str(torch.__version__)}
    for name in ("numpy", "tifffile", "imagecodecs", "tiffslide", "openslide", "wsidicom",
                 "pydicom", "PIL"):
        try:
            module = __import__(name)
            out[name] = getattr(module, "__version__", None)
        except Exception:  # absent or broken: say so rather than fail
            out[name] = None
    try:
        import openslide

        out["openslide-library"] = openslide.__library_version__
    except Exception:
        out["openslide-library"] = None
    return out


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 (16 hex digits) of the model's config and weights (what decides its output)."""
    h = hashlib.sha256()
    h.update(repr(model.model_config.to_dict()).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _name(name: str) -> str:
    """A file name as recorded: bytes that were not UTF-8 and control characters as escapes
    (:func:`iste.text.message_line`), so that every form (the text line, XMP and OME-XML,
    DICOM strings, the sidecar) holds it and reads it back alike."""
    return message_line(name)


def source_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, or of a folder's files (a DICOM series: names and bytes, sorted)."""
    from iste.digest import sha256_file

    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in _files_of(path):
        h.update(p.name.encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()


UNTRAINED_DEFAULT = "RANDOM-INITIALISED default (no trained weights installed)"


@dataclass(frozen=True)
class Provenance:
    """What made an output. ``model`` is a name (a checkpoint's file name, "shipped
    default", or :data:`UNTRAINED_DEFAULT` without trained weights), ``model_sha`` its
    :func:`model_fingerprint`, ``architecture`` what it is (``SRModel.architecture``: "ISTE +
    edsr-baseline"); ``stf_keys`` None for a model without STF key windows (the option did
    not apply)."""

    model: str
    model_sha: str
    architecture: str
    scale: float
    precision: str
    stf_keys: int | None
    source: str
    source_sha256: str | None
    iste: str = field(default_factory=iste_version)
    torch: str = str(torch.__version__)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc)
                         .isoformat(timespec="seconds"))
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_run(cls, model: torch.nn.Module, *, model_name: str | None, scale: float, options,
                source: str | os.PathLike | None, hash_source: bool = True,
                untrained: bool = False, **extra: Any) -> "Provenance":
        """``model_name`` None: the shipped default, whose weights are a random
        initialisation where ``untrained`` (:func:`iste.models.checkpoint.is_untrained`, read
        by the caller: this layer is below the models')."""
        src = "" if source is None else str(source)
        sha = source_sha256(source) if source is not None and hash_source \
            and Path(source).exists() else None
        if model_name:
            name = _name(model_name)
        else:  # no trained weights installed: the random initialisation of
            # iste.default_model.load_default
            name = UNTRAINED_DEFAULT if untrained else "shipped default"
        return cls(model=name,
                   model_sha=model_fingerprint(model), architecture=model.architecture,
                   scale=float(scale),
                   precision=options.resolved(model).precision,
                   stf_keys=options.stf_keys if model.uses_key_set else None,
                   source=_name(Path(src).name) if src else "", source_sha256=sha,
                   extra=dict(extra))

    def to_dict(self) -> dict[str, Any]:
        """The fields (``extra`` merged in); ``stf_keys`` only for a model with STF."""
        d = asdict(self)
        d.update(d.pop("extra"))
        if d["stf_keys"] is None:
            del d["stf_keys"]
        return d

    def to_text(self) -> str:
        """One line ``iste 0.1.0 super-resolution x2.5 of slide.svs (sha256 ...) | model ...
        sha ... | ... | level 0 | region 100,50,202,152 | ...`` (a TIFF's ImageDescription,
        DICOM's Contribution Description and Image Comments): every field of :meth:`to_dict`,
        the ``extra`` ones (a slide's level, region, input pixels) last, lists as
        comma-separated values, None left out; in ASCII as TIFF and DICOM's default character
        set ask: other characters of names, and control characters of any field (a NUL ended
        a TIFF string), as Python escapes (``Pr\\xe4parat.svs``)."""
        keys = "" if self.stf_keys is None else f" | stf_keys {self.stf_keys}"
        extra = "".join(
            f" | {k} {','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
            for k, v in self.extra.items() if v is not None)
        text = (f"iste {self.iste} super-resolution x{self.scale:g} of {self.source}"
                f" (sha256 {self.source_sha256 or 'unknown'}) | model {self.model}"
                f" sha {self.model_sha} ({self.architecture}) | precision {self.precision}{keys}"
                f" | torch {self.torch} | {self.created}{extra}")
        return ascii_text(text)

    def to_json(self, **more: Any) -> str:
        """:meth:`to_dict` and ``more`` fields (a sidecar's image digest) as indented JSON."""
        return json.dumps({**self.to_dict(), **more}, indent=2, sort_keys=True)

    def to_xmp(self) -> bytes:
        """An XMP packet holding the fields of :meth:`to_dict` under an ``iste:`` namespace,
        None left out as in :meth:`to_text` (XML text has no null: a "None" read back was a
        string), plus the creator tool and date (TIFF tag 700); what XML 1.0 cannot hold as
        escapes (:func:`iste.text.xml_text`)."""
        from xml.sax.saxutils import escape

        fields = "".join(f"<iste:{k}>{escape(xml_text(str(v)))}</iste:{k}>"
                         for k, v in sorted(self.to_dict().items()) if v is not None)
        return (
            '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
            'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
            'xmlns:iste="https://pypi.org/project/iste/ns/1.0/">'
            f"<xmp:CreatorTool>iste {escape(xml_text(self.iste))}</xmp:CreatorTool>"
            f"<xmp:CreateDate>{escape(xml_text(self.created))}</xmp:CreateDate>{fields}"
            '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>').encode("utf-8")


def sidecar_path(image_path: str | os.PathLike) -> Path:
    """Where a plain image's provenance goes: ``out.png`` -> ``out.png.json``."""
    p = Path(image_path)
    return p.with_name(p.name + ".json")


IMAGE_SHA256 = "image_sha256"
"""The sidecar's field holding the sha256 of the image it describes, as written: a folder
rerun finds an image replaced or cut short under an intact sidecar (:func:`image_problem`)."""


def write_sidecar(image_path: str | os.PathLike, provenance: Provenance, *,
                  replace: bool = True, image_sha256: str | None = None) -> Path:
    """Write :meth:`Provenance.to_json` next to a plain image (atomically; a temporary a
    killed write of it left is removed), with the image's sha256 when given."""
    from iste.files import write_bytes_atomic

    path = sidecar_path(image_path)
    more = {} if image_sha256 is None else {IMAGE_SHA256: image_sha256}
    return write_bytes_atomic(path, (provenance.to_json(**more) + "\n").encode(),
                              replace=replace)


def image_problem(image_path: str | os.PathLike, found: dict[str, Any]) -> str | None:
    """Why the image at ``image_path`` is not the one its sidecar (``found``, as
    :func:`recorded` reads it) was written with, or None: its sha256 differs. A sidecar of
    an iste before session 26 records none, and its image is taken as it is."""
    from iste.digest import sha256_file

    expected = found.get(IMAGE_SHA256)
    if not isinstance(expected, str) or sha256_file(image_path) == expected:
        return None
    return "its image is not the one its provenance sidecar was written with"


def write_with_sidecar(image_path: str | os.PathLike, image, provenance: Provenance, *,
                       replace: bool = True, **image_options) -> Path:
    """A plain image and its provenance sidecar, as one: the image's data are written in
    full first, then the sidecar, then the image is put in place
    (:func:`iste.data.imagewrite.write_image` with ``image_options``). A write that fails (a
    full disk) leaves both files as they were: never a new image without its provenance, nor
    beside the provenance of the one it replaced.

    Args:
        image: ``np.ndarray`` uint8, (H, W, 3) RGB or (H, W) gray.
        replace: False: an image or sidecar another process wrote meanwhile is kept
            (FileExistsError), and a sidecar written here is removed again.
    """
    from iste.data.imagewrite import write_image

    wrote: list[Path] = []

    def sidecar(image_sha256: str) -> None:
        wrote.append(write_sidecar(image_path, provenance, replace=replace,
                                   image_sha256=image_sha256))

    try:
        write_image(image_path, image, replace=replace, then=sidecar, **image_options)
    except BaseException:
        if wrote and not replace:  # the image's name was taken after the sidecar's was free
            wrote[0].unlink(missing_ok=True)
        raise
    return Path(image_path)


RUN_FIELDS = ("source", "scale", "model_sha", "level", "region", "input_pixels",
              "exif_orientation", "tissue")
"""The fields that decide an output's pixels (``input_pixels``: a JPEG scan deblocked or
not; ``exif_orientation``: a plain image turned upright by it; ``tissue``: a slide's glass
bicubic and blended into the model beside tissue, by the rule it names, or all the model's
without): an output already there that
records other values is another run's. Not among them: the iste and torch versions, the
precision and STF keys (the same pixels within rounding), and the source's sha256 (hashing a
cohort's slides again would cost minutes on every rerun: :func:`source_problem` compares it
only for a source changed since the output was written)."""


def recorded(output: str | os.PathLike) -> dict[str, Any]:
    """The provenance an iste output records: a slide TIFF's XMP (tag 700), a DICOM folder's
    or file's Image Comments (:meth:`Provenance.to_text`, parsed), else a plain image's JSON
    sidecar, a plain TIFF image's included; numbers as numbers (:func:`_typed`). ValueError
    when there is none."""
    path = Path(output)
    if path.is_dir():
        return _recorded_dicom(sorted(path.glob("*.dcm")))
    if path.suffix.lower() == ".dcm":
        return _recorded_dicom([path])
    sidecar = sidecar_path(path)
    # a plain image written as .tif has a sidecar and no XMP: read as a slide's TIFF, a
    # folder rerun failed every such item ('not a complete iste output') and iste info too
    if path.suffix.lower() in (".tif", ".tiff"):
        found = _recorded_xmp(path)
        if found is not None:
            return found
        if not os.path.lexists(sidecar):
            raise ValueError(f"no XMP provenance (TIFF tag 700) nor provenance sidecar "
                             f"{sidecar.name}")
    try:
        found = json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"no provenance sidecar {sidecar.name}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"unreadable provenance sidecar {sidecar.name}: {err}") from None
    if not isinstance(found, dict):
        raise ValueError(f"provenance sidecar {sidecar.name} holds no fields")
    return found


_ISTE_NS = "{https://pypi.org/project/iste/ns/1.0/}"


def _recorded_xmp(path: Path) -> dict[str, Any] | None:
    """What the TIFF's XMP records, or None where it has no XMP (tag 700)."""
    import xml.etree.ElementTree as ET

    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            tag = tif.pages.first.tags.get(700)
            packet = None if tag is None else tag.value
    except (OSError, ValueError, tifffile.TiffFileError) as err:
        raise ValueError(f"not a readable TIFF: {err}") from None
    if packet is None:
        return None
    try:
        root = ET.fromstring(bytes(packet))
    except ET.ParseError as err:
        raise ValueError(f"unreadable XMP provenance: {err}") from None
    found = {e.tag[len(_ISTE_NS):]: e.text or "" for e in root.iter()
             if e.tag.startswith(_ISTE_NS)}
    if not found:
        raise ValueError("its XMP records no iste provenance")
    return _typed(found)


_NUMBERS = frozenset({"scale", "level", "region", "region_requested", "stf_keys", "scale_hw"})
"""The provenance fields that hold numbers or lists of them (or None)."""


def _typed(found: dict[str, str]) -> dict[str, Any]:
    """``found``'s number fields (:data:`_NUMBERS`) as XMP (``str(value)``: ``[1, 2]``) or
    the text line (``1,2``) wrote them, back as a number or a list (the scale a float, as
    the sidecar holds it); a source sha256 the text line says is "unknown" as None; the text
    "None" in any field as None (outputs before session 37 wrote ``str(None)`` into their XMP:
    ``tissue``, ``source_sha256``, ``region`` read back as strings); text that is none of
    them, and every other field, as it is."""
    out: dict[str, Any] = {k: None if v == "None" else v for k, v in found.items()}
    for key in _NUMBERS & found.keys():
        text = out[key]
        if text is None:
            continue
        for form in (text, f"[{text}]"):
            try:
                out[key] = json.loads(form)
                break
            except ValueError:
                continue
    if isinstance(out.get("scale"), int):
        out["scale"] = float(out["scale"])
    if out.get("source_sha256") == "unknown":
        out["source_sha256"] = None
    return out


_TEXT = re.compile(r"iste (?P<iste>\S+) super-resolution x(?P<scale>\S+) of (?P<source>.*) "
                   r"\(sha256 (?P<source_sha256>\w+)\) \| model (?P<model>.*) "
                   r"sha (?P<model_sha>[0-9a-f]+) \((?P<architecture>.*?)\)"
                   r" \| precision (?P<precision>\S+)(?: \| stf_keys (?P<stf_keys>\d+))?"
                   r" \| torch (?P<torch>\S+) \| (?P<created>\S+)(?P<extra>.*)")


def _recorded_dicom(files: list[Path]) -> dict[str, Any]:
    """The first Image Comments of the DICOM ``files`` that :meth:`Provenance.to_text` wrote,
    parsed: its head's fields by name, then each ``| key value`` after it."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    for file in files:
        try:
            text = str(pydicom.dcmread(file, stop_before_pixels=True,
                                       specific_tags=["ImageComments"]).get("ImageComments",
                                                                            ""))
        except (OSError, InvalidDicomError, ValueError):
            continue
        match = _TEXT.match(text)
        if match:
            found = {k: v for k, v in match.groupdict().items() if v is not None}
            found.update(part.partition(" ")[::2]
                         for part in found.pop("extra").split(" | ")[1:])
            return _typed(found)
    raise ValueError("no DICOM file of it records iste provenance (Image Comments)")


def differences(found: dict[str, Any], expected: Provenance) -> list[str]:
    """``"scale 2 (this run: 4)"`` for each of :data:`RUN_FIELDS` where ``found`` (as
    :func:`recorded` read it) records other than ``expected``; empty when they agree."""
    wanted = expected.to_dict()
    out = []
    for key in RUN_FIELDS:
        had, want = _canonical(key, found.get(key)), _canonical(key, wanted.get(key))
        if had != want:
            out.append(f"{key} {had or 'none'} (this run: {want or 'none'})")
    return out


def source_problem(found: dict[str, Any], source: str | os.PathLike,
                   output: str | os.PathLike) -> str | None:
    """Why ``output`` (recording ``found``, as :func:`recorded` read it) was not made from the
    bytes ``source`` holds now, or None. A source replaced under its name (another scan
    copied over it, a file edited) keeps the name the output records: its sha256 is compared
    with the recorded one, but only where one of its files changed (modification or
    status-change time) since the output was written, so a rerun over unchanged slides
    hashes none of them. The status-change time moves with every write, copy and rename and
    no program can set it back, so a copy with its old modification time kept
    (``cp -p``, ``touch -r``) is caught too."""
    src, out = Path(source), Path(output)
    try:
        changed = _newest_change_ns(src) >= _written_ns(out)
    except OSError:
        changed = True  # cannot tell: the digest decides
    if not changed:
        return None
    had = found.get("source_sha256")
    now = source_sha256(src)
    if had == now:
        return None
    return (f"source_sha256 {str(had)[:16] if had else 'none'} (this run: {now[:16]}: "
            f"{_name(src.name)} changed after the output was written)")


def _files_of(path: Path) -> list[Path]:
    """A source's files as :func:`source_sha256` digests them: the file, or a folder's."""
    return sorted(q for q in path.iterdir() if q.is_file()) if path.is_dir() else [path]


def _newest_change_ns(source: Path) -> int:
    return max(max(st.st_mtime_ns, st.st_ctime_ns)
               for st in (p.stat() for p in [source, *_files_of(source)]))


def _written_ns(output: Path) -> int:
    """When ``output`` (a file, or a DICOM folder's files) was last written: the oldest."""
    files = sorted(output.glob("*.dcm")) if output.is_dir() else [output]
    return min((p.stat().st_mtime_ns for p in files), default=0)


def _canonical(key: str, value: Any) -> str | None:
    """A field's value in one form whether read from JSON, XMP or text: None for none,
    ``2.5`` for a scale (2.5, "2.5", "2.50"), ``1,2,3,4`` for a region ([1, 2, 3, 4],
    "[1, 2, 3, 4]", "1,2,3,4"), text in ASCII with Python escapes, as the text form
    (:meth:`Provenance.to_text`: a DICOM output's) writes it: a source named Präparat.svs
    is ``Pr\\xe4parat.svs`` there (a folder rerun took its DICOM output for another run's)."""
    if value is None or str(value) in ("", "None"):
        return None
    if key == "region":
        return ",".join(re.findall(r"-?\d+", str(value)))
    if key in ("scale", "level"):
        try:
            return f"{float(value):g}"
        except ValueError:
            return str(value)
    return str(value).encode("ascii", "backslashreplace").decode("ascii")
