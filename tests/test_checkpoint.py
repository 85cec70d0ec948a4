"""Our safetensors checkpoints: round trip, self-description, clear errors."""

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from iste.models.checkpoint import (CheckpointError, is_untrained, load_model, mark_untrained,
                                    read_metadata, save_model)
from iste.models.registry import build_model
from model_zoo import tiny_config


def test_round_trip_rebuilds_the_same_model(tmp_path):
    model = build_model(tiny_config("iste", lfi_layout="published")).eval()
    path = save_model(model, tmp_path / "m.safetensors", meta={"steps": 3})
    again = load_model(path)
    config, meta = read_metadata(path)
    assert config == model.model_config and meta == {"steps": 3}
    inp, coord = torch.rand(1, 3, 8, 8), torch.rand(1, 20, 2) * 2 - 1
    cell = torch.full((1, 20, 2), 0.1)
    with torch.no_grad():
        assert torch.equal(model(inp, coord, cell), again(inp, coord, cell))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left


def test_built_and_loaded_models_carry_their_config_and_metadata(tmp_path, monkeypatch):
    built = build_model(tiny_config("liif"))
    assert built.model_config.to_dict() == tiny_config("liif")
    assert built.checkpoint_meta == built.checkpoint_written_by == {}
    assert not is_untrained(built)
    loaded = load_model(save_model(built, tmp_path / "m.safetensors", meta={"step": 7}))
    assert loaded.model_config == built.model_config and loaded.checkpoint_meta == {"step": 7}
    assert is_untrained(mark_untrained(loaded)) and loaded.checkpoint_meta["step"] == 7
    # the default model without its weights says so
    import iste.default_model as default_model

    monkeypatch.setattr(default_model, "default_weights_path", lambda: None)
    monkeypatch.setenv(default_model.UNTRAINED_ENV, "1")  # asked for: else an error
    with pytest.warns(default_model.UntrainedModelWarning):
        assert is_untrained(default_model.load_default())


def test_float16_storage_loads_as_float32(tmp_path):
    model = build_model(tiny_config("liif"))
    path = save_model(model, tmp_path / "h.safetensors", dtype=torch.float16)
    again = load_model(path)
    assert all(p.dtype == torch.float32 for p in again.parameters())
    w0 = next(model.parameters()).detach()
    assert torch.equal(next(again.parameters()), w0.half().float())


def test_weights_of_another_architecture_are_refused(tmp_path):
    liif = build_model(tiny_config("liif"))
    path = save_model(liif, tmp_path / "l.safetensors")
    # re-label the weights as an ISTE: the loader must notice, not silently load a subset
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    import json
    meta["config"] = json.dumps(build_model(tiny_config("iste")).model_config.to_dict())
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(tmp_path / "bad.safetensors")


def test_files_that_are_not_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="not a safetensors"):
        load_model(junk)
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    with pytest.raises(CheckpointError, match="no iste model config"):
        load_model(bare)


def test_checkpoints_record_the_iste_and_torch_versions(tmp_path):
    import torch

    import iste
    from iste.models.checkpoint import load_model, save_model
    from iste.models.registry import build_model
    from model_zoo import tiny_config

    path = save_model(build_model(tiny_config("liif")), tmp_path / "m.safetensors")
    model = load_model(path)
    assert model.checkpoint_written_by == {"iste": iste.__version__, "torch": torch.__version__}


