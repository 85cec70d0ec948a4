"""What every model iste builds carries, whichever family it belongs to (an arbitrary-scale
head, :class:`~iste.models.heads.base.SRHead`, or a fixed-scale network,
:class:`~iste.models.fixed.base.FixedScaleSR`).

Declared once here, set on every instance by :func:`iste.models.registry.build_model` (and
filled from the file by :func:`iste.models.checkpoint.load_model`), so callers read these
attributes and never probe for them:
    model_config: the config it was built from (a ``ModelConfig`` or a ``FixedConfig``).
    architecture: what it is, in the words of the paper's tables ("ISTE + edsr-baseline",
        "CLIT + swinir", "ISTE (no-lfi) + rdn", "EDSR x2";
        :func:`iste.models.registry.model_label`).
    checkpoint_meta: the free metadata of the checkpoint it was loaded from (``{}`` for a
        model just built; see :func:`iste.models.checkpoint.is_untrained`).
    checkpoint_written_by: the iste and torch versions that wrote that checkpoint (``{}`` for
        a model just built, or a file older than the record).
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["SRModel"]


class SRModel(nn.Module):
    """Base class of every super-resolution model in the registry."""

    model_config: Any  # the registry's config classes; the registry imports the models
    architecture: str
    checkpoint_meta: dict[str, Any]
    checkpoint_written_by: dict[str, str]
    uses_key_set: bool = False
    """Whether the model takes STF key sets (ISTE with STF: :class:`~iste.models.heads.base.SRHead`
    says what its ``query`` then takes); ``--stf-keys`` applies to no other model."""
    min_input_side: int = 1
    """The fewest LR pixels an input may have in each direction (ISTE with its LFI: 2)."""
