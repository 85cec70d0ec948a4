"""Every encoder x head, every ISTE ablation: shapes, finiteness, gradients."""

import pytest
import torch

from iste.data.coords import coord_axis
from iste.models.heads.iste import ABLATIONS
from iste.models.layers.ensemble import local_neighbours, neighbour_indices
from iste.models.layers.lfi import LocalFeatureInteractor
from iste.models.registry import build_model
from iste.typed import ConfigError
from model_zoo import ALL_ABLATIONS, ALL_COMBINATIONS, tiny_config


def _every_parameter_reached(config: dict) -> dict:
    """``config`` without stochastic depth: a SwinIR block drops its branch for a whole
    sample with probability ``drop_path_rate``, and a batch of 2 can lose it for both (seen
    on another CPU's random stream), leaving that branch without a gradient."""
    if config["encoder"] == "swinir":
        config["encoder_args"] = {**config["encoder_args"], "drop_path_rate": 0.0}
    return config


def _batch(b=2, h=9, w=11, q=40):
    inp = torch.rand(b, 3, h, w) * 2 - 1
    coord = torch.rand(b, q, 2) * 2 - 1
    cell = torch.full((b, q, 2), 2 / 23)
    return inp, coord, cell


def _without_gradient(model) -> list[str]:
    """The names of the parameters the last backward pass gave no (or an all-zero) gradient."""
    return [n for n, p in model.named_parameters()
            if p.grad is None or not p.grad.abs().sum() > 0]


@pytest.mark.parametrize("head,encoder", ALL_COMBINATIONS)
def test_every_combination_gives_finite_rgb_and_gradients(head, encoder):
    model = build_model(_every_parameter_reached(tiny_config(head, encoder)))
    inp, coord, cell = _batch()
    out = model(inp, coord, cell)
    assert out.shape == (2, 40, 3)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert _without_gradient(model) == []


@pytest.mark.parametrize("encoder", ["edsr-baseline", "rdn", "swinir"])
def test_a_cascade_trains_every_stage_in_one_batch_of_mixed_scales(encoder):
    # CLIT with 3 stages: image 0 at x6 (2 stages), image 1 at x20 (3 stages); every parameter
    # of every stage gets a gradient, and each image's output is what it gives alone.
    model = build_model(_every_parameter_reached(tiny_config("lit", encoder, stages=3)))
    inp, coord, _ = _batch(q=30)
    cell = torch.stack([torch.full((30, 2), 2 / (9 * 6)), torch.full((30, 2), 2 / (9 * 20))])
    out = model(inp, coord, cell)
    assert out.shape == (2, 30, 3) and torch.isfinite(out).all()
    alone = model(inp[1:], coord[1:], cell[1:])
    assert (alone - out[1:]).abs().max() < 1e-5
    out.square().mean().backward()
    assert _without_gradient(model) == []


@pytest.mark.parametrize("ablation", ALL_ABLATIONS)
def test_iste_ablations_build_run_and_train_every_parameter(ablation):
    model = build_model(tiny_config("iste", **ABLATIONS[ablation]))
    inp, coord, cell = _batch()
    out = model(inp, coord, cell)
    assert out.shape == (2, 40, 3) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_ablations_are_different_models():
    counts = {a: sum(p.numel()
                     for p in build_model(tiny_config("iste", **ABLATIONS[a])).parameters())
              for a in ALL_ABLATIONS}
    full = counts.pop("full")
    assert all(c < full for c in counts.values()), counts


def test_lfi_gradient_reaches_neighbours_through_keys_and_values():
    # Output pixel (4, 4) sees pixel (4, 5) only as a key/value token: the published layout
    # detaches the windows (as the published code's numpy round trip does), so that gradient
    # is zero there, and only there.
    for layout in ("tokens", "published"):
        lfi = LocalFeatureInteractor(16, 4, layout=layout)
        feat = torch.randn(1, 16, 8, 8, requires_grad=True)
        lfi(feat)[0, :, 4, 4].sum().backward()
        through_keys = feat.grad[0, :, 4, 5].abs().sum()
        assert through_keys > 0 if layout == "tokens" else through_keys == 0
        assert feat.grad[0, :, 4, 4].abs().sum() > 0  # the query path keeps its gradient
        assert feat.grad[0, :, 4, 7].abs().sum() == 0  # outside the 3x3 window


def test_lfi_token_layouts_differ_but_agree_on_constant_maps():
    a = LocalFeatureInteractor(16, 4, layout="tokens")
    b = LocalFeatureInteractor(16, 4, layout="published")
    b.load_state_dict(a.state_dict())
    feat = torch.randn(1, 16, 6, 7)
    assert (a(feat) - b(feat)).abs().max() > 1e-3
    # On a spatially constant map the published layout still mixes channels: only the
    # proper tokens reproduce "attention over identical vectors = that vector's value".
    const = torch.randn(1, 16, 1, 1).expand(1, 16, 5, 5).contiguous()
    out = a(const)
    assert torch.allclose(out, out[..., :1, :1].expand_as(out), atol=1e-6)


