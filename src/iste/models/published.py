"""Per-head converters of published checkpoints (the head part; encoders: :mod:`encoders`).

A converter reads a published model spec's head: ``args`` (the spec's args without
``encoder_spec``; it pops every argument it understands, and whatever is left is an error) and
``sd`` (the state dict without the ``encoder.`` entries), and returns our head config fields
and state dict. :mod:`iste.models.official` does the rest (encoder, building, checks); each
registry entry (:mod:`iste.models.registry`) names its converter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import torch

from iste.typed import ConfigError


@dataclass(frozen=True)
class PublishedHead:
    """head_args: our head config fields; state: our head's tensors (names without
    ``encoder.``); dropped: published entries the published forward never uses."""

    head_args: dict[str, Any]
    state: dict[str, torch.Tensor]
    dropped: tuple[str, ...] = ()


Converter = Callable[[dict[str, Any], dict[str, torch.Tensor]], PublishedHead]


def mlp_hidden(spec: dict | None, default: tuple[int, ...], *, act: str = "relu",
               published_act: str = "relu") -> tuple[int, ...]:
    """The hidden widths of a published ``{'name': 'mlp', 'args': {...}}`` spec, whose
    activation (``published_act`` when the spec names none) must be ``act``, ours."""
    if not spec:
        return default
    if spec.get("name") != "mlp":
        raise ConfigError(f"unsupported imnet {spec.get('name')!r} (only 'mlp')")
    args = spec.get("args", {})
    if str(args.get("act", published_act)).lower() != act:
        raise ConfigError(f"unsupported imnet activation {args.get('act', published_act)!r} "
                          f"(expected {act})")
    hidden = args.get("hidden_list")
    return tuple(hidden) if hidden is not None else default


def renamed(sd: dict[str, torch.Tensor], rename: dict[str, str],
            unused: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """``sd`` with published prefixes replaced by ours (first match), float tensors as float32,
    and entries starting with one of ``unused`` dropped (returned second)."""
    state, dropped = {}, []
    for key, value in sd.items():
        if unused and key.startswith(unused):
            dropped.append(key)
            continue
        new = key
        for old, ours in rename.items():
            if key.startswith(old):
                new = ours + key[len(old):]
                break
        state[new] = value.float() if value.is_floating_point() else value
    return state, tuple(dropped)


def pop_flags(args: dict[str, Any], names: tuple[str, ...]) -> dict[str, bool]:
    return {k: bool(args.pop(k)) for k in names if k in args}


def convert_liif(args, sd) -> PublishedHead:
    head_args = {"hidden": list(mlp_hidden(args.pop("imnet_spec", None), (256,) * 4)),
                 **pop_flags(args, ("local_ensemble", "feat_unfold", "cell_decode"))}
    return PublishedHead(head_args, renamed(sd, {})[0])


def convert_lte(args, sd) -> PublishedHead:
    head_args = {"hidden": list(mlp_hidden(args.pop("imnet_spec", None), (256,) * 3)),
                 "hidden_dim": int(args.pop("hidden_dim", 256))}
    return PublishedHead(head_args, renamed(sd, {})[0])


# published ISTE prefix -> ours
_ISTE_RENAME = {
    "liifconv.": "lfic.",
    "coef.": "amp.",
    "freq1.": "freq_x.",
    "freq2.": "freq_y.",
    "phase.": "phase.",
    "imnet_texture.": "ltd.",
    "imnet_rgb.": "lpd.",
    "pix_attn.qk_linear.": "lfi.qk.",
    "pix_attn.kv_linear.": "lfi.kv.",
    "pix_attn.proj.": "lfi.proj.",
    "fusionlinear.": "fusion.",
}
_ISTE_RGB_HIDDEN = (256, 256, 256)
"""The published ISTE's ``imnet_rgb`` (our LPD) hidden widths, fixed in its code."""
# built by the published ISTE but never used in its forward pass
ISTE_UNUSED = ("imnet_texture_auxiliary.", "imnet_query.", "pix_attn.depth_conv.")


