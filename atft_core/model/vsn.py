"""Parameter-efficient variable selection network (TFT-style).

TFT gives every input variable its own full-width GRN; with ~25 features at width 256 that alone
is millions of parameters (the learned-from model reached 91M). Here each scalar feature gets a
small learned embedding (``F x d_e`` weights), ONE GRN with shared weights processes every
feature's embedding, and a GRN over the flattened embeddings produces the softmax selection
weights. The selected mixture is projected to the model width.

Speed (issue 15): the embedding ``e_f = x_f w_f + b_f`` is affine in the scalar ``x_f``, so every
linear map applied directly to it is folded into a map of ``x`` (same parameters, same function,
float rounding aside):
* the selection GRN's first layer and skip read the flattened (F * d_e)-wide embedding: they become
  ``Linear(F -> .)`` on ``x`` with weights ``sum_k w_fk W[:, f, k]`` (the (N, L, F * d_e) tensor is
  never multiplied, and never receives a gradient);
* the shared feature GRN's first layer becomes ``x_f A_f + B_f`` (one fused multiply-add instead
  of a matmul over N * L * F rows);
* the selection-weighted sum over features is one batched matmul (no (N, L, F, d_e) product).
The largest tensors are (N, L, F, d_e): they set this block's cost, so fewer passes over them
is what makes it faster.

Decision: the feature GRN's dropout mask is shared over the L steps of a window (variational
dropout, Gal & Ghahramani 2016, as for recurrent inputs): one draw per (stock, feature, unit)
instead of L. Per-element Bernoulli draws over the (N, L, F, d_e) tensor cost more than the rest
of the block on a CPU (measured 1.75x -> 1.11x speed-up with them). Evaluation is unaffected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atft_core.model.grn import GRN, keep_mask_applies, masked_dropout


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

    def _fold(self, layer: nn.Linear) -> tuple[Tensor, Tensor]:
        """``layer`` applied to the flattened embedding == ``F.linear(x, weight, bias)`` of these."""
        n_feat, d_e = self.embed_weight.shape
        w = layer.weight.view(layer.out_features, n_feat, d_e)  # (out, F, d_e)
        weight = torch.einsum("ofk,fk->of", w, self.embed_weight)  # (out, F)
        bias = torch.einsum("ofk,fk->o", w, self.embed_bias) + layer.bias  # (out,)
        return weight, bias

    def _selection(self, x: Tensor) -> Tensor:
        """``select_grn(embedding)`` without forming the (N, L, F * d_e) input: (N, L, F) -> (N, L, F)."""
        g = self.select_grn
        w1, b1 = self._fold(g.fc1)
        h = g.fc2(F.elu(F.linear(x, w1, b1)))  # (N, L, d_hidden)
        ws, bs = self._fold(g.skip)
        return g.norm(F.linear(x, ws, bs) + g.gate(g.dropout(h)))  # (N, L, F)

    def _features(self, x: Tensor) -> Tensor:
        """``feature_grn(embedding)`` with its first layer folded: (N, L, F) -> (N, L, F, d_e)."""
        g = self.feature_grn
        xe = x.unsqueeze(-1)  # (N, L, F, 1)
        emb = torch.addcmul(self.embed_bias, xe, self.embed_weight)  # (N, L, F, d_e)
        a = self.embed_weight @ g.fc1.weight.T  # (F, d_e)
        b = self.embed_bias @ g.fc1.weight.T + g.fc1.bias  # (F, d_e)
        h = g.fc2(F.elu(torch.addcmul(b, xe, a)))  # (N, L, F, d_e)
        p = g.dropout.p
        if self.training and p > 0:  # one mask per window, shared over its L steps (see above)
            shape = (h.shape[0], 1, *h.shape[2:])
            if keep_mask_applies(h, p):  # the faster mask of grn.Dropout
                h = masked_dropout(h, p, shape)
            else:
                h = h * h.new_empty(shape).bernoulli_(1 - p).div_(1 - p)
        return g.norm(emb + g.gate(h))  # skip is the identity (d_in == d_out)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        weights = self._selection(x).softmax(dim=-1)  # (N, L, F)
        processed = self._features(x)  # (N, L, F, d_e)
        mixed = torch.matmul(weights.unsqueeze(-2), processed).squeeze(-2)  # (N, L, d_e)
        return self.out(mixed), weights  # (N, L, H), (N, L, F)
