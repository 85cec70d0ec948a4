"""Training for real scans: degradation and downsample config, downsampled sources, init weights."""

import numpy as np
import pytest
import torch
from PIL import Image

from iste.digest import sha256_file
from iste.models.checkpoint import CheckpointError, load_model
from iste.train.config import parse_train_config
from iste.train.dataset import CropDataset
from iste.train.loop import train
from iste.train.sources import ArraySource, DownsampledSource, open_source
from iste.train.validate import validate
from iste.typed import ConfigError
from train_helpers import synthetic_folder, tiny_train_dict


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return synthetic_folder(tmp_path_factory.mktemp("hr"))


def _with_data(folder, **data):
    d = tiny_train_dict(folder)
    d["data"] = {**d["data"], **data}
    return d


@pytest.mark.parametrize("data,message", [
    ({"degradation": "blur"}, "degradation"),
    ({"val_degradations": ["mixed"]}, "random"),
    ({"downsamples": [0.5]}, "downsamples"),
    ({"downsamples": []}, "downsamples"),
])
def test_bad_degradation_and_downsample_configs_are_refused(folder, data, message):
    with pytest.raises(ConfigError, match=message):
        parse_train_config(_with_data(folder, **data))


def test_mixed_samples_are_a_pure_function_of_the_index(folder):
    cfg = parse_train_config(_with_data(folder, degradation="mixed", augment=False))
    paper = parse_train_config(_with_data(folder, augment=False))
    ds = CropDataset([open_source(str(folder))], cfg.data, seed=0, length=40)
    again = CropDataset([open_source(str(folder))], cfg.data, seed=0, length=40)
    ref = CropDataset([open_source(str(folder))], paper.data, seed=0, length=40)
    assert all(torch.equal(ds[i][k], again[i][k]) for i in (17, 3) for k in ds[i])
    # Same crops as the paper protocol; the LR differs for the compressed half only.
    differs = [not torch.equal(ds[i]["lr"], ref[i]["lr"]) for i in range(20)]
    assert 3 <= sum(differs) <= 17


def test_downsampled_source_box_filters_a_larger_crop():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)
    inner = ArraySource("a", [image])
    half = DownsampledSource(inner, 2.0)
    assert half.max_side() == 45
    crop = half.crop(np.random.default_rng(5), 20, 0.0)
    big = inner.crop(np.random.default_rng(5), 40, 0.0)
    expect = big.astype(float).reshape(20, 2, 20, 2, 3).mean((1, 3))
    assert crop.shape == (20, 20, 3) and np.abs(crop - expect).max() <= 1  # PIL fixed point


def test_open_source_uses_a_slide_level_with_that_downsample(tmp_path):
    import tifffile

    rng = np.random.default_rng(1)
    level0 = np.clip(rng.normal(150, 40, (512, 512, 3)), 0, 255).astype(np.uint8)
    level0[..., 1] //= 2  # saturated enough to count as tissue
    level1 = np.asarray(Image.fromarray(level0).resize((256, 256), Image.Resampling.BOX))
    path = tmp_path / "slide.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(level0, tile=(128, 128), photometric="rgb")
        tif.write(level1, tile=(128, 128), photometric="rgb", subfiletype=1)
    own = open_source(str(path), downsample=2.0)
    assert getattr(own, "level", None) == 1 and own.max_side() == 256
    synthetic = open_source(str(path), downsample=4.0)
    assert isinstance(synthetic, DownsampledSource) and synthetic.max_side() == 128


def test_a_run_on_a_slide_closes_the_slide_it_read(tmp_path):
    """The training and validation sources' slide handles, opened at their first crops, were
    left to the garbage collector: 'iste: WARNING: unclosed file <...slide.tif>' at exit."""
    import gc
    import warnings

    import tifffile

    rng = np.random.default_rng(1)
    rgb = np.clip(rng.normal(150, 40, (256, 256, 3)), 0, 255).astype(np.uint8)
    rgb[..., 1] //= 2  # saturated enough to count as tissue
    path = tmp_path / "slide.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(128, 128), photometric="rgb")
    cfg = parse_train_config(_with_data(path, val=[str(path)], val_tile=48, val_tiles=1,
                                        val_scales=[2.0]) | {"run": {
        "steps": 2, "batch_size": 1, "checkpoint_every": 2, "val_every": 2}})
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert train(cfg, tmp_path / "run", progress=False)["step"] == 2
        gc.collect()
    assert [str(w.message) for w in said if w.category is ResourceWarning] == []


