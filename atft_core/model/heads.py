"""One prediction head per horizon (point forecast, optional quantiles)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atft_core.model.grn import Dropout


class HorizonHeads(nn.Module):
    """Per horizon an MLP ``H -> H -> 1 + Q`` (point forecast, then Q quantiles).

    Args:
        d_model: hidden size H.
        n_horizons: number of horizons.
        n_quantiles: number of quantile outputs per horizon (0 = none).
        dropout: dropout before the output layer.

    Shapes:
        z: (N, H_model) -> point (N, n_horizons), quantiles (N, n_horizons, Q)
    """

    def __init__(self, d_model: int, n_horizons: int, n_quantiles: int, dropout: float) -> None:
        super().__init__()
        self.n_quantiles = n_quantiles
        self.hidden = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(n_horizons))
        self.out = nn.ModuleList(nn.Linear(d_model, 1 + n_quantiles) for _ in range(n_horizons))
        self.dropout = Dropout(dropout)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        outs = [o(self.dropout(F.gelu(hid(z)))) for hid, o in zip(self.hidden, self.out)]
        y = torch.stack(outs, dim=1)  # (N, n_horizons, 1 + Q)
        return y[..., 0], y[..., 1:]
