"""The inference shortcuts compute the same function as the plain formulation (to ~1e-6)."""

import pytest
import torch
import torch.nn.functional as F

from iste.data.coords import normalize
from iste.models.heads.base import KeySet
from iste.models.layers.ensemble import gather_pixels, local_neighbours
from iste.models.layers.lfi import LocalFeatureInteractor
from iste.models.layers.linear import linear
from iste.models.registry import build_model
from model_zoo import tiny_config


def _queries(b=2, q=70, seed=0):
    g = torch.Generator().manual_seed(seed)
    coord = torch.rand(b, q, 2, generator=g) * 2 - 1
    return coord, torch.full((b, q, 2), 2 / 37)


def test_fused_linear_matches_f_linear_with_and_without_relu():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 50, 24, generator=g), torch.randn(16, 40, generator=g)
    b = torch.randn(16, generator=g)
    w = w[:, 5:29]  # a strided weight, as a first-layer slice is
    with torch.no_grad():
        assert (linear(x, w, b) - F.linear(x, w, b)).abs().max() < 1e-5
        assert (linear(x, w, b, relu=True) - F.linear(x, w, b).relu()).abs().max() < 1e-5
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = linear(x, w, b)
    assert out.dtype == torch.bfloat16
    assert (out.float() - F.linear(x, w, b)).abs().max() < 0.1


def test_bf16_falls_back_to_f_linear_where_onednn_has_no_bf16_kernel(monkeypatch):
    """On an AVX2-only CPU oneDNN cannot create a bf16 inner product: the probe sees that
    and ``F.linear`` computes bf16, while float32 keeps the oneDNN op."""
    from iste.models.layers import linear as linear_module

    def fp32_only(x, w, b, *args):
        if x.dtype != torch.float32:
            raise RuntimeError("could not create a primitive descriptor")
        return F.linear(x, w, b)

    monkeypatch.setattr(linear_module, "_fused_op", lambda: fp32_only)
    linear_module._fused_takes.cache_clear()
    try:
        assert linear_module._fused_takes(torch.float32)
        assert not linear_module._fused_takes(torch.bfloat16)
        x, w = torch.randn(6, 8), torch.randn(4, 8)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = linear(x, w, None, relu=True)
        assert out.dtype == torch.bfloat16
        assert (out.float() - F.linear(x, w).relu()).abs().max() < 0.1
    finally:
        linear_module._fused_takes.cache_clear()



def test_bf16_probe_from_inside_autocast_on_a_cpu_with_bf16_kernels(monkeypatch):
    """On an AVX-512 CPU oneDNN has bf16 kernels, and the bf16 probe first runs from inside
    the caller's autocast (a bf16 render). Its float32 reference must not be autocast: that
    compared float32 with bfloat16 and raised (seen on the GPU machine's CPU)."""
    from iste.models.layers import linear as linear_module

    def any_dtype(x, w, b, *args):
        out = F.linear(x, w, b)
        return out.relu() if args and args[0] == "relu" else out

    monkeypatch.setattr(linear_module, "_fused_op", lambda: any_dtype)
    linear_module._fused_takes.cache_clear()
    try:
        x, w = torch.randn(6, 8), torch.randn(4, 8)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = linear(x, w, None, relu=True)  # the first bf16 probe, under autocast
        assert linear_module._fused_takes(torch.bfloat16)
        assert out.dtype == torch.bfloat16
        assert (out.float() - F.linear(x, w).relu()).abs().max() < 0.1
    finally:
        linear_module._fused_takes.cache_clear()

@pytest.fixture
def onednn_training(monkeypatch):
    """fp32 training through the oneDNN linear, as on a CPU whose BLAS is not MKL at full
    speed (this machine's may be)."""
    from iste.models.layers import linear as linear_module

    monkeypatch.setattr(linear_module, "blas_trains_faster", lambda: False)


