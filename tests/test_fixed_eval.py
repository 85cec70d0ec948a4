"""``iste eval`` with fixed-scale methods: evaluated only at their own scales, "—" elsewhere,
one method from several per-scale checkpoints, t-tests over the cells that exist."""

import json

import numpy as np
import pytest

from eval_helpers import texture, texture_folder
from iste.eval.methods import load_methods
from iste.eval.report import EvalRequest, run_evaluation
from iste.models.checkpoint import save_model
from iste.models.registry import build_model
from model_zoo import tiny_config, tiny_fixed

SCALES = (2.0, 3.0, 2.5)


@pytest.fixture()
def setup(tmp_path):
    data = texture_folder(tmp_path / "data", size=36)
    paths = {name: save_model(build_model(cfg), tmp_path / f"{name}.safetensors")
             for name, cfg in [("edsr_x2", tiny_fixed("edsr", 2)),
                               ("edsr_x3", tiny_fixed("edsr", 3)),
                               ("rdn_x3", tiny_fixed("rdn", 3)),
                               ("liif", tiny_config("liif"))]}
    return data, paths


def test_a_label_repeated_over_fixed_checkpoints_is_one_method(setup):
    _, p = setup
    methods = load_methods([f"EDSR={p['edsr_x2']}", "bicubic", f"EDSR={p['edsr_x3']}",
                            str(p["rdn_x3"])])
    assert [m.name for m in methods] == ["EDSR", "bicubic", "rdn_x3"]
    edsr = methods[0]
    assert sorted(edsr.fixed_scales) == [2.0, 3.0]
    assert edsr.supports(3) and not edsr.supports(2.5) and not edsr.supports(4)
    assert edsr.at(3).model.scale == 3 and edsr.at(2).model.scale == 2
    assert edsr.at(2).fingerprint != edsr.at(3).fingerprint
    assert methods[1].supports(2.5) and methods[2].fixed_scales.keys() == {3.0}
    assert edsr.architecture == "EDSR x2, x3"


@pytest.mark.parametrize("specs,message", [
    (["A={edsr_x2}", "A={edsr_x2}"], "two checkpoints for x2"),
    (["A={edsr_x2}", "A={rdn_x3}"], "mixes architectures"),
    (["A={edsr_x2}", "A={liif}"], "given twice"),
])
def test_bad_repeated_labels_are_errors(setup, specs, message):
    _, p = setup
    with pytest.raises(ValueError, match=message):
        load_methods([s.format(**{k: str(v) for k, v in p.items()})for s in specs])


def test_eval_fills_only_the_fixed_scales_and_dashes_the_rest(tmp_path, setup):
    data, p = setup
    out = tmp_path / "report"
    req = EvalRequest(data=str(data), out=out, scales=SCALES, reference="bicubic",
                      methods=("bicubic", f"EDSR={p['edsr_x2']}", f"EDSR={p['edsr_x3']}",
                               f"RDN={p['rdn_x3']}"),
                      progress=False, cost=True)  # cost: Table 8 has no fixed-scale rows
    run_evaluation(req, log=lambda m: None)
    records = json.loads((out / "results.json").read_text())
    cells = {(r["method"], r["scale"]) for r in records}
    assert cells == ({("bicubic", s) for s in SCALES}
                     | {("EDSR", 2.0), ("EDSR", 3.0), ("RDN", 3.0)})
    md = (out / "tables" / "table1_integer.md").read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in md.split("p-values")[0].splitlines() if line.startswith("| ")}
    # columns: x2 PSNR, x2 SSIM, x3 PSNR, x3 SSIM
    assert rows["RDN"][:2] == ["—", "—"] and "—" not in rows["RDN"][2:4]
    assert "—" not in rows["EDSR"][:4]
    p_section = md.split("p-values")[1]
    p_rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
              for line in p_section.splitlines() if line.startswith("| ")}
    assert p_rows["RDN"][:2] == ["n/a", "n/a"]  # no x2 cell: no test
    assert p_rows["RDN"][2] != "n/a"  # x3: paired over the three images
    noninteger = (out / "tables" / "table2_noninteger.md").read_text()
    rows2 = {line.split("|")[1].strip(): line
             for line in noninteger.split("p-values")[0].splitlines()
             if line.startswith("| ")}
    assert rows2["EDSR"].count("—") == 2 and rows2["RDN"].count("—") == 2
    long_rows = json.loads((out / "tables" / "table1_integer.json").read_text())["rows"]
    assert not any(r["method"] == "RDN" and r["scale"] == 2.0 for r in long_rows)
    report = (out / "report.md").read_text()
    assert "EDSR x2, x3" in report and "RDN x3" in report
    assert (out / "figures" / "fig6_comparison.png").is_file()
    assert not (out / "tables" / "table8_cost.md").exists()


def test_a_fixed_method_without_any_requested_scale_is_refused_before_work(tmp_path, setup):
    data, p = setup
    req = EvalRequest(data=str(data), out=tmp_path / "r", scales=(2.0, 2.5),
                      methods=("bicubic", f"RDN={p['rdn_x3']}"), progress=False)
    with pytest.raises(ValueError, match=r"method RDN is fixed-scale \(RDN x3\); none of "
                                         r"--scales 2,2.5 is its scale"):
        run_evaluation(req, log=lambda m: None)
    assert not (tmp_path / "r" / "results.json").exists()


def test_the_published_geometry_pads_then_runs_the_whole_network():
    """``--protocol published`` flip-pads the LR to a multiple of 8 (plus one block) before
    the network: away from the bottom/right edges (beyond the reach) the result is ours."""
    from iste.engine.image import upscale_to
    from iste.eval.published import published_upscale

    model = build_model(tiny_fixed("edsr", 2)).eval()
    lr = texture(5, size=30)
    ours = upscale_to(lr, (60, 60), model, dtype="float32")
    pub = published_upscale(model, lr, (60, 60), 2)
    assert pub.shape == (60, 60, 3)
    inner = 60 - 2 * (model.reach + 1)
    assert np.abs(pub[:inner, :inner] - ours[:inner, :inner]).max() < 1e-5
    assert np.abs(pub - ours).max() > 1e-4  # the padding does change the border
    with pytest.raises(ValueError, match="fixed-scale x2"):
        published_upscale(model, lr, (90, 90), 3)
