"""Graph attention over the day graph (GATv2, Brody et al. 2022) with a gated fusion."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atft_core.model.grn import Dropout, LayerNorm, cpu_fp32
from atft_core.model.sparse_gat import EdgeCSR, SparseGATv2Conv


class GraphFusion(nn.Module):
    """``z = h + g * gat(u)`` with ``g = sigmoid(W [h, gat(u)])`` and a stack of GATv2Conv layers.

    The GAT input is ``u = h + P x_last``: the embedding plus a linear projection of each stock's
    latest raw feature vector. Why: a signal that lives in the neighbours' *latest* returns (a
    lead-lag spill-over) must reach the messages, but the temporal encoder was trained (phase 1,
    no graph) to keep only what predicts a stock's OWN future, and may have dropped it. Measured on
    the ``signal="neighbour"`` market (150 stocks, strength 0.3, 200 steps, val RankIC@1d): 0.10-0.13
    without the projection, 0.15-0.17 with it (no graph: ~0.0).

    Edges never cross days (the batch is the block-diagonal union of its day graphs), so one call
    serves all K days. Edge features are ``[rho, same_sector]``. Heads are averaged (``concat=False``)
    so every head works at the full width H. For fp32 on the CPU (no autocast) the layers run in
    CSR form (:class:`SparseGATv2Conv`, same parameters, results equal to fp32 rounding; measured
    faster there), elsewhere as PyG's ``GATv2Conv``.

    Args:
        d_model: hidden size H.
        n_heads: attention heads per layer.
        n_layers: number of GATv2Conv layers.
        edge_dim: width of edge_attr (2).
        dropout: dropout on attention coefficients and between layers.
        n_inputs: width F of ``x_last`` (0 = no raw-feature projection).

    Shapes:
        h: (N, H), edge_index: (2, E), edge_attr: (E, edge_dim), x_last: (N, F) -> (N, H)
    """

    def __init__(self, d_model: int, n_heads: int, n_layers: int, edge_dim: int, dropout: float,
                 n_inputs: int = 0) -> None:
        super().__init__()
        self.input_proj = nn.Linear(n_inputs, d_model) if n_inputs > 0 else None
        self.convs = nn.ModuleList(
            SparseGATv2Conv(d_model, d_model, heads=n_heads, concat=False, dropout=dropout,
                            edge_dim=edge_dim, add_self_loops=True, fill_value="mean")
            for _ in range(n_layers)
        )
        self.norms = nn.ModuleList(LayerNorm(d_model) for _ in range(n_layers))
        self.gate = nn.Linear(2 * d_model, d_model)
        self.dropout = Dropout(dropout)

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor, x_last: Tensor | None = None) -> Tensor:
        g = h
        if self.input_proj is not None:
            if x_last is None:
                raise ValueError("x_last (N, F) is required when n_inputs > 0")
            g = h + self.input_proj(x_last.to(h.dtype))  # (N, H)
        csr = None  # one CSR graph (self loops added) for every layer
        if cpu_fp32(g) and all(conv.supports_sparse() for conv in self.convs):
            csr = EdgeCSR(edge_index, edge_attr.to(g.dtype), g.shape[0])
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            out = conv(g, edge_index, edge_attr.to(g.dtype)) if csr is None else conv.sparse_forward(g, csr)
            g = norm(out)  # (N, H)
            if i < len(self.convs) - 1:
                g = self.dropout(F.elu(g))
        gate = torch.sigmoid(self.gate(torch.cat([h, g], dim=-1)))  # (N, H)
        return h + gate * g  # (N, H)