def convert_iste(args, sd) -> PublishedHead:
    for key in ("local_ensemble", "feat_unfold", "cell_decode", "hidden_dim"):
        args.pop(key, None)  # accepted but unused by the published ISTE
    hidden = mlp_hidden(args.pop("imnet_spec", None), _ISTE_RGB_HIDDEN)
    if hidden != _ISTE_RGB_HIDDEN:  # the load would fail on lpd.* shapes, naming no cause
        raise ConfigError(f"published ISTE with imnet_spec hidden_list {list(hidden)} is not "
                          "supported: its texture decoder follows the spec while its pixel "
                          f"decoder (imnet_rgb) is always {list(_ISTE_RGB_HIDDEN)}, and iste "
                          "builds both from one list")
    head_args = {"decoder_hidden": list(hidden), "lfi_layout": "published"}
    state, dropped = renamed(sd, _ISTE_RENAME, ISTE_UNUSED)
    return PublishedHead(head_args, state, dropped)


def _posenc(spec: dict | None) -> dict[str, Any]:
    """LIT's positional bias from the published ``pb_spec`` (only the sinusoidal kind)."""
    if not spec:
        return {"pos_bias": False}
    args = dict(spec.get("args", {}))
    kind = args.pop("posenc_type", None)
    if spec.get("name") != "posenc" or kind != "sinusoid" or args.pop("complex_transform", False):
        raise ConfigError(f"unsupported LIT positional encoding {spec!r} (only 'sinusoid')")
    for unused in ("hidden_dims", "gamma", "gauss_scale", "in_dims", "head"):
        args.pop(unused, None)  # no effect on the sinusoidal bias
    out = {"pos_bias": True, "pos_dims": int(args.pop("enc_dims", 256)),
           "pos_scale": float(args.pop("posenc_scale", 6))}
    if args:
        raise ConfigError(f"unsupported LIT positional encoding args {sorted(args)}")
    return out


def _lit_name(key: str) -> str:
    """A published CLIT parameter name -> ours: stage j's ``conv_qs.j`` / ``conv_ks.j`` /
    ``conv_vs.j`` / ``imnets.j`` are the head's own ``conv_q`` ... ``imnet`` for j = 0 and
    ``cascade.{j-1}.conv_q`` ... after."""
    match = re.match(r"^(conv_q|conv_k|conv_v|imnet)s\.(\d+)\.(.*)$", key)
    if match is None:
        return key.replace("pb_encoder.", "pos_bias.", 1) if key.startswith("pb_encoder.") else key
    part, stage, rest = match.group(1), int(match.group(2)), match.group(3)
    return f"{part}.{rest}" if stage == 0 else f"cascade.{stage - 1}.{part}.{rest}"


def convert_lit(args, sd) -> PublishedHead:
    """jaroslaw1007/CLIT's ``clit``: LIT (one stage) or the cascade of ``imnet_num`` =
    ``conv_num`` stages."""
    imnets, convs = int(args.pop("imnet_num", 1)), int(args.pop("conv_num", 1))
    if imnets != convs or imnets < 1:
        raise ConfigError(f"CLIT with imnet_num {imnets} and conv_num {convs} is not supported "
                          "(each stage has one decoder and one set of convs)")
    if not args.pop("local_attn", True):
        raise ConfigError("only LIT with local attention (local_attn: true) is supported")
    args.pop("verbose", None)
    head_args = {"dim": int(args.pop("base_dim", 192)), "heads": int(args.pop("head", 8)),
                 "radius": int(args.pop("r", 3)), "cell_decode": bool(args.pop("is_cell", True)),
                 "hidden": list(mlp_hidden(args.pop("imnet_spec", None), (256,) * 4,
                                           act="gelu")),
                 "stages": imnets, **_posenc(args.pop("pb_spec", None))}
    state = {_lit_name(k): v for k, v in renamed(sd, {})[0].items()}
    return PublishedHead(head_args, state)