@pytest.mark.parametrize("act", ["none", "relu", "gelu"])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("out_features", [16, 64])  # fewer and more outputs than inputs (24)
def test_training_linear_through_onednn_gives_f_linears_outputs_and_gradients(
        act, with_bias, out_features, onednn_training):
    from iste.models.layers import linear as linear_module

    if linear_module._fused_op() is None:
        pytest.skip("this torch build has no oneDNN linear kernel")
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 50, 40, generator=g)
    w0 = torch.randn(out_features, 40, generator=g)
    b0 = torch.randn(out_features, generator=g)
    grad_out = torch.randn(3, 50, out_features, generator=g)
    results = []
    for use_linear in (True, False):
        x, w, b = (t.clone().requires_grad_() for t in (x0, w0, b0))
        w_used = w[:, 5:29]  # a strided weight, as a first-layer slice is
        bias = b if with_bias else None
        if use_linear:
            out = linear(x[..., 5:29], w_used, bias, relu=act == "relu", gelu=act == "gelu")
            # the switch is applied: grad mode, float32, CPU -> the oneDNN autograd function
            node = out.grad_fn if act == "none" else out.grad_fn.next_functions[0][0]
            assert "OneDNNLinear" in type(node).__name__
        else:
            out = F.linear(x[..., 5:29], w_used, bias)
            out = {"none": out, "relu": out.relu(), "gelu": F.gelu(out)}[act]
        out.backward(grad_out)
        results.append([out.detach(), x.grad, w.grad] + ([b.grad] if with_bias else []))
    for mine, ref in zip(*results):
        assert torch.allclose(mine, ref, atol=1e-5, rtol=1e-5)
    assert results[0][2].abs().max() > 0


def test_training_linear_keeps_f_linear_under_autocast_and_for_other_dtypes():
    x = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(3, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "OneDNN" not in type(linear(x, w, None).grad_fn).__name__
    x64, w64 = x.double(), w.double()
    assert "OneDNN" not in type(linear(x64, w64, None).grad_fn).__name__


@pytest.mark.parametrize("vendor, blas", [("GenuineIntel", True), ("AuthenticAMD", False),
                                           ("", False)])
def test_fp32_training_keeps_the_blas_where_mkl_runs_at_full_speed(monkeypatch, vendor, blas):
    """On an Intel CPU with MKL, training products stay ``F.linear`` (MKL was the faster
    there); elsewhere they go through oneDNN. Inference is not affected."""
    from iste.models.layers import linear as linear_module

    if linear_module._fused_op() is None or not torch.backends.mkl.is_available():
        pytest.skip("this torch build has no oneDNN linear kernel or no MKL")
    monkeypatch.setattr(linear_module, "cpu_vendor", lambda: vendor)
    linear_module.blas_trains_faster.cache_clear()
    try:
        assert linear_module.blas_trains_faster() is blas
        x = torch.randn(4, 8, requires_grad=True)
        w = torch.randn(3, 8, requires_grad=True)
        node = type(linear(x, w, None).grad_fn).__name__
        assert ("OneDNN" in node) is not blas
    finally:
        linear_module.blas_trains_faster.cache_clear()


def test_cpu_vendor_is_read_from_cpuinfo(tmp_path):
    from iste import runtime

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2\n\n"
                    "processor\t: 1\nvendor_id\t: GenuineIntel\n")
    assert runtime.cpu_vendor.__wrapped__(str(info)) == "AuthenticAMD"
    assert runtime.cpu_vendor.__wrapped__(str(tmp_path / "missing")) == ""
    assert runtime.cpu_flags.__wrapped__(str(info)) == {"fpu", "avx2"}


def test_swinir_trains_the_same_through_the_onednn_linear(monkeypatch, onednn_training):
    from iste.models.layers import linear as linear_module

    model = build_model(tiny_config("iste", "swinir")).train()
    g = torch.Generator().manual_seed(2)
    inp = torch.rand(2, 3, 12, 12, generator=g) * 2 - 1
    grads = []
    for fused in (True, False):
        if not fused:  # the plain F.linear everywhere
            monkeypatch.setattr(linear_module, "_fused_op", lambda: None)
        torch.manual_seed(0)  # the same stochastic-depth draws
        model.zero_grad()
        feat = model.encoder(inp)
        feat.square().mean().backward()
        grads.append([feat.detach()] + [p.grad.clone() for p in model.encoder.parameters()])
    for mine, ref in zip(*grads):
        assert torch.allclose(mine, ref, atol=1e-5, rtol=1e-4)


def test_lfi_in_row_strips_equals_the_whole_map():
    for layout in ("tokens", "published"):
        lfi = LocalFeatureInteractor(16, 4, layout=layout)
        feat = torch.randn(2, 16, 13, 11)
        with torch.no_grad():
            whole = lfi(feat)
            lfi.max_pixels = 30  # strips of 2 rows
            strips = lfi(feat)
        assert torch.equal(whole, strips)


