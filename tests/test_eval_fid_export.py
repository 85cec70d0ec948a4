"""`--fid` with a torch.export program (.pt2): the same features and FID as the same network
as TorchScript, and archives that torch.export.load would run code from, or whose program does
not fit FID's contract, refused in one line before any of it is loaded or run."""

import io
import json
import os
import zipfile

import numpy as np
import pytest
import torch

from eval_helpers import (TORCHSCRIPT_NOTICE, run_error, smooth_tile_folder, tiny_fid_extractor,
                          tiny_fid_net, tiny_fid_program)
from iste.cli.main import main
from iste.eval.fid import load_feature_extractor


def images(n, seed, size=40):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size + 7, 3), dtype=np.uint8) for _ in range(n)]


def refusal(path) -> str:
    with pytest.raises(ValueError) as err:
        load_feature_extractor(path)
    said = str(err.value)
    assert "\n" not in said and str(path) in said, said
    return said


def rewritten(src, dst, changes):
    """``src``'s archive saved at ``dst`` with entries (named below its root folder) replaced
    by ``change(old bytes)``, or added (old bytes b"")."""
    changes = dict(changes)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/")[0]
        for info in zin.infolist():
            change = changes.pop(info.filename.split("/", 1)[1], None)
            data = zin.read(info)
            zout.writestr(info.filename, data if change is None else change(data))
        for name, change in changes.items():
            zout.writestr(f"{root}/{name}", change(b""))
    return dst