def convert_itsrn(args, sd) -> PublishedHead:
    """codyshen0000/ITSRN's ``ITNSR`` (without the optional coordinate embeddings, which its
    configs leave out)."""
    if args.pop("embedding_coord", None) is not None \
            or args.pop("embedding_scale", None) is not None:
        raise ConfigError("ITSRN with coordinate/scale embeddings is not supported")
    imnet = args.pop("imnet_spec", None)
    if imnet is None:
        raise ConfigError("ITSRN without imnet_spec (nearest features, no decoder) is not "
                          "supported")
    head_args = {"hidden": list(mlp_hidden(imnet, (256,) * 4, act="gelu", published_act="sine")),
                 **pop_flags(args, ("feat_unfold", "local_ensemble", "scale_token"))}
    if "Weight.layers.0.weight" in sd:
        head_args["merge_hidden"] = int(sd["Weight.layers.0.weight"].shape[0])
    return PublishedHead(head_args, renamed(sd, {})[0])


def convert_lmi(args, sd) -> PublishedHead:
    """pf0607/COZ's ``lmi`` with its ``MLP-mixer-all-no_norm-sr64-localE`` decoder."""
    for key in ("local_ensemble", "feat_unfold", "cell_decode", "with_area"):
        if key in args and not args.pop(key):
            raise ConfigError(f"LMI with {key}: false is not supported")
    imnet = args.pop("imnet_spec", None) or {}
    if imnet.get("name") != "MLP-mixer-all-no_norm-sr64-localE":
        raise ConfigError(f"unsupported LMI decoder {imnet.get('name')!r}")
    mixer = dict(imnet.get("args", {}))
    if int(mixer.get("out_dim", 3)) != 3:
        raise ConfigError("LMI's decoder must output 3 channels")
    state = {}
    names = {"imnet.mixer_blocks.": "mixer.", "imnet.out.": "out."}
    for key, value in renamed(sd, names)[0].items():
        # published MixerBlock: token_mix = (FeedForward, Rearrange), FeedForward.net = layers
        key = re.sub(r"^(mixer\.\d+\.(?:token|channel)_mix)\.0\.net\.", r"\1.net.", key)
        state[key] = value
    return PublishedHead({"depth": int(mixer.get("depth", 3))}, state)


# --- fixed-scale networks (paper Table 1) ------------------------------------------------------


@dataclass(frozen=True)
class PublishedFixed:
    """A converted fixed-scale network: args: our network config fields; scale: its factor,
    or None where the weights do not tell (Li et al.'s generator works at the output size: the
    caller gives it, ``iste convert-official --scale``); state: our tensors; dropped: published
    entries the published forward never uses."""

    args: dict[str, Any]
    scale: int | None
    state: dict[str, torch.Tensor]
    dropped: tuple[str, ...] = ()


FixedConverter = Callable[[str | None, dict[str, Any] | None, dict[str, torch.Tensor]],
                          PublishedFixed]
"""(published spec name or None, spec args or None for a bare state dict, state dict) ->
:class:`PublishedFixed`. With ``args`` None the sizes are read from the tensors' shapes."""


def _numbered(sd: dict[str, torch.Tensor], pattern: str) -> int:
    """How many distinct indices ``(\\d+)`` of ``pattern`` (a regex) the keys hold."""
    found = {int(m.group(1)) for k in sd for m in [re.match(pattern, k)] if m}
    return len(found)


def _upsampler_scale(sd: dict[str, torch.Tensor], convs: list[str], channels: int) -> int:
    """The scale of a pixel-shuffle upsampler from its convs' output channels
    (r^2 x ``channels`` per stage r)."""
    scale = 1
    for key in convs:
        ratio = sd[key].shape[0] // channels
        r = round(ratio ** 0.5)
        if r * r * channels != sd[key].shape[0] or r < 2:
            raise ConfigError(f"{key}: {sd[key].shape[0]} output channels is no pixel-shuffle "
                              f"stage of {channels} channels")
        scale *= r
    return scale