def test_neighbour_weights_sum_to_one_and_neighbours_are_within_one_pixel():
    coord = torch.rand(3, 100, 2) * 2 - 1
    nbs = local_neighbours(coord, (7, 9))
    total = sum(nb.weight for nb in nbs)
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)
    for nb in nbs:
        assert nb.rel.abs().max() <= 2 + 1e-4  # rel = offset * (h, w): one LR pixel is 2
        assert nb.index.min() >= 0 and nb.index.max() < 63


@pytest.mark.parametrize("offsets", [(-1, 1), (-3, -1, 1, 3)])
def test_a_query_on_the_last_pixel_centre_keeps_the_other_axis_weights(offsets):
    # at x3 the output row 3h - 2 sits on the last LR row's centre: every row shift reaches
    # that row (clamped), so rel's row is 0 for all, exactly or by float32 rounding; the
    # columns' weights must be those of any query in that column (all the weights were equal
    # when it was exactly 0)
    h, w = 5, 9
    col = coord_axis(w)[4] + 0.3 * 2 / w  # 0.3 LR px right of a column centre

    def column_weights(row):
        coord = torch.stack([row, col]).view(1, 1, 2)
        weights = torch.zeros(w)
        for nb in local_neighbours(coord, (h, w), offsets=offsets):
            weights[int(nb.index % w)] += nb.weight.item()
        return weights

    inside = column_weights(torch.tensor(0.1))  # an interior row, off any centre
    if offsets == (-1, 1):
        assert torch.allclose(inside[4:6], torch.tensor([0.7, 0.3]), atol=1e-5)  # bilinear
    last = coord_axis(h)[h - 1]
    assert torch.allclose(column_weights(last), inside, atol=1e-5)
    rounded = torch.nextafter(last, torch.tensor(0.0))  # rel ~3e-7: the published 1e-9 shows
    assert torch.allclose(column_weights(rounded), inside, atol=2e-3)
    from iste.models.layers.ensemble import published_areas

    if offsets == (-1, 1):  # (LMI's 4 x 4 shifts reach other rows there: no degenerate case)
        with published_areas():  # the published test's weights, for --protocol published
            published = column_weights(last)
        assert torch.allclose(published[4:6], torch.tensor([0.5, 0.5]))  # not interpolated
        assert torch.allclose(column_weights(last), inside, atol=1e-5)  # off after the block


