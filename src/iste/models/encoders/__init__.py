"""Image encoders: LR image (B, 3, h, w) in [-1, 1] -> LR features (B, out_dim, h, w).

Registry:
    ``ENCODERS[name] = (ConfigClass, build)``; ``build_encoder(name, args)`` validates ``args``
    against the config dataclass (unknown keys and wrong types are errors) and builds the module.

    ==============  ============  ==================================================  =======
    name            config        default                                             out_dim
    ==============  ============  ==================================================  =======
    edsr-baseline   EDSRConfig    16 res blocks x 64 ch (1.2 M params)                64
    rdn             RDNConfig     variant 'B': G0 64, D/C/G 16/8/64 (22.0 M params)   64
    swinir          SwinIRConfig  ISTE's: 180 ch, 6 RSTB x 6 layers (11.6 M params)   64
    ==============  ============  ==================================================  =======

Every encoder is an :class:`~iste.models.encoders.base.Encoder`: ``out_dim: int``,
``size_alignment: int`` and ``forward(x: (B, 3, h, w)) -> (B, out_dim, h, w)``.

Published checkpoints (LIIF / LTE / ISTE code): ``encoder_args_from_official`` maps a published
encoder spec ``{name, args}`` to ours, and ``official_encoder_state_dict`` removes the entries of
a published encoder state dict that our modules do not have; parameter names are otherwise
identical, so ``encoder.load_state_dict(official_encoder_state_dict(sd), strict=True)`` works.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

from iste.typed import excerpt

from .base import Encoder
from .edsr import EDSRConfig, EDSREncoder
from .rdn import RDNConfig, RDNEncoder
from .swinir import SwinIRConfig, SwinIREncoder

__all__ = [
    "ENCODERS", "Encoder", "EDSRConfig", "EDSREncoder", "RDNConfig", "RDNEncoder", "SwinIRConfig",
    "SwinIREncoder", "build_encoder", "encoder_args_from_official", "official_encoder_state_dict",
]

ENCODERS: dict[str, tuple[type, Callable[[Any], Encoder]]] = {
    "edsr-baseline": (EDSRConfig, EDSREncoder),
    "rdn": (RDNConfig, RDNEncoder),
    "swinir": (SwinIRConfig, SwinIREncoder),
}


def encoder_config(name: str, args: Mapping[str, Any]) -> Any:
    """The validated config dataclass of encoder ``name`` from ``args`` (missing = default).

    Raises:
        ValueError: unknown ``name``, a key that is not a field of the config, or a bad value.
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {excerpt(name)}; known: {sorted(ENCODERS)}")
    config_cls = ENCODERS[name][0]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(str(k) for k in set(args) - fields)
    if unknown:
        raise ValueError(f"unknown argument(s) {excerpt(unknown)} for encoder {name!r}; "
                         f"{config_cls.__name__} has {sorted(fields)}")
    return config_cls(**args)


def build_encoder(name: str, args: Mapping[str, Any]) -> Encoder:
    """Build encoder ``name`` from a plain dict of config fields (e.g. read from YAML).

    Example:
        >>> enc = build_encoder("edsr-baseline", {"n_resblocks": 2, "n_feats": 8})
        >>> enc.out_dim
        8
    """
    config = encoder_config(name, args)
    return ENCODERS[name][1](config)


# --- published code -> ours ------------------------------------------------------------------

