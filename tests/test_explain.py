"""Explanatory figures: the head's intermediates agree with its output; `iste figures` runs."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model_zoo import tiny_config
from iste.cli.main import main
from iste.data.coords import make_coord
from iste.data.imagewrite import write_image
from iste.models.checkpoint import save_model
from iste.models.heads.base import KeySet
from iste.models.layers.ensemble import local_neighbours
from iste.models.registry import build_model


@pytest.mark.parametrize("variant", [{}, {"pixel_branch": False, "lfi": False, "stf": False},
                                     {"texture": "none", "stf": False, "ltd": False}])
def test_query_parts_sum_to_the_query(variant):
    model = build_model(tiny_config("iste", **variant)).eval()
    feats = model.encode(torch.rand(1, 3, 10, 12) * 2 - 1)
    coord = make_coord((25, 30))[None]
    cell = torch.full_like(coord, 2 / 25)
    keys = KeySet(coord[:, ::7], cell[:, ::7]) if model.config.stf else None
    with torch.no_grad():
        whole = model.query(feats, coord, cell, keys=keys)
    parts = model.query_parts(feats, coord, cell, keys=keys)
    total = sum(parts[p] for p in ("lpd", "ltd") if p in parts)
    assert torch.allclose(total, whole, atol=1e-5)
    assert ("texture" in parts) == (model.config.texture != "none")


@pytest.mark.parametrize("variant,part", [({"ltd": False}, "lpd"),
                                          ({"pixel_branch": False, "lfi": False, "stf": False},
                                           "ltd")])
def test_a_single_decoders_part_is_the_query_bit_for_bit(variant, part):
    """query and query_parts share one decoding: with one decoder, its part is the output."""
    model = build_model(tiny_config("iste", **variant)).eval()
    feats = model.encode(torch.rand(1, 3, 9, 11) * 2 - 1)
    coord = make_coord((20, 27))[None]
    cell = torch.full_like(coord, 2 / 20)
    keys = KeySet(coord[:, ::5], cell[:, ::5]) if model.config.stf else None
    with torch.no_grad():
        whole = model.query(feats, coord, cell, keys=keys)
    parts = model.query_parts(feats, coord, cell, keys=keys)
    assert set(parts) - {"texture"} == {part}
    assert torch.equal(parts[part], whole)


def test_stf_matches_pick_the_most_similar_key():
    model = build_model(tiny_config("iste")).eval()
    with torch.no_grad():
        feats = model.encode(torch.rand(1, 3, 6, 7) * 2 - 1)
        coord = make_coord((12, 14))[None][:, ::3]
        keys = KeySet(coord, torch.full_like(coord, 2 / 12))
        index, score = model.stf_matches(feats, keys)
    assert index.shape == score.shape == (1, 42)
    # recomputed from the head's public pieces: F_LFIC per pixel against F_TL of the keys
    nb = local_neighbours(keys.coord, feats["hw"])[0]
    with torch.no_grad():
        tex = model.texture(feats, nb, 2 * torch.pi * torch.sigmoid(
            model.phase(keys.cell * torch.tensor(feats["hw"]))))
    sim = F.normalize(feats["lfic"], dim=-1) @ F.normalize(tex, dim=-1).transpose(1, 2)
    assert torch.equal(index, sim.argmax(-1))
    assert torch.allclose(score, sim.max(-1).values, atol=1e-6)
    with pytest.raises(ValueError, match="no STF"):
        build_model(tiny_config("iste", stf=False)).stf_matches(feats, keys)


def test_figures_command_writes_the_four_figures(tmp_path):
    full = save_model(build_model(tiny_config("iste")), tmp_path / "full.safetensors")
    abl = save_model(build_model(tiny_config("iste", texture="none", stf=False, ltd=False)),
                     tmp_path / "lfi.safetensors")
    rng = np.random.default_rng(0)
    write_image(tmp_path / "hr.png", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    out = tmp_path / "figs"
    assert main(["figures", "--model", str(full), "--image", str(tmp_path / "hr.png"),
                 "--ablations", f"LFI+LPD={abl}", "--out", str(out), "--device", "cpu"]) == 0
    for name in ("fig8_texture_learner", "fig9_decoders", "stf_retrieval", "fig10_ablations"):
        assert (out / f"{name}.png").stat().st_size > 5_000
    liif = save_model(build_model(tiny_config("liif")), tmp_path / "liif.safetensors")
    assert main(["figures", "--model", str(liif), "--image", str(tmp_path / "hr.png"),
                 "--out", str(out)]) == 2
    for model in (liif, "bicubic"):  # refused before a figures folder is made
        assert main(["figures", "--model", str(model), "--image", str(tmp_path / "hr.png"),
                     "--out", str(tmp_path / "none")]) == 2
    assert not (tmp_path / "none").exists()


def test_a_rerun_of_the_figures_draws_them_as_the_first_run_did(tmp_path):
    # Fig. 8's principal components came from torch.pca_lowrank, which draws a random
    # projection from the global generator: each run (a rerun after an interrupted one too)
    # coloured them differently (up to 255 levels apart on 108 000 pixels)
    full = save_model(build_model(tiny_config("iste")), tmp_path / "full.safetensors")
    write_image(tmp_path / "hr.png",
                np.random.default_rng(5).integers(0, 255, (48, 48, 3), dtype=np.uint8))
    figures = []
    for seed in (1, 2):
        torch.manual_seed(seed)  # where the generator stands when a process starts the run
        out = tmp_path / f"figs{seed}"
        assert main(["figures", "--model", str(full), "--image", str(tmp_path / "hr.png"),
                     "--out", str(out), "--device", "cpu", "-q"]) == 0
        figures.append((out / "fig8_texture_learner.png").read_bytes())
    assert figures[0] == figures[1]


def test_figures_are_not_replaced_without_overwrite(tmp_path, capsys, monkeypatch):
    """A rerun into a folder holding its figures is refused (one line: how many, the first)
    before the image is explained, the files untouched; --overwrite replaces them; a run
    without --ablations names the earlier run's Fig. 10 it leaves in the folder."""
    from iste.eval import explain as ex
    full = save_model(build_model(tiny_config("iste")), tmp_path / "full.safetensors")
    write_image(tmp_path / "hr.png",
                np.random.default_rng(5).integers(0, 255, (48, 48, 3), dtype=np.uint8))
    out = tmp_path / "figs"
    argv = ["figures", "--model", str(full), "--image", str(tmp_path / "hr.png"),
            "--out", str(out), "--device", "cpu"]
    assert main(argv + ["--ablations", "B=bicubic"]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert len(before) == 4
    capsys.readouterr()
    real = ex.explain
    monkeypatch.setattr(ex, "explain", lambda *a, **k: pytest.fail("explained"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "3 of the 3 figure(s) this run writes exist" in err and "--overwrite" in err
    assert "fig8_texture_learner.png" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    monkeypatch.setattr(ex, "explain", real)
    assert main(argv + ["--overwrite"]) == 0
    said = capsys.readouterr().out
    assert "fig10_ablations.png is an earlier run's" in said
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert after["fig10_ablations.png"] == before["fig10_ablations.png"]
    assert all(after[n] != before[n] for n in after if n != "fig10_ablations.png")


def test_a_second_figures_run_into_the_folder_is_refused_while_the_first_writes(
        tmp_path, capsys, monkeypatch):
    """Two iste figures into one --out at once (a lab's shared folder) each found the figures
    missing and wrote them: the folder held both runs' files (here the other model's Fig. 8
    and 9 beside this one's), each run saying it wrote its own. The second is refused in one
    line while the first writes, and no lock file is left among the figures."""
    from iste.eval import explain as ex

    torch.manual_seed(0)
    full = save_model(build_model(tiny_config("iste")), tmp_path / "full.safetensors")
    other = save_model(build_model(tiny_config("iste", stf=False)), tmp_path / "other.safetensors")
    write_image(tmp_path / "hr.png",
                np.random.default_rng(5).integers(0, 255, (48, 48, 3), dtype=np.uint8))
    out = tmp_path / "figs"
    argv = ["figures", "--image", str(tmp_path / "hr.png"), "--out", str(out), "--device",
            "cpu"]
    real, started, second = ex.explain, [], []

    def other_run_meanwhile(*args, **kwargs):
        if not started:  # the first run, its folder checked: the other starts now
            started.append(True)
            second.append(main([*argv, "--model", str(other)]))
        return real(*args, **kwargs)

    monkeypatch.setattr(ex, "explain", other_run_meanwhile)
    assert main([*argv, "--model", str(full)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert second == [2] and len(err) == 1, err
    assert f"another iste figures is writing {out}; wait for it or choose another --out" in err[0]
    written = sorted(p.name for p in out.iterdir())
    assert written == ["fig8_texture_learner.png", "fig9_decoders.png", "stf_retrieval.png"]
    monkeypatch.setattr(ex, "explain", real)
    assert main([*argv, "--model", str(full)]) == 2  # the folder free again: its figures exist
    assert "3 of the 3 figure(s) this run writes exist" in capsys.readouterr().err


def test_a_full_disk_after_some_figures_names_them_and_the_rerun(tmp_path, capsys,
                                                                 monkeypatch):
    # the figures written before the disk filled made the same command's rerun a refusal
    # ('1 of the 3 figure(s) this run writes exist'), and the error had not said so
    import errno

    from iste.eval import plotting

    full = save_model(build_model(tiny_config("iste")), tmp_path / "full.safetensors")
    write_image(tmp_path / "hr.png",
                np.random.default_rng(5).integers(0, 255, (48, 48, 3), dtype=np.uint8))
    real = plotting.write_atomic

    def full_at_fig9(path, write):
        def refused(tmp):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, refused if path.name == "fig9_decoders.png" else write)

    monkeypatch.setattr(plotting, "write_atomic", full_at_fig9)
    argv = ["figures", "--model", str(full), "--image", str(tmp_path / "hr.png"),
            "--out", str(tmp_path / "figs"), "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fig9_decoders.png: no space left on device" in err[0], err
    assert "(fig8_texture_learner.png): free space and rerun with --overwrite" in err[0]
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["fig8_texture_learner.png"]
    monkeypatch.setattr(plotting, "write_atomic", real)
    assert main(argv + ["--overwrite"]) == 0


def test_a_larger_image_is_explained_on_its_most_textured_square():
    model = build_model(tiny_config("iste")).eval()
    image = np.full((96, 120, 3), 128, np.uint8)
    image[50:82, 70:102] = np.random.default_rng(1).integers(0, 255, (32, 32, 3))
    from iste.eval.explain import explain
    small = explain(model, image[:30, :30], 2.0, max_lr_side=16)
    assert small.region is None and small.hr.shape[:2] == (30, 30)
    big = explain(model, image, 2.0, max_lr_side=16)
    r, c, side = big.region
    assert side == 32 and big.hr.shape[:2] == (32, 32)
    assert abs(r - 50) <= 4 and abs(c - 70) <= 4  # the textured patch, not the flat rest
    assert big.parts["lpd"].shape[-2:] == (32, 32)


def test_figures_at_a_non_integer_scale_use_the_requested_scale(tmp_path, monkeypatch):
    """x3.01 on 48 px makes HR 45 / LR 15 = 3.0: the titles and the shave (ceil(3.01) + 6 =
    10 px, the evaluation protocol's) follow the requested scale, not the size ratio (9 px)."""
    from iste.data.metrics import psnr
    from iste.eval import explain as ex
    shown = {}
    monkeypatch.setattr(ex, "panel_row", lambda panels, title, path, **kw:
                        shown.setdefault(path.name, (panels, title)) and path)
    model = build_model(tiny_config("iste")).eval()
    image = np.random.default_rng(2).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    got = ex.explain(model, image, 3.01)
    assert got.hr.shape[0] / got.lr.shape[0] == 3.0 and got.scale == 3.01
    ex.decoder_figure(got, tmp_path / "fig9.png")
    pred = got.image("pred")
    panels, title = shown["fig9.png"]
    assert "×3.01" in title
    assert panels[3][0].endswith(f"{psnr(pred, got.hr, scale=3.01):.2f} dB")
    assert psnr(pred, got.hr, scale=3.01) != psnr(pred, got.hr, scale=3.0)
    ex.ablation_figure([("full", pred)], got.lr, got.hr, tmp_path / "fig10.png", scale=3.01)
    panels, title = shown["fig10.png"]
    assert "×3.01" in title and f"{psnr(pred, got.hr, scale=3.01):.2f} dB" in panels[1][0]


def test_figures_render_bicubic_in_the_ablation_figure(tmp_path):
    """``--ablations B=bicubic`` is a baseline in Fig. 10 (it crashed after three figures)."""
    full = save_model(build_model(tiny_config("iste")), tmp_path / "full.safetensors")
    write_image(tmp_path / "hr.png",
                np.random.default_rng(3).integers(0, 255, (48, 48, 3), dtype=np.uint8))
    out = tmp_path / "figs"
    assert main(["figures", "--model", str(full), "--image", str(tmp_path / "hr.png"),
                 "--ablations", "B=bicubic", "--out", str(out), "--device", "cpu"]) == 0
    assert (out / "fig10_ablations.png").stat().st_size > 5_000


@pytest.mark.parametrize("scale", [2.0, 3.01, 4.0])
def test_min_image_side_is_the_smallest_evaluable_image(scale):
    from iste.data.degrade import cropped_size
    from iste.data.metrics import check_evaluable
    from iste.eval.explain import min_image_side
    side = min_image_side(scale)
    check_evaluable(cropped_size((side, side), scale), scale)
    with pytest.raises(ValueError, match="too small"):
        check_evaluable(cropped_size((side - 1, side - 1), scale), scale)


def test_figures_check_the_model_and_image_before_writing(tmp_path, capsys):
    """A figure the model has no part for is skipped with a note; a model with none of them,
    or an image too small to score, is refused (naming the minimum size) before any file."""
    from iste.models.heads.iste import ABLATIONS
    no_stf = save_model(build_model(tiny_config("iste", **ABLATIONS["no-stf"])),
                        tmp_path / "no-stf.safetensors")
    lpd = save_model(build_model(tiny_config("iste", **ABLATIONS["lfi-lpd-only"])),
                     tmp_path / "lpd.safetensors")
    rng = np.random.default_rng(4)
    for side in (48, 20, 3):
        write_image(tmp_path / f"{side}.png", rng.integers(0, 255, (side, side, 3), np.uint8))
    out = tmp_path / "figs"
    assert main(["figures", "--model", str(no_stf), "--image", str(tmp_path / "48.png"),
                 "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["fig8_texture_learner.png",
                                                     "fig9_decoders.png"]
    assert "skipping: the STF retrieval figure needs a model with STF" in capsys.readouterr().out
    for model, image, message in [(lpd, "48", "makes none of the figures"),
                                  (no_stf, "20", "at least 32 x 32 px"),
                                  (no_stf, "3", "at least 32 x 32 px")]:
        assert main(["figures", "--model", str(model), "--image", str(tmp_path / f"{image}.png"),
                     "--out", str(tmp_path / "none"), "--device", "cpu"]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "none").exists()


def test_the_texture_decoders_panel_states_its_range_in_8_bit_levels(tmp_path, monkeypatch):
    """Fig. 9 (c) said '±0.67': the bound of I_LTD in the model's [-1, 1] units, twice what
    it is in [0, 1] and without a unit. Its number is now in 8-bit levels: an I_LTD of that
    many levels is drawn white, minus that many black."""
    import re

    from iste.eval import explain as ex
    shown = {}
    monkeypatch.setattr(ex, "panel_row", lambda panels, title, path, **kw:
                        shown.setdefault(path.name, panels) and path)
    model = build_model(tiny_config("iste")).eval()
    image = np.random.default_rng(4).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    got = ex.explain(model, image, 2.0)
    ex.decoder_figure(got, tmp_path / "fig9.png")
    label, drawn = shown["fig9.png"][2]
    bound = float(re.search(r"±([\d.]+) 8-bit levels", label).group(1))
    ltd_levels = got.parts["ltd"].permute(1, 2, 0).numpy() * 127.5  # [-1, 1] spans 255 levels
    expected = np.clip(ltd_levels / (2 * bound) + 0.5, 0, 1)
    assert np.abs(drawn - expected).max() < 0.01  # the label keeps 3 digits
