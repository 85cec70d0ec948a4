"""One factory for every model, from a typed config: an encoder x head combination
(:class:`ModelConfig`, arbitrary scale) or a fixed-scale network (:class:`FixedConfig`).

Every head has one :class:`HeadEntry` in :data:`HEADS`, every fixed-scale network one
:class:`FixedEntry` in :data:`FIXED`: its config class and module, the label tables and reports
print, the paper's parameter count, and how to import its published checkpoints. Everything that
lists methods (config validation, ``iste convert-official``, ``iste info``, ``iste bench``)
iterates these two tables; a new method is its own module plus one entry here
(docs/extending.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable

import torch

from iste.models import published as pub
from iste.models import published_calls
from iste.models.encoders import build_encoder, encoder_config
from iste.models.fixed.base import FixedScaleSR
from iste.models import published_histo as histo
from iste.models.fixed.edsr import EDSR, EDSRConfig
from iste.models.fixed.li2021 import Li2021Config, Li2021Generator
from iste.models.fixed.rdn import RDN, RDNConfig
from iste.models.fixed.srmfenet import SRMFENet, SRMFENetConfig
from iste.models.fixed.swdnet import SWDNet, SWDNetConfig
from iste.models.fixed.swinir import SwinIR, SwinIRNetConfig
from iste.models.heads.base import SRHead
from iste.models.heads.iste import ISTE, ISTEConfig, iste_label
from iste.models.heads.liif import LIIF, LIIFConfig
from iste.models.heads.itsrn import ITSRN, ITSRNConfig
from iste.models.heads.lit import LIT, LITConfig, lit_label
from iste.models.heads.lmi import LMI, LMIConfig
from iste.models.heads.lte import LTE, LTEConfig
from iste.text import error_line
from iste.typed import ConfigError, parse_dataclass, to_plain


@dataclass(frozen=True)
class PublishedCode:
    """The method's published implementation.

    name: ``ckpt['model']['name']`` in its checkpoints; repository: GitHub owner/name;
    convert: its checkpoints' head -> ours (:mod:`iste.models.published`);
    bench_args: the spec args (without ``encoder_spec``) of the paper-size model that
        ``iste bench`` builds with the published code;
    calls: how the published model computes features and answers a chunk of queries
        (:mod:`iste.models.published_calls`).
    """

    name: str
    repository: str
    convert: pub.Converter
    bench_args: dict[str, Any]
    calls: published_calls.CallingConvention = published_calls.LIIF_FAMILY


@dataclass(frozen=True)
class HeadEntry:
    """label: the method's name in tables; paper_params_m: total parameters (millions) with the
    SwinIR encoder in the paper's Table 8; paper_star_params_m: Table 9's variant with a larger
    SwinIR (bundled config ``swinir-NAME-star``), where the paper has one."""

    label: str
    config: type
    head: type[SRHead]
    paper_params_m: float
    published: PublishedCode
    paper_star_params_m: float | None = None
    variant_label: Callable[[Any], str] | None = None
    """The name in tables of a model of this head's config (a variant's: CLIT, an ISTE
    ablation); None: ``label`` for every config."""


def _mlp(hidden: list[int], **extra) -> dict:
    return {"name": "mlp", "args": {"out_dim": 3, "hidden_list": hidden, **extra}}


# The paper-size published models of the configs each repository trains with (EDSR-baseline
# encoder added by the benchmark); our head defaults are the same sizes.
_LIT_BENCH = {"base_dim": 256, "head": 8, "r": 3, "imnet_num": 1, "conv_num": 1,
              "is_cell": True, "local_attn": True,
              "pb_spec": {"name": "posenc", "args": {
                  "posenc_type": "sinusoid", "posenc_scale": 10, "hidden_dims": 64,
                  "enc_dims": 64, "gamma": 1}},
              "imnet_spec": _mlp([256] * 4, act="gelu")}
_ITSRN_BENCH = {"feat_unfold": True, "local_ensemble": True, "scale_token": True,
                "imnet_spec": {"name": "mlp", "args": {"hidden_list": [256] * 4, "act": "gelu"}}}
_LMI_BENCH = {"imnet_spec": {"name": "MLP-mixer-all-no_norm-sr64-localE",
                             "args": {"depth": 1, "out_dim": 3, "hidden_list": [256]}}}


HEADS: dict[str, HeadEntry] = {
    "liif": HeadEntry("LIIF", LIIFConfig, LIIF, 11.4, PublishedCode(
        "liif", "yinboc/liif", pub.convert_liif,
        bench_args={"imnet_spec": _mlp([256] * 4)}), paper_star_params_m=13.2),
    "lte": HeadEntry("LTE", LTEConfig, LTE, 11.5, PublishedCode(
        "lte", "jaewon-lee-b/lte", pub.convert_lte,
        bench_args={"imnet_spec": _mlp([256] * 3), "hidden_dim": 256}), paper_star_params_m=13.3),
    "iste": HeadEntry("ISTE", ISTEConfig, ISTE, 12.5, PublishedCode(
        "iste", "dmhdmhdmh/ISTE", pub.convert_iste,
        bench_args={"imnet_spec": _mlp([256] * 3)}, calls=published_calls.ISTE),
        variant_label=iste_label),
    "lmi": HeadEntry("LMI", LMIConfig, LMI, 11.1, PublishedCode(
        "lmi", "pf0607/COZ", pub.convert_lmi, bench_args=_LMI_BENCH, calls=published_calls.LMI)),
    "itsrn": HeadEntry("ITSRN", ITSRNConfig, ITSRN, 11.7, PublishedCode(
        "ITNSR", "codyshen0000/ITSRN", pub.convert_itsrn, bench_args=_ITSRN_BENCH,
        calls=published_calls.ITSRN)),
    "lit": HeadEntry("LIT", LITConfig, LIT, 16.1, PublishedCode(
        "clit", "jaroslaw1007/CLIT", pub.convert_lit, bench_args=_LIT_BENCH,
        calls=published_calls.CLIT), variant_label=lit_label),
}


def head_for_published(name: str) -> tuple[str, HeadEntry]:
    """Our head name and entry for a published ``ckpt['model']['name']``."""
    for ours, entry in HEADS.items():
        if entry.published.name == name:
            return ours, entry
    known = ", ".join(e.published.name for e in HEADS.values())
    raise ConfigError(f"unsupported published model {name!r} (expected {known})")


@dataclass(frozen=True)
class ModelConfig:
    """A whole model: ``head`` in :data:`HEADS`, ``encoder`` in the encoder registry.

    ``head_args`` / ``encoder_args`` hold the head's and encoder's config fields; anything not
    given takes the paper's default.
    """

    head: str
    encoder: str
    head_args: dict[str, Any] = field(default_factory=dict)
    encoder_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; expected one of {list(HEADS)}")

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "model") -> "ModelConfig":
        cfg = parse_dataclass(cls, data, where=where)
        # Validate the nested args now, so a typo fails before any work starts.
        parse_dataclass(HEADS[cfg.head].config, cfg.head_args, where=f"{where}.head_args")
        try:
            encoder_config(cfg.encoder, cfg.encoder_args)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}.encoder_args: {error_line(err, 200)}") from None
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


@dataclass(frozen=True)
class PublishedFixedCode:
    """A fixed-scale network's published implementation.

    repository: GitHub owner/name; convert: its checkpoints -> ours
    (:data:`iste.models.published.FixedConverter`); spec_names: ``ckpt['model']['name']`` of
    LIIF-style checkpoints that hold this network (none for repositories that save bare state
    dicts: ``iste convert-official --arch NAME`` names those).
    """

    repository: str
    convert: pub.FixedConverter
    spec_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class PaperCount:
    """A parameter count a paper states: ``params_m`` millions for the network ``variant``
    (config fields ``args`` over the defaults) at ``scale``; ``source``: where. ``params_m``
    None: the paper states none (``iste info`` still prints ours, with "—")."""

    variant: str
    params_m: float | None
    scale: int
    source: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FixedEntry:
    """label: the method's name in tables; config: its network config dataclass; network: the
    :class:`FixedScaleSR` subclass, built as ``network(config, scale)``; scales: the integer
    scales it can be built for; published: its code and converter; paper_counts: what its
    paper states about its size (``iste info`` prints ours beside each)."""

    label: str
    config: type
    network: type[FixedScaleSR]
    scales: tuple[int, ...]
    published: PublishedFixedCode
    paper_counts: tuple[PaperCount, ...] = ()
    variant_label: Callable[[Any], str] | None = None
    """The name in tables of a network of this config (a variant that computes another
    function: SWD-Net's published RCF); None: ``label`` for every config."""


def _swdnet_label(config: SWDNetConfig) -> str:
    return "SWD-Net (published RCF)" if config.rcf == "published" else "SWD-Net"


_EDSR_PAPER = {"n_resblocks": 32, "n_feats": 256, "res_scale": 0.1}

FIXED: dict[str, FixedEntry] = {
    "edsr": FixedEntry(
        "EDSR", EDSRConfig, EDSR, (2, 3, 4),
        PublishedFixedCode("yinboc/liif", pub.convert_edsr, ("edsr", "edsr-baseline")),
        (PaperCount("EDSR", 43.0, 4, "Lim et al. 2017, Table 1", _EDSR_PAPER),
         PaperCount("EDSR-baseline", 1.5, 4, "Lim et al. 2017, Table 1"))),
    "rdn": FixedEntry(
        "RDN", RDNConfig, RDN, (2, 3, 4),
        PublishedFixedCode("yinboc/liif", pub.convert_rdn, ("rdn",)),
        (PaperCount("RDN", 22.0, 4, "Zhang et al. 2018 (about 22M)"),)),
    "swinir": FixedEntry(
        "SwinIR", SwinIRNetConfig, SwinIR, (2, 3, 4),
        PublishedFixedCode("JingyunLiang/SwinIR", pub.convert_swinir),
        (PaperCount("SwinIR classical", 11.8, 4, "Liang et al. 2021"),)),
    "swdnet": FixedEntry(
        "SWD-Net", SWDNetConfig, SWDNet, (2,),
        PublishedFixedCode("franciszchen/SWD-Net", histo.convert_swdnet),
        (PaperCount("SWD-Net", None, 2, "none found in Chen et al. 2020; published SWDNet(): "
                    "3.16M"),
         PaperCount("SWD-Net, published RCF", None, 2, "the 0.75M of those 3.16M that reach "
                    "its output (docs/histo-baselines.md)", {"rcf": "published"})),
        variant_label=_swdnet_label),
    "srmfenet": FixedEntry(
        "SRMFENet", SRMFENetConfig, SRMFENet, (2, 3, 4),
        PublishedFixedCode("xiely-123/SHISRCNet", histo.convert_srmfenet),
        (PaperCount("SRMFENet", None, 4, "none found in Xie et al. 2023; published SRResNet(): "
                    "0.88M at x4"),)),
    "li2021": FixedEntry(
        "Li et al.", Li2021Config, Li2021Generator, (2, 3, 4),
        PublishedFixedCode("uw-loci/demo_wsi_superres", histo.convert_li2021),
        (PaperCount("Li et al. generator", None, 4, "none found in Li et al. 2021; published "
                    "Generator(): 7.39M"),)),
}


def fixed_for_published(name: str) -> str | None:
    """Our fixed-scale architecture whose LIIF-style checkpoints have ``model.name`` = name."""
    for ours, entry in FIXED.items():
        if name in entry.published.spec_names:
            return ours
    return None


@dataclass(frozen=True)
class FixedConfig:
    """A fixed-scale network: ``arch`` in :data:`FIXED`, built for integer ``scale`` (one of
    the entry's ``scales``), ``args`` its config fields (missing ones take the defaults)."""

    arch: str
    scale: int
    args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.arch not in FIXED:
            raise ValueError(f"unknown fixed-scale architecture {self.arch!r}; expected one of "
                             f"{list(FIXED)}")
        scales = FIXED[self.arch].scales
        if isinstance(self.scale, bool) or self.scale not in scales:
            raise ValueError(f"{self.arch} is built for scales {list(scales)}, got "
                             f"{self.scale!r}")

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "model") -> "FixedConfig":
        cfg = parse_dataclass(cls, data, where=where)
        parse_dataclass(FIXED[cfg.arch].config, cfg.args, where=f"{where}.args")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @property
    def method_label(self) -> str:
        """The network's name in tables: "EDSR", or its variant's ("SWD-Net (published
        RCF)")."""
        entry = FIXED[self.arch]
        if entry.variant_label is None:
            return entry.label
        return entry.variant_label(parse_dataclass(entry.config, self.args,
                                                   where="model.args"))

    @property
    def label(self) -> str:
        """e.g. "EDSR x2", "SWD-Net (published RCF) x2"."""
        return f"{self.method_label} x{self.scale}"


