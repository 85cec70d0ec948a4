"""The LFI's "tokens" layout computes the paper's attention over 10 tokens (Eq. 2), though it
never builds the tokens: here it is checked against that definition, written out token by
token, in value and in gradient."""

import pytest
import torch
import torch.nn.functional as F

from iste.models.layers.lfi import LocalFeatureInteractor


def _by_definition(lfi: LocalFeatureInteractor, feat: torch.Tensor) -> torch.Tensor:
    """Per pixel j: tokens = [mean of the 3 x 3 window (reflect-padded), its 9 vectors in
    row-major order]; q, q' = split(W_qk f_j); k, v = split(W_kv token); per head the logits
    (q d^-1/2) . k over the 10 tokens and q . q'; softmax over the 11; sum of weight * v over
    the 10; heads concatenated; W_proj. (B, C, h, w) -> (B, C, h, w)."""
    b, c, h, w = feat.shape
    nh = lfi.heads
    d = c // nh
    padded = F.pad(feat, (1, 1, 1, 1), mode="reflect")
    window = torch.stack([padded[:, :, dy:dy + h, dx:dx + w]
                          for dy in range(3) for dx in range(3)], 2)  # (B, C, 9, h, w)
    tokens = torch.cat([window.mean(2, keepdim=True), window], 2)  # (B, C, 10, h, w)
    tokens = tokens.permute(0, 3, 4, 2, 1)  # (B, h, w, 10, C)
    q, q_self = lfi.qk(feat.permute(0, 2, 3, 1)).split(c, -1)  # (B, h, w, C)
    k, v = lfi.kv(tokens).split(c, -1)  # (B, h, w, 10, C)
    q, q_self = q.unflatten(-1, (nh, d)), q_self.unflatten(-1, (nh, d))
    k, v = k.unflatten(-1, (nh, d)), v.unflatten(-1, (nh, d))  # (B, h, w, 10, nh, d)
    logits = (q.unsqueeze(3) * d ** -0.5 * k).sum(-1)  # (B, h, w, 10, nh)
    self_logit = (q * q_self).sum(-1).unsqueeze(3)  # (B, h, w, 1, nh)
    attn = torch.cat([logits, self_logit], 3).softmax(3)[:, :, :, :10]
    out = (attn.unsqueeze(-1) * v).sum(3).flatten(-2)  # (B, h, w, C)
    return lfi.proj(out).permute(0, 3, 1, 2)


@pytest.mark.parametrize("channels,heads,hw,max_pixels", [
    (16, 4, (7, 9), 4096), (32, 8, (5, 6), 4096), (64, 8, (4, 4), 4096),
    (16, 4, (11, 5), 10),  # strips of 2 rows
])
def test_tokens_layout_is_the_attention_over_ten_tokens_in_value_and_gradient(
        channels, heads, hw, max_pixels):
    torch.manual_seed(channels + hw[0])
    lfi = LocalFeatureInteractor(channels, heads, layout="tokens")
    lfi.max_pixels = max_pixels
    feat = torch.randn(2, channels, *hw, requires_grad=True)
    out = lfi(feat)
    ref = _by_definition(lfi, feat)
    assert out.shape == ref.shape == feat.shape
    assert (out - ref).abs().max() < 1e-5
    upstream = torch.randn_like(out)
    got = torch.autograd.grad((out * upstream).sum(), [feat, *lfi.parameters()])
    want = torch.autograd.grad((ref * upstream).sum(), [feat, *lfi.parameters()])
    for g, r in zip(got, want):
        assert (g - r).abs().max() < 1e-4 * max(1.0, r.abs().max().item())


def test_tokens_layout_in_inference_keeps_a_channels_last_map_channels_last():
    lfi = LocalFeatureInteractor(16, 4).eval()
    lfi.max_pixels = 20
    feat = torch.randn(1, 16, 9, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = lfi(feat)
        ref = _by_definition(lfi, feat)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out - ref).abs().max() < 1e-5