def test_validation_reports_each_degradation(folder):
    from iste.models.registry import build_model

    cfg = parse_train_config(tiny_train_dict(folder))
    model = build_model(cfg.model)
    tile = np.asarray(Image.open(sorted(folder.glob("*.png"))[0]))[:96, :96]
    values = validate(model, [tile], (2.0,), ("paper", "jpeg50"))
    assert set(values) == {"psnr_x2", "bicubic_x2", "psnr_x2_jpeg50", "bicubic_x2_jpeg50"}
    assert values["bicubic_x2_jpeg50"] != values["bicubic_x2"]


def test_init_starts_from_given_weights_and_records_them(folder, tmp_path):
    base = parse_train_config(tiny_train_dict(folder, steps=2, checkpoint_every=2))
    train(base, tmp_path / "a", progress=False)
    weights = tmp_path / "a" / "model.safetensors"
    tuned = parse_train_config(tiny_train_dict(folder, steps=3, checkpoint_every=1,
                                               init=str(weights), seed=1))
    train(tuned, tmp_path / "b", stop_after=1, progress=False)
    first = load_model(tmp_path / "b" / "model.safetensors")
    start = load_model(weights)
    # One Adam step of lr 1e-3 moves each weight by at most about lr: close to the init.
    for (name, a), b in zip(first.state_dict().items(), start.state_dict().values()):
        assert (a - b).abs().max() < 5e-3, name
    assert first.checkpoint_meta["init_sha256"] == sha256_file(weights)
    train(tuned, tmp_path / "b", resume=True, progress=False)  # resume keeps the record
    assert load_model(tmp_path / "b" / "model.safetensors").checkpoint_meta["init_sha256"] == \
        sha256_file(weights)


def test_a_run_from_init_weights_records_their_training_data_too(folder, tmp_path):
    """A model fine-tuned from a checkpoint (run.init) learnt from that checkpoint's data
    too, but its train_sources named its own data.train alone: iste eval on the first
    training images said nothing. The init's train_sources are recorded after its own."""
    from iste.eval.methods import load_methods

    train(parse_train_config(tiny_train_dict(folder, steps=1)), tmp_path / "a", progress=False)
    other = synthetic_folder(tmp_path / "other", n=2, size=200)
    tuned = parse_train_config(tiny_train_dict(
        other, steps=2, checkpoint_every=1, init=str(tmp_path / "a" / "model.safetensors")))
    train(tuned, tmp_path / "b", stop_after=1, progress=False)
    train(tuned, tmp_path / "b", resume=True, progress=False)  # resume keeps the record
    weights = tmp_path / "b" / "model.safetensors"
    places = [str(other.resolve()), str(folder.resolve())]
    assert load_model(weights).checkpoint_meta["train_sources"] == places
    (method,) = load_methods([str(weights)])
    assert method.trained_on((str(folder.resolve()),)) == (
        f"test data {folder.resolve()} is its training source {folder.resolve()}")


def test_init_with_another_architecture_is_refused(folder, tmp_path):
    base = parse_train_config(tiny_train_dict(folder, steps=1, checkpoint_every=1))
    train(base, tmp_path / "a", progress=False)
    d = tiny_train_dict(folder, init=str(tmp_path / "a" / "model.safetensors"))
    d["model"]["head_args"]["hidden_dim"] = 24
    with pytest.raises(CheckpointError, match="architecture differs from the config's model "
                                              r"\(both ISTE \+ edsr-baseline; "
                                              r"head_args.hidden_dim differs\)"):
        train(parse_train_config(d), tmp_path / "b", progress=False)
    assert not (tmp_path / "b").exists()


