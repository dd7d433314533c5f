"""ATFT-GAT-FAN: FAN -> VSN -> temporal fusion -> GAT fusion -> per-horizon heads.

One forward call serves a whole :class:`~atft_core.batch.DayBatch` (K days concatenated, the
block-diagonal union of their graphs). Loss and metrics are never computed here
(:mod:`atft_core.losses`, :mod:`atft_core.evaluate`).

Block switches (:meth:`ATFTGATFAN.set_blocks`) skip the block in ``forward``: with ``fan=False``
the raw window goes straight into the VSN and the FAN projection is unused; with ``gat=False``
the embedding goes straight to the heads (with it on, the GAT also sees each stock's latest
raw features, see :class:`~atft_core.model.gat.GraphFusion`); with ``attention=False`` the
temporal fusion is LSTM + feed-forward only. A skipped block's parameters receive no gradient (``.grad is None``).
"""

from __future__ import annotations

from torch import Tensor, nn

from atft_core.config import Blocks, ModelConfig
from atft_core.model.fan import FAN
from atft_core.model.gat import GraphFusion
from atft_core.model.heads import HorizonHeads
from atft_core.model.temporal import TemporalFusion
from atft_core.model.vsn import VariableSelection

EDGE_DIM = 2  # edge_attr = [rho, same_sector]


class ATFTGATFAN(nn.Module):
    """Adaptive temporal fusion transformer + graph attention + frequency adaptive normalisation.

    Args:
        cfg: model hyper-parameters (:class:`~atft_core.config.ModelConfig`).
        n_features: number of input features F.
        horizons: forecast horizons in trading days, e.g. ``(1, 5, 10, 20)``.

    Shapes:
        x: (N, L, F) float, edge_index: (2, E) int64, edge_attr: (E, 2) float
        -> (N, len(horizons)) point forecasts
    """

    def __init__(self, cfg: ModelConfig, n_features: int, horizons: tuple[int, ...]) -> None:
        super().__init__()
        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        if not horizons:
            raise ValueError("horizons must not be empty")
        d = cfg.hidden_size
        self.cfg = cfg
        self.n_features = n_features
        self.horizons = tuple(int(h) for h in horizons)
        self.fan = FAN(n_features, cfg.fan_top_k, d)
        self.vsn = VariableSelection(n_features, cfg.vsn_feature_dim, cfg.vsn_hidden, d, cfg.dropout)
        self.temporal = TemporalFusion(d, cfg.attn_heads, cfg.lstm_layers, cfg.ffn_mult, cfg.dropout)
        self.graph = GraphFusion(d, cfg.gat_heads, cfg.gat_layers, EDGE_DIM, cfg.dropout, n_inputs=n_features)
        self.heads = HorizonHeads(d, len(self.horizons), len(cfg.quantiles), cfg.dropout)
        self.blocks = Blocks()

    def set_blocks(self, blocks: Blocks) -> None:
        """Switch GAT / FAN / attention on or off for the following forward calls."""
        self.blocks = blocks
        self.temporal.use_attention = blocks.attention

    def embed(self, x: Tensor) -> Tensor:
        """Per-stock embedding before the graph: (N, L, F) -> (N, H)."""
        if x.ndim != 3 or x.shape[-1] != self.n_features:
            raise ValueError(f"x must be (N, L, {self.n_features}), got {tuple(x.shape)}")
        if self.blocks.fan:
            residual, nonstat = self.fan(x)  # (N, L, F), (N, L, H)
            v, _ = self.vsn(residual)  # (N, L, H)
            v = v + nonstat
        else:
            v, _ = self.vsn(x)  # (N, L, H)
        return self.temporal(v, last_only=True)  # (N, H)

    def forward_with_quantiles(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> tuple[Tensor, Tensor]:
        """Point forecasts (N, H) and quantile forecasts (N, H, Q) (Q = len(cfg.quantiles))."""
        h = self.embed(x)  # (N, D)
        if self.blocks.gat:
            if edge_index.ndim != 2 or edge_index.shape[0] != 2:
                raise ValueError(f"edge_index must be (2, E), got {tuple(edge_index.shape)}")
            if edge_attr.shape != (edge_index.shape[1], EDGE_DIM):
                raise ValueError(f"edge_attr must be (E, {EDGE_DIM}) with E={edge_index.shape[1]}, "
                                 f"got {tuple(edge_attr.shape)}")
            h = self.graph(h, edge_index, edge_attr, x_last=x[:, -1])  # (N, D)
        return self.heads(h)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        point, _ = self.forward_with_quantiles(x, edge_index, edge_attr)
        return point  # (N, H)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
