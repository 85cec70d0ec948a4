"""Fixed-scale networks (EDSR, RDN, SwinIR, ...): the contract of every FIXED entry, at every
scale it supports: shapes, gradients, checkpoints, tiled == whole, refusal at other scales."""

import re

import numpy as np
import pytest
import torch

import iste
from iste.engine.fixed import check_fixed_frame, check_fixed_scale, fixed_sr
from iste.engine.frame import Frame
from iste.engine.tiles import plan_tiles, tile_geometry, tiled_super_resolve
from iste.models.checkpoint import read_metadata, save_model
from iste.models.fixed.base import FixedScaleSR, pixel_shuffle_factors
from iste.models.registry import FIXED, FixedConfig, build_model, count_parameters
from iste.typed import ConfigError
from model_zoo import TINY_FIXED, tiny_fixed

CASES = [(arch, s) for arch, entry in FIXED.items() for s in entry.scales]
# A bias feeding a training-mode BatchNorm has no gradient: the norm subtracts the batch mean,
# which the bias shifts by as much. SRMFENet's channel gates have one, as published.
BIAS_BEFORE_BATCH_NORM = {"srmfenet": re.compile(r"blocks\.\d+\.gates\.\d+\.bias")}


def test_every_fixed_entry_has_a_tiny_config():
    assert set(TINY_FIXED) == set(FIXED)


@pytest.mark.parametrize("arch,scale", CASES)
def test_sr_shape_range_and_declarations(arch, scale):
    model = build_model(tiny_fixed(arch, scale)).eval()
    assert isinstance(model, FixedScaleSR)
    assert model.scale == scale and model.reach >= 1 and model.size_alignment >= 1
    lr = torch.rand(2, 3, 9, 13)
    out = fixed_sr(model, lr)
    assert out.shape == (2, 3, 9 * scale, 13 * scale)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch,scale", CASES)
