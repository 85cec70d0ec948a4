"""The issue-15 sections of iste bench, without timing anything: plans, geometry, arithmetic,
tables and the stand-ins the published trainer runs with."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from iste.bench import contention, report, suite
from iste.bench.contention import (BOUNDED_SPIN, DEFAULTS, OLD_DEFAULT_LABEL, QUIET, SPIN,
                                       settings)
from iste.bench.training import _rate, _torchvision_stand_in, our_config


def test_contention_compares_the_defaults_with_the_old_spin_and_one_thread():
    plan = dict(settings(2))
    first_label, first = settings(2)[0]
    assert first == {"threads": None, "env": DEFAULTS}  # iste.runtime decides
    # iste before #15: libgomp's spin, chunks in turn, 1024 queries a chunk whatever the model
    assert plan[OLD_DEFAULT_LABEL.format(cpus=2)] == {"threads": 2, "env": SPIN, "workers": 1,
                                                      "chunk": 1024}
    assert "chunk" not in first  # the defaults' chunk is the model's (default_chunk)
    assert any(s["env"] == BOUNDED_SPIN for s in plan.values())
    assert SPIN["GOMP_SPINCOUNT"] == "300000" and SPIN["OMP_WAIT_POLICY"] is None
    assert {s["threads"] for s in plan.values()} == {None, 1, 2}
    assert "workers" not in first  # the defaults run chunks side by side
    assert {s.get("workers") for s in plan.values() if s["threads"] == 2} == {None, 1}
    assert all(s["threads"] != 2 for _, s in settings(1))


def test_contention_ratios_are_within_one_load():
    old = OLD_DEFAULT_LABEL.format(cpus=2)
    rates = {label: 0.1 for label, _ in settings(2)}
    rates.update({"iste defaults": 0.15, old: 0.12, "1 thread": 0.2})
    rows = contention._ratios(QUIET, {k: {"mpx_per_s": v} for k, v in rates.items()}, 4.0,
                              (256, 256), 2)
    by = {r["setting"]: r for r in rows}
    assert by["iste defaults"]["vs_old_default"] == pytest.approx(0.15 / 0.12)
    assert by["iste defaults"]["fraction_of_best"] == pytest.approx(0.75)
    assert by["1 thread"]["fraction_of_best"] == 1 and by[old]["vs_old_default"] is None
    assert "1.25x" in report.contention_table(rows)
    assert contention.loads(True)[0] == QUIET and QUIET not in contention.loads(False)


def test_the_quiet_load_runs_children_at_real_time_priority(monkeypatch, tmp_path):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(kwargs.get("preexec_fn"))
        return subprocess.CompletedProcess(cmd, 0, stdout='{"mpx_per_s": 1.0}\n', stderr="")

    monkeypatch.setattr(suite, "run_to_end", fake_run)
    assert suite.run_child({}, tmp_path, realtime=True) == {"mpx_per_s": 1.0}
    suite.run_child({}, tmp_path)
    assert calls == [suite._realtime_priority, None]


def test_training_rate_skips_the_warm_up():
    rate = _rate([0.0, 10.0, 12.0, 16.0], warmup=1)  # iterations of 10, 2 and 4 s
    assert rate["steps"] == 2 and rate["seconds_per_step"] == pytest.approx(3.0)
    assert rate["samples_per_s"] == pytest.approx(4 * 2 / 6)
    assert rate["warmup_s"] == pytest.approx(10.0)  # reported (start-up, heap growth)
    with pytest.raises(ValueError):
        _rate([0.0, 1.0], warmup=1)


def test_torchvision_stand_in_matches_pil(monkeypatch):
    from PIL import Image

    monkeypatch.setattr(sys, "modules", dict(sys.modules))  # stand-ins vanish after the test
    _torchvision_stand_in()
    from torchvision import transforms

    img = torch.rand(3, 20, 30)
    pil = transforms.ToPILImage()(img)
    assert pil.size == (30, 20)
    back = transforms.ToTensor()(pil)
    assert back.shape == (3, 20, 30) and (back - img).abs().max() <= 1 / 255 + 1e-6
    small = transforms.Resize(10, Image.BICUBIC)(pil)  # the shorter side to 10
    assert small.size == (15, 10)
    np.testing.assert_array_equal(np.asarray(small),
                                  np.asarray(pil.resize((15, 10), Image.BICUBIC)))


def test_tables_show_the_figures():
    slide = {"scale": 2.0, "precision": "fp32", "chunk": 2048, "tile": 512,
             "tiles": {"tissue": {"tiles": 3, "out_mpx": 0.79, "seconds": 7.5,
                                  "mpx_per_s": 0.105, "peak_rss_mb": 812},
                       "glass": {"tiles": 3, "out_mpx": 0.79, "seconds": 0.75,
                                 "mpx_per_s": 1.05}},
             "sample": {"size": [4440, 5934], "tissue_fraction": 0.5, "tiles_model": 40,
                        "tiles_background": 68, "detect_seconds": 0.4, "seconds": 200.0},
             "assembly_s_per_mpx": 0.02,
             "projection": {"slide": [60000, 40000], "tissue": 0.4, "out_mpx": 9600.0,
                            "hours": 11.7, "hours_tiles": 11.65, "hours_pyramid": 0.05}}
    text = report.slide_table(slide)
    assert "0.1050" in text and "11.7 h" in text and "60000 x 40000" in text
    assert "2048 queries per call" in text and "40 model and 68 bicubic tiles of 512 px" in text
    assert "| 0.1050 | 812 |" in text and "| 1.0500 | – |" in text  # glass: no figure given
    assert "0.020 s per output Mpx" in text and "0.05 h of pyramid" in text
    rows = [{"encoder": "swinir", "code": "published", "samples_per_s": 0.5,
             "seconds_per_step": 8.0, "vs_published": 1.0},
            {"encoder": "swinir", "code": "ours", "samples_per_s": 1.0,
             "seconds_per_step": 4.0, "vs_published": 2.0}]
    rows[1]["warmup_s"] = 95.0
    assert "2.00x" in report.train_table(rows) and "| 95 |" in report.train_table(rows)
    rows[1].update(step_gflop=846.0, floor_s_per_step=3.0, floor_over_step=0.75)
    assert "3.00 (846 GFLOP) | 75% |" in report.train_table(rows)
    cont = [{"load": "as is", "setting": "iste defaults", "mpx_per_s": 0.1,
             "fraction_of_best": 0.95}]
    assert "95%" in report.contention_table(cont)


@pytest.mark.parametrize("encoder", ["edsr-baseline", "swinir"])
def test_our_training_side_runs_the_paper_config_for_a_few_steps(encoder):
    job = {"encoder": encoder, "tiles": "tiles", "warmup": 1, "steps": 2, "precision": "bf16"}
    cfg = our_config(job)  # the paper configs count epochs: the bench counts steps
    assert cfg.run.steps == 3 and cfg.run.epochs is None and cfg.run.precision == "bf16"
    assert cfg.run.batch_size == 4 and cfg.data.sample_q == 2304 and cfg.data.val == ()


def test_the_slide_section_times_the_whole_slide_jobs_own_tiles(tmp_path):
    """The rates come from tiles of the whole slide's job (their crops read the halo beyond
    them, as a real slide's interior tiles do), not from a region job of their own."""
    from iste.bench.slide import slide_study
    from iste.models.checkpoint import save_model
    from iste.models.registry import build_model
    from iste.slides.reader import InMemorySlide
    from model_zoo import tiny_config
    from slide_data import he_image, write_tiff_pyramid

    torch.manual_seed(0)
    model_path = save_model(build_model(tiny_config("liif")).eval(), tmp_path / "m.safetensors")
    rgb = np.full((512, 1024, 3), 242, np.uint8)  # glass on the left, tissue on the right
    rgb[:, 512:] = he_image(512, 512)
    slide_path = write_tiff_pyramid(tmp_path / "half.tiff", InMemorySlide(rgb, mpp=0.5))
    lines = []
    study, = slide_study(scales=(2.0,), model_path=str(model_path), chunk=300,
                         slide_path=slide_path, log=lines.append)
    assert study["chunk"] == 300 and study["tile"] == 512 and study["scale"] == 2.0
    sample = study["sample"]
    assert sample["size"] == [2048, 1024]  # the whole slide planned, not a block of it
    assert sample["tiles_model"] + sample["tiles_background"] == 8
    assert sample["tiles_model"] >= 2 and sample["tiles_background"] >= 2
    tissue, glass = study["tiles"]["tissue"], study["tiles"]["glass"]
    assert tissue["tiles"] >= 1 and glass["tiles"] >= 1
    assert tissue["out_mpx"] == pytest.approx(tissue["tiles"] * 512 * 512 / 1e6)
    assert tissue["mpx_per_s"] == pytest.approx(tissue["out_mpx"] / tissue["seconds"])
    assert tissue["peak_rss_mb"] > 0 and "peak_rss_mb" not in glass
    p = study["projection"]
    share = sample["model_share"] / sample["tissue_fraction"] * 0.4  # tiles touching tissue
    assert p["model_share"] == pytest.approx(min(1.0, share)) and p["tissue"] == 0.4
    assert p["hours"] == pytest.approx(9600 * (p["model_share"] / tissue["mpx_per_s"]
                                              + (1 - p["model_share"]) / glass["mpx_per_s"]
                                              + study["assembly_s_per_mpx"]) / 3600)
    assert study["assembly_s_per_mpx"] > 0 and len(lines) == 2 and "tissue tiles" in lines[0]