AnyModelConfig = ModelConfig | FixedConfig


def parse_model_config(data: Any, *, where: str = "model") -> AnyModelConfig:
    """A model config from plain data: a fixed-scale network when it names an ``arch``, else
    an encoder x head model.

    Raises:
        ConfigError: naming the bad key's path.
    """
    if isinstance(data, (ModelConfig, FixedConfig)):
        return data
    if isinstance(data, dict) and "arch" in data:
        return FixedConfig.from_dict(data, where=where)
    return ModelConfig.from_dict(data, where=where)


def is_earlier_stage(init, target) -> bool:
    """Whether the model config ``init`` is an earlier stage of ``target``'s cumulative
    training: the same arbitrary-scale model with fewer cascade stages (CLIT: the k+1-stage
    model starts from the k-stage one's weights, the published ``pre_train``). Only heads whose
    config has ``stages`` cascade; any other pair (fixed-scale networks included) is not."""
    if not (isinstance(init, ModelConfig) and isinstance(target, ModelConfig)) or \
            (init.head, init.encoder, init.encoder_args) != (target.head, target.encoder,
                                                             target.encoder_args):
        return False
    cls = HEADS[target.head].config
    if "stages" not in {f.name for f in fields(cls)}:
        return False
    a = parse_dataclass(cls, init.head_args, where="init.head_args")
    b = parse_dataclass(cls, target.head_args, where="model.head_args")
    return a.stages < b.stages and replace(a, stages=b.stages) == b


