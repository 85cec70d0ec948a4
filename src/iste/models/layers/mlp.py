"""The coordinate MLPs of the LIIF family, with the first layer split by input part."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from iste.models.layers.linear import linear

Activation = Literal["relu", "gelu"]


class MLP(nn.Module):
    """Linear/activation stack ``in_dim -> hidden... -> out_dim`` applied to the last axis
    (ReLU, or the exact GELU some published heads use).

    Parameter names (``layers.{2k}.weight``) follow the LIIF family's checkpoints.

    Besides the plain ``forward``, the first layer can be split by input part: for an input
    ``[feat; extra]``, ``W [feat; extra] + b = (W_f feat + b) + W_e extra``. Heads use
    :meth:`project_feat` once per low-resolution pixel (where ``feat`` depends only on the
    pixel) and :meth:`forward_projected` once per query — the same function, computed with
    fewer multiplications.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: tuple[int, ...] | list[int],
                 act: Activation = "relu"):
        super().__init__()
        if act not in ("relu", "gelu"):
            raise ValueError(f"activation must be 'relu' or 'gelu', got {act!r}")
        layers: list[nn.Module] = []
        last = in_dim
        for width in hidden:
            layers += [nn.Linear(last, width), nn.ReLU() if act == "relu" else nn.GELU()]
            last = width
        layers.append(nn.Linear(last, out_dim))
        self.layers = nn.Sequential(*layers)
        self.in_dim = in_dim
        self.act = act

    def _hidden(self, x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
        relu = self.act == "relu"
        return linear(x, layer.weight, layer.bias, relu=relu, gelu=not relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in_dim) -> (..., out_dim)."""
        return self._layers_from(0, x)

    def forward_from_first(self, first: torch.Tensor) -> torch.Tensor:
        """Finish the MLP from the first layer's output (bias included, before activation)."""
        if len(self.layers) == 1:
            return first
        return self._layers_from(2, first.relu() if self.act == "relu" else F.gelu(first))

    def hidden_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer's activations: (..., in_dim) -> (..., last hidden width)
        (for heads that apply the output layer themselves, reassociated)."""
        mods = self.layers
        for i in range(0, len(mods) - 1, 2):
            x = self._hidden(x, mods[i])
        return x

    def _layers_from(self, first: int, x: torch.Tensor) -> torch.Tensor:
        """Apply ``layers[first:]`` (``first`` indexes a Linear), each hidden Linear fused with
        its ReLU (:func:`~iste.models.layers.linear.linear`)."""
        mods = self.layers
        for i in range(first, len(mods) - 1, 2):
            x = self._hidden(x, mods[i])
        return linear(x, mods[-1].weight, mods[-1].bias)

    def project_feat(self, feat: torch.Tensor) -> torch.Tensor:
        """First layer's contribution of the leading ``F`` input channels, bias included.

        feat: (..., F) with F < in_dim -> (..., width of the first layer).
        """
        first = self.layers[0]
        return linear(feat, first.weight[:, : feat.shape[-1]], first.bias)

    def forward_projected(self, feat_proj: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        """Finish the MLP from :meth:`project_feat`'s output and the trailing inputs.

        feat_proj: (..., width) from :meth:`project_feat`; extra: (..., in_dim - F), the
        inputs that follow the feature channels. Returns (..., out_dim).
        """
        first = self.layers[0]
        n_extra = extra.shape[-1]
        x = torch.addmm(feat_proj.reshape(-1, feat_proj.shape[-1]), extra.reshape(-1, n_extra),
                        first.weight[:, first.in_features - n_extra:].t())
        x = x.view(*extra.shape[:-1], -1)
        if len(self.layers) == 1:  # no hidden layer: the first layer was the output layer
            return x
        return self._layers_from(2, x.relu_() if self.act == "relu" else F.gelu(x))