def test_the_typical_slide_is_the_same_40x_image_from_a_20x_or_a_10x_scan():
    from iste.bench.slide import projection

    rates = {"tissue": {"mpx_per_s": 0.1}, "glass": {"mpx_per_s": 10.0}}
    x2, x4 = projection(2.0, rates), projection(4.0, rates)
    assert x2["slide"] == [60000, 40000] and x4["slide"] == [30000, 20000]
    assert x2["out_mpx"] == x4["out_mpx"] == 9600.0
    assert x2["hours"] == pytest.approx(9600 * (0.4 / 0.1 + 0.6 / 10.0) / 3600)
    with_pyramid = projection(2.0, rates, 0.036)  # seconds of pyramid per output Mpx
    assert with_pyramid["hours_pyramid"] == pytest.approx(9600 * 0.036 / 3600)
    assert with_pyramid["hours"] == pytest.approx(x2["hours"] + with_pyramid["hours_pyramid"])


def test_the_typical_slide_runs_the_model_on_every_tile_touching_tissue():
    """40 % tissue was weighted as 40 % of the area at the model's rate, while the job runs
    the model on every tile whose crop touches tissue: on the sample SVS 36 % tissue made
    71 % of the area model tiles, and the hours were ~2x too few."""
    from iste.bench.slide import projection, study_of

    rates = {"tissue": {"mpx_per_s": 0.1}, "glass": {"mpx_per_s": 10.0}}
    p = projection(2.0, rates, 0.0, model_per_tissue=0.71 / 0.36)
    share = 0.4 * 0.71 / 0.36  # 0.789 of the area
    assert p["model_share"] == pytest.approx(share)
    assert p["hours"] == pytest.approx(9600 * (share / 0.1 + (1 - share) / 10.0) / 3600)
    assert projection(2.0, rates, 0.0, model_per_tissue=3.0)["model_share"] == 1.0

    class Rate:  # a fake estimate of the sample: 30 % tissue, 60 % of its area model tiles
        def __init__(self, mpx_per_s):
            self.tiles, self.mpx, self.mpx_per_s = 3, 0.75, mpx_per_s
            self.seconds_per_mpx = 1 / mpx_per_s

    class Calibration:
        kinds = {"model": Rate(0.1), "background": Rate(10.0)}
        peak_rss = None

    class Estimate:
        calibration, size, scale, tile = Calibration(), (1000, 1000), 2.0, 512
        tissue_fraction, mpx_model, mpx_background = 0.3, 0.6, 0.4
        tiles_model, tiles_background, seconds_detect, seconds = 3, 2, 0.1, 9.0
        seconds_assembly = 0.0

    class Options:
        precision, chunk = "fp32", 2048

    study = study_of(Estimate(), Options())
    assert study["sample"]["model_share"] == pytest.approx(0.6)
    assert study["projection"]["model_share"] == pytest.approx(0.8)  # 0.4 x 0.6 / 0.3
    assert study["projection"]["hours"] == pytest.approx(9600 * (0.8 / 0.1 + 0.2 / 10) / 3600)
    assert "40% tissue (80% of its area in model tiles" in report.slide_table(study)