def _take_scale(args: dict[str, Any], found: int) -> int:
    scale = args.pop("scale", found)
    scale = scale[0] if isinstance(scale, (list, tuple)) else scale
    if int(scale) != found:
        raise ConfigError(f"the spec says scale {scale} but its upsampler is x{found}")
    return found


def _require_upsampling(name: str, args: dict[str, Any]) -> None:
    if args.pop("no_upsampling", False):
        raise ConfigError(f"published {name} with no_upsampling: true is an encoder, not a "
                          "fixed-scale network (an arbitrary-scale checkpoint names its head)")


_EDSR_SIZES = {"edsr-baseline": (16, 64, 1.0), "edsr": (32, 256, 0.1)}
_MEAN_SHIFT = ("sub_mean.", "add_mean.")


def _refuse_pixel_range_mean_shift(sd: dict[str, torch.Tensor]) -> None:
    """Refuse a bare EDSR state dict whose mean shift is on 0-255 pixels.

    LIIF's EDSR (ours) never calls its MeanShift convs and reads [-1, 1]; EDSR-PyTorch (whose
    released models are bare state dicts of the same keys) calls them, on [0, rgb_range]
    pixels: ``sub_mean.bias`` = -rgb_range x the RGB mean, (3,). Its weights converted as
    LIIF's would compute another function without a word; rgb_range 255 (its default and
    every released model) shows in that bias, rgb_range 1 cannot be told from LIIF's."""
    bias = sd.get("sub_mean.bias")
    if (isinstance(bias, torch.Tensor) and bias.is_floating_point() and bias.numel()
            and bias.abs().max().item() > 2):
        raise ConfigError("the EDSR's mean shift is on 0-255 pixels (sub_mean.bias "
                          f"{[round(v, 1) for v in bias.float().tolist()]}): EDSR-PyTorch's "
                          "layout, whose forward subtracts and adds that mean; iste converts "
                          "LIIF's EDSR ([-1, 1] pixels, no mean shift), whose output these "
                          "weights would not give")


def convert_edsr(name, args, sd) -> PublishedFixed:
    """yinboc/liif's ``edsr`` / ``edsr-baseline`` with ``no_upsampling: false``, or a bare EDSR
    state dict of LIIF's EDSR (``head``, ``body``, ``tail``). A bare state dict carries no
    ``res_scale``: 0.1 for 256 channels (the paper's size), else 1 (baseline). EDSR-PyTorch's
    released models (same keys, 0-255 pixels through a mean shift) are refused
    (:func:`_refuse_pixel_range_mean_shift`)."""
    n_feats = int(sd["head.0.weight"].shape[0])
    blocks = _numbered(sd, r"body\.(\d+)\.body\.0\.weight$")
    convs = sorted((k for k in sd if re.match(r"tail\.0\.\d+\.weight$", k)),
                   key=lambda k: int(k.split(".")[2]))
    found = _upsampler_scale(sd, convs, n_feats)
    if args is None:
        _refuse_pixel_range_mean_shift(sd)
        ours = {"n_resblocks": blocks, "n_feats": n_feats,
                "res_scale": 0.1 if n_feats == 256 else 1.0}
        scale = found
    else:
        _require_upsampling(name or "edsr", args)
        default = _EDSR_SIZES.get(name or "edsr-baseline", _EDSR_SIZES["edsr-baseline"])
        ours = {"n_resblocks": int(args.pop("n_resblocks", default[0])),
                "n_feats": int(args.pop("n_feats", default[1])),
                "res_scale": float(args.pop("res_scale", default[2]))}
        args.pop("rgb_range", None)  # scales only the MeanShift convs, never called
        scale = _take_scale(args, found)
    rename = {"head.": "encoder.head.", "body.": "encoder.body."}
    state, dropped = renamed(sd, rename, _MEAN_SHIFT)
    return PublishedFixed(ours, scale, state, dropped)