# published registry name -> (our name, {published arg: (our field or None if ignored, default)})
_OFFICIAL_ARGS: dict[str, tuple[str, dict[str, tuple[str | None, Any]]]] = {
    "edsr-baseline": ("edsr-baseline", {
        "n_resblocks": ("n_resblocks", 16), "n_feats": ("n_feats", 64),
        "res_scale": ("res_scale", 1), "scale": (None, 2), "rgb_range": (None, 1),
        "no_upsampling": (None, False)}),
    "edsr": ("edsr-baseline", {
        "n_resblocks": ("n_resblocks", 32), "n_feats": ("n_feats", 256),
        "res_scale": ("res_scale", 0.1), "scale": (None, 2), "rgb_range": (None, 1),
        "no_upsampling": (None, False)}),
    "rdn": ("rdn", {
        "G0": ("n_feats", 64), "RDNkSize": ("kernel_size", 3), "RDNconfig": ("variant", "B"),
        "scale": (None, 2), "no_upsampling": (None, False)}),
    # the published make_swinir ignores its only argument and always builds the ISTE encoder
    "swinir": ("swinir", {"no_upsampling": (None, True)}),
}


def encoder_args_from_official(name: str, args: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Map a published encoder spec (registry ``name``, its ``args``) to ``(our_name, our_args)``.

    ``our_args`` lists every config field explicitly (JSON/YAML-friendly: lists, not tuples).
    Published names: 'edsr-baseline', 'edsr', 'rdn', 'swinir'. EDSR and RDN specs must have
    ``no_upsampling=True`` (with False the published module is a whole SR network, not an
    encoder); ``scale`` and ``rgb_range`` only affect parts an encoder does not have and are
    dropped. The published 'swinir' builder ignores ``no_upsampling`` and always yields ISTE's
    encoder, which is our default ``SwinIRConfig``; with ``crop_to_input=False`` our module
    returns the padded feature map like the published one (see ``swinir`` module docstring),
    but the default (cropped) is what the rest of iste expects.

    Raises:
        ValueError: unknown published name or argument, or ``no_upsampling`` not True.
    """
    if name not in _OFFICIAL_ARGS:
        raise ValueError(f"unknown published encoder {name!r}; known: {sorted(_OFFICIAL_ARGS)}")
    our_name, table = _OFFICIAL_ARGS[name]
    unknown = sorted(set(args) - set(table))
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown} for published encoder {name!r}; "
                         f"it takes {sorted(table)}")
    if name != "swinir" and args.get("no_upsampling", False) is not True:
        raise ValueError(f"published encoder {name!r} needs no_upsampling=True to be an encoder "
                         f"(got {args.get('no_upsampling', False)!r})")
    ours = {field: args.get(key, default) for key, (field, default) in table.items()
            if field is not None}
    config = encoder_config(our_name, ours)
    explicit = {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(config).items()
                if v is not None}  # optional sizes the published code does not have
    return our_name, explicit


# Entries of published encoder state dicts that our modules do not have:
#   EDSR:   sub_mean.{weight,bias}, add_mean.{weight,bias} -- the MeanShift convs, frozen and
#           never called in the published forward;
#   SwinIR: layers.<i>.residual_group.blocks.<j>.attn.relative_position_index (derived, a
#           non-persistent buffer here) and layers.<i>.residual_group.blocks.<j>.attn_mask
#           (the shift mask for 48 x 48 inputs; built per input size in our forward).
_UNUSED_OFFICIAL_KEYS = re.compile(
    r"^(?:(?:sub|add)_mean\.(?:weight|bias)"
    r"|layers\.\d+\.residual_group\.blocks\.\d+\.(?:attn\.relative_position_index|attn_mask))$")


def official_encoder_state_dict(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the published encoder entries our modules do not have; keep all others unchanged.

    ``sd`` is a published encoder state dict (the keys after ``'encoder.'`` in a checkpoint).
    Dropped, by exact pattern: ``sub_mean.weight``, ``sub_mean.bias``, ``add_mean.weight``,
    ``add_mean.bias`` (EDSR's unused MeanShift convs) and, for every Swin layer,
    ``layers.<i>.residual_group.blocks.<j>.attn.relative_position_index`` and
    ``layers.<i>.residual_group.blocks.<j>.attn_mask`` (SwinIR's derived buffers). RDN has none.
    """
    return {k: v for k, v in sd.items() if not _UNUSED_OFFICIAL_KEYS.match(k)}
