"""A slide with input that cannot be read (a damaged JPEG tile, a frame cut short): the job
stops naming it and how to go on, or with ``--unreadable-tiles fill`` finishes the slide with
the tiles it cannot read filled from a coarser level, warned about once per region and
recorded in the output's provenance and the JSON summary; resume keeps filled tiles apart
from model tiles."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import tifffile
import torch

from hostile_cases import run_cli
from iste.engine.render import QueryOptions
from iste.models.checkpoint import save_model
from iste.models.registry import build_model
from iste.provenance import Provenance, recorded
from iste.slides.job import SlideJob
from iste.slides.pipeline import upscale_slide
from iste.slides.formats import open_slide
from iste.slides.reader import InMemorySlide, SlideError, UnreadableRegionError
from iste.slides.workdir import WorkDir, work_dir_for
from model_zoo import tiny_config
from slide_data import killed_at_tile, smooth_tissue

OPTS = QueryOptions(stf_window=16, stf_keys=32)
APERIO = ("Aperio Image Library v1.0\n{w}x{h} [0,0 {w}x{h}] (64x64) JPEG/RGB Q=70|AppMag = 20|"
          "MPP = 0.5")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_config("iste")).eval()


class DamagedSlide(InMemorySlide):
    """An InMemorySlide whose level-0 reads fail where they touch ``damaged`` (x, y, w, h),
    as a file backend's read of a damaged tile does (tile column 1 row 1 of 64 px tiles)."""

    def __init__(self, rgb, damaged=(64, 64, 64, 64), **kwargs):
        super().__init__(rgb, **kwargs)
        self.damaged = damaged

    def _read_level(self, level, x, y, width, height):
        dx, dy, dw, dh = self.damaged
        if level == 0 and x < dx + dw and dx < x + width and y < dy + dh and dy < y + height:
            raise UnreadableRegionError(f"cannot read (level 0, x={x}, y={y}): damaged",
                                        level=0, box=(x, y, width, height), tiles=((1, 1),))
        return super()._read_level(level, x, y, width, height)


def _job(**kwargs):
    return SlideJob(2, tile=32, codec="deflate", tissue=False, **kwargs)


def _provenance(model):
    return Provenance.for_run(model, model_name=None, scale=2, options=OPTS, source=None)


def test_a_job_stops_at_input_it_cannot_read_and_says_how_to_go_on(tmp_path, model):
    slide = DamagedSlide(smooth_tissue(192, 256), mpp=0.5)
    out = tmp_path / "out.tiff"
    with pytest.raises(UnreadableRegionError, match=r"damaged: rerun with --unreadable-tiles "
                                                    r"fill .*finished tiles are kept in"):
        upscale_slide(slide, out, model, _job(), options=OPTS, progress=False)
    assert not out.exists() and work_dir_for(out).is_dir()


def test_fill_finishes_the_slide_from_the_coarser_level_and_records_where(tmp_path, model):
    """Only the inference tiles whose own input cannot be read are filled (bicubic from
    level 1); a tile whose halo alone reaches the damage is the model's, from a crop whose
    unreadable part comes from level 1; tiles out of the model's reach are as on a whole
    slide."""
    rgb = smooth_tissue(192, 256)
    out, ref = tmp_path / "out.tiff", tmp_path / "ref.tiff"
    upscale_slide(InMemorySlide(rgb, mpp=0.5), ref, model, _job(), options=OPTS,
                  progress=False)
    with pytest.warns(UserWarning) as caught:
        res = upscale_slide(DamagedSlide(rgb, mpp=0.5), out, model, _job(unreadable="fill"),
                            options=OPTS, progress=False, provenance=_provenance(model))
    said = [str(w.message) for w in caught if "cannot be read" in str(w.message)]
    assert said == ["the slide: input that cannot be read: output 96,96,192,192 (36 tile(s)) "
                    "filled from level 1: input level 0 tile column 1 row 1"]
    assert res.tiles_filled == 36 and res.tiles_model == res.tiles - 36
    assert res.filled == [{"output": [96, 96, 192, 192], "tiles": 36, "level": 0,
                           "input_tiles": [[1, 1]], "from": ["level 1"]}]
    got, want = tifffile.imread(out, level=0), tifffile.imread(ref, level=0)
    diff = np.abs(got.astype(int) - want).max(axis=2)
    assert diff[:64].max() == 0 and diff[352:].max() == 0 and diff[:, :64].max() == 0
    filled = got[128:256, 128:256].astype(int)  # the damaged input tile's output
    truth = rgb[64:128, 64:128].repeat(2, axis=0).repeat(2, axis=1)  # nearest x2
    assert filled.std() > 10 and np.abs(filled - truth).mean() < 12
    assert "output 96,96,192,192 (36 tile(s)) filled from level 1: input level 0 tile " \
        "column 1 row 1" in recorded(out)["unreadable_filled"]
    assert not work_dir_for(out).exists()


