"""The head contract (iste.models.heads.base), checked for every registry entry x encoder.

The engine cuts tiles from what a head declares (``query_reach``, ``uses_key_set``) and what an
encoder declares (``size_alignment``); these tests check that the declarations are true and
that tiling and chunking built on them give the whole-image result.
"""

from dataclasses import replace

import pytest
import torch

from iste.engine.render import QueryOptions, super_resolve
from iste.engine.tiles import tile_geometry, tiled_super_resolve
from iste.models.heads.base import KeySet
from iste.models.registry import HEADS, build_model
from model_zoo import ALL_COMBINATIONS, TINY_HEADS, tiny_config

OPTS = QueryOptions(stf_window=12, stf_keys=36, precision="fp32")  # exactness is in fp32
# Heads whose output amplifies the float32 rounding of coordinates: a crop's coordinates are
# rounded in the crop's frame, the whole image's in its own. LIT's sinusoidal bias has
# frequencies up to 2^10 - 1 per LR pixel, so 1e-7 in a coordinate moves it by ~1e-4; the
# same test without the bias pins the geometry at 1e-5.
COORD_SENSITIVE = {"lit": {"pos_bias": False}}


def _model(head, encoder, **head_args):
    torch.manual_seed(0)
    return build_model(tiny_config(head, encoder, **head_args)).eval()


def test_every_registered_head_has_a_tiny_test_config():
    assert set(TINY_HEADS) == set(HEADS)


def _pixel_grads(model, feats, coord, cell):
    """Per LR pixel (h, w): whether the query's output depends on that pixel's features."""
    h, w = feats["hw"]
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in feats.items()
              if torch.is_tensor(v) and v.is_floating_point()}
    extra = {"keys": KeySet(coord, cell)} if model.uses_key_set else {}
    out = model.query({**feats, **leaves}, coord, cell, **extra)
    grads = torch.autograd.grad(out.square().sum(), list(leaves.values()), allow_unused=True)
    hit = torch.zeros(h, w, dtype=torch.bool)
    for g in grads:
        if g is None:
            continue
        if g.dim() == 4 and g.shape[-2:] == (h, w):  # (B, C, h, w) map
            hit |= g.abs().sum(dim=(0, 1)) > 0
        else:  # (B, h*w, ...) per-pixel table
            hit |= (g.abs().transpose(0, 1).flatten(1).sum(1) > 0).view(h, w)
    return hit


@pytest.mark.parametrize("head", list(HEADS))
def test_a_query_reads_no_lr_pixel_beyond_its_declared_reach(head):
    model = _model(head, "edsr-baseline")
    h, w = 13, 15
    inp = torch.rand(1, 3, h, w) * 2 - 1
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        feats = model.encode(inp)
    farthest = 0
    for _ in range(12):
        coord = (torch.rand(1, 1, 2, generator=gen) * 1.2 - 0.6)  # away from the border
        cell = torch.full((1, 1, 2), 2 / 31)
        hit = _pixel_grads(model, feats, coord, cell)
        row = int(((coord[0, 0, 0] + 1) / 2 * h).floor())
        col = int(((coord[0, 0, 1] + 1) / 2 * w).floor())
        rows, cols = hit.nonzero(as_tuple=True)
        dist = torch.maximum((rows - row).abs(), (cols - col).abs()).max().item()
        assert dist <= model.query_reach, f"{head} reads {dist} LR pixels away"
        farthest = max(farthest, dist)
    assert farthest == model.query_reach  # declared no wider than needed either


@pytest.mark.parametrize("head,encoder", ALL_COMBINATIONS)
def test_tiled_equals_whole_from_the_declared_geometry(head, encoder):
    _check_tiled_equals_whole(_model(head, encoder), 1e-3 if head in COORD_SENSITIVE else 1e-5)
    if head in COORD_SENSITIVE:
        _check_tiled_equals_whole(_model(head, encoder, **COORD_SENSITIVE[head]), 1e-5)