def test_liif_query_equals_the_unsplit_mlp_on_unfolded_features():
    model = build_model(tiny_config("liif")).eval()
    inp = torch.rand(2, 3, 9, 11) * 2 - 1
    coord, cell = _queries()
    with torch.no_grad():
        fast = model(inp, coord, cell)
        feat = model.encoder(inp)
        unfolded = F.unfold(feat, 3, padding=1).flatten(2).transpose(1, 2)  # (B, hw, C*9)
        ref = 0
        for nb in local_neighbours(coord, (9, 11)):
            x = torch.cat([gather_pixels(unfolded, nb.index), nb.rel,
                           cell * torch.tensor([9, 11])], -1)
            ref = ref + model.imnet.layers(x) * nb.weight.unsqueeze(-1)
    assert (fast - ref).abs().max() < 1e-5


@pytest.mark.parametrize("layout", ["tokens", "published"])
def test_iste_fixed_key_set_path_equals_published_semantics_when_keys_are_the_queries(layout):
    # With the call's own queries as a fixed KeySet, the per-pixel STF (resolved once per LR
    # pixel, all shifts decoded together) must give what the published per-query path gives.
    model = build_model(tiny_config("iste", lfi_layout=layout)).eval()
    inp = torch.rand(2, 3, 9, 11) * 2 - 1
    coord, cell = _queries()
    with torch.no_grad():
        feats = model.encode(inp)
        own = model.query(feats, coord, cell)
        fixed = model.query(feats, coord, cell, keys=KeySet(coord, cell))
        broadcast_cell = cell[:, :1].expand_as(cell)  # the engine's stride-0 cell
        fixed_b = model.query(feats, coord, broadcast_cell, keys=KeySet(coord, broadcast_cell))
    assert (own - fixed).abs().max() < 1e-5
    assert (own - fixed_b).abs().max() < 1e-5


def test_prepared_keys_serve_any_subset_of_their_queries():
    model = build_model(tiny_config("iste")).eval()
    with torch.no_grad():
        feats = model.encode(normalize(torch.rand(1, 3, 10, 10)))
    coord, cell = _queries(b=1, q=90)
    keys = KeySet(*_queries(b=1, q=30, seed=1))
    with torch.no_grad():
        prepared = model.prepare_keys(feats, keys, coord)
        whole = model.query(feats, coord, cell, keys=prepared)
        part = model.query(feats, coord[:, 10:40], cell[:, 10:40], keys=keys)
    assert (whole[:, 10:40] - part).abs().max() < 1e-5
    # queries outside what was prepared are refused, not answered from other pixels' rows
    corner = model.prepare_keys(feats, keys, torch.full((1, 1, 2), -0.95))
    with torch.no_grad(), pytest.raises(ValueError, match="prepared"):
        model.query(feats, torch.full((1, 1, 2), 0.95), cell[:, :1], keys=corner)
    # nor from a pixel between prepared ones (inside the span of pixels the lookup covers)
    apart = model.prepare_keys(feats, keys, torch.tensor([[[-0.95, -0.95], [0.95, 0.95]]]))
    with torch.no_grad():
        model.query(feats, torch.full((1, 1, 2), 0.95), cell[:, :1], keys=apart)  # prepared
        with pytest.raises(ValueError, match="prepared"):
            model.query(feats, torch.zeros(1, 1, 2), cell[:, :1], keys=apart)


@pytest.mark.parametrize("head", ["liif", "lte", "iste"])
def test_a_call_of_one_query_equals_that_query_in_a_larger_call(head):
    # one query per call is where a per-query (B, 1, C) tensor must not be taken for a
    # tensor broadcast over queries
    model = build_model(tiny_config(head)).eval()
    inp = torch.rand(1, 3, 9, 11) * 2 - 1
    coord, cell = _queries(b=1, q=5)
    with torch.no_grad():
        feats = model.encode(inp)
        extra = {"keys": KeySet(coord, cell)} if head == "iste" else {}
        whole = model.query(feats, coord, cell, **extra)
        single = model.query(feats, coord[:, 2:3], cell[:, 2:3], **extra)
    assert single.shape == (1, 1, 3)
    assert (whole[:, 2:3] - single).abs().max() < 1e-5


def test_stf_similarity_in_row_blocks_picks_the_same_keys_as_in_one_block(monkeypatch):
    import iste.models.heads.iste as iste_head

    model = build_model(tiny_config("iste"))
    g = torch.Generator().manual_seed(4)
    q, keys = torch.randn(2, 300, 32, generator=g), torch.randn(2, 500, 32, generator=g)
    monkeypatch.setattr(iste_head, "SIMILARITY_ROWS", 1 << 30)
    whole = model.fuse(q, keys)
    monkeypatch.setattr(iste_head, "SIMILARITY_ROWS", 7)  # 42 blocks and a short last one
    assert torch.equal(model.fuse(q, keys), whole)
    assert model.fuse(q[:, :0], keys).shape == (2, 0, 32)