MAX_PARAMETERS = 10**9
"""Largest model :func:`build_model` builds (4 GB of float32 weights; the published ISTE has
about 12 M parameters). Counted on the meta device first, so an absurd config fails in
milliseconds instead of allocating for minutes."""


def build_model(config: AnyModelConfig | dict) -> SRHead | FixedScaleSR:
    """Build a randomly initialised model. It carries ``model.model_config`` (its config),
    ``model.architecture`` (:func:`model_label`), ``model.checkpoint_meta`` and
    ``model.checkpoint_written_by`` (``{}``; :func:`~iste.models.checkpoint.load_model`
    fills them from the file), as :class:`~iste.models.base.SRModel` declares.

    Raises:
        ConfigError: a bad config, or more than :data:`MAX_PARAMETERS` parameters.
    """
    config = parse_model_config(config)
    with torch.device("meta"):
        n = count_parameters(_build(config))
    if n > MAX_PARAMETERS:
        raise ConfigError(f"model: {describe_config(config)} would have {n:,} parameters "
                          f"(more than {MAX_PARAMETERS:,}); check its sizes")
    # float32 whatever the process's default dtype: a host program's
    # torch.set_default_dtype(torch.float64) built float64 weights, which no input matched
    model = _build(config).float()
    model.model_config, model.architecture = config, model_label(config)
    model.checkpoint_meta, model.checkpoint_written_by = {}, {}
    return model