class MakesFolder:
    """A pickle that, when loaded, makes a folder: what a hostile pickle could do instead."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def code_pickle(marker) -> bytes:
    buffer = io.BytesIO()
    torch.save(MakesFolder(marker), buffer)
    return buffer.getvalue()


def edit_program(edit):
    def change(data):
        program = json.loads(data)
        edit(program)
        return json.dumps(program).encode()
    return change


@pytest.mark.filterwarnings(f"ignore:{TORCHSCRIPT_NOTICE}")
def test_a_pt2_program_gives_the_features_of_the_same_network_as_torchscript(tmp_path):
    net = tiny_fid_net()
    program = load_feature_extractor(tiny_fid_program(tmp_path / "net.pt2", net))
    script = load_feature_extractor(tiny_fid_extractor(tmp_path / "net.pt", net))
    imgs = images(11, 0)  # batches of 8 and 3: the dynamic batch dimension is used
    np.testing.assert_array_equal(program.features(imgs), script.features(imgs))
    assert program.features(imgs).shape == (11, 4)


def test_a_pt2_is_told_by_its_content_not_its_suffix(tmp_path):
    net = tiny_fid_net()
    path = tiny_fid_program(tmp_path / "net.pt2", net)
    renamed = tmp_path / "inception.pth"
    renamed.write_bytes(path.read_bytes())
    imgs = images(3, 1)
    with torch.no_grad():
        expected = net(load_feature_extractor(path).preprocess(imgs)).mean((2, 3))
    np.testing.assert_allclose(load_feature_extractor(renamed).features(imgs), expected.numpy(),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.filterwarnings(f"ignore:{TORCHSCRIPT_NOTICE}")
def test_iste_eval_gives_the_same_fid_with_a_pt2_as_with_torchscript(tmp_path, capsys):
    data = smooth_tile_folder(tmp_path / "data", n=3, base=6, size=44)
    net = tiny_fid_net()
    tables = []
    for fid in (tiny_fid_extractor(tmp_path / "net.pt", net),
                tiny_fid_program(tmp_path / "net.pt2", net)):
        out = tmp_path / f"out-{fid.suffix}"
        assert main(["eval", "--data", str(data), "--scales", "2,3", "--methods", "bicubic",
                     "--fid", str(fid), "--out", str(out), "--no-cost", "--no-progress",
                     "--no-figures", "-q"]) == 0
        tables.append(json.loads((out / "tables" / "table3_fid.json").read_text()))
    assert tables[0] == tables[1]
    assert "FID not computed" not in json.dumps(tables[0])


def test_a_pt2_whose_sample_inputs_are_a_pickle_of_code_is_refused_unread(tmp_path):
    marker = tmp_path / "ran"
    path = rewritten(tiny_fid_program(tmp_path / "net.pt2"), tmp_path / "hostile.pt2",
                     {"data/sample_inputs/model.pt": lambda _: code_pickle(marker)})
    assert "sample inputs" in refusal(path)
    assert not marker.exists()


def test_a_pt2_whose_shape_expression_is_python_is_refused_unread(tmp_path):
    marker = tmp_path / "ran"

    def python_as_batch_size(program):
        sizes = program["graph_module"]["graph"]["tensor_values"]["input"]["sizes"]
        sizes[0] = {"as_expr": {"expr_str": f"__import__('os').mkdir({str(marker)!r})",
                                "hint": {"as_int": 2}}}

    path = rewritten(tiny_fid_program(tmp_path / "net.pt2"), tmp_path / "hostile.pt2",
                     {"models/model.json": edit_program(python_as_batch_size)})
    assert "__import__" in refusal(path)
    assert not marker.exists()


def test_a_pt2_with_pickled_weights_or_objects_or_compiled_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    good = tiny_fid_program(tmp_path / "net.pt2")

    def pickled_weight(data):
        config = json.loads(data)
        meta = next(iter(config["config"].values()))
        meta["use_pickle"] = True
        return json.dumps(config).encode()

    path = rewritten(good, tmp_path / "w.pt2", {
        "data/weights/model_weights_config.json": pickled_weight,
        "data/weights/weight_0": lambda _: code_pickle(marker)})
    assert "is a pickle" in refusal(path)
    path = rewritten(good, tmp_path / "o.pt2",
                     {"data/constants/opaque_obj_0": lambda _: code_pickle(marker)})
    assert "opaque_obj_0" in refusal(path)
    path = rewritten(good, tmp_path / "a.pt2",
                     {"data/aotinductor/model/model.so": lambda _: b"\x7fELF"})
    assert "aotinductor" in refusal(path)
    assert not marker.exists()


def test_a_pt2_node_that_calls_anything_but_a_torch_operator_is_refused(tmp_path):
    marker = tmp_path / "ran"

    def mkdir_as_last_node(program):
        node = program["graph_module"]["graph"]["nodes"][-1]
        node["target"] = "torch.os.mkdir"  # torch/__init__ imports os
        node["inputs"] = [{"name": "path", "arg": {"as_string": str(marker)}, "kind": 1}]

    path = rewritten(tiny_fid_program(tmp_path / "net.pt2"), tmp_path / "hostile.pt2",
                     {"models/model.json": edit_program(mkdir_as_last_node)})
    assert "not an allowed operator" in refusal(path)
    assert not marker.exists()


class Flat(torch.nn.Module):
    def forward(self, x):  # (B, 3, H, W) -> (B,): one number per image
        return x.mean((1, 2, 3))


def test_a_pt2_program_that_does_not_fit_fids_contract_is_a_one_line_error(tmp_path):
    static = tiny_fid_program(tmp_path / "static.pt2", dynamic_shapes=None)
    assert "batches of 2 to 2 images only" in refusal(static)
    small = tmp_path / "small.pt2"
    torch.export.save(torch.export.export(tiny_fid_net(), (torch.zeros(2, 3, 64, 64),)), small)
    assert "expected float32 (B, 3, 299, 299)" in refusal(small)
    flat = tiny_fid_program(tmp_path / "flat.pt2", Flat())
    assert "expected float (B, D) or (B, D, h, w)" in refusal(flat)
    capped = tiny_fid_program(tmp_path / "capped.pt2", dynamic_shapes=(
        {0: torch.export.Dim("batch", min=1, max=3)},))
    extractor = load_feature_extractor(capped)
    assert extractor.batch == 3 and extractor.features(images(7, 2)).shape == (7, 4)
    broken = rewritten(tiny_fid_program(tmp_path / "net.pt2"), tmp_path / "broken.pt2",
                       {"models/model.json": lambda data: data[:100]})
    assert "not JSON" in refusal(broken)
    deflated = tmp_path / "deflated.pt2"  # a zip bomb's way; torch.export.save stores entries
    with zipfile.ZipFile(broken.with_name("net.pt2")) as zin, \
            zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    assert "compressed entries" in refusal(deflated)


def test_iste_eval_refuses_a_hostile_pt2_in_one_line(tmp_path, capsys):
    data = smooth_tile_folder(tmp_path / "data", n=2, base=6, size=44)
    marker = tmp_path / "ran"
    path = rewritten(tiny_fid_program(tmp_path / "net.pt2"), tmp_path / "hostile.pt2",
                     {"data/sample_inputs/model.pt": lambda _: code_pickle(marker)})
    err = run_error(["eval", "--data", str(data), "--scales", "2", "--methods", "bicubic",
                     "--fid", str(path), "--out", str(tmp_path / "out"), "--no-progress"],
                    capsys)
    assert "would run code" in err and not marker.exists()