def test_only_the_blocks_of_a_tile_that_cannot_be_read_are_filled(tmp_path, model):
    """A 16 px damaged patch inside a tile of 128 output pixels (64 LR): the whole tile was
    filled (bicubic from level 1). Its own pixels are now read again in blocks of 32 LR
    pixels (BLOCK): the block holding the patch is filled, the rest of the tile is the
    model's, within 1 level of an undamaged slide's."""
    rgb = smooth_tissue(192, 256)
    out, ref = tmp_path / "out.tiff", tmp_path / "ref.tiff"
    job = {"tile": 128, "codec": "deflate", "tissue": False}
    upscale_slide(InMemorySlide(rgb, mpp=0.5), ref, model, SlideJob(2, **job), options=OPTS,
                  progress=False)
    with pytest.warns(UserWarning, match=r"output 128,128,64,64 \(1 tile\(s\)\) filled from "
                                         "level 1"):
        res = upscale_slide(DamagedSlide(rgb, damaged=(72, 72, 16, 16), mpp=0.5), out, model,
                            SlideJob(2, unreadable="fill", **job), options=OPTS, progress=False)
    assert res.filled == [{"output": [128, 128, 64, 64], "tiles": 1, "level": 0,
                           "input_tiles": [[1, 1]], "from": ["level 1"]}]
    assert res.tiles_filled == 1 and res.tiles_model == res.tiles - 1
    got, want = tifffile.imread(out, level=0).astype(int), tifffile.imread(ref, level=0)
    diff = np.abs(got - want).max(axis=2)
    diff[128:192, 128:192] = 0
    assert diff.max() <= 1  # the model's, the rest of the damaged tile included
    filled = got[128:192, 128:192]
    truth = rgb[64:96, 64:96].repeat(2, axis=0).repeat(2, axis=1)  # nearest x2
    assert filled.std() > 10 and np.abs(filled - truth).mean() < 12


def test_where_no_coarser_level_reads_the_tile_is_white(tmp_path, model):
    slide = DamagedSlide(smooth_tissue(96, 128), mpp=0.5, min_level_size=1000)  # one level
    with pytest.warns(UserWarning, match="filled from white"):
        res = upscale_slide(slide, tmp_path / "o.tiff", model, _job(unreadable="fill"),
                            options=OPTS, progress=False)
    assert res.filled[0]["from"] == ["white"]
    assert (tifffile.imread(tmp_path / "o.tiff", level=0)[128:192, 128:192] == 255).all()


def test_a_filled_tile_is_computed_again_unless_the_rerun_fills(tmp_path, model):
    """The work folder's key leaves the mode out (a stopped job is rerun with fill and keeps
    its finished tiles), so a filled tile carries its note: a job that stops takes it for
    missing, not for a model tile; a job that fills resumes from it and records it."""
    rgb = smooth_tissue(192, 256)
    out = tmp_path / "out.tiff"
    slide = DamagedSlide(rgb, mpp=0.5)
    with killed_at_tile(60), pytest.raises(KeyboardInterrupt), warnings.catch_warnings():
        upscale_slide(slide, out, model, _job(unreadable="fill"), options=OPTS, progress=False)
    with pytest.raises(UnreadableRegionError, match="--unreadable-tiles fill"):
        upscale_slide(slide, out, model, _job(), options=OPTS, progress=False)
    with pytest.warns(UserWarning, match="filled from level 1"):
        res = upscale_slide(slide, out, model, _job(unreadable="fill"), options=OPTS,
                            progress=False, provenance=_provenance(model))
    assert res.tiles_resumed > 0 and res.tiles_filled < 36  # some were filled by the first
    assert res.filled[0]["tiles"] == 36 and recorded(out)["unreadable_filled"].startswith(
        "output 96,96,192,192 (36 tile(s))")


