"""Graph attention over the day graph (GATv2, Brody et al. 2022) with a gated fusion."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATv2Conv


class GraphFusion(nn.Module):
    """``z = h + g * gat(h)`` with ``g = sigmoid(W [h, gat(h)])`` and a stack of GATv2Conv layers.

    Edges never cross days (the batch is the block-diagonal union of its day graphs), so one call
    serves all K days. Edge features are ``[rho, same_sector]``. Heads are averaged (``concat=False``)
    so every head works at the full width H.

    Args:
        d_model: hidden size H.
        n_heads: attention heads per layer.
        n_layers: number of GATv2Conv layers.
        edge_dim: width of edge_attr (2).
        dropout: dropout on attention coefficients and between layers.

    Shapes:
        h: (N, H), edge_index: (2, E), edge_attr: (E, edge_dim) -> (N, H)
    """

    def __init__(self, d_model: int, n_heads: int, n_layers: int, edge_dim: int, dropout: float) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            GATv2Conv(d_model, d_model, heads=n_heads, concat=False, dropout=dropout,
                      edge_dim=edge_dim, add_self_loops=True, fill_value="mean")
            for _ in range(n_layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
        self.gate = nn.Linear(2 * d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        g = h
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            g = norm(conv(g, edge_index, edge_attr.to(g.dtype)))  # (N, H)
            if i < len(self.convs) - 1:
                g = self.dropout(F.elu(g))
        gate = torch.sigmoid(self.gate(torch.cat([h, g], dim=-1)))  # (N, H)
        return h + gate * g  # (N, H)