def test_the_slide_projection_names_its_threads_and_a_commands():
    # "9.8 h on this machine" was measured with the bench's 2 threads, whatever iste upscale
    # would use there (all the cores of a 64-core server)
    study = {"scale": 2.0, "precision": "fp32", "chunk": 2048, "tile": 512, "threads": 2,
             "tiles": {}, "assembly_s_per_mpx": 0.0,
             "sample": {"size": [10, 10], "tiles_model": 1, "tiles_background": 1,
                        "detect_seconds": 0.1},
             "projection": {"slide": [60000, 40000], "tissue": 0.4, "model_share": 0.8,
                            "out_mpx": 9600.0, "hours": 10.0, "hours_tiles": 10.0,
                            "hours_pyramid": 0.0}}
    assert "**10.0 h** on this machine with 2 threads (10.0 h" in report.slide_table(study, 2)
    text = report.slide_table(study, 64)
    assert "with 2 threads (`iste upscale` uses 64 here: --threads 64 measures that)" in text


@pytest.mark.parametrize("bias", [True, False])
def test_the_floor_counts_the_onednn_linear_as_torch_counts_f_linear(bias, monkeypatch):
    from torch.utils.flop_counter import FlopCounterMode

    from iste.models.layers import linear as linear_module
    from iste.models.layers.linear import flop_formulas, linear

    # training through oneDNN, as where MKL does not run at full speed
    monkeypatch.setattr(linear_module, "blas_trains_faster", lambda: False)

    x = torch.randn(2, 50, 24, requires_grad=True)
    w = torch.randn(40, 24, requires_grad=True)
    b = torch.randn(40, requires_grad=True) if bias else None

    def step_flops(fn, mapping) -> int:
        counter = FlopCounterMode(display=False, custom_mapping=mapping)
        with counter:
            fn(x, w, b).square().sum().backward()
        return counter.get_total_flops()

    # forward, the input's gradient and the weight's: 3 x 2 x rows x in x out
    expected = 3 * 2 * 100 * 24 * 40
    assert step_flops(torch.nn.functional.linear, {}) == expected
    assert step_flops(linear, flop_formulas()) == expected


def test_the_step_floor_is_the_products_at_every_threads_best_rate(monkeypatch):
    from iste.bench import training

    monkeypatch.setattr(training, "step_flops", lambda encoder: 800e9)
    monkeypatch.setattr(training, "gemm_rate_per_thread", lambda: 100e9)
    floor = training.step_floor("swinir", threads=2)
    assert floor == {"step_gflop": 800.0, "gemm_gflops_per_thread": 100.0,
                     "floor_s_per_step": 4.0}


def test_the_report_names_the_cpus_vector_instructions():
    from iste.bench import runner

    machine = runner.machine_info()
    assert machine["vector"] == torch.backends.cpu.get_cpu_capability()
    results = {"machine": {**machine, "vector": "AVX512"}, "machine_after": machine,
               "config": {"threads": 2}}
    first_line = runner.markdown(results).splitlines()[0]
    assert f"{machine['cpu']} (AVX512), {machine['cpus']} CPUs" in first_line
    assert f"fp32 training products: {machine['training_products']};" in first_line