def test_a_thumbnail_that_cannot_be_read_is_no_tissue_mask_when_filling(tmp_path, model):
    """Tissue detection reads a thumbnail from the coarsest level large enough (here level
    0): a damaged tile there stopped the job before its first tile, fill or not."""
    slide = DamagedSlide(smooth_tissue(96, 128), mpp=0.5)
    job = SlideJob(2, tile=32, codec="deflate", tissue=True)
    with pytest.raises(UnreadableRegionError, match="rerun with --unreadable-tiles fill"):
        upscale_slide(slide, tmp_path / "a.tiff", model, job, options=OPTS, progress=False)
    with pytest.warns(UserWarning) as caught:
        res = upscale_slide(slide, tmp_path / "b.tiff", model,
                            SlideJob(2, tile=32, codec="deflate", unreadable="fill"),
                            options=OPTS, progress=False)
    said = [str(w.message) for w in caught]
    assert any(m.startswith("tissue detection cannot read the slide's thumbnail") and
               m.endswith("the model runs on every tile, as with --no-tissue") for m in said)
    assert res.tissue_fraction is None and res.tiles_background == 0 and res.tiles_filled


def test_the_work_folder_keeps_a_filled_tiles_note_under_its_hash(tmp_path):
    params = {"job": 1}
    with WorkDir(tmp_path / "w", params, keep_filled=True) as wd:
        wd.put(0, 0, b"model")
        wd.put(0, 1, b"filled", {"from": "level 1"})
    with WorkDir(tmp_path / "w", params) as wd:
        assert wd.has(0, 0) and not wd.has(0, 1) and wd.filled == {}
    with WorkDir(tmp_path / "w", params, keep_filled=True) as wd:
        assert wd.has(0, 1) and wd.get(0, 1) == b"filled"
        assert wd.filled == {(0, 1): {"from": "level 1"}}
    tile = tmp_path / "w" / "tiles" / "0" / "1"
    tile.write_bytes(tile.read_bytes().replace(b"level 1", b"level 2"))  # the note changed
    with pytest.warns(UserWarning, match="did not match the hash"):
        with WorkDir(tmp_path / "w", params, keep_filled=True) as wd:
            assert not wd.has(0, 1)
            wd.warn_damaged()


# ------------------------------------------------------------------ real files, the CLI

