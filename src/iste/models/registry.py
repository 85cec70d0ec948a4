"""One factory for every encoder x head combination, from a typed config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from iste.models.encoders import build_encoder, encoder_config
from iste.models.heads.base import SRHead
from iste.models.heads.iste import ISTE, ISTEConfig
from iste.models.heads.liif import LIIF, LIIFConfig
from iste.models.heads.lte import LTE, LTEConfig
from iste.typed import ConfigError, clip_text, parse_dataclass, to_plain

HEADS: dict[str, tuple[type, type[SRHead]]] = {
    "liif": (LIIFConfig, LIIF),
    "lte": (LTEConfig, LTE),
    "iste": (ISTEConfig, ISTE),
}


@dataclass(frozen=True)
class ModelConfig:
    """A whole model: ``head`` in :data:`HEADS`, ``encoder`` in the encoder registry.

    ``head_args`` / ``encoder_args`` hold the head's and encoder's config fields; anything not
    given takes the paper's default.
    """

    head: Literal["liif", "lte", "iste"]
    encoder: str
    head_args: dict[str, Any] = field(default_factory=dict)
    encoder_args: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "model") -> "ModelConfig":
        cfg = parse_dataclass(cls, data, where=where)
        # Validate the nested args now, so a typo fails before any work starts.
        parse_dataclass(HEADS[cfg.head][0], cfg.head_args, where=f"{where}.head_args")
        try:
            encoder_config(cfg.encoder, cfg.encoder_args)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}.encoder_args: {clip_text(str(err))}") from None
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


MAX_PARAMETERS = 10**9
"""Largest model :func:`build_model` builds (4 GB of float32 weights; the published ISTE has
about 12 M parameters). Counted on the meta device first, so an absurd config fails in
milliseconds instead of allocating for minutes."""


def build_model(config: ModelConfig | dict) -> SRHead:
    """Build a randomly initialised model; ``model.model_config`` records its config.

    Raises:
        ConfigError: a bad config, or more than :data:`MAX_PARAMETERS` parameters.
    """
    if not isinstance(config, ModelConfig):
        config = ModelConfig.from_dict(config)
    with torch.device("meta"):
        n = count_parameters(_build(config))
    if n > MAX_PARAMETERS:
        raise ConfigError(f"model: {config.head}/{config.encoder} would have {n:,} parameters "
                          f"(more than {MAX_PARAMETERS:,}); check its sizes")
    model = _build(config)
    model.model_config = config
    return model


def _build(config: ModelConfig) -> SRHead:
    head_cfg_cls, head_cls = HEADS[config.head]
    head_cfg = parse_dataclass(head_cfg_cls, config.head_args, where="model.head_args")
    try:
        encoder = build_encoder(config.encoder, dict(config.encoder_args))
    except ValueError as err:
        raise ConfigError(f"model.encoder: {clip_text(str(err))}") from err
    try:
        return head_cls(encoder, head_cfg)
    except ValueError as err:
        raise ConfigError(f"model.head_args: {clip_text(str(err))}") from err


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
