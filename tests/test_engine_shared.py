"""Shared encoding (iste.engine.shared): tiles rendered from encoded blocks and cached key
textures equal the tiles rendered one by one, and the whole image (tiled == whole)."""

import pytest
import torch

from iste.engine.budget import feature_bytes_per_pixel
from iste.engine.frame import Frame
from iste.engine.render import QueryOptions, super_resolve
from iste.engine.shared import SharedEncoding, TensorLRU, render_tile_shared
from iste.engine.tiles import plan_tiles, render_tile, tile_geometry
from iste.models.registry import build_model
from model_zoo import tiny_config

OPTS = QueryOptions(stf_window=12, stf_keys=64)


def setup(head="iste", encoder="edsr-baseline", lr_hw=(50, 46), max_bytes=64 << 20):
    torch.manual_seed(0)
    model = build_model(tiny_config(head, encoder)).eval()
    lr = torch.rand(1, 3, *lr_hw, generator=torch.Generator().manual_seed(1))
    geom = tile_geometry(model, OPTS)
    reads = []

    def read_lr(rows, cols):
        reads.append(len(rows) * len(cols))
        return lr[..., rows.start:rows.stop, cols.start:cols.stop]

    shared = SharedEncoding(model, lr_hw, read_lr, geom, store=TensorLRU(max_bytes),
                            name="lr", options=OPTS)
    return model, lr, geom, shared, reads


@pytest.mark.parametrize("head", ["iste", "liif", "lte"])
@pytest.mark.parametrize("scale", [2.0, 3.3, 4.0])
def test_shared_tiles_equal_per_tile_rendering_and_the_whole_image(head, scale):
    model, lr, geom, shared, _ = setup(head)
    frame = Frame.for_scale(tuple(lr.shape[-2:]), scale)
    whole = super_resolve(model, lr, frame.out_hw, options=OPTS)
    out = torch.empty_like(whole)
    for tile in plan_tiles(frame, (37, 41), geom):
        crop = lr[..., tile.lr_rows.start:tile.lr_rows.stop, tile.lr_cols.start:tile.lr_cols.stop]
        alone = render_tile(model, crop, frame, tile, options=OPTS)
        together = render_tile_shared(model, shared, frame, tile)
        assert (alone - together).abs().max() < 1e-5
        out[..., tile.out_rows.start:tile.out_rows.stop,
            tile.out_cols.start:tile.out_cols.stop] = together
    assert (out - whole).abs().max() < 1e-5


def test_deeper_tiles_reuse_the_encoded_crop_and_first_tiles_cost_what_they_cost_alone():
    model, lr, geom, shared, reads = setup(lr_hw=(96, 96))
    shallow = Frame.for_scale((96, 96), 2.0)
    first = plan_tiles(shallow, (96, 96), geom)[0]  # LR 0..48 x 0..48 plus windows and halo
    render_tile_shared(model, shared, shallow, first)
    assert reads == [len(first.lr_rows) * len(first.lr_cols)]  # its own crop, as alone
    deep = Frame.for_scale((96, 96), 4.0)
    under = [t for t in plan_tiles(deep, (48, 48), geom)
             if t.out_rows.stop <= 2 * first.out_rows.stop - 48
             and t.out_cols.stop <= 2 * first.out_cols.stop - 48]
    assert under
    for tile in under:  # inside the x2 tile's valid part: rendered without encoding
        render_tile_shared(model, shared, deep, tile)
    assert len(reads) == 1
    keys_before = shared.store.hits
    render_tile_shared(model, shared, shallow, first)  # same windows: key textures reused
    assert shared.store.hits > keys_before


def _union_area(tiles) -> int:
    rows = max(t.lr_rows.stop for t in tiles) - min(t.lr_rows.start for t in tiles)
    cols = max(t.lr_cols.stop for t in tiles) - min(t.lr_cols.start for t in tiles)
    return rows * cols