def _svs(path, rgb, *, damage=None, corrupt=None):
    """A JPEG SVS of ``rgb`` (64 px tiles) and its level 1; ``damage``: index of a level-0
    tile cut to 2/3 of its bytes (OpenSlide refuses it); ``corrupt``: one whose middle third
    is zeroed (it decodes, into garbage blocks, with libjpeg's "Corrupt JPEG data")."""
    h, w = rgb.shape[:2]
    with tifffile.TiffWriter(path) as t:
        t.write(rgb, tile=(64, 64), photometric="rgb", compression="jpeg", metadata=None,
                description=APERIO.format(w=w, h=h))
        t.write(rgb[::4, ::4].copy(), photometric="rgb", metadata=None,
                description="Aperio thumbnail")
        t.write(rgb[::2, ::2].copy(), tile=(64, 64), photometric="rgb", compression="jpeg",
                metadata=None, subfiletype=0, description="Aperio level")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        counts = list(tif.pages[0].databytecounts)
        if damage is not None:
            counts[damage] = counts[damage] * 2 // 3
            tif.pages[0].tags["TileByteCounts"].overwrite(counts)
        offset = None if corrupt is None else tif.pages[0].dataoffsets[corrupt]
    if corrupt is not None:
        with open(path, "r+b") as f:
            f.seek(offset + counts[corrupt] // 3)
            f.write(bytes(counts[corrupt] // 3))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    return save_model(build_model(tiny_config("iste")),
                      tmp_path_factory.mktemp("m") / "tiny.safetensors")


def test_the_cli_stops_then_fills_and_says_so_in_the_summary(tmp_path, tiny, capsys):
    path = _svs(tmp_path / "cut.svs", smooth_tissue(192, 256), damage=5)
    args = ["upscale", path, "-s", "2", "-o", tmp_path / "o.tiff", "--model", tiny,
            "--tile", "64", "--codec", "deflate", "--no-tissue", "--backend", "openslide"]
    outcome = run_cli(args, capsys)
    assert outcome.code != 0 and "Traceback" not in outcome.err
    assert "(damaged JPEG tile column 1 row 1): rerun with --unreadable-tiles fill" in outcome.err
    outcome = run_cli([*args, "--unreadable-tiles", "fill", "--json-summary",
                       tmp_path / "s.json"], capsys)
    assert outcome.code == 0, outcome.err
    assert outcome.err.count("input that cannot be read") == 1
    assert "filled from level 1: input level 0 tile column 1 row 1" in outcome.err
    summary = json.loads((tmp_path / "s.json").read_text())["outputs"][0]
    assert summary["filled"][0]["input_tiles"] == [[1, 1]] and summary["tiles_filled"] > 0
    assert "tile column 1 row 1" in recorded(tmp_path / "o.tiff")["unreadable_filled"]


def test_a_tile_decoded_from_corrupt_data_is_filled_too_when_filling(tmp_path, tiny, capsys):
    """A tile libjpeg decodes into garbage blocks ("Corrupt JPEG data") was super-resolved
    with a warning under --unreadable-tiles fill as without it: the garbage went into the
    output, which recorded no fill. Filling, it is filled like a tile that does not decode;
    without, it stays a warning (its pixels as decoded)."""
    path = _svs(tmp_path / "cut.svs", smooth_tissue(192, 256), corrupt=5)
    args = ["upscale", path, "-s", "2", "--model", tiny, "--tile", "64", "--codec", "deflate",
            "--no-tissue"]
    outcome = run_cli([*args, "-o", tmp_path / "as_decoded.tiff"], capsys)
    assert outcome.code == 0 and "corrupt JPEG data in level 0, tile column 1 row 1" in outcome.err
    assert "unreadable_filled" not in recorded(tmp_path / "as_decoded.tiff")
    outcome = run_cli([*args, "-o", tmp_path / "filled.tiff", "--unreadable-tiles", "fill"],
                      capsys)
    assert outcome.code == 0, outcome.err
    assert "filled from level 1: input level 0 tile column 1 row 1" in outcome.err
    assert "tile column 1 row 1" in recorded(tmp_path / "filled.tiff")["unreadable_filled"]
    with tifffile.TiffFile(tmp_path / "as_decoded.tiff") as a, \
            tifffile.TiffFile(tmp_path / "filled.tiff") as b:
        garbage, filled = a.pages[0].asarray(), b.pages[0].asarray()
    # the damaged input tile (64..128, 64..128) is output 128..256 at x2: changed there only
    # (and in the model tiles whose crops reach it)
    assert np.abs(garbage[128:256, 128:256].astype(int) - filled[128:256, 128:256]).max() > 20
    assert np.array_equal(garbage[:, 384:], filled[:, 384:])


def test_an_estimate_under_fill_fills_its_sample_tiles_as_the_job_would(tmp_path, model):
    """--estimate stopped at a damaged sample tile even with --unreadable-tiles fill, so a
    slide the job can finish could not be planned."""
    from iste.slides.estimate import estimate_slide

    slide = DamagedSlide(smooth_tissue(128, 128), damaged=(0, 0, 128, 128), mpp=0.5)
    with pytest.raises(UnreadableRegionError):
        estimate_slide(slide, tmp_path / "o.tiff", model, _job(), options=OPTS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = estimate_slide(slide, tmp_path / "o.tiff", model, _job(unreadable="fill"),
                              options=OPTS)
    assert plan.seconds > 0 and not (tmp_path / "o.tiff").exists()


def test_filled_tiles_make_one_region_where_their_pixels_touch():
    """The grid the regions are merged through gives what comparing every pair gives."""
    from iste.slides.unreadable import filled_regions

    rng = np.random.default_rng(0)
    notes = []
    for _ in range(300):
        x, y = (int(v) for v in rng.integers(0, 2000, 2))
        w, h = (int(v) for v in rng.integers(1, 120, 2))
        notes.append({"out": [x, y, w, h], "level": 1, "input_tiles": [[x // 64, y // 64]],
                      "from": "level 1", "read": [x, y, w, h]})
    boxes = list({tuple(n["out"]): None for n in notes})
    group = list(range(len(boxes)))  # every pair compared, merged until nothing changes
    changed = True
    while changed:
        changed = False
        for i, (x, y, w, h) in enumerate(boxes):
            for j, (ox, oy, ow, oh) in enumerate(boxes):
                touch = x <= ox + ow and ox <= x + w and y <= oy + oh and oy <= y + h
                if touch and group[i] != group[j]:
                    group[i] = group[j] = min(group[i], group[j])
                    changed = True
    members: dict[int, list] = {}
    for box, g in zip(boxes, group):
        members.setdefault(g, []).append(box)
    want = sorted(([min(b[0] for b in m), min(b[1] for b in m),
                    max(b[0] + b[2] for b in m) - min(b[0] for b in m),
                    max(b[1] + b[3] for b in m) - min(b[1] for b in m)], len(m))
                  for m in members.values())
    assert 1 < len(want) < len(boxes)  # some tiles touch, not all
    assert sorted((r["output"], r["tiles"]) for r in filled_regions(notes)) == want


def _without_webp_decoder(monkeypatch):
    """tifffile's WebP decoder replaced by what imagecodecs stands in for a codec it was
    built without: a function that raises ImportError when called."""
    import imagecodecs

    def missing(*args, **kwargs):
        raise imagecodecs.DelayedImportError("webp_decode")

    tifffile.TIFF.DECOMPRESSORS[50001]  # resolved (and cached) before it is replaced
    monkeypatch.setitem(tifffile.TIFF.DECOMPRESSORS._codecs, 50001, missing)


def test_a_slide_whose_codec_imagecodecs_lacks_is_refused_naming_it(tmp_path, tiny, capsys,
                                                                     monkeypatch):
    """A slide compressed with a codec this imagecodecs build lacks (WebP, JPEG XL ...) failed
    at its first tile as a damaged one, advising --unreadable-tiles fill, which then filled
    the whole output white with exit 0. It is refused when opened, naming the codec, and
    nothing is written."""
    path = tmp_path / "webp.tif"
    tissue = smooth_tissue(128, 128)
    with tifffile.TiffWriter(path) as t:
        for level in (tissue, tissue[::2, ::2].copy()):
            t.write(level, tile=(64, 64), photometric="rgb", compression="webp",
                    compressionargs={"lossless": True}, subfiletype=int(level is not tissue),
                    resolution=(2e4, 2e4), resolutionunit="CENTIMETER", metadata=None)
    _without_webp_decoder(monkeypatch)
    for fill in ("stop", "fill"):
        outcome = run_cli(["upscale", path, "-s", "2", "-o", tmp_path / f"{fill}.tiff",
                           "--model", tiny, "--tile", "64", "--no-tissue",
                           "--unreadable-tiles", fill], capsys)
        assert outcome.code != 0 and "Traceback" not in outcome.err
        assert ("compressed as WEBP (compression 50001), whose codec this environment's "
                "imagecodecs" in outcome.err)
        assert "--unreadable-tiles" not in outcome.err
        assert not (tmp_path / f"{fill}.tiff").exists()


def test_a_plain_tiff_whose_codec_imagecodecs_lacks_is_refused_naming_it(tmp_path,
                                                                         monkeypatch):
    """Said as "corrupt or unreadable" before."""
    from iste.data.images import ImageReadError, read_image

    path = tmp_path / "webp.tif"
    tifffile.imwrite(path, smooth_tissue(32, 48), photometric="rgb", compression="webp",
                     compressionargs={"lossless": True})
    _without_webp_decoder(monkeypatch)
    with pytest.raises(ImageReadError, match=r"compressed as WEBP \(compression 50001\), "
                                             "whose codec .* imagecodecs .* was built without"):
        read_image(path)


def test_a_compression_tifffile_does_not_decode_is_refused_naming_it(tmp_path):
    """SGILOG (34676): the first tile's read failed as a damaged tile's (advising
    --unreadable-tiles fill)."""
    path = tmp_path / "sgilog.tif"
    tifffile.imwrite(path, smooth_tissue(128, 128), tile=(64, 64), photometric="rgb",
                     compression="deflate")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["Compression"].overwrite(34676)
    with pytest.raises(SlideError, match=r"compressed as SGILOG \(compression 34676\), which "
                                         "tifffile .* does not decode") as refused:
        open_slide(path, backend="tiffslide")
    assert str(refused.value).count("SGILOG") == 1  # not again as tifffile's KeyError text


@pytest.mark.parametrize("backend", ["tiffslide", "openslide"])
def test_memory_running_out_in_a_read_is_a_memory_error_not_an_unreadable_region(
        tmp_path, monkeypatch, backend):
    # numpy's "Unable to allocate 12.0 GiB" in a tile's decoding was said as an unreadable
    # region, "rerun with --unreadable-tiles fill", which would fill tissue from a coarser
    # level where nothing is damaged
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, np.full((128, 128, 3), 200, np.uint8), tile=(64, 64),
                     photometric="rgb")

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 12.0 GiB")

    with open_slide(path, backend=backend) as slide:
        monkeypatch.setattr(slide._slide, "read_region", no_memory)
        with pytest.raises(MemoryError, match="Unable to allocate"):
            slide.read_region((0, 0), 0, (64, 64))
