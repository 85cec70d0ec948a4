"""Converters of the three histopathology SR methods' published checkpoints.

What the repositories save: SWD-Net's released weights are state dicts of ``SWDNet`` (its
``eval_pth.py`` loads them with ``load_state_dict``; its trainer pickles whole models, which
``torch.load(weights_only=True)`` refuses: save ``model.state_dict()`` from those once);
SHISRCNet's trainer pickles the whole joint network, whose ``state_dict()`` (keys ``SRNet.*``,
the classifier's ``classNet.*`` dropped) or its ``SRNet.state_dict()`` we read; Li et al. save
``generator.state_dict()``. :func:`iste.models.official.bare_state_dict` unwraps
``{'state_dict': ...}`` and ``module.`` prefixes first.

Converters follow :data:`iste.models.published.FixedConverter`: ``(name, args, sd)`` with
``args`` None for a bare state dict (these repositories save no spec; sizes are read from the
tensors' shapes) -> :class:`~iste.models.published.PublishedFixed`.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

import torch

from iste.models.fixed.li2021 import Li2021Config, Li2021Generator
from iste.models.fixed.srmfenet import SRMFENet, SRMFENetConfig
from iste.models.fixed.swdnet import SWDNet, SWDNetConfig
from iste.models.published import PublishedFixed
from iste.typed import ConfigError


def _rename(sd: dict[str, torch.Tensor],
            rules: list) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``sd`` with every (pattern, replacement) rule applied in order to each key, float tensors
    as float32; and our key -> the published key."""
    out, original = {}, {}
    for key, value in sd.items():
        new = key
        for pattern, repl in rules:
            new = re.sub(pattern, repl, new)
        out[new] = value.float() if value.is_floating_point() else value
        original[new] = key
    return out, original


def _split(state: dict[str, torch.Tensor], wanted: set[str], original: dict[str, str],
           what: str) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    missing = sorted(wanted - set(state))
    if missing:
        raise ConfigError(f"{what}: missing published weights for {len(missing)} entries, "
                          f"e.g. {missing[0]!r}")
    kept = {k: v for k, v in state.items() if k in wanted}
    dropped = tuple(sorted(original[k] for k in state if k not in wanted))
    return kept, dropped


# ---- SWD-Net ------------------------------------------------------------------------------

_RCF = [(r"\.se_backone\.fc\.0\.", ".se.fc1."), (r"\.se_backone\.fc\.2\.", ".se.fc2."),
        (r"\.conv_mask\.", ".attend."), (r"\.channel_add_conv\.0\.", ".add1."),
        (r"\.channel_add_conv\.2\.", ".add2.")]
_BLOCK = [(r"\.relu(\d)\.", r".act\1."), (r"\.l_relu\.", ".l_act."),
          (r"\.([hvd])_relu(\d)\.", r".\1_act\2.")]
