"""The coordinate MLPs of the LIIF family, with the first layer split by input part."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Linear/ReLU stack ``in_dim -> hidden... -> out_dim`` applied to the last axis.

    Parameter names (``layers.{2k}.weight``) follow the LIIF family's checkpoints.

    Besides the plain ``forward``, the first layer can be split by input part: for an input
    ``[feat; extra]``, ``W [feat; extra] + b = W_f feat + (W_e extra + b)``. Heads use
    :meth:`project_feat` once per low-resolution pixel (where ``feat`` depends only on the
    pixel) and :meth:`forward_projected` once per query — the same function, computed with
    fewer multiplications.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: tuple[int, ...] | list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        last = in_dim
        for width in hidden:
            layers += [nn.Linear(last, width), nn.ReLU()]
            last = width
        layers.append(nn.Linear(last, out_dim))
        self.layers = nn.Sequential(*layers)
        self.in_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in_dim) -> (..., out_dim)."""
        return self.layers(x)

    def project_feat(self, feat: torch.Tensor) -> torch.Tensor:
        """First layer's contribution of the leading ``F`` input channels, without bias.

        feat: (..., F) with F < in_dim -> (..., width of the first layer).
        """
        first = self.layers[0]
        return feat @ first.weight[:, : feat.shape[-1]].t()

    def forward_projected(self, feat_proj: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        """Finish the MLP from :meth:`project_feat`'s output and the trailing inputs.

        feat_proj: (..., width) from :meth:`project_feat`; extra: (..., in_dim - F), the
        inputs that follow the feature channels. Returns (..., out_dim).
        """
        first = self.layers[0]
        n_extra = extra.shape[-1]
        x = torch.addmm(first.bias, extra.reshape(-1, n_extra),
                        first.weight[:, first.in_features - n_extra:].t())
        x = x.view(*extra.shape[:-1], -1) + feat_proj
        return self.layers[1:](x)
