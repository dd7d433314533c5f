"""Parameter-efficient variable selection network (TFT-style).

TFT gives every input variable its own full-width GRN; with ~25 features at width 256 that alone
is millions of parameters (the learned-from model reached 91M). Here each scalar feature gets a
small learned embedding (``F x d_e`` weights), ONE GRN with shared weights processes every
feature's embedding, and a GRN over the flattened embeddings produces the softmax selection
weights. The selected mixture is projected to the model width.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from atft_core.model.grn import GRN


class VariableSelection(nn.Module):
    """Per-step soft selection over F scalar features.

    Args:
        n_features: number of features F.
        d_embed: per-feature embedding width d_e (shared GRN width).
        d_hidden: hidden width of the selection GRN.
        d_out: output width (model hidden size).
        dropout: dropout inside the GRNs.

    Shapes:
        x: (N, L, F) -> (N, L, d_out); selection weights (N, L, F)
    """

    def __init__(self, n_features: int, d_embed: int, d_hidden: int, d_out: int, dropout: float) -> None:
        super().__init__()
        self.embed_weight = nn.Parameter(torch.randn(n_features, d_embed) / d_embed**0.5)
        self.embed_bias = nn.Parameter(torch.zeros(n_features, d_embed))
        self.feature_grn = GRN(d_embed, d_embed, d_embed, dropout)  # shared across features
        self.select_grn = GRN(n_features * d_embed, d_hidden, n_features, dropout)
        self.out = nn.Linear(d_embed, d_out)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        n, length, n_feat = x.shape
        emb = x.unsqueeze(-1) * self.embed_weight + self.embed_bias  # (N, L, F, d_e)
        weights = self.select_grn(emb.reshape(n, length, -1)).softmax(dim=-1)  # (N, L, F)
        processed = self.feature_grn(emb)  # (N, L, F, d_e)
        mixed = (weights.unsqueeze(-1) * processed).sum(dim=2)  # (N, L, d_e)
        return self.out(mixed), weights  # (N, L, H), (N, L, F)