def method_label(config: ModelConfig) -> str:
    """The method's name in tables: its head's label ("LIIF"), or its variant's ("CLIT",
    "ISTE (no-lfi)")."""
    entry = HEADS[config.head]
    if entry.variant_label is None:
        return entry.label
    return entry.variant_label(parse_dataclass(entry.config, config.head_args,
                                               where="model.head_args"))


def model_label(config: AnyModelConfig) -> str:
    """A model in the words of the paper's tables: "ISTE + edsr-baseline", "CLIT + swinir",
    "ISTE (no-lfi) + rdn", "EDSR x2"."""
    if isinstance(config, FixedConfig):
        return config.label
    return f"{method_label(config)} + {config.encoder}"


def describe_config(config: AnyModelConfig) -> str:
    """A short name: "iste/swinir" or "EDSR x2"."""
    if isinstance(config, FixedConfig):
        return config.label
    return f"{config.head}/{config.encoder}"


def _build(config: AnyModelConfig) -> SRHead | FixedScaleSR:
    if isinstance(config, FixedConfig):
        entry = FIXED[config.arch]
        net_cfg = parse_dataclass(entry.config, config.args, where="model.args")
        try:
            return entry.network(net_cfg, config.scale)
        except ValueError as err:
            raise ConfigError(f"model.args: {error_line(err, 200)}") from err
    entry = HEADS[config.head]
    head_cfg = parse_dataclass(entry.config, config.head_args, where="model.head_args")
    try:
        encoder = build_encoder(config.encoder, dict(config.encoder_args))
    except ValueError as err:
        raise ConfigError(f"model.encoder: {error_line(err, 200)}") from err
    try:
        return entry.head(encoder, head_cfg)
    except ValueError as err:
        raise ConfigError(f"model.head_args: {error_line(err, 200)}") from err


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