def _check_tiled_equals_whole(model, tol):
    # (a 20-pixel probe: the tiny RDN's field is wider than the image, so its crops are the
    # whole image; EDSR's and the no-shift Swin's fields are measured below the cap)
    geom = tile_geometry(model, OPTS, max_halo=20)
    assert geom.reach == model.query_reach
    assert geom.align == model.encoder.size_alignment
    lr = torch.rand(1, 3, 29, 34)
    out_hw = (73, 85)  # x2.5
    whole = super_resolve(model, lr, out_hw, options=OPTS)
    tiled = tiled_super_resolve(model, lr, out_hw, tile_hw=(24, 32), options=OPTS, geom=geom)
    diff = (tiled - whole).abs().amax(dim=1)
    if model.uses_key_set:  # STF's argmax may flip on a float-rounding near-tie (isolated)
        assert (diff < tol).float().mean() > 0.999 and diff.max() < 0.05
    else:
        assert diff.max() < tol


@pytest.mark.parametrize("head", ["liif", "lte"])
def test_tiled_equals_whole_at_an_odd_integer_scale(head):
    # x3: the output's row and column 3n - 2 sit on the last LR pixel centres, where the
    # clamped ensemble shifts meet one pixel; tiles' frames round their coordinates otherwise
    model = _model(head, "edsr-baseline")
    lr = torch.rand(1, 3, 41, 47, generator=torch.Generator().manual_seed(0))
    out_hw = (123, 141)
    whole = super_resolve(model, lr, out_hw, options=OPTS)
    for tile in ((50, 50), (70, 90)):
        tiled = tiled_super_resolve(model, lr, out_hw, tile_hw=tile, options=OPTS)
        assert (tiled - whole).abs().max() < 1e-5, tile


@pytest.mark.parametrize("out_hw", [(78, 92), (96, 100)])  # x2.7, x3.3 / x2.9
def test_itsrn_tiles_shift_to_the_neighbours_of_the_whole_image(out_hw):
    # ITSRN's published shift to its neighbours, (1 - scale) / (n - 1), depends on the size of
    # the map it is given: a tile's crop must take the whole image's (it picked other
    # neighbours near LR pixel centres, 0.12 apart on this image)
    model = _model("itsrn", "edsr-baseline")
    lr = torch.rand(1, 3, 29, 34, generator=torch.Generator().manual_seed(0))
    whole = super_resolve(model, lr, out_hw, options=OPTS)
    tiled = tiled_super_resolve(model, lr, out_hw, tile_hw=(24, 32), options=OPTS)
    assert (tiled - whole).abs().max() < 1e-5


@pytest.mark.parametrize("head,encoder", ALL_COMBINATIONS)
def test_chunked_equals_unchunked(head, encoder):
    model = _model(head, encoder)
    lr = torch.rand(1, 3, 17, 19)
    out_hw = (56, 45)
    one = super_resolve(model, lr, out_hw, options=replace(OPTS, chunk=10 ** 6))
    many = super_resolve(model, lr, out_hw, options=replace(OPTS, chunk=37))
    assert (one - many).abs().max() < 1e-5


def test_encoders_declare_their_alignment():
    assert _model("liif", "swinir").encoder.size_alignment == 4  # the tiny window
    assert _model("liif", "edsr-baseline").encoder.size_alignment == 1
    assert _model("liif", "rdn").encoder.size_alignment == 1


@pytest.mark.parametrize("head", list(HEADS))
def test_bf16_rendering_stays_close_to_fp32(head):
    model = _model(head, "edsr-baseline")
    lr = torch.rand(1, 3, 12, 14)
    fp32 = super_resolve(model, lr, (30, 35), options=OPTS)
    bf16 = super_resolve(model, lr, (30, 35), options=replace(OPTS, precision="bf16"))
    assert bf16.dtype == torch.float32 and (bf16 - fp32).abs().max() < 0.1


# CLIT: LIT's cascade. Stage j >= 1 attends over a grid 4^j times finer than the LR image,
# built from F by bilinear sampling; its reach in LR pixels is below stage 0's.
CASCADE = {"stages": 3}