def test_init_weights_of_another_method_or_stored_as_float8_are_refused(folder, tmp_path):
    """LIIF weights given to an ISTE run were "its architecture differs" (how?); float8
    weights started the run from 2-3 bits of each weight, without a word."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from iste.models.checkpoint import save_model
    from iste.models.registry import build_model
    from model_zoo import tiny_config

    liif = save_model(build_model(tiny_config("liif")), tmp_path / "liif.safetensors")
    with pytest.raises(CheckpointError, match=r"\(a LIIF \+ edsr-baseline, the config's ISTE "
                                              r"\+ edsr-baseline\)"):
        train(parse_train_config(tiny_train_dict(folder, init=str(liif))), tmp_path / "a",
              progress=False)
    own = save_model(build_model(tiny_train_dict(folder)["model"]), tmp_path / "own.safetensors")
    with safe_open(str(own), framework="pt") as f:
        meta, weights = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    coarse = tmp_path / "f8.safetensors"
    save_file({k: v.to(torch.float8_e4m3fn) for k, v in weights.items()}, str(coarse),
              metadata=meta)
    with pytest.raises(CheckpointError, match="f8.safetensors: weights stored as float8_e4m3fn"):
        train(parse_train_config(tiny_train_dict(folder, init=str(coarse))), tmp_path / "b",
              progress=False)


def test_a_run_init_that_cannot_be_loaded_leaves_no_run_folder(folder, tmp_path):
    """A missing or damaged run.init left a run folder holding only .lock (the next call a
    resume of nothing); now the folder the run made goes again, one made before stays."""
    (tmp_path / "bad.safetensors").write_bytes(b"garbage" * 10)
    for init in ("missing.safetensors", "bad.safetensors"):
        cfg = parse_train_config(tiny_train_dict(folder, init=str(tmp_path / init)))
        with pytest.raises(CheckpointError):
            train(cfg, tmp_path / "runs" / "r", progress=False)
        assert not (tmp_path / "runs").exists()
    (tmp_path / "made").mkdir()
    with pytest.raises(CheckpointError):
        train(cfg, tmp_path / "made", progress=False)
    assert (tmp_path / "made").is_dir()


def test_a_run_init_of_absurdly_scaled_weights_is_refused_before_training(folder, tmp_path):
    # a checkpoint with every weight x1e3 loaded as run.init and trained from garbage
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    train(parse_train_config(tiny_train_dict(folder, steps=2, checkpoint_every=2)),
          tmp_path / "first", progress=False)
    good = tmp_path / "first" / "model.safetensors"
    with safe_open(str(good), framework="pt") as f:
        meta = f.metadata()
    scaled = tmp_path / "scaled.safetensors"
    save_file({k: v * 1e3 if v.is_floating_point() else v for k, v in load_file(good).items()},
              str(scaled), metadata=meta)
    cfg = parse_train_config(tiny_train_dict(folder, steps=2, init=str(scaled)))
    with pytest.raises(CheckpointError, match=r"run\.init .*scaled\.safetensors: the model it "
                                              r"makes predicts .* scaled wrongly"):
        train(cfg, tmp_path / "second", progress=False)
    assert not (tmp_path / "second").exists()
    cfg = parse_train_config(tiny_train_dict(folder, steps=2, init=str(good)))
    train(cfg, tmp_path / "third", progress=False)  # the file it came from: taken


def test_a_run_saved_before_new_config_keys_existed_resumes(folder, tmp_path):
    cfg = parse_train_config(tiny_train_dict(folder, steps=4, checkpoint_every=2))
    train(cfg, tmp_path / "r", stop_after=2, progress=False)
    path = tmp_path / "r" / "train_state.pt"
    state = torch.load(path, weights_only=True)
    for section, key in (("data", "degradation"), ("data", "downsamples"), ("run", "init")):
        del state["config"][section][key]  # as written before these keys existed
    torch.save(state, path)
    assert train(cfg, tmp_path / "r", resume=True, progress=False)["step"] == 4
    other = parse_train_config(_with_data(folder, degradation="mixed"))
    with pytest.raises(CheckpointError, match="different config"):
        train(other, tmp_path / "r", resume=True, progress=False)


def _tiny_lit(folder, stages: int, **run) -> dict:
    d = tiny_train_dict(folder, **run)
    d["model"] = {"head": "lit", "encoder": "edsr-baseline",
                  "encoder_args": {"n_resblocks": 1, "n_feats": 8},
                  "head_args": {"dim": 8, "heads": 2, "radius": 1, "hidden": [8], "pos_dims": 8,
                                "stages": stages}}
    d["data"].update(patch=24, scale_max=8.0)  # samples above x4 run the second stage
    return d


def test_a_cascade_starts_from_its_earlier_stages_weights(folder, tmp_path):
    # CLIT's cumulative training: the 2-stage model starts from the trained 1-stage (LIT)
    # weights; the stage it adds starts from its random initialisation.
    train(parse_train_config(_tiny_lit(folder, 1, steps=1, checkpoint_every=1)), tmp_path / "a",
          progress=False)
    weights = tmp_path / "a" / "model.safetensors"
    grown = parse_train_config(_tiny_lit(folder, 2, steps=2, checkpoint_every=1,
                                         init=str(weights)))
    train(grown, tmp_path / "b", stop_after=1, progress=False)
    start = load_model(weights).state_dict()
    after = load_model(tmp_path / "b" / "model.safetensors")
    assert after.config.stages == 2 and len(after.cascade) == 1
    for name, value in after.state_dict().items():
        if name.startswith("cascade."):
            assert name not in start
        else:  # one Adam step of lr 1e-3 from the earlier stage's weights
            assert (value - start[name]).abs().max() < 5e-3, name
    fewer = _tiny_lit(folder, 2, init=str(tmp_path / "b" / "model.safetensors"))
    fewer["model"]["head_args"]["stages"] = 1  # a cascade never shrinks into its first stages
    with pytest.raises(CheckpointError, match="architecture"):
        train(parse_train_config(fewer), tmp_path / "c", progress=False)


def test_validation_scores_a_wide_model_in_fp32_as_eval_does(folder, monkeypatch):
    """Where bf16 is fast (a GPU, an AMX CPU) "auto" runs a wide model in bf16: validation
    used it, so the PSNR that picked best.safetensors was not the one iste eval reports."""
    from iste import runtime
    from iste.data.degradations import degradation_pair, parse_degradation
    from iste.data.metrics import psnr
    from iste.engine.image import upscale_to
    from iste.engine.render import NARROW_WIDTH, QueryOptions
    from iste.models.registry import build_model

    monkeypatch.setattr(runtime, "bf16_is_fast", lambda device: True)
    d = tiny_train_dict(folder)
    d["model"]["head_args"]["decoder_hidden"] = [NARROW_WIDTH]  # wide: "auto" means bf16
    torch.manual_seed(0)
    model = build_model(parse_train_config(d).model).eval()
    tile = np.asarray(Image.open(sorted(folder.glob("*.png"))[0]))[:64, :64]
    lr, hr = degradation_pair(tile, 2.0, parse_degradation("paper", allow_random=False))
    scores = {p: psnr(upscale_to(lr, hr.shape[:2], model, options=QueryOptions(precision=p),
                                 dtype="float32"), hr, scale=2.0) for p in ("fp32", "bf16")}
    assert scores["fp32"] != scores["bf16"]  # else the test shows nothing
    assert validate(model, [tile], (2.0,))["psnr_x2"] == scores["fp32"]


def test_a_missing_source_says_a_config_does_not_read_tilde(tmp_path, monkeypatch):
    # '~/data' in a YAML config is no shell's: it named a folder '~' under the current one,
    # said as 'training source ~/data does not exist' while ~/data was there
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path / "data")
    with pytest.raises(ValueError, match=r"source ~/data does not exist \('~' is not read as "
                                         "the home folder in a config"):
        open_source("~/data")
    (tmp_path / "gone").symlink_to(tmp_path / "unmounted")
    with pytest.raises(ValueError, match="gone does not exist .it is a link to"):
        open_source(str(tmp_path / "gone"), role="validation")
