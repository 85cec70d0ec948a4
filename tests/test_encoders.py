"""Tests of the image encoders (iste.models.encoders): shapes, gradients, configs, checkpoints.

Parity with the published code: the published modules (LIIF's edsr.py/rdn.py, ISTE's swinir.py)
were run on the weights of ``fill_deterministic`` and the input of ``fingerprint_input``; their
outputs' fingerprints are pinned in ``PUBLISHED_FINGERPRINTS``. At full size, outputs were
identical (max |diff| = 0) with published weights loaded through ``official_encoder_state_dict``.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from iste.models.encoders import (
    ENCODERS,
    build_encoder,
    encoder_args_from_official,
    official_encoder_state_dict,
)
from iste.models.encoders.swinir import (
    pad_to_multiple,
    relative_position_index,
    Windows,
    shift_window_mask,
    window_order,
)

TINY: dict[str, tuple[str, dict]] = {
    "edsr": ("edsr-baseline", {"n_resblocks": 2, "n_feats": 8, "res_scale": 0.5}),
    "rdn": ("rdn", {"n_feats": 8, "kernel_size": 5, "variant": "A"}),
    "swinir": ("swinir", {"embed_dim": 12, "depths": [2, 2], "num_heads": [2, 3],
                          "window_size": 4, "resi_connection": "1conv", "drop_path_rate": 0.0}),
    "swinir-3conv": ("swinir", {"embed_dim": 12, "depths": [1, 2], "num_heads": [3, 2],
                                "window_size": 4, "resi_connection": "3conv",
                                "drop_path_rate": 0.0}),
}

# fingerprint(published_module(fingerprint_input())) with fill_deterministic weights
PUBLISHED_FINGERPRINTS: dict[str, list[float]] = {
    "edsr": [-0.116927, 0.769478, -0.716921, -0.074871, 0.158989, 0.3435],
    "rdn": [-0.063488, 2.23373, -3.055361, 1.482002, 0.489025, 0.528982],
    "swinir": [0.450577, 0.669322, 0.980697, 0.634848, -0.012291, 0.64766],
    "swinir-3conv": [0.286881, 0.427105, -0.002687, -0.005154, 0.146518, 0.346979],
}


def fill_deterministic(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter seeded, non-trivial values (norm weights near 1, small biases)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=g)
            if p.ndim > 1:
                p.copy_(noise / p[0].numel() ** 0.5)
            elif name.endswith("weight"):  # LayerNorm scale
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)


def fingerprint_input() -> torch.Tensor:
    """(2, 3, 10, 13) in [-1, 1]: odd size, not a multiple of the tiny SwinIR window (4)."""
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 10, 13, generator=g) * 2 - 1


def fingerprint(y: torch.Tensor) -> list[float]:
    """A few statistics and entries of a (B, C, h, w) feature map."""
    c, h, w = y.shape[1:]
    picks = [y.mean(), y.std(), y[0, 0, 0, 0], y[1, -1, -1, -1], y[0, c // 2, h // 2, w // 2],
             y[1, 1, -1, 0]]
    return [float(v) for v in picks]


def tiny(case: str, **overrides) -> torch.nn.Module:
    name, args = TINY[case]
    torch.manual_seed(0)
    return build_encoder(name, {**args, **overrides})


# --- behaviour of every registered encoder ---------------------------------------------------


@pytest.mark.parametrize("case", TINY)
@pytest.mark.parametrize("size", [(10, 13), (5, 7), (1, 1), (16, 8)])
def test_output_shape_and_finite(case, size):
    enc = tiny(case).eval()
    x = torch.rand(2, 3, *size) * 2 - 1
    with torch.no_grad():
        y = enc(x)
    assert y.shape == (2, enc.out_dim, *size)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("case", TINY)
def test_gradients_reach_every_parameter(case):
    enc = tiny(case).train()
    x = (torch.rand(2, 3, 10, 13) * 2 - 1).requires_grad_()
    enc(x).square().mean().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("case", TINY)
def test_batch_elements_are_independent(case):
    enc = tiny(case).eval()
    x = torch.rand(3, 3, 9, 11) * 2 - 1
    with torch.no_grad():
        whole = enc(x)
        single = torch.cat([enc(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(whole, single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", TINY)
def test_forward_creates_no_tensor_off_the_input_device(case):
    # On the meta device any tensor created on the CPU inside forward would make an op fail.
    name, args = TINY[case]
    with torch.device("meta"):
        enc = build_encoder(name, args)
    y = enc(torch.empty(2, 3, 10, 13, device="meta"))
    assert y.device.type == "meta" and y.shape == (2, enc.out_dim, 10, 13)


@pytest.mark.parametrize("case", TINY)
def test_matches_published_fingerprint(case):
    enc = tiny(case).eval()
    fill_deterministic(enc)
    with torch.no_grad():
        y = enc(fingerprint_input())
    assert fingerprint(y) == pytest.approx(PUBLISHED_FINGERPRINTS[case], rel=1e-4, abs=1e-5)


def test_full_size_parameter_counts_equal_the_published_encoders():
    # published: EDSR-baseline 1,220,440 incl. 24 frozen MeanShift values; RDN-B; ISTE's SwinIR
    expected = {"edsr-baseline": 1_220_416, "rdn": 21_973_952, "swinir": 11_603_044}
    for name, count in expected.items():
        with torch.device("meta"):
            enc = build_encoder(name, {})
        assert sum(p.numel() for p in enc.parameters()) == count, name
        assert enc.out_dim == 64


# --- checkpoint compatibility ----------------------------------------------------------------


def test_state_dict_names_follow_the_published_code():
    edsr = tiny("edsr")
    expected = {f"{m}.{t}" for m in ["head.0", "body.0.body.0", "body.0.body.2", "body.1.body.0",
                                     "body.1.body.2", "body.2"] for t in ("weight", "bias")}
    assert set(edsr.state_dict()) == expected

    rdn_keys = set(tiny("rdn").state_dict())
    for key in ["SFENet1.weight", "SFENet2.bias", "RDBs.19.convs.5.conv.0.weight",
                "RDBs.0.LFF.weight", "GFF.0.weight", "GFF.1.bias"]:
        assert key in rdn_keys
    assert tiny("rdn").RDBs[0].convs[0].conv[0].kernel_size == (3, 3)  # RDNkSize not used there

    swin_keys = set(tiny("swinir").state_dict())
    for key in ["conv_first.weight", "patch_embed.norm.weight",
                "layers.1.residual_group.blocks.1.attn.relative_position_bias_table",
                "layers.0.residual_group.blocks.0.attn.qkv.weight",
                "layers.0.residual_group.blocks.1.mlp.fc2.bias", "layers.1.conv.weight",
                "norm.bias", "conv_after_body.weight", "conv_before_upsample.0.weight"]:
        assert key in swin_keys
    assert not any("relative_position_index" in k or "attn_mask" in k for k in swin_keys)
    assert "layers.0.conv.2.weight" in tiny("swinir-3conv").state_dict()


def test_official_state_dict_drops_exactly_the_unused_published_entries():
    swin = tiny("swinir")
    published = dict(swin.state_dict())
    extras = {"layers.0.residual_group.blocks.0.attn.relative_position_index": torch.zeros(1),
              "layers.1.residual_group.blocks.1.attn_mask": torch.zeros(1)}
    converted = official_encoder_state_dict({**published, **extras})
    assert set(converted) == set(published)
    swin.load_state_dict(converted, strict=True)

    edsr = tiny("edsr")
    means = {f"{m}_mean.{t}": torch.zeros(1) for m in ("sub", "add") for t in ("weight", "bias")}
    converted = official_encoder_state_dict({**edsr.state_dict(), **means})
    assert set(converted) == set(edsr.state_dict())
    # a look-alike key is not dropped
    assert "body.sub_mean.weight" in official_encoder_state_dict({"body.sub_mean.weight": 0})


def test_encoder_args_from_official():
    assert encoder_args_from_official(
        "edsr-baseline", {"no_upsampling": True, "scale": 4, "rgb_range": 1}) == (
        "edsr-baseline", {"n_resblocks": 16, "n_feats": 64, "res_scale": 1.0})
    assert encoder_args_from_official("edsr", {"no_upsampling": True}) == (
        "edsr-baseline", {"n_resblocks": 32, "n_feats": 256, "res_scale": 0.1})
    assert encoder_args_from_official(
        "rdn", {"no_upsampling": True, "G0": 32, "RDNkSize": 5, "RDNconfig": "A"}) == (
        "rdn", {"n_feats": 32, "kernel_size": 5, "variant": "A"})
    name, args = encoder_args_from_official("swinir", {"no_upsampling": True})
    assert name == "swinir" and args["depths"] == [6] * 6 and args["crop_to_input"] is True
    with torch.device("meta"):
        build_encoder(name, args)  # the explicit args round-trip


@pytest.mark.parametrize("name, args", [
    ("edsr-baseline", {}),  # published default no_upsampling=False is a full SR network
    ("rdn", {"no_upsampling": False}),
    ("rdn", {"no_upsampling": True, "G_0": 64}),
    ("rdn", {"no_upsampling": True, "RDNconfig": "C"}),
    ("rcan", {"no_upsampling": True}),
])
def test_encoder_args_from_official_rejects(name, args):
    with pytest.raises(ValueError):
        encoder_args_from_official(name, args)


# --- configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, args, message", [
    ("edsr", {}, "unknown encoder"),
    ("edsr-baseline", {"n_feat": 64}, "unknown argument"),
    ("edsr-baseline", {"n_feats": 64.0}, "must be an int"),
    ("edsr-baseline", {"n_resblocks": True}, "must be an int"),
    ("edsr-baseline", {"res_scale": "1"}, "must be a number"),
    ("rdn", {"variant": "C"}, "must be one of"),
    ("rdn", {"D": 16}, "unknown argument"),
    ("rdn", {"n_blocks": 0}, ">= 1"),
    ("rdn", {"growth": 8.0}, "must be an int"),
    ("rdn", {"kernel_size": 4}, "odd"),
    ("swinir", {"depths": [2], "num_heads": [2, 2]}, "one entry per RSTB"),
    ("swinir", {"embed_dim": 10, "depths": [2], "num_heads": [3]}, "divide"),
    ("swinir", {"depths": "66"}, "list of ints"),
    ("swinir", {"depths": [6, 0]}, ">= 1"),
    ("swinir", {"crop_to_input": 1}, "bool"),
    ("swinir", {"shift_mask": "-100"}, "shift_mask"),
    ("swinir", {"resi_connection": "2conv"}, "must be one of"),
    ("swinir", {"drop_path_rate": 1.0}, "drop_path_rate"),
])
def test_build_encoder_rejects_bad_args(name, args, message):
    with pytest.raises(ValueError, match=message):
        build_encoder(name, args)


def test_configs_normalise_yaml_values():
    config_cls = ENCODERS["swinir"][0]
    config = config_cls(depths=[1, 2], num_heads=[2, 2], embed_dim=8, mlp_ratio=2)
    assert config.depths == (1, 2) and config.mlp_ratio == 2.0
    assert isinstance(config.mlp_ratio, float)
    assert ENCODERS["edsr-baseline"][0](res_scale=1).res_scale == 1.0
    hash(config)  # frozen, hashable


# --- SwinIR details --------------------------------------------------------------------------


def test_swinir_uncropped_output_is_the_padded_published_map():
    enc = tiny("swinir").eval()
    x = fingerprint_input()
    uncropped = tiny("swinir", crop_to_input=False).eval()
    uncropped.load_state_dict(enc.state_dict())
    with torch.no_grad():
        full, cropped = uncropped(x), enc(x)
    assert full.shape[-2:] == (12, 16)
    torch.testing.assert_close(full[..., :10, :13], cropped, rtol=0, atol=0)


@pytest.mark.parametrize("h, w", [(10, 13), (8, 8), (5, 7), (3, 2), (1, 1), (1, 9)])
def test_pad_to_multiple(h, w):
    x = torch.randn(1, 2, h, w)
    y = pad_to_multiple(x, 8)
    assert y.shape[-2:] == (-(-h // 8) * 8, -(-w // 8) * 8)
    assert torch.equal(y[..., :h, :w], x)
    ph, pw = y.shape[-2] - h, y.shape[-1] - w
    if ph < h and pw < w:  # where the published F.pad(mode='reflect') is defined: identical
        assert torch.equal(y, F.pad(x, (0, pw, 0, ph), mode="reflect"))


def test_relative_position_index_brute_force():
    ws = 3
    index = relative_position_index(ws)
    tokens = list(itertools.product(range(ws), range(ws)))
    for (i, (r1, c1)), (j, (r2, c2)) in itertools.product(enumerate(tokens), repeat=2):
        assert index[i, j] == (r1 - r2 + ws - 1) * (2 * ws - 1) + (c1 - c2 + ws - 1)


@pytest.mark.parametrize("kind, kept_apart", [("exclude", float("-inf")), ("published", -100.0)])
def test_shift_window_mask_allows_exactly_pairs_adjacent_before_the_roll(kind, kept_apart):
    h, w, ws, shift = 8, 12, 4, 2
    mask = shift_window_mask((h, w), ws, shift, device=torch.device("cpu"), dtype=torch.float32,
                             kind=kind)
    assert mask.shape == ((h // ws) * (w // ws), ws * ws, ws * ws)
    # pixel (r, c) of the rolled map came from ((r + shift) % h, (c + shift) % w); two tokens of a
    # window may attend to each other iff neither pair of source coordinates wraps around
    for win, i, j in itertools.product(range(mask.shape[0]), range(ws * ws), range(ws * ws)):
        wr, wc = divmod(win, w // ws)
        ri, ci = wr * ws + i // ws, wc * ws + i % ws
        rj, cj = wr * ws + j // ws, wc * ws + j % ws
        wraps = lambda a, n: a + shift >= n  # noqa: E731
        same = wraps(ri, h) == wraps(rj, h) and wraps(ci, w) == wraps(cj, w)
        assert mask[win, i, j] == (0.0 if same else kept_apart)


@pytest.mark.parametrize("shift", [0, 2])
def test_window_order_is_the_cyclic_shift_then_the_window_partition(shift):
    h, w, ws, c = 8, 12, 4, 3
    x = torch.randn(2, h, w, c)
    rolled = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    expected = rolled.view(2, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    order = window_order((h, w), ws, shift, device=torch.device("cpu"))
    assert torch.equal(x.flatten(1, 2)[:, order], expected.reshape(2, h * w, c))


def test_windows_split_and_merge_are_inverse_in_values_and_gradients():
    h, w, ws = 8, 12, 4
    windows = Windows.build((h, w), ws, {0, 2}, device=torch.device("cpu"),
                            dtype=torch.float32, kind="exclude")
    tokens = torch.randn(2, h * w, 5, requires_grad=True)
    weight = torch.randn(2, h * w // ws**2, ws * ws, 5)
    split = windows.split(tokens, 2, ws)
    assert split.shape == (2, h * w // ws**2, ws * ws, 5)
    assert torch.equal(windows.merge(split, 2), tokens)
    (split * weight).sum().backward()
    # d/dtokens of sum(split * weight) is the weight put back in map order
    assert torch.equal(tokens.grad, windows.merge(weight, 2))


def _attention_weights(encoder: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The softmax outputs of every attention layer of ``encoder(x)``."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Capture(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.weights = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten._softmax.default:
                self.weights.append(out)
            return out

    with torch.no_grad(), Capture() as capture:
        encoder(x)
    return capture.weights


def test_swinir_shift_mask_published_switch_gives_the_same_features_with_denormal_weights():
    # 'published' adds -100 to the logits of pairs kept apart: their weights, ~e^-100, are
    # denormal floats (what slows the CPU's products); 'exclude' gives them exact zeros and
    # the same features
    name, args = TINY["swinir"]
    x = fingerprint_input()
    encoders = {}
    for kind in ("exclude", "published"):
        encoders[kind] = build_encoder(name, {**args, "shift_mask": kind}).eval()
        fill_deterministic(encoders[kind])
    tiny_normal = torch.finfo(torch.float32).tiny
    denormal = {kind: sum(int(((w > 0) & (w < tiny_normal)).sum())
                          for w in _attention_weights(enc, x))
                for kind, enc in encoders.items()}
    assert denormal["published"] > 0 and denormal["exclude"] == 0
    with torch.no_grad():
        torch.testing.assert_close(encoders["exclude"](x), encoders["published"](x),
                                   rtol=0, atol=1e-6)


def test_swinir_shift_mask_gradients_equal_the_published_masks():
    name, args = TINY["swinir"]
    grads = {}
    for kind in ("exclude", "published"):
        enc = build_encoder(name, {**args, "shift_mask": kind}).train()
        fill_deterministic(enc)
        enc(fingerprint_input()).square().sum().backward()
        grads[kind] = {n: p.grad for n, p in enc.named_parameters()}
    for n, g in grads["exclude"].items():
        torch.testing.assert_close(g, grads["published"][n], rtol=1e-5, atol=1e-6, msg=n)


def test_swinir_drop_path_is_random_in_training_only():
    enc = tiny("swinir", drop_path_rate=0.5)
    x = fingerprint_input()
    with torch.no_grad():
        enc.eval()
        assert torch.equal(enc(x), enc(x))
        enc.train()
        torch.manual_seed(0)
        a = enc(x)
        torch.manual_seed(1)
        assert not torch.equal(a, enc(x))


def test_swinir_window_attention_and_its_gradients_are_the_published_formula():
    """The heads are split by one function (each operand written once in its product's
    layout); values and all gradients equal the published permute, unbind and q * scale
    (up to the order of sums: our linears run on oneDNN)."""
    from iste.models.encoders.swinir import WindowAttention, shift_window_mask

    torch.manual_seed(0)
    attn = WindowAttention(12, 4, 3)
    x = torch.randn(2, 4, 16, 12)
    mask = shift_window_mask((8, 8), 4, 2, device=torch.device("cpu"), dtype=torch.float32,
                             kind="published")

    def published(x):
        b, n_win, n, c = x.shape
        qkv = F.linear(x, attn.qkv.weight, attn.qkv.bias).view(b, n_win, n, 3, 3, c // 3)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)
        bias = attn.relative_position_bias_table[attn.relative_position_index.view(-1)]
        bias = bias.view(n, n, 3).permute(2, 0, 1) + mask.unsqueeze(1)
        out = ((q * attn.scale) @ k.transpose(-2, -1) + bias).softmax(-1) @ v
        return F.linear(out.transpose(2, 3).reshape(b, n_win, n, c), attn.proj.weight,
                        attn.proj.bias)

    grads = []
    for forward in (lambda x: attn(x, mask), published):
        attn.zero_grad()
        xg = x.clone().requires_grad_()
        out = forward(xg)
        out.backward(torch.arange(out.numel(), dtype=out.dtype).view_as(out).cos())
        grads.append([out, xg.grad] + [p.grad.clone() for p in attn.parameters()])
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_swinir_residual_with_stochastic_depth_is_the_published_formula_bit_for_bit():
    """One addcdiv stands for the published ``x + branch * mask / keep`` (three passes)."""
    from iste.models.encoders.swinir import _add_residual

    gen = torch.Generator().manual_seed(0)
    x, branch = (torch.randn(32, 5, 7, generator=gen) for _ in range(2))
    x[0, 0, 0], branch[1, 0, 0] = -0.0, -0.0  # signed zeros kept as the formula keeps them
    for p, training in ((0.1, True), (0.0, True), (0.1, False)):  # 1 / 0.9 is inexact
        x_a, b_a = x.clone().requires_grad_(), branch.clone().requires_grad_()
        torch.manual_seed(3)
        ours = _add_residual(x_a, b_a, p, training)
        ours.backward(torch.arange(ours.numel(), dtype=ours.dtype).view_as(ours).sin())
        x_b, b_b = x.clone().requires_grad_(), branch.clone().requires_grad_()
        torch.manual_seed(3)
        keep = torch.rand(32, 1, 1) < 1 - p
        published = x_b + (b_b * keep.float() / (1 - p) if training else b_b)
        published.backward(torch.arange(ours.numel(), dtype=ours.dtype).view_as(ours).sin())
        if training and p:
            assert 0 < int(keep.sum()) < 32  # both kinds of sample present
        for a, b in ((ours, published), (x_a.grad, x_b.grad), (b_a.grad, b_b.grad)):
            assert torch.equal(a, b) and torch.equal(a.signbit(), b.signbit())


def test_deepened_edsr_computes_the_same_function_and_trains_its_new_blocks():
    from iste.models.encoders.edsr import deepened_state_dict

    torch.manual_seed(0)
    small = build_encoder("edsr-baseline", {"n_resblocks": 2, "n_feats": 8})
    big = build_encoder("edsr-baseline", {"n_resblocks": 5, "n_feats": 8})
    big.load_state_dict(deepened_state_dict(big, small.state_dict(), 2))
    x = torch.rand(2, 3, 11, 13) * 2 - 1
    assert torch.equal(big(x), small(x))
    assert torch.equal(big.body[5].weight, small.body[2].weight)  # the body conv moved last
    big(x).square().mean().backward()
    for block in (2, 3, 4):  # added blocks: the zeroed conv learns at once
        assert big.body[block].body[2].weight.grad.abs().sum() > 0


def test_deepened_edsr_refuses_fewer_blocks_or_another_width():
    from iste.models.encoders.edsr import deepened_state_dict

    small = build_encoder("edsr-baseline", {"n_resblocks": 3, "n_feats": 8})
    with pytest.raises(ValueError, match="cannot deepen"):
        deepened_state_dict(build_encoder("edsr-baseline", {"n_resblocks": 2, "n_feats": 8}),
                            small.state_dict(), 3)
    with pytest.raises(ValueError, match="does not fit"):
        deepened_state_dict(build_encoder("edsr-baseline", {"n_resblocks": 4, "n_feats": 16}),
                            small.state_dict(), 3)


@pytest.mark.parametrize("case", ["edsr", "rdn"])
def test_an_image_read_as_rows_of_rgb_is_convolved_channels_last(case):
    # an (h, w, 3) image given a batch axis has batch stride 3: torch counts it as
    # channels-last, oneDNN read the stride and convolved channels-first
    name, args = TINY[case]
    encoder = build_encoder(name, args).eval()
    rgb = torch.rand(12, 10, 3)
    x = rgb.permute(2, 0, 1).unsqueeze(0)
    assert x.stride(0) == 3 and x.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = encoder(x)
        ref = encoder(x.contiguous())
    assert out.stride() == (out[0].numel(), 1, out.shape[3] * out.shape[1], out.shape[1])
    assert (out - ref).abs().max() < 1e-5


def test_the_mask_benchmark_counts_denormal_weights_of_the_published_mask_only(monkeypatch,
                                                                                capsys):
    from script_helpers import load_script

    bench = load_script("benchmarks/swinir_mask.py")
    monkeypatch.setattr("sys.argv", ["swinir_mask.py", "--rounds", "1", "--batch", "1",
                                     "--size", "8"])
    threads = torch.get_num_threads()
    try:
        bench.main()
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.splitlines()
    published = next(line for line in lines if line.startswith("shift_mask published"))
    exclude = next(line for line in lines if line.startswith("shift_mask exclude"))
    assert int(published.split(", ")[-1].split()[0]) > 0
    assert exclude.endswith(", 0 denormal attention weights in the forward")
    assert lines[-1].endswith("features' max |diff| 0")