_SWD_RULES = [
    (r"^spatial_sr\.", "spatial."), (r"^wavelet_sr\.", "wavelet."),
    (r"^spatial\.conv1\.", "spatial.head."), (r"^spatial\.relu1\.", "spatial.head_act."),
    (r"^spatial\.resbk1\.", "spatial.head_block."), (r"^spatial\.conv2\.", "spatial.reduce."),
    (r"^spatial\.relu2\.", "spatial.reduce_act."), (r"^spatial\.resbk2\.", "spatial.reduce_block."),
    (r"^spatial\.spatial_dualstream_module(\d)\.", r"spatial.dual\1."),
    (r"\.transition1\.1\.0\.0\.", ".to_low."), (r"\.transition1\.1\.0\.1\.", ".to_low_act."),
    (r"\.stage2\.0\.", ".stages.0."), (r"\.stage3\.0\.", ".stages.1."),
    (r"\.stage4\.0\.", ".stages.2."),
    (r"\.branches\.0\.", ".high."), (r"\.branches\.1\.", ".low."),
    (r"\.fuse_layers\.0\.1\.0\.", ".low_to_high."),
    (r"\.fuse_layers\.1\.0\.0\.0\.", ".high_to_low."),
    (r"\.rcf1\.", ".fuse_high."), (r"\.rcf2\.", ".fuse_low."),
    (r"^spatial\.cat_conv\.", "spatial.merge."), (r"^spatial\.relu_cat\.", "spatial.merge_act."),
    (r"^spatial\.ps_conv\.", "spatial.upsample."), (r"^spatial\.conv_sr1\.", "spatial.tail1."),
    (r"^spatial\.relu_sr1\.", "spatial.tail1_act."), (r"^spatial\.conv_sr2\.", "spatial.tail2."),
    (r"^spatial\.relu_sr2\.", "spatial.tail2_act."), (r"^spatial\.conv_final\.", "spatial.to_rgb."),
    (r"^wavelet\.wfa_(up|down)\.fc\.0\.", r"wavelet.adapt_\1.fc1."),
    (r"^wavelet\.wfa_(up|down)\.fc\.1\.", r"wavelet.adapt_\1.act."),
    (r"^wavelet\.wfa_(up|down)\.fc\.2\.", r"wavelet.adapt_\1.fc2."),
    (r"^wavelet\.wconv_(up|down)_encoder(\d)\.", lambda m: f"wavelet.{m[1]}.{2 * int(m[2]) - 2}."),
    (r"^wavelet\.wconv_(up|down)_decoder(\d)\.", lambda m: f"wavelet.{m[1]}.{2 * int(m[2]) - 1}."),
    (r"^wavelet\.rcf_(up|down)_(\d)\.", lambda m: f"wavelet.fuse_{m[1]}.{int(m[2]) - 1}."),
    (r"^wavelet\.conv_final\.", "wavelet.to_bands."),
    *_RCF, *_BLOCK,
]


def convert_swdnet(name: str | None, args: dict[str, Any] | None,
                   sd: dict[str, torch.Tensor]) -> PublishedFixed:
    """franciszchen/SWD-Net ``SWDNet`` state dict -> ours (x2). The published weights were
    trained with the published RCF (its context term never reached the output), so ``rcf`` is
    ``"published"`` unless ``args`` says ``{"rcf": "paper"}`` (popped); the weights of the
    layers the chosen function cannot reach are ``dropped``."""
    rcf = args.pop("rcf", "published") if args else "published"
    if not any(k.startswith(("spatial_sr.", "wavelet_sr.")) for k in sd):
        raise ConfigError("SWD-Net: no 'spatial_sr.' / 'wavelet_sr.' entries (not a SWDNet "
                          "state dict)")
    block = re.compile(r"(?:module\.)?spatial_sr\.spatial_dualstream_module1\.stage2\.0\."
                       r"branches\.0\.(\d+)\.")
    blocks = len({m[1] for k in sd if (m := block.match(k))})
    width = sd.get("wavelet_sr.wconv_up_encoder1.l_conv.weight")
    config = SWDNetConfig(rcf=rcf, blocks=blocks or 4,
                          wavelet_width=24 if width is None else int(width.shape[0]))
    state, original = _rename(sd, _SWD_RULES)
    wanted = set(SWDNet(config).state_dict())
    kept, dropped = _split(state, wanted, original, "SWD-Net")
    return PublishedFixed(asdict(config), 2, kept, dropped)


# ---- SRMFENet -----------------------------------------------------------------------------

def _block_part(part: str):
    """A renaming rule's replacement for a match of (block, 1-based index): the block's
    ``part`` at the 0-based index."""
    return lambda m: f"blocks.{m[1]}.{part}.{int(m[2]) - 1}."