@pytest.mark.parametrize("scale", [2.0, 3.3])
def test_a_first_tile_encodes_its_own_crop_the_next_the_tiles_ahead_which_then_skip_it(scale):
    model, lr, geom, shared, reads = setup(lr_hw=(96, 90))
    frame = Frame.for_scale(tuple(lr.shape[-2:]), scale)
    view = plan_tiles(frame, (48, 48), geom)[:3]  # three tiles of the first row
    whole = super_resolve(model, lr, frame.out_hw, options=OPTS)
    first = view[0]
    out = [render_tile_shared(model, shared, frame, first, ahead=view[1:])]
    assert reads == [len(first.lr_rows) * len(first.lr_cols)]  # nothing kept here: alone
    out.append(render_tile_shared(model, shared, frame, view[1], ahead=view[2:]))
    # beside the first tile's region: one read, the union of the crops of the tiles left
    assert reads[1:] == [_union_area(view[1:])]
    assert _union_area(view[1:]) < sum(len(t.lr_rows) * len(t.lr_cols) for t in view[1:])
    out.append(render_tile_shared(model, shared, frame, view[2]))
    assert len(reads) == 2  # the tile ahead was covered: no encoding of its own
    for tile, part in zip(view, out):
        ref = whole[..., tile.out_rows.start:tile.out_rows.stop,
                    tile.out_cols.start:tile.out_cols.stop]
        assert (part - ref).abs().max() < 1e-5


def test_the_union_stays_within_half_of_the_cache_and_skips_covered_tiles():
    model, lr, geom, shared, reads = setup(lr_hw=(96, 90))
    frame = Frame.for_scale(tuple(lr.shape[-2:]), 2.0)
    first, second, third = plan_tiles(frame, (48, 48), geom)[:3]
    render_tile_shared(model, shared, frame, first)  # a kept region beside the others
    pixel_bytes = feature_bytes_per_pixel(model)
    own, union = len(second.lr_rows) * len(second.lr_cols), _union_area([second, third])
    shared.store.max_bytes = pixel_bytes * (own + union)  # half of it: between the two
    assert own <= shared.max_region_pixels() < union
    render_tile_shared(model, shared, frame, second, ahead=[third])
    assert reads[1:] == [own]  # the union was too large: the tile's own crop only
    shared.store.max_bytes = 64 << 20  # a union would fit now, but second is covered
    render_tile_shared(model, shared, frame, third, ahead=[second])
    assert reads[1:] == [own, len(third.lr_rows) * len(third.lr_cols)]


def test_the_union_grows_only_by_tiles_that_touch_it_not_by_a_far_tile_ahead():
    # two viewers on one level: the tiles ahead may hold another viewer's, far away
    model, lr, geom, shared, reads = setup(lr_hw=(96, 240))
    frame = Frame.for_scale(tuple(lr.shape[-2:]), 2.0)
    row = plan_tiles(frame, (48, 48), geom)[:10]  # the first row of tiles, left to right
    first, second, far = row[0], row[1], row[-1]
    assert not (set(second.lr_cols) & set(far.lr_cols))
    render_tile_shared(model, shared, frame, first)
    render_tile_shared(model, shared, frame, second, ahead=[far, row[3], row[2]])
    # the neighbours (row[3] meets the union once row[2] is in it), not the far tile
    assert reads[1:] == [_union_area([second, row[2], row[3]])]


def test_a_small_budget_evicts_and_changes_nothing():
    model, lr, geom, shared, reads = setup(max_bytes=200_000)
    frame = Frame.for_scale(tuple(lr.shape[-2:]), 3.3)
    whole = super_resolve(model, lr, frame.out_hw, options=OPTS)
    for tile in plan_tiles(frame, (40, 40), geom):
        part = render_tile_shared(model, shared, frame, tile)
        ref = whole[..., tile.out_rows.start:tile.out_rows.stop,
                    tile.out_cols.start:tile.out_cols.stop]
        assert (part - ref).abs().max() < 1e-5
    assert shared.store.nbytes <= 200_000