def test_gradients_reach_every_parameter(arch, scale):
    """After two optimiser steps: layers initialised at zero on purpose (SWD-Net's context
    transforms start at zero, as published, and chain through two fusions) pass no gradient
    upstream before them."""
    torch.manual_seed(0)
    model = build_model(tiny_fixed(arch, scale)).train()
    a = model.size_alignment
    lr = torch.rand(2, 3, 2 * a if a > 1 else 7, 2 * a if a > 1 else 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        model.sr(lr).square().mean().backward()
        opt.step()
        opt.zero_grad()
    out = model.sr(lr)
    out.square().mean().backward()
    cancelled = BIAS_BEFORE_BATCH_NORM.get(arch)
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        if cancelled is not None and cancelled.fullmatch(name):
            weight = model.get_parameter(name.removesuffix("bias") + "weight")
            # zero but for rounding (1e-4 of its weight's here; exactly 0 on some CPUs)
            assert p.grad.abs().max() < 1e-2 * weight.grad.abs().max(), name
        else:
            assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("arch,scale", CASES)
def test_tiled_equals_whole(arch, scale):
    """Tiles read their declared reach of context: the stitched result equals the whole.

    A network with global context (squeeze-excite gates, size-dependent interpolation) has no
    finite reach: there a tile's result equals the network run on the tile's LR crop (what the
    engine documents), and a single tile covering the image equals the whole. Tiles of
    (7s + 1) x (9s + 2) output pixels: 3 or 4 per side, their borders at every phase of an LR
    pixel (RDN's reach spans the image, so each tile runs the whole network)."""
    model = build_model(tiny_fixed(arch, scale)).eval()
    torch.manual_seed(1)
    lr = torch.rand(1, 3, 23, 29)
    out_hw = (23 * scale, 29 * scale)
    tile_hw = (7 * scale + 1, 9 * scale + 2)
    with torch.no_grad():
        whole = fixed_sr(model, lr).clamp(0, 1)
        tiled = tiled_super_resolve(model, lr, out_hw, tile_hw=tile_hw)
        one_tile = tiled_super_resolve(model, lr, out_hw, tile_hw=out_hw)
    assert tiled.shape == whole.shape
    assert (one_tile - whole).abs().max() < 1e-5
    if not model.global_context:
        assert (tiled - whole).abs().max() < 1e-5
        return
    geom = tile_geometry(model)
    tiles = plan_tiles(Frame((23, 29), out_hw), tile_hw, geom)
    tile = tiles[len(tiles) // 2]
    crop = lr[..., tile.lr_rows.start:tile.lr_rows.stop, tile.lr_cols.start:tile.lr_cols.stop]
    with torch.no_grad():
        own = fixed_sr(model, crop).clamp(0, 1)
    r0 = tile.out_rows.start - scale * tile.lr_origin[0]
    c0 = tile.out_cols.start - scale * tile.lr_origin[1]
    expected = own[..., r0:r0 + len(tile.out_rows), c0:c0 + len(tile.out_cols)]
    got = tiled[..., tile.out_rows.start:tile.out_rows.stop, tile.out_cols.start:tile.out_cols.stop]
    assert geom.halo == model.reach
    assert (got - expected).abs().max() < 1e-5


def test_tiles_read_only_the_declared_reach():
    """A tile's crop is its LR footprint plus ``reach`` (+1 rounding) on each side, clipped."""
    model = build_model(tiny_fixed("edsr", 2))
    geom = tile_geometry(model)
    assert geom.halo == model.reach and geom.key_window is None
    assert geom.align == model.size_alignment


@pytest.mark.parametrize("arch,scale", CASES)
def test_checkpoint_round_trip_rebuilds_the_fixed_model(tmp_path, arch, scale):
    model = build_model(tiny_fixed(arch, scale)).eval()
    path = save_model(model, tmp_path / "m.safetensors")
    config, _ = read_metadata(path)
    assert config == FixedConfig.from_dict(tiny_fixed(arch, scale))
    loaded = iste.load(path)  # on the default device (CUDA where present)
    device = next(loaded.parameters()).device
    lr = torch.rand(1, 3, 8, 8).to(device)
    with torch.no_grad():
        assert torch.equal(fixed_sr(loaded, lr), fixed_sr(model.to(device), lr))


def test_foreign_scale_is_refused_with_one_line():
    model = build_model(tiny_fixed("edsr", 2)).eval()
    image = np.full((10, 12, 3), 128, np.uint8)
    assert iste.upscale(image, 2, model).shape == (20, 24, 3)
    with pytest.raises(ValueError, match=r"^model EDSR x2 is fixed-scale x2; it cannot upscale "
                                         r"by 3\.3") as err:
        iste.upscale(image, 3.3, model)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="fixed-scale x2"):
        iste.upscale_to(image, (20, 25), model)
    with pytest.raises(ValueError, match="fixed-scale x2"):
        check_fixed_frame(model, (10, 12), (30, 36))


def test_cli_upscale_at_a_foreign_scale_exits_2_and_writes_nothing(tmp_path, capsys):
    from iste.cli.main import main
    from iste.data.imagewrite import write_image

    ckpt = save_model(build_model(tiny_fixed("edsr", 3)), tmp_path / "edsr_x3.safetensors")
    src = tmp_path / "in.png"
    write_image(src, np.full((16, 16, 3), 100, np.uint8))
    out = tmp_path / "out" / "sr.png"
    code = main(["upscale", str(src), "-s", "2", "-o", str(out), "--model", str(ckpt)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("iste: error: model EDSR x3 is fixed-scale x3; it cannot "
                              "upscale by 2")
    assert not out.exists() and not list(tmp_path.glob("out/*"))
    assert main(["upscale", str(src), "-s", "3", "-o", str(out), "--model", str(ckpt)]) == 0
    from iste.data.images import read_image

    assert read_image(out).shape == (48, 48, 3)


@pytest.mark.parametrize("bad,message", [
    ({"arch": "edsr", "scale": 5}, "built for scales"),
    ({"arch": "nope", "scale": 2}, "unknown fixed-scale architecture"),
    ({"arch": "rdn", "scale": 2, "args": {"n_feat": 8}}, r"model\.args: unknown key"),
    ({"arch": "edsr", "scale": 2, "extra": 1}, "unknown key"),
    # SwinIR's body fields are checked once (encoders.swinir.SwinBodyConfig), named after the
    # fixed network's own config
    ({"arch": "swinir", "scale": 2, "args": {"embed_dim": 10, "depths": [2], "num_heads": [3]}},
     r"SwinIRNetConfig: every num_heads entry must divide embed_dim=10"),
    ({"arch": "swinir", "scale": 2, "args": {"num_feat": 0}}, r"SwinIRNetConfig\.num_feat"),
    ({"arch": "swinir", "scale": 2, "args": {"out_dim": 8}}, r"model\.args: unknown key"),
])
def test_bad_fixed_configs_name_the_problem(bad, message):
    with pytest.raises(ConfigError, match=message):
        build_model(bad)


def test_pixel_shuffle_stages():
    assert pixel_shuffle_factors(2) == [2]
    assert pixel_shuffle_factors(3) == [3]
    assert pixel_shuffle_factors(4) == [2, 2]
    assert pixel_shuffle_factors(8) == [2, 2, 2]
    with pytest.raises(ValueError):
        pixel_shuffle_factors(5)


def test_paper_sizes_match_the_published_parameter_counts():
    """Counted on the meta device: the published modules' counts, not the papers' rounding
    (EDSR x4 43.09M, EDSR-baseline x2 1.37M, RDN x4 22.27M, SwinIR x4 11.90M)."""
    def count(arch, scale, **args):
        with torch.device("meta"):
            return count_parameters(build_model({"arch": arch, "scale": scale, "args": args}))

    assert count("edsr", 4, n_resblocks=32, n_feats=256, res_scale=0.1) == 43_089_923
    assert count("edsr", 2) == 1_369_859
    assert count("rdn", 4) == 22_271_107
    assert count("swinir", 4) == 11_900_199


def test_a_scale_off_the_networks_own_by_float_noise_is_named_as_it_is():
    model = build_model(tiny_fixed("edsr", 2)).eval()
    check_fixed_scale(model, 2.0)
    with pytest.raises(ValueError, match=r"cannot upscale by 2\.0000000000000004 "):
        check_fixed_scale(model, 2.0000000000000004)  # not "cannot upscale by 2 (use -s 2"
    with pytest.raises(ValueError, match=r"cannot upscale by 2\.5 "):
        check_fixed_scale(model, 2.5)


def test_slide_at_the_own_scale_equals_the_whole_image_there_and_refuses_others(tmp_path):
    from iste.data.tensors import tensor_to_rgb
    from iste.slides.formats import open_slide
    from iste.slides.job import SlideJob
    from iste.slides.pipeline import upscale_slide
    from iste.slides.reader import InMemorySlide
    from slide_data import he_image

    model = build_model(tiny_fixed("edsr", 2)).eval()
    slide = InMemorySlide(he_image(), mpp=0.5)
    with pytest.raises(ValueError, match="fixed-scale x2; it cannot upscale by 3"):
        upscale_slide(slide, tmp_path / "bad.tiff", model, SlideJob(3, tile=64),
                      progress=False)
    assert list(tmp_path.iterdir()) == []
    job = SlideJob(2, region=(200, 150, 90, 70), tile=64, codec="deflate", tissue=False)
    res = upscale_slide(slide, tmp_path / "out.tiff", model, job, progress=False)
    assert res.size == (180, 140)
    # the region is rendered with the slide around it: the whole image's SR there
    lr = torch.from_numpy(he_image()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        ref = tensor_to_rgb(fixed_sr(model, lr).clamp(0, 1))[300:440, 400:580]
    with open_slide(tmp_path / "out.tiff", backend="openslide") as out:
        got = out.read_region((0, 0), 0, (180, 140))
    assert np.abs(got.astype(int) - ref).max() <= 1


def test_the_viewer_refuses_fixed_scale_models():
    from iste.serve.pixels import Upscaler

    with pytest.raises(ValueError, match="fixed-scale x2; the viewer renders every zoom"):
        Upscaler.for_model(build_model(tiny_fixed("edsr", 2)), name="edsr")


@pytest.mark.parametrize("arch,scale", CASES)
def test_the_declared_reach_bounds_what_an_output_pixel_reads(arch, scale):
    """Changing an LR pixel just beyond ``reach`` (columns, away from the borders) leaves the
    output over LR column c unchanged. Networks declaring global context bound no such read
    (global pooling reaches every pixel; Li et al.'s size-dependent bilinear steps read locally
    but not translation-invariantly): only that the change reaches the output is checked, and
    their tiles are tested against their crops above."""
    model = build_model(tiny_fixed(arch, scale)).eval()
    a = model.size_alignment
    width = -(-(2 * model.reach + 9) // a) * a
    c = width // 2
    lr = torch.rand(1, 3, a * 2 if a > 1 else 6, width)
    changed = lr.clone()
    changed[..., c + model.reach + 1] = 1 - changed[..., c + model.reach + 1]
    with torch.no_grad():
        before, after = fixed_sr(model, lr), fixed_sr(model, changed)
    cols = slice(scale * c, scale * (c + 1))
    assert not torch.equal(before, after)  # the change does reach some output
    if not model.global_context:
        assert torch.equal(before[..., cols], after[..., cols])


def test_a_folder_at_a_foreign_scale_is_refused_once_before_any_item(tmp_path, capsys):
    from iste.cli.main import main
    from iste.data.imagewrite import write_image

    ckpt = save_model(build_model(tiny_fixed("edsr", 3)), tmp_path / "edsr_x3.safetensors")
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        write_image(folder / f"t{i}.png", np.full((16, 16, 3), 90 + i, np.uint8))
    out = tmp_path / "out"
    code = main(["upscale", str(folder), "-s", "2", "-o", str(out), "--model", str(ckpt)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("fixed-scale x3") == 1
    assert not list(out.glob("*.png"))
