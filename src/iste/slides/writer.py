"""Pyramidal tiled BigTIFF writer, streaming tile by tile.

Layouts:
    ``svs`` (default) — the Aperio layout, the one that OpenSlide (vendor ``aperio``),
    tiffslide, Bio-Formats (QuPath's other reader: its SVS reader) and libvips (through
    OpenSlide; without it, one TIFF page per level) all open as the same pyramid with the same
    pixel size: level 0 in the first
    IFD, a stripped thumbnail in the second, the lower levels as further tiled IFDs, then the
    associated label and macro images. Level 0's ImageDescription is an Aperio header
    (``Aperio Image Library ...|AppMag = 40|MPP = 0.125|...``) carrying the pixel size, the
    objective power and the provenance (``iste.*`` keys: OpenSlide shows them as
    ``aperio.iste.model`` ...). Checked by tests/test_slides_layout.py with all three readers.
    ``generic`` — the "generic tiled TIFF" OpenSlide reads: every lower level in its own
    top-level IFD marked as a reduced image (NewSubfileType = 1). Bio-Formats sees one
    resolution only; no objective power.
    ``ome`` — OME-TIFF for Bio-Formats: level 0 with the lower levels as its SubIFDs, then the
    label and macro, each on an IFD of its own; the OME-XML (:mod:`iste.slides.omexml`)
    carries PhysicalSizeX/Y in µm, the objective's magnification, the provenance as the
    image's description and the associated images' names. OpenSlide sees one level only.

Every layout records the pixel size as ResolutionUnit = centimeter and X/YResolution = pixels
per cm of each level (an unknown pixel size: no X/YResolution at all, where tifffile's 1 / 1
per unit NONE reads as 1 um in Bio-Formats), the source's ICC profile (tag 34675) and the
provenance as XMP (tag 700).

Levels halve with ``ceil`` (see :mod:`iste.slides.levels`) until one fits in a single tile,
or until readers would misplace the next one (a thin output): the thumbnail is then a further
halving of the last level, down to one tile, which is no level.

Memory: level 0 tiles come, already encoded, from a callable (the pipeline's tile store);
level k + 1 is built from the 2 x 2 children of level k, decoded one parent at a time, into a
scratch file, before anything is written (the SVS layout puts the thumbnail, the last
halving, second). Peak memory is a few tiles, whatever the slide's size. The TIFF is written
to a temporary file in the target directory and renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
import tifffile

from iste.files import write_atomic
from iste.text import ascii_text
from iste.slides.levels import halve, halvings_to_fit, pyramid_sizes_to_fit
from iste.slides.omexml import ome_xml

__all__ = ["Codec", "Layout", "PyramidSpec", "TileCodec", "write_pyramid", "thumbnail_bytes"]

Codec = Literal["jpeg", "deflate"]
Layout = Literal["svs", "generic", "ome", "dicom"]
CODECS: tuple[str, ...] = ("jpeg", "deflate")
LAYOUTS: tuple[str, ...] = ("svs", "generic", "ome", "dicom")
TIFF_LAYOUTS: tuple[str, ...] = ("svs", "generic", "ome")
ASSOCIATED: tuple[str, ...] = ("label", "macro")  # copied from the source when it has them
_UM_PER_CM = 1e4


@dataclass(frozen=True)
class PyramidSpec:
    """What to write.

    width, height: level 0 size in pixels.
    tile: TIFF tile side (a multiple of 16).
    mpp: microns per pixel (x, y) of level 0, or None (then no resolution is recorded).
    codec: "jpeg" (YCbCr without chroma subsampling, ``quality``: on H&E, 4:2:0 costs ~7 dB
        PSNR at quality 90) or "deflate" (lossless, horizontal predictor).
    layout: "svs", "generic", "ome" (see the module docstring) or "dicom" (written by
        :mod:`iste.slides.dicom` from the same spec).
    description: free text for the ImageDescription of level 0 (generic layout; the image's
        Description in the ome layout's OME-XML).
    objective_power: the output's objective magnification (source power x scale), or None.
    icc_profile: ICC profile to embed (the source's), or None.
    associated: ((name, uint8 (h, w, 3)), ...) — "label", "macro" — written as associated
        images (svs and ome layouts; DICOM label / overview).
    properties: ((key, value), ...) recorded with the image: Aperio header keys (svs), XMP.
    xmp: an XMP packet for tag 700 (provenance), or None.
    dicom_source: a DICOM source's wsidicom ``WsiMetadata`` (its study, patient and slide),
        which a DICOM output joins as a new series; None otherwise.
    dicom_references: ((SOP Class UID, SOP Instance UID), ...) of a DICOM source's instances
        the output's pixels come from, referenced by a DICOM output (Source Image Sequence).
    origin_mm: (x, y) millimetres from the source's level-0 top-left corner to the output's
        (a region's offset): a DICOM output of a DICOM source is placed there in the source's
        slide coordinates.
    """

    width: int
    height: int
    tile: int = 512
    mpp: tuple[float, float] | None = None
    codec: Codec = "jpeg"
    quality: int = 90
    layout: Layout = "svs"
    description: str = ""
    objective_power: float | None = None
    icc_profile: bytes | None = None
    associated: tuple = ()
    properties: tuple = ()
    xmp: bytes | None = None
    dicom_source: object = None
    dicom_references: tuple = ()
    origin_mm: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self):
        if self.width < 1 or self.height < 1:
            raise ValueError(f"empty image {self.width} x {self.height}")
        if self.tile < 16 or self.tile % 16:
            raise ValueError(f"TIFF tile side must be a positive multiple of 16, got {self.tile}")
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, got {self.codec!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {self.quality}")
        if self.mpp is not None and not all(v > 0 for v in self.mpp):
            raise ValueError(f"mpp must be positive, got {self.mpp}")
        if self.objective_power is not None and not self.objective_power > 0:
            raise ValueError(f"objective power must be positive, got {self.objective_power}")
        for name, _ in self.associated:
            if name not in ASSOCIATED:
                raise ValueError(f"associated image {name!r} is not one of {ASSOCIATED}")

    @property
    def level_sizes(self) -> list[tuple[int, int]]:
        """(width, height) of every level, level 0 first."""
        return pyramid_sizes_to_fit(self.width, self.height, fit=self.tile)

    @property
    def halvings(self) -> list[tuple[int, int]]:
        """(width, height) of level 0 and its halvings down to one tile, the thumbnail:
        :attr:`level_sizes` and, for a thin output, the halvings past them."""
        return halvings_to_fit(self.width, self.height, fit=self.tile)

    def grid(self, level: int = 0) -> tuple[int, int]:
        """(tile rows, tile columns) of a level (an index in :attr:`halvings`)."""
        w, h = self.halvings[level]
        return -(-h // self.tile), -(-w // self.tile)


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of a uint8 (h, w, 3) image: YCbCr without chroma subsampling (4:4:4), which
    keeps H&E's fine colour detail (4:2:0 costs ~7 dB PSNR at quality 90)."""
    import imagecodecs  # here, not at import: 0.15 s of every command's start-up

    return bytes(imagecodecs.jpeg8_encode(np.ascontiguousarray(rgb), level=quality,
                                          colorspace="rgb", outcolorspace="ycbcr",
                                          subsampling="444"))


class TileCodec:
    """Encodes full tiles (tile, tile, 3) uint8 into the bytes the TIFF stores, and back."""

    def __init__(self, codec: Codec, tile: int, quality: int = 90):
        self.codec, self.tile, self.quality = codec, tile, quality

    @property
    def key(self) -> list:
        """What decides the bytes :meth:`encode` makes of given pixels, for the key of stored
        tiles (a slide job's work folder): [codec, quality] for JPEG, [codec] for the lossless
        deflate, which ignores the quality (tiles stored with one are reused under another)."""
        return [self.codec, self.quality] if self.codec == "jpeg" else [self.codec]

    def encode(self, rgb: np.ndarray) -> bytes:
        """rgb: uint8 (h, w, 3) with h, w <= tile; padded to a full tile by edge repetition."""
        t = self.tile
        h, w = rgb.shape[:2]
        if (h, w) != (t, t):
            rgb = np.pad(rgb, ((0, t - h), (0, t - w), (0, 0)), mode="edge")
        if self.codec == "jpeg":
            return encode_jpeg(rgb, self.quality)
        import imagecodecs

        rgb = np.ascontiguousarray(rgb)
        return bytes(imagecodecs.zlib_encode(imagecodecs.delta_encode(rgb, axis=1), level=6))

    def decode(self, data: bytes) -> np.ndarray:
        """bytes -> uint8 (tile, tile, 3).

        Raises:
            ValueError: bytes that are no tile of this codec and size (a work folder's tile
                altered after it was written, with its hash made to match)."""
        import imagecodecs

        try:
            if self.codec == "jpeg":
                tile = imagecodecs.jpeg8_decode(data)
            else:
                flat = np.frombuffer(imagecodecs.zlib_decode(data), dtype=np.uint8)
                tile = imagecodecs.delta_decode(flat.reshape(self.tile, self.tile, 3), axis=1)
        except Exception as exc:  # imagecodecs' errors, a wrong length
            raise ValueError(f"a finished tile does not decode as {self.codec} ({exc}); "
                             "remove the job's work folder and rerun") from None
        if tile.shape != (self.tile, self.tile, 3):
            raise ValueError(f"a finished tile is {tile.shape}, not ({self.tile}, {self.tile}, "
                             "3); remove the job's work folder and rerun")
        return tile

    def tiff_args(self) -> dict:
        if self.codec == "jpeg":
            # The pages come out tagged YCbCr with YCbCrSubSampling 2 x 2 (what tifffile writes
            # for photometric "rgb" JPEG) over 4:4:4 YCbCr streams: the one tagging that
            # OpenSlide, tiffslide, Bio-Formats and libvips (libtiff takes the sampling from
            # the streams) all decode to the same RGB. Tagged RGB, OpenSlide decodes the
            # streams as RGB (off by up to 158); tagged YCbCr 1 x 1, Bio-Formats (QuPath)
            # converts them twice (off by up to 232). Spelled out: a tifffile default.
            return {"compression": "jpeg", "photometric": "rgb", "subsampling": (2, 2)}
        return {"compression": "adobe_deflate", "photometric": "rgb", "predictor": 2}

    def strip_args(self) -> dict:
        """tifffile arguments of a stripped page of this codec, encoded by tifffile from the
        pixels (the svs layout's thumbnail): JPEG 4:4:4 at ``quality``, tagged YCbCr 1 x 1 as
        its streams are. OpenSlide reads such a page with libtiff, which refuses a stream whose
        sampling is not the tagged one (so not the tiles' 2 x 2 over 4:4:4), and tifffile's
        default there, 4:2:0 at its own quality, blurred the thumbnail's colour (up to 69 levels
        from the pyramid's last level, the same pixels, on H&E)."""
        if self.codec == "jpeg":
            return {"compression": "jpeg", "photometric": "rgb", "subsampling": (1, 1),
                    "compressionargs": {"level": self.quality}}
        return self.tiff_args()


TileSource = Callable[[int, int], bytes]  # (tile row, tile col) of level 0 -> encoded bytes


def write_pyramid(path: str | os.PathLike, spec: PyramidSpec, level0: TileSource, *,
                  progress: Callable[[int], None] | None = None,
                  scratch: str | os.PathLike | None = None) -> Path:
    """Write the pyramid; level-0 tiles are fetched as encoded bytes from ``level0``.

    Args:
        path: the final file (.tif/.tiff); written to a temporary file next to it first.
        spec: sizes, tile, codec, layout, mpp.
        level0: ``level0(row, col)`` returns tile (row, col) of level 0 encoded by
            ``TileCodec(spec.codec, spec.tile, spec.quality)`` (full tiles, edges padded).
        progress: called with 1 per tile written (all levels).
        scratch: folder for the temporary TIFF and the scratch files of the lower levels, on
            the same file system as ``path`` (default: ``path``'s folder). A job that owns a
            private folder (the slide pipeline's work folder) passes it, so that what a killed
            assembly leaves is cleaned with that folder.

    Returns:
        ``path``.
    """
    path = Path(path)
    codec = TileCodec(spec.codec, spec.tile, spec.quality)
    done = progress or (lambda n: None)

    def write(tmp: str) -> None:
        with contextlib.ExitStack() as stack:
            scratch_dir = stack.enter_context(tempfile.TemporaryDirectory(
                prefix=f".{path.name}.", dir=folder))
            if spec.layout not in TIFF_LAYOUTS:
                raise ValueError(f"layout {spec.layout!r} is not a TIFF layout")
            tw = stack.enter_context(tifffile.TiffWriter(tmp, bigtiff=True, ome=False))
            _write_levels(tw, spec, codec, level0, Path(scratch_dir), done)
        if spec.mpp is None:  # tifffile's 1 / 1 per unit NONE: 1 um pixels in Bio-Formats
            from iste.data.imagewrite import drop_tiff_resolution

            drop_tiff_resolution(tmp)
    folder = path.parent if scratch is None else Path(scratch)
    return write_atomic(path, write, suffix=".partial", tmp_dir=folder)


def _write_levels(tw, spec: PyramidSpec, codec: TileCodec, level0: TileSource,
                  scratch: Path, done: Callable[[int], None]) -> None:
    sizes = spec.level_sizes
    packs: list[_TilePack] = []
    try:
        sources = reduced_levels(spec, codec, level0, scratch, packs)
        for level, (w, h) in enumerate(sizes):
            rows, cols = spec.grid(level)
            tiles = _counted((sources[level](r, c) for r in range(rows) for c in range(cols)),
                             done)
            tw.write(tiles, shape=(h, w, 3), dtype=np.uint8, tile=(spec.tile, spec.tile),
                     **_page_args(spec, level, len(sizes), w, h), **codec.tiff_args())
            if level == 0 and spec.layout == "svs":
                _write_thumbnail(tw, spec, codec, _thumbnail(spec, codec, sources[-1]))
        if spec.layout == "svs":
            for name, rgb in spec.associated:
                tw.write(np.ascontiguousarray(rgb), metadata=None, subfiletype=1 if
                         name == "label" else 9, description=f"Aperio Image Library iste\n"
                         f"{name} {rgb.shape[1]}x{rgb.shape[0]}", compression="lzw",
                         photometric="rgb")
        elif spec.layout == "ome":  # named in the OME-XML, on the IFDs after the pyramid
            for _, rgb in spec.associated:
                tw.write(np.ascontiguousarray(rgb), metadata=None, compression="lzw",
                         photometric="rgb", software="iste")
    finally:
        for pack in packs:
            pack.close()


def reduced_levels(spec: PyramidSpec, codec: TileCodec, level0: TileSource, scratch: Path,
                   packs: list) -> list[TileSource]:
    """Tile sources of every halving (:attr:`PyramidSpec.halvings`), level 0 first: the lower
    ones are built (2 x 2 box averages of the one above) into scratch files, appended to
    ``packs`` (the caller closes them)."""
    sources: list[TileSource] = [level0]
    for level in range(1, len(spec.halvings)):
        pack = _TilePack(scratch / f"level{level}.bin")
        packs.append(pack)
        for _ in _reduced_tiles(spec, codec, level, sources[-1], pack):
            pass
        pack.finish()
        sources.append(pack.get)
    return sources


def _thumbnail(spec: PyramidSpec, codec: TileCodec, last: TileSource) -> np.ndarray:
    """uint8 (h, w, 3): the last halving (it fits in one tile)."""
    w, h = spec.halvings[-1]
    return np.ascontiguousarray(codec.decode(last(0, 0))[:h, :w])


def _write_thumbnail(tw, spec: PyramidSpec, codec: TileCodec, thumb: np.ndarray) -> None:
    """The svs layout's thumbnail page: ``thumb`` uint8 (h, w, 3), in one strip."""
    # NewSubfileType 0 written out: Bio-Formats takes a page without it for the label, and
    # with no real label after it lost the pyramid's last level
    # its pixels are the last halving's, and so is their size (tifffile's default, 1 / 1 per
    # unit NONE, read as 1000 um pixels by libvips, which opens each page of the file)
    tw.write(thumb, description=_aperio_line(spec, thumb.shape[1], thumb.shape[0]),
             metadata=None, subfiletype=0, **_resolution_args(spec, len(spec.halvings) - 1),
             **codec.strip_args())


def thumbnail_bytes(spec: PyramidSpec, thumb: np.ndarray) -> int:
    """Bytes the svs layout's thumbnail page stores for ``thumb`` (uint8 (h, w, 3)): its
    strip, encoded as :func:`write_pyramid` encodes it (an estimate's yardstick)."""
    import io

    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer, bigtiff=True) as tw:
        _write_thumbnail(tw, spec, TileCodec(spec.codec, spec.tile, spec.quality),
                         np.ascontiguousarray(thumb))
    with tifffile.TiffFile(io.BytesIO(buffer.getvalue())) as tif:
        return int(sum(tif.pages[0].databytecounts))


def _counted(tiles: Iterator[bytes], done: Callable[[int], None]) -> Iterator[bytes]:
    """``tiles``, each counted as it is handed over: tifffile takes exactly the tiles of a
    page, so a count after the ``yield`` never ran for the last tile of each level."""
    for t in tiles:
        done(1)
        yield t


def _aperio_line(spec: PyramidSpec, w: int, h: int) -> str:
    return f"Aperio Image Library iste\n{spec.width}x{spec.height} -> {w}x{h}"


def aperio_description(spec: PyramidSpec) -> str:
    """Level 0's ImageDescription in the svs layout: the Aperio header OpenSlide, tiffslide
    and Bio-Formats parse (``key = value`` fields after ``|``)."""
    t = spec.tile
    codec = f"JPEG/RGB Q={spec.quality}" if spec.codec == "jpeg" else "Deflate/RGB"
    fields = [f"Aperio Image Library iste\r\n{spec.width}x{spec.height} [0,0 {spec.width}x"
              f"{spec.height}] ({t}x{t}) {codec}"]
    if spec.objective_power is not None:
        fields.append(f"AppMag = {spec.objective_power:g}")
    if spec.mpp is not None:
        fields.append(f"MPP = {(spec.mpp[0] + spec.mpp[1]) / 2:.6g}")
    for key, value in spec.properties:
        text = str(value).replace("|", "/").replace("\n", " ").replace("\r", " ")
        fields.append(f"{key} = {ascii_text(text)}")
    return "|".join(fields)


def _resolution_args(spec: PyramidSpec, level: int) -> dict:
    """tifffile's resolution arguments of ``level``'s pixels: per cm, from ``spec.mpp``; none
    for an unknown pixel size (:func:`write_pyramid` then drops tifffile's default)."""
    if spec.mpp is None:
        return {}
    ds = 2 ** level  # each level's pixel is 2 x 2 of the one above (halve), also where an
    #                  odd side made its size not half: not W0 / w
    return {"resolution": (_UM_PER_CM / (spec.mpp[0] * ds), _UM_PER_CM / (spec.mpp[1] * ds)),
            "resolutionunit": "CENTIMETER"}


def _page_args(spec: PyramidSpec, level: int, n_levels: int, width: int, height: int) -> dict:
    """Tags of one level: subfile type, resolution, description / OME metadata."""
    reduced = level > 0 and spec.layout != "svs"  # Aperio levels are not marked reduced
    args: dict = {"software": "iste", "subfiletype": 1 if reduced else 0, "metadata": None,
                  **_resolution_args(spec, level)}
    if level > 0:
        if spec.layout == "svs":
            args["description"] = _aperio_line(spec, width, height)
        return args
    if spec.icc_profile:
        args["iccprofile"] = spec.icc_profile
    if spec.xmp:
        args["extratags"] = [(700, 1, len(spec.xmp), spec.xmp, True)]
    if spec.layout == "ome":
        args.update(description=ome_xml((width, height), mpp=spec.mpp,
                                        objective_power=spec.objective_power,
                                        description=spec.description,
                                        associated=spec.associated),
                    subifds=n_levels - 1)
    elif spec.layout == "svs":
        args["description"] = aperio_description(spec)
    elif spec.description:
        args["description"] = ascii_text(spec.description)
    return args


def _reduced_tiles(spec: PyramidSpec, codec: TileCodec, level: int, parent: TileSource,
                   pack: "_TilePack") -> Iterator[bytes]:
    """Encoded tiles of ``level`` from the 2 x 2 children of each tile in ``level - 1``."""
    t = spec.tile
    pw, ph = spec.halvings[level - 1]
    w, h = spec.halvings[level]
    prow, pcol = spec.grid(level - 1)
    for r in range(-(-h // t)):
        for c in range(-(-w // t)):
            y0, x0 = 2 * r * t, 2 * c * t  # this tile's area in the level above
            y1, x1 = min(y0 + 2 * t, ph), min(x0 + 2 * t, pw)
            mosaic = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
            for i in range(2):
                for j in range(2):
                    cr, cc = 2 * r + i, 2 * c + j
                    if cr >= prow or cc >= pcol:
                        continue
                    child = codec.decode(parent(cr, cc))
                    ys, xs = i * t, j * t
                    hh, ww = min(t, y1 - y0 - ys), min(t, x1 - x0 - xs)
                    mosaic[ys:ys + hh, xs:xs + ww] = child[:hh, :ww]
            data = codec.encode(halve(mosaic))
            pack.append(r, c, data)
            yield data


class _TilePack:
    """Encoded tiles of one level in an append-only scratch file, with an in-memory index
    (16 bytes per tile)."""

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "w+b")
        self._index: dict[tuple[int, int], tuple[int, int]] = {}
        self._end = 0

    def append(self, row: int, col: int, data: bytes) -> None:
        self._f.seek(self._end)
        self._f.write(data)
        self._index[(row, col)] = (self._end, len(data))
        self._end += len(data)

    def finish(self) -> None:
        self._f.flush()

    def get(self, row: int, col: int) -> bytes:
        offset, n = self._index[(row, col)]
        self._f.seek(offset)
        return self._f.read(n)

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
        self.path.unlink(missing_ok=True)