@pytest.mark.parametrize("hw", [(7, 9), (1, 1), (480, 311)])
def test_neighbour_indices_are_the_neighbours_indices(hw):
    coord = torch.rand(2, 500, 2) * 2 - 1
    coord[0, :10], coord[1, :10] = 1.0, -1.0  # the borders, where the shifts are clamped
    indices = neighbour_indices(coord, hw)
    nbs = local_neighbours(coord, hw)
    assert len(indices) == len(nbs) == 4
    h, w = hw
    for index, nb in zip(indices, nbs):
        assert torch.equal(index, nb.index)
        centre = torch.stack([coord_axis(h)[index // w], coord_axis(w)[index % w]], -1)
        assert torch.equal(nb.rel, (coord - centre) * torch.tensor([float(h), float(w)]))


def test_plain_iste_forward_uses_the_calls_queries_as_keys():
    # Published semantics: the same query gives a different answer in different company.
    model = build_model(tiny_config("iste")).eval()
    inp, coord, cell = _batch(b=1, q=60)
    with torch.no_grad():
        whole = model(inp, coord, cell)
        half = model(inp, coord[:, :30], cell[:, :30])
    assert (whole[:, :30] - half).abs().max() > 0


def _per_query_forward(model, inp, coord, cell):
    """The training forward with F_STF computed per query (as before it was computed per
    distinct pixel): the reference of the test below."""
    from iste.models.heads.base import scaled_cell
    from iste.models.layers.ensemble import gather_pixels

    feats = model.encode(inp)
    hw = feats["hw"]
    out = 0
    for nb in local_neighbours(coord, hw):
        tex = model.texture(feats, nb, model._phase(cell, hw))
        proj = model.lpd.project_feat(model.fuse(gather_pixels(feats["lfic"], nb.index), tex))
        pred = model.lpd.forward_projected(proj, torch.cat([nb.rel, scaled_cell(cell, hw)], -1))
        out = out + (model.ltd(tex) + pred) * nb.weight.unsqueeze(-1)
    return out


@pytest.mark.parametrize("scale", [1.0, 2.7])
def test_training_forward_by_distinct_pixel_equals_per_query_with_gradients(scale):
    # F_STF with the call's own queries as keys is computed once per distinct LR pixel
    model = build_model(tiny_config("iste")).train()
    gen = torch.Generator().manual_seed(3)
    inp = torch.rand(2, 3, 12, 10, generator=gen) * 2 - 1
    size = (round(12 * scale), round(10 * scale))
    from iste.data.coords import make_coord

    q = min(100, size[0] * size[1])
    coord = torch.stack([make_coord(size)[torch.randperm(size[0] * size[1], generator=gen)[:q]]
                         for _ in range(2)])
    cell = torch.tensor([2 / size[0], 2 / size[1]]).expand(2, q, 2).clone()
    outs, grads = [], []
    for forward in (model, lambda *a: _per_query_forward(model, *a)):
        model.zero_grad()
        out = forward(inp, coord, cell)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)
    assert grads[0].abs().max() > 0


@pytest.mark.parametrize("bad,msg", [
    ({"head": "iste", "encoder": "edsr-baseline", "head_args": {"hiden_dim": 3}}, "hiden_dim"),
    ({"head": "iste", "encoder": "edsr-baseline",
      "head_args": {"stf": True, "texture": "none"}}, "stf"),
    ({"head": "nope", "encoder": "edsr-baseline"}, "head"),
    ({"head": "liif", "encoder": "vgg"}, "vgg"),
    ({"head": "liif", "encoder": "edsr-baseline", "encoder_args": {"n_resblock": 3}}, "n_resblock"),
    ({"head": "liif", "encoder": "edsr-baseline", "extra": 1}, "extra"),
    ({"head": "lit", "encoder": "edsr-baseline", "head_args": {"stages": 0}}, "stages"),
    ({"head": "lit", "encoder": "edsr-baseline", "head_args": {"stage_scale": 2.5}}, "stage_scale"),
    # sizes beyond what torch takes (a TypeError from deep inside nn.Linear, a traceback), a
    # cascade that overflowed, a depth built block by block for minutes, a NaN frequency scale
    ({"head": "itsrn", "encoder": "edsr-baseline", "head_args": {"hidden": [10**40]}},
     r"itsrn.hidden\[0\] must be in 1..4096"),
    ({"head": "itsrn", "encoder": "edsr-baseline", "head_args": {"merge_hidden": 10**40}},
     "itsrn.merge_hidden must be in"),
    ({"head": "lit", "encoder": "edsr-baseline", "head_args": {"dim": 10**40, "heads": 1}},
     "lit.dim must be in"),
    ({"head": "lit", "encoder": "edsr-baseline", "head_args": {"hidden": [10**40]}},
     r"lit.hidden\[0\] must be in"),
    ({"head": "lit", "encoder": "edsr-baseline", "head_args": {"radius": 10**40}},
     "lit.radius must be in 0..64"),
    ({"head": "lit", "encoder": "edsr-baseline", "head_args": {"stages": 10**9}},
     "lit.stages must be in 1..8"),
    ({"head": "lit", "encoder": "edsr-baseline", "head_args": {"pos_scale": float("nan")}},
     r"lit.pos_scale must be in 0..64"),
    ({"head": "lit", "encoder": "edsr-baseline", "head_args": {"pos_scale": 1e40}},
     r"lit.pos_scale must be in 0..64"),
    ({"head": "lmi", "encoder": "edsr-baseline", "head_args": {"depth": 257}},
     "lmi.depth must be in 1..256"),
])
def test_config_errors_name_the_culprit(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        build_model(bad)


@pytest.mark.parametrize("pixels,inputs", [(2, 3), (None, None)])
def test_itsrn_projection_by_table_and_by_row_agree_with_the_direct_product(pixels, inputs):
    # (2, 3): 2 pixels x 3 inputs, the (pixel x input) table; None: every row its own pixel
    # and input, the per-row product
    from iste.models.heads.itsrn import _project
    from iste.models.layers.distinct import distinct_rows

    model = build_model(tiny_config("itsrn"))
    with torch.no_grad():
        feats = model.encode(torch.rand(2, 3, 6, 7) * 2 - 1)
        gen = torch.Generator().manual_seed(3)
        r, width = 50, feats["proj"].shape[-1]
        index = torch.randint(0, pixels or 42, (2, r), generator=gen)
        x = torch.randn(inputs or 2 * r, 4, generator=gen)
        x = x[torch.randint(0, inputs or 2 * r, (2 * r,), generator=gen)]
        distinct, which = distinct_rows(x)
        assert torch.equal(distinct[which], x)
        assert distinct.shape[0] == torch.unique(x, dim=0).shape[0]
        hidden = torch.randn(distinct.shape[0], width, generator=gen)
        got = _project(feats, index, hidden, which)
        proj = torch.stack([feats["proj"][i, index[i]] for i in range(2)]).flatten(0, 1)
        want = torch.einsum("rcw,rw->rc", proj, hidden[which])
        assert (got - want).abs().max() < 1e-4 * want.abs().max()