def convert_rdn(name, args, sd) -> PublishedFixed:
    """yinboc/liif's ``rdn`` with ``no_upsampling: false`` (or its bare state dict)."""
    from iste.models.encoders.rdn import RDN_VARIANTS

    g0 = int(sd["SFENet1.weight"].shape[0])
    k = int(sd["SFENet1.weight"].shape[-1])
    blocks = _numbered(sd, r"RDBs\.(\d+)\.LFF\.weight$")
    variant = next((v for v, (d, _, _) in RDN_VARIANTS.items() if d == blocks), None)
    if variant is None:
        raise ConfigError(f"an RDN with {blocks} dense blocks is neither variant A nor B")
    growth = RDN_VARIANTS[variant][2]
    convs = [f"UPNet.{i}.weight" for i in (0, 2) if f"UPNet.{i}.weight" in sd
             and sd[f"UPNet.{i}.weight"].shape[0] != 3]
    found = _upsampler_scale(sd, convs, growth)
    ours = {"n_feats": g0, "kernel_size": k, "variant": variant}
    if args is not None:
        _require_upsampling(name or "rdn", args)
        for key, value in (("G0", g0), ("RDNkSize", k), ("RDNconfig", variant)):
            if key in args and args.pop(key) != value:
                raise ConfigError(f"the spec's {key} does not match its weights")
        found = _take_scale(args, found)
    rename = {p: "encoder." + p for p in ("SFENet1.", "SFENet2.", "RDBs.", "GFF.")}
    return PublishedFixed(ours, found, renamed(sd, rename)[0])


_SWINIR_BODY = ("conv_first.", "patch_embed.", "layers.", "norm.", "conv_after_body.",
                "conv_before_upsample.")


def convert_swinir(name, args, sd) -> PublishedFixed:
    """JingyunLiang/SwinIR's classical-SR network (``upsampler='pixelshuffle'``), from its
    released state dict (``params`` / ``params_ema`` are unwrapped by the caller); sizes from
    the shapes (the released files carry no arguments)."""
    from iste.models.encoders import official_encoder_state_dict

    if args:
        raise ConfigError("SwinIR checkpoints carry no model spec; convert the bare state dict")
    if "conv_before_upsample.0.weight" not in sd or "upsample.0.weight" not in sd:
        raise ConfigError("not a classical-SR SwinIR with the pixel-shuffle upsampler (no "
                          "conv_before_upsample / upsample weights)")
    dim = int(sd["conv_first.weight"].shape[0])
    depths = [_numbered(sd, rf"layers\.{i}\.residual_group\.blocks\.(\d+)\.norm1\.weight$")
              for i in range(_numbered(sd, r"layers\.(\d+)\.conv\."))]
    heads = [int(sd[f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"]
                 .shape[1]) for i in range(len(depths))]
    table = sd["layers.0.residual_group.blocks.0.attn.relative_position_bias_table"].shape[0]
    window = (round(table ** 0.5) + 1) // 2
    hidden = sd["layers.0.residual_group.blocks.0.mlp.fc1.weight"].shape[0]
    num_feat = int(sd["conv_before_upsample.0.weight"].shape[0])
    convs = sorted((k for k in sd if re.match(r"upsample\.\d+\.weight$", k)),
                   key=lambda k: int(k.split(".")[1]))
    ours = {"embed_dim": dim, "depths": depths, "num_heads": heads, "window_size": window,
            "mlp_ratio": hidden / dim, "num_feat": num_feat,
            "resi_connection": "1conv" if "conv_after_body.weight" in sd else "3conv"}
    body = {k: v for k, v in sd.items() if k.startswith(_SWINIR_BODY)}
    kept = official_encoder_state_dict(body)
    dropped = tuple(sorted(set(body) - set(kept)))
    state = renamed({k: v for k, v in sd.items() if k not in dropped},
                    {p: "encoder." + p for p in _SWINIR_BODY})[0]
    return PublishedFixed(ours, _upsampler_scale(sd, convs, num_feat), state, dropped)