def convert_srmfenet(name: str | None, args: dict[str, Any] | None,
                     sd: dict[str, torch.Tensor]) -> PublishedFixed:
    """xiely-123/SHISRCNet ``SRResNet`` (or the joint ``SIHSRCNet``, keys ``SRNet.*``) -> ours.
    The scale, width and depth are read from the tensors' shapes; ``published_layout`` is set
    (the published code feeds transposed BGR images)."""
    if any(k.startswith("SRNet.") for k in sd):
        dropped_other = tuple(sorted(k for k in sd if not k.startswith("SRNet.")))
        sd = {k[6:]: v for k, v in sd.items() if k.startswith("SRNet.")}
    else:
        dropped_other = ()
    if "backbone.0.weight" not in sd:
        raise ConfigError("SRMFENet: no 'backbone.0.weight' (not an SRResNet state dict)")
    channels = sd["backbone.0.weight"].shape[0]
    blocks = sorted({int(m[1]) for k in sd
                     if (m := re.match(r"backbone\.1\.sub\.(\d+)\.layer1\.", k))})
    n_blocks = len(blocks)
    ups = sorted({int(m[1]) for k in sd if (m := re.match(r"up\.(\d+)\.weight$", k))})
    if len(ups) < 3:
        raise ConfigError("SRMFENet: unexpected upsampler layout")
    up_convs, tail, to_rgb = ups[:-2], ups[-2], ups[-1]
    factor = sd[f"up.{up_convs[0]}.weight"].shape[0] // channels
    scale = {4: 2 ** len(up_convs), 9: 3}.get(factor)
    if scale not in (2, 3, 4):
        raise ConfigError(f"SRMFENet: cannot read the scale from the upsampler ({factor} x "
                          "channels)")
    rules = [(rf"^backbone\.1\.sub\.{n_blocks}\.", "body_conv."), (r"^backbone\.0\.", "head."),
             (r"^backbone\.1\.sub\.(\d+)\.layer(\d)\.0\.", _block_part("convs")),
             (r"^backbone\.1\.sub\.(\d+)\.layer(\d)\.1\.", _block_part("norms")),
             (r"^backbone\.1\.sub\.(\d+)\.SE(\d)\.conv\.0\.", _block_part("gates")),
             (r"^backbone\.1\.sub\.(\d+)\.SE(\d)\.conv\.1\.", _block_part("gate_norms")),
             (r"^backbone\.1\.sub\.(\d+)\.project\.0\.", r"blocks.\1.project."),
             (r"^backbone\.1\.sub\.(\d+)\.project\.1\.", r"blocks.\1.project_norm."),
             *[(rf"^up\.{i}\.", f"upsample.{n}.") for n, i in enumerate(up_convs)],
             (rf"^up\.{tail}\.", "tail."), (rf"^up\.{to_rgb}\.", "to_rgb.")]
    config = SRMFENetConfig(channels=channels, n_blocks=n_blocks, published_layout=True)
    state, original = _rename(sd, rules)
    kept, dropped = _split(state, set(SRMFENet(config, scale).state_dict()), original, "SRMFENet")
    return PublishedFixed(asdict(config), scale, kept, dropped + dropped_other)


# ---- Li et al. ----------------------------------------------------------------------------

def convert_li2021(name: str | None, args: dict[str, Any] | None,
                   sd: dict[str, torch.Tensor]) -> PublishedFixed:
    """uw-loci/demo_wsi_superres ``Generator`` state dict -> ours. The network is the same at
    every scale (it works at the output size), so the weights do not tell the scale it was
    trained for: ``scale`` is None, and the caller gives it (``iste convert-official --arch
    li2021 --scale S``)."""
    if "down0.conv0.conv0.weight" not in sd:
        raise ConfigError("Li et al.: no 'down0.conv0.conv0.weight' (not a Generator state dict)")
    base = sd["down0.conv0.conv0.weight"].shape[0] // 2
    config = Li2021Config(base_channels=base)
    scale = 4  # any: the state dict is the same at every scale
    rules = [(r"\.skip\.conv\.", ".skip."), (r"^up3\.conv1\.", "to_rgb.")]
    state, original = _rename(sd, rules)
    ours = set(Li2021Generator(config, scale).state_dict())
    kept, dropped = _split(state, ours, original, "Li et al.")
    return PublishedFixed(asdict(config), None, kept, dropped)