def test_metadata_and_weights_of_the_wrong_kind_are_refused_on_load(tmp_path):
    from safetensors import safe_open

    path = save_model(build_model(tiny_config("iste")), tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        weights = {k: f.get_tensor(k) for k in f.keys()}
    save_file(weights, str(tmp_path / "list.safetensors"), metadata={**meta, "meta": "[1, 2]"})
    with pytest.raises(CheckpointError, match="meta is a JSON list, not an object"):
        load_model(tmp_path / "list.safetensors")
    ints = {k: (v * 100).to(torch.int8) for k, v in weights.items()}
    save_file(ints, str(tmp_path / "int8.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="not floating point"):
        load_model(tmp_path / "int8.safetensors")
    half = {k: v.half() for k, v in weights.items()}  # another float type is fine
    save_file(half, str(tmp_path / "half.safetensors"), metadata=meta)
    load_model(tmp_path / "half.safetensors")
    torch.save(weights, tmp_path / "weights.safetensors")  # a torch file under this name
    with pytest.raises(CheckpointError, match="iste convert-official"):
        load_model(tmp_path / "weights.safetensors")
    # a run's train_state.pt was sent to iste convert-official, which cannot read it either
    torch.save({"step": 1, "model": weights}, tmp_path / "train_state.pt")
    with pytest.raises(CheckpointError, match="the resumable state of a training run, whose "
                                              "weights are .*model.safetensors$"):
        load_model(tmp_path / "train_state.pt")


def test_a_full_disk_while_saving_is_a_one_line_error_and_keeps_the_old_file(tmp_path):
    # safetensors' own writer said SafetensorError ("I/O error: No space left on device"):
    # `iste train` ended in a traceback at its checkpoint. The file size limit stands for the
    # full disk: the kernel refuses the write (EFBIG) whoever makes it, said as such
    import resource
    import signal

    from iste.refusals import FileTooLargeError

    path = save_model(build_model(tiny_config("iste")), tmp_path / "m.safetensors")
    old = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    action = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
    try:
        with pytest.raises(FileTooLargeError, match="m.safetensors: file too large"):
            save_model(build_model(tiny_config("iste")), path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, action)
    assert path.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_checkpoint_rewritten_while_it_loads_is_loaded_again_with_its_digest(tmp_path,
                                                                             monkeypatch):
    """iste eval loaded a run's model.safetensors, then hashed the file for its fingerprint
    (the key of its result cache): a checkpoint the training wrote in between gave the
    scores of the older weights under the newer file's digest, which a later evaluation of
    the finished run took from the cache. The digest is now of the very file loaded, which
    is read again when it changed; a file that keeps changing is refused."""
    from iste.eval.methods import load_methods
    from iste.digest import sha256_file
    from iste.models import checkpoint

    torch.manual_seed(0)
    path = save_model(build_model(tiny_config("liif")), tmp_path / "model.safetensors")
    newer = save_model(build_model(tiny_config("liif")), tmp_path / "newer.safetensors")
    real, calls = checkpoint.load_model, []

    def checkpoint_written_meanwhile(p, **kw):  # the training replaces the file after a read
        model = real(p, **kw)
        calls.append(p)
        if len(calls) == 1:
            os.replace(newer, path)
        return model

    monkeypatch.setattr(checkpoint, "load_model", checkpoint_written_meanwhile)
    (method,) = load_methods([str(path)])
    assert method.fingerprint == sha256_file(path) and len(calls) == 2
    for a, b in zip(method.model.state_dict().values(), real(path).state_dict().values()):
        assert torch.equal(a, b)

    versions = [path.read_bytes(),
                save_model(build_model(tiny_config("liif")), tmp_path / "c.safetensors")
                .read_bytes()]

    def always_rewritten(p, **kw):
        model = real(p, **kw)
        versions.reverse()
        path.write_bytes(versions[0])  # another checkpoint each time
        return model

    monkeypatch.setattr(checkpoint, "load_model", always_rewritten)
    with pytest.raises(CheckpointError, match="changed while it was read, 3 times"):
        load_methods([str(path)])


def test_a_full_disk_while_saving_the_training_state_is_a_one_line_error(tmp_path):
    # torch.save's own zip writer said RuntimeError ("unexpected pos 55040 vs 54932"): `iste
    # train` on a full disk ended in a traceback with exit 1 at its checkpoint. The file size
    # limit stands for the full disk (EFBIG), as above
    import resource
    import signal

    from iste.refusals import FileTooLargeError
    from iste.train.state import load_state, save_state

    model = build_model(tiny_config("iste"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    kwargs = dict(model=model, optimizer=opt, scheduler=sched, config={}, meta={})
    save_state(tmp_path, step=3, **kwargs)
    old = (tmp_path / "train_state.pt").read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    action = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
    try:
        with pytest.raises(FileTooLargeError, match="train_state.pt: file too large"):
            save_state(tmp_path, step=6, **kwargs)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, action)
    assert (tmp_path / "train_state.pt").read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "train_state.pt"]
    assert load_state(tmp_path)["step"] == 3


def test_a_method_path_holding_a_comma_or_an_equals_sign_is_a_path(tmp_path, monkeypatch):
    """A sweep's run folder (runs/lr=1e-3,bs=16/): --methods split such a path at its comma
    and its '=', and the halves were refused ('checkpoint not found: 1e-3'). A path that
    exists is one; LABEL=PATH and plain lists read as before."""
    from iste.eval.methods import load_methods, parse_method_list

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "lr=1e-3,bs=16"
    run.mkdir(parents=True)
    save_model(build_model(tiny_config("liif")), run / "model.safetensors")
    path = "runs/lr=1e-3,bs=16/model.safetensors"
    assert parse_method_list(f"bicubic,{path},B={path}, default") == \
        ["bicubic", path, f"B={path}", "default"]
    plain, labelled = load_methods([path, f"B={path}"])
    assert (plain.name, labelled.name) == ("model", "B")
    assert parse_method_list("bicubic,a=x.safetensors,b") == ["bicubic", "a=x.safetensors", "b"]
    # a list whose last item is LABEL=PATH stays a list: its head is no label
    assert parse_method_list(f"bicubic,{run / 'model.safetensors'},C={path}") == \
        ["bicubic", str(run / "model.safetensors"), f"C={path}"]
    save_model(build_model(tiny_config("liif")), tmp_path / "m.safetensors")
    assert parse_method_list("bicubic,a,D=m.safetensors") == ["bicubic", "a", "D=m.safetensors"]


def _relabelled(path, tmp_path, name, change) -> "os.PathLike":
    """A copy of checkpoint ``path`` with ``change(tensor)`` applied to every weight."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        weights = {k: change(f.get_tensor(k)) for k in f.keys()}
    save_file(weights, str(tmp_path / name), metadata=meta)
    return tmp_path / name


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2,
                                   torch.float8_e8m0fnu])
def test_weights_stored_in_a_float8_type_are_refused(tmp_path, dtype):
    """float8 keeps 2-3 bits of each weight (float8_e8m0fnu: a power of two, no sign): cast
    to float32 without a word, the model upscaled into a wrong image."""
    path = save_model(build_model(tiny_config("iste")), tmp_path / "m.safetensors")
    coarse = _relabelled(path, tmp_path, "f8.safetensors", lambda v: v.to(dtype))
    with pytest.raises(CheckpointError, match=f"f8.safetensors: weights stored as "
                                              f"{str(dtype)[6:]} .*float32, float16"):
        load_model(coarse)
    with pytest.raises(ValueError, match="not torch.float8"):
        save_model(build_model(tiny_config("iste")), tmp_path / "w.safetensors", dtype=dtype)
    assert not (tmp_path / "w.safetensors").exists()


def test_float64_weights_beyond_float32s_range_are_refused(tmp_path):
    """Finite in the file, Inf once cast to the float32 the model runs in."""
    path = save_model(build_model(tiny_config("liif")), tmp_path / "m.safetensors")
    load_model(_relabelled(path, tmp_path, "f64.safetensors", torch.Tensor.double))
    huge = _relabelled(path, tmp_path, "huge.safetensors", lambda v: v.double() * 1e300)
    with pytest.raises(CheckpointError, match="huge.safetensors: weights beyond float32's range"):
        load_model(huge)


def test_an_empty_checkpoint_is_named_as_one(tmp_path):
    empty = tmp_path / "model.safetensors"
    empty.touch()
    with pytest.raises(CheckpointError, match=r"model.safetensors is empty \(0 bytes\)"):
        load_model(empty)


def test_a_config_that_does_not_fit_the_weights_is_refused_before_the_model_is_allocated(
        tmp_path, monkeypatch):
    """Metadata claiming a far larger model than the weights it holds (a 16 KB file saying
    1024-channel EDSR of 48 blocks) allocated that model first, 4 GB and seconds, before
    saying the weights do not fit; so did a published spec whose args lie. The shapes are
    now compared on the meta device; the model is built only when they fit."""
    import json

    from safetensors import safe_open

    import iste.models.checkpoint as checkpoint
    from iste.models.official import Converted, build_converted

    built = []

    def build(config):
        model = build_model(config)
        if next(model.parameters()).device.type != "meta":
            built.append(config)
        return model

    monkeypatch.setattr(checkpoint, "build_model", build)
    path = save_model(build_model(tiny_config("iste")), tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta, weights = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    wider = json.loads(meta["config"])
    wider["encoder_args"]["n_feats"] *= 2
    save_file(weights, str(tmp_path / "lies.safetensors"),
              metadata={**meta, "config": json.dumps(wider)})
    with pytest.raises(CheckpointError, match="lies.safetensors: weights do not match the "
                                              "architecture .*wrong shape"):
        load_model(tmp_path / "lies.safetensors")
    config = checkpoint.parse_model_config(wider)
    with pytest.raises(CheckpointError, match="spec.pth: weights do not match"):
        build_converted(Converted(config, weights, (), source="spec.pth"))
    assert built == []
    load_model(path)  # weights that fit: built once, for real
    assert len(built) == 1


def test_metadata_nested_too_deeply_is_a_one_line_refusal(tmp_path):
    """json.loads raises RecursionError (not a JSONDecodeError) for 200 000 nested brackets:
    the checkpoint's config or meta ended `iste info` / `--model` in a traceback."""
    from safetensors import safe_open

    from iste.models.checkpoint import checkpoint_written_by

    path = save_model(build_model(tiny_config("liif")), tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta, weights = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    deep = "[" * 200_000 + "]" * 200_000
    for key, words in (("config", "invalid model config: JSON nested too deeply"),
                       ("meta", r"invalid metadata \(JSON nested too deeply\)")):
        save_file(weights, str(tmp_path / f"{key}.safetensors"), metadata={**meta, key: deep})
        with pytest.raises(CheckpointError, match=f"{key}.safetensors: {words}"):
            load_model(tmp_path / f"{key}.safetensors")
    save_file(weights, str(tmp_path / "by.safetensors"), metadata={**meta, "written_by": deep})
    assert checkpoint_written_by(tmp_path / "by.safetensors") == {}


def _shipped_scaled(tmp_path, factor: float, name: str):
    """The shipped weights with every floating-point tensor times ``factor``, its metadata
    kept, saved as ``name`` in ``tmp_path``."""
    from safetensors.torch import load_file

    from iste.default_model import default_weights_path

    shipped = default_weights_path()
    with safe_open(str(shipped), framework="pt") as f:
        meta = f.metadata()
    path = tmp_path / name
    save_file({k: v * factor if v.is_floating_point() else v
               for k, v in load_file(shipped).items()}, path, metadata=meta)
    return path


def _upscale_refused(tmp_path, capsys, model) -> str:
    """``iste upscale`` of a gray image with ``model``: exit 2, nothing written; its one
    error line."""
    import numpy as np

    from iste.cli.main import main
    from iste.data.imagewrite import write_image

    write_image(tmp_path / "in.png", np.full((24, 24, 3), 128, np.uint8))
    assert main(["upscale", str(tmp_path / "in.png"), "-s", "2", "-o",
                 str(tmp_path / "out.png"), "--model", str(model)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and not (tmp_path / "out.png").exists()
    return err[0]


@pytest.mark.parametrize("factor", [1e30, 1e3, 10.0])
def test_finite_weights_scaled_absurdly_are_refused_by_the_output_they_make(tmp_path, capsys,
                                                                          factor):
    # every tensor of the shipped weights x10 (or x1e3, x1e30) loaded: iste upscale wrote a
    # black or two-tone image, exit code 0
    scaled = _shipped_scaled(tmp_path, factor, "scaled.safetensors")
    with pytest.raises(CheckpointError, match="the weights are damaged or scaled wrongly"):
        load_model(scaled)
    err = _upscale_refused(tmp_path, capsys, scaled)
    assert "predicts" in err and "for a smooth test image" in err


@pytest.mark.parametrize("factor", [1e-30, 1e-38])
def test_weights_that_are_vanishingly_small_are_refused_by_the_output_they_make(
        tmp_path, capsys, factor):
    # every tensor x1e-30: iste upscale wrote an image of one grey, exit code 0
    flat = _shipped_scaled(tmp_path, factor, "flat.safetensors")
    with pytest.raises(CheckpointError, match="predicts one value .* for every pixel"):
        load_model(flat)
    err = _upscale_refused(tmp_path, capsys, flat)
    assert "flat.safetensors" in err and "vanishingly small" in err


def test_every_architecture_at_its_random_initialisation_passes_the_output_check(tmp_path):
    # no false alarm: the check refuses what no model computes, not what a model has not learnt
    from iste.models.probe import PROBE_FLAT, PROBE_LIMIT, probe_output
    from model_zoo import ALL_COMBINATIONS, TINY_FIXED, tiny_fixed

    configs = [tiny_config(h, e) for h, e in ALL_COMBINATIONS]
    configs += [tiny_fixed(arch, 2) for arch in TINY_FIXED]
    for seed, config in enumerate(configs):
        torch.manual_seed(seed)
        path = save_model(build_model(config).eval(), tmp_path / f"m{seed}.safetensors")
        out = probe_output(load_model(path))
        reach = out.abs().max().item()
        assert reach < PROBE_LIMIT / 10, (config, reach)  # a wide margin, not just a pass
        spread = (out.max() - out.min()).item()
        assert spread > PROBE_FLAT * 1e3, (config, spread)


def test_a_tensor_name_with_line_breaks_is_one_line_in_the_refusal(tmp_path, capsys):
    # a hostile file's tensor named "a\u2028b": the error named it raw, and the line
    # separator split the message in two for anything that reads stderr by its lines
    from iste.cli.main import main

    model = build_model(tiny_config("liif"))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    first = sorted(state)[0]
    state["odd\u2028name\u2029\x1b[31m"] = state.pop(first)
    path = tmp_path / "m.safetensors"
    meta = {"format": "iste", "version": "1", "config": json.dumps(tiny_config("liif"))}
    save_file(state, str(path), metadata=meta)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "\x1b" not in err, err
    assert "odd\\u2028name\\u2029\\x1b[31m" in err


def test_a_config_with_a_size_beyond_torch_is_a_one_line_refusal(tmp_path, capsys):
    # an ITSRN checkpoint whose config claims a width of 1e40: a TypeError traceback from
    # inside nn.Linear ("Overflow when unpacking long long"), before the weights were seen
    from iste.cli.main import main

    state = {k: v.contiguous() for k, v in build_model(tiny_config("itsrn")).state_dict().items()}
    path = tmp_path / "m.safetensors"
    meta = {"format": "iste", "version": "1",
            "config": json.dumps(tiny_config("itsrn", merge_hidden=10**40))}
    save_file(state, str(path), metadata=meta)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "itsrn.merge_hidden must be in 1..4096" in err[0], err


def test_weights_that_are_all_zero_are_refused_where_the_output_looks_like_an_image(tmp_path):
    # LTE adds a bilinear upscale of its input: with every weight 0 (a file's data lost to
    # zeros) it upscaled bilinearly, exit code 0, and the output probe passed it
    model = build_model(tiny_config("lte"))
    path = tmp_path / "zero.safetensors"
    save_model(model, path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file({k: torch.zeros_like(v) for k, v in model.state_dict().items()}, str(path),
              metadata=meta)
    with pytest.raises(CheckpointError, match="zero.safetensors: every weight is 0"):
        load_model(path)