@pytest.mark.parametrize("out_h,stages_used", [(31, 1), (80, 2), (260, 3)])
def test_a_cascade_query_reads_no_lr_pixel_beyond_its_declared_reach(out_h, stages_used):
    from iste.models.heads.lit import cascade_stages

    model = _model("lit", "edsr-baseline", **CASCADE)
    h, w = 13, 15
    assert cascade_stages(out_h / h, model.config) == stages_used
    with torch.no_grad():
        feats = model.encode(torch.rand(1, 3, h, w) * 2 - 1)
    gen = torch.Generator().manual_seed(2)
    for _ in range(6):
        coord = torch.rand(1, 1, 2, generator=gen) * 1.2 - 0.6
        hit = _pixel_grads(model, {k: v for k, v in feats.items() if not k.startswith("stage")},
                           coord, torch.full((1, 1, 2), 2 / out_h))
        row = int(((coord[0, 0, 0] + 1) / 2 * h).floor())
        col = int(((coord[0, 0, 1] + 1) / 2 * w).floor())
        rows, cols = hit.nonzero(as_tuple=True)
        assert torch.maximum((rows - row).abs(), (cols - col).abs()).max() <= model.query_reach


@pytest.mark.parametrize("encoder", ["edsr-baseline", "swinir"])
def test_a_cascade_tiles_and_chunks_exactly_at_a_two_stage_scale(encoder):
    model = _model("lit", encoder, pos_bias=False, **CASCADE)
    assert model.reads_scale_from_cell and model.query_reach == model.config.radius
    lr = torch.rand(1, 3, 21, 26)
    out_hw = (126, 156)  # x6: stages at x4, then x1.5 on the 4x grid
    geom = tile_geometry(model, OPTS, max_halo=20)
    whole = super_resolve(model, lr, out_hw, options=OPTS)
    tiled = tiled_super_resolve(model, lr, out_hw, tile_hw=(40, 56), options=OPTS, geom=geom)
    chunked = super_resolve(model, lr, out_hw, options=replace(OPTS, chunk=333))
    assert (tiled - whole).abs().max() < 1e-5 and (chunked - whole).abs().max() < 1e-5
    # the engine passes the true cell whatever cell_clip says: the x6 plan, not x4's
    clipped = super_resolve(model, lr, out_hw, options=replace(OPTS, cell_clip=2.0))
    assert torch.equal(clipped, whole)
    # the later stages' grid positions stay float32 under bf16 (measured 8e-4 off fp32)
    bf16 = super_resolve(model, lr, out_hw, options=replace(OPTS, precision="bf16"))
    assert (bf16 - whole).abs().max() < 5e-3
    one_stage = replace(model.config, stages=1)
    from iste.models.heads.lit import cascade_stages
    assert cascade_stages(6.0, model.config) == 2 and cascade_stages(6.0, one_stage) == 1


def test_the_memory_plan_counts_a_cascades_stage_grids():
    from iste.engine import budget

    model = _model("lit", "edsr-baseline", **CASCADE)
    dim = model.config.dim
    assert model.query_bytes_per_pixel(4.0) == 0  # one stage up to x4
    assert model.query_bytes_per_pixel(8.0) == 16 * 4 * dim * 4  # the 4x grid: F, Q, K, V
    assert model.query_bytes_per_pixel(20.0) == (16 + 256) * 4 * dim * 4
    lr, out = (1000, 1000), (8000, 8000)
    ample = 1 << 50
    at_x4 = budget.plan_image(model, lr, (4000, 4000), budget=ample).estimate
    at_x8 = budget.plan_image(model, lr, out, budget=ample).estimate
    grids = 1000 * 1000 * model.query_bytes_per_pixel(8.0)
    assert at_x8 - at_x4 >= grids
    # a budget the whole pass at x8 would fit in without the grids: tiled with them
    assert budget.plan_image(model, lr, out, budget=2 * (at_x8 - grids) + 1).tiled