def test_shifted_window_encoders_keep_their_window_grid():
    model, lr, geom, shared, _ = setup(encoder="swinir", lr_hw=(40, 36))
    frame = Frame.for_scale(tuple(lr.shape[-2:]), 2.0)
    for tile in plan_tiles(frame, (40, 40), geom)[:4]:
        crop = lr[..., tile.lr_rows.start:tile.lr_rows.stop, tile.lr_cols.start:tile.lr_cols.stop]
        alone = render_tile(model, crop, frame, tile, options=OPTS)
        # shifted windows: an unbounded receptive field, capped at the measured halo in both
        assert (alone - render_tile_shared(model, shared, frame, tile)).abs().max() < 1e-3


def test_the_store_is_bounded_in_bytes():
    store = TensorLRU(1000)
    for i in range(10):
        store.get_or_compute(i, lambda: torch.zeros(50))  # 200 bytes each
    assert len(store) == 5 and store.nbytes == 1000
    assert store.get_or_compute(9, lambda: pytest.fail("recomputed")).shape == (50,)
    store.get_or_compute("big", lambda: torch.zeros(1000))  # larger than the store: not kept
    assert "big" not in store._items


def test_a_region_larger_than_the_whole_store_is_said_once(caplog):
    # it was silently encoded again for every tile (slow tiles, nothing in the log)
    store = TensorLRU(1000)
    with caplog.at_level("WARNING", logger="iste"):
        for key in ("a", "b"):
            store.get_or_compute(key, lambda: torch.zeros(1000))
    said = [r.getMessage() for r in caplog.records if "feature cache" in r.getMessage()]
    assert len(said) == 1 and "larger than the whole cache" in said[0], said
    assert store.refused == 2 and len(store) == 0


def test_tiles_of_one_encoded_region_reuse_what_the_head_computed_on_first_use(monkeypatch):
    """CLIT's stage grids are kept in the features (lit._stage_feats): the tiles rendered
    from one encoded region compute them once per region, not once per tile."""
    import iste.models.heads.lit as lit

    opts = QueryOptions(workers=1)  # chunks one after another: no two compute a grid at once
    model = build_model(tiny_config("lit", stages=2)).eval()
    lr = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    geom = tile_geometry(model, opts)
    shared = SharedEncoding(model, (64, 64), lambda r, c: lr[..., r.start:r.stop,
                                                              c.start:c.stop],
                            geom, store=TensorLRU(64 << 20), name="lr", options=opts)
    frame = Frame.for_scale((64, 64), 6.0)  # two stages
    tiles = plan_tiles(frame, (64, 64), geom)[:4]
    calls = []  # per call: a stage grid's (True) or an encoding's (False)
    original = lit._stage_maps
    monkeypatch.setattr(lit, "_stage_maps", lambda stage, feat: (
        calls.append(isinstance(stage, lit.LITStage)), original(stage, feat))[1])
    for i, tile in enumerate(tiles):
        render_tile_shared(model, shared, frame, tile, ahead=tiles[i + 1:])
    encoded = calls.count(False)
    assert encoded < len(tiles)  # (else there is nothing to share)
    assert calls.count(True) <= encoded  # at most one stage grid per encoded region


@pytest.mark.parametrize("contended", [False, True])
def test_the_encoder_runs_on_one_thread_while_other_processes_hold_the_cores(monkeypatch,
                                                                             contended):
    import iste.engine.shared as shared_module

    model, lr, geom, shared, _ = setup()
    monkeypatch.setattr(shared_module.CORES, "contended", lambda: contended)
    seen, encode = [], model.encode
    monkeypatch.setattr(model, "encode", lambda x: (seen.append(torch.get_num_threads()),
                                                    encode(x))[1])
    own = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        frame = Frame.for_scale(tuple(lr.shape[-2:]), 2.0)
        tile = plan_tiles(frame, (37, 41), geom)[0]
        render_tile_shared(model, shared, frame, tile)
        assert seen == [1 if contended else 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(own)
