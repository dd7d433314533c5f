"""Temporal fusion: LSTM encoder + causal multi-head self-attention (TFT decoder style)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from atft_core.model.grn import GLU, GRN, Dropout, LayerNorm, keep_mask_applies, masked_dropout


class LSTM(nn.LSTM):
    """``nn.LSTM`` (same parameters and state dict; ``batch_first``, unidirectional, no
    projection) whose dropout between stacked layers draws a :func:`~atft_core.model.grn.keep_mask`
    for fp32 on the CPU in training: the layers run one by one (the same oneDNN kernel), seq-first
    so the batch-first transpose happens once, with the 15-bit mask in between.

    Why: the stacked call draws that mask with ``bernoulli_``, 59 ms of a 2.1 s step at hidden 256
    (2,000 stocks x 20 steps x 256); the 15-bit mask costs ~20 ms (issue 15: `bench model` at
    hidden 256, 8 paired runs, 1.7 % faster on average, below one run's noise). Elsewhere (GPU,
    bf16, eval, one layer) the stock call runs.

    Shapes:
        x: (N, L, H_in) -> output (N, L, H), (h_n, c_n) each (layers, N, H)
    """

    def forward(self, x: Tensor, hx=None):  # type: ignore[override]
        stock = (hx is not None or not isinstance(x, Tensor) or not self.training
                 or not keep_mask_applies(x, self.dropout) or self.num_layers < 2 or self.bidirectional
                 or self.proj_size or not self.batch_first or x.dim() != 3)
        if stock:
            return super().forward(x, hx)
        h = x.transpose(0, 1)  # (L, N, H_in) seq-first: one transpose in, one out
        zeros = x.new_zeros(1, x.shape[0], self.hidden_size)
        per_layer = len(self._flat_weights) // self.num_layers
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            if layer:
                h = masked_dropout(h, self.dropout)
            weights = self._flat_weights[layer * per_layer:(layer + 1) * per_layer]
            h, hl, cl = torch.lstm(h, (zeros, zeros), weights, self.bias, 1, 0.0, True, False, False)
            h_n.append(hl)
            c_n.append(cl)
        return h.transpose(0, 1), (torch.cat(h_n), torch.cat(c_n))  # (N, L, H)


class TemporalFusion(nn.Module):
    """LSTM -> gated skip + LayerNorm -> causal self-attention -> gated skip + LayerNorm -> GRN.

    Each sub-layer is ``LayerNorm(x + GLU(Dropout(sublayer(x))))``. Attention is causal: step t
    attends to steps <= t only, so the embedding never depends on a later step than the one it
    summarises. With ``last_only=True`` (the model's path) only the last step is used as the
    attention query and fed through the feed-forward GRN; this is exactly the last row of the full
    causal computation at 1/L of the attention and GRN cost.

    Args:
        d_model: hidden size H.
        n_heads: attention heads (must divide H).
        lstm_layers: stacked LSTM layers.
        ffn_mult: the feed-forward GRN's hidden width is ``ffn_mult * H``.
        dropout: dropout rate.

    Shapes:
        v: (N, L, H) -> (N, H) with ``last_only`` else (N, L, H)
    """

    def __init__(self, d_model: int, n_heads: int, lstm_layers: int, ffn_mult: int, dropout: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"hidden_size {d_model} is not divisible by attn_heads {n_heads}")
        self.lstm = LSTM(d_model, d_model, num_layers=lstm_layers, batch_first=True,
                         dropout=dropout if lstm_layers > 1 else 0.0)
        self.lstm_gate = GLU(d_model, d_model)
        self.lstm_norm = LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.attn_gate = GLU(d_model, d_model)
        self.attn_norm = LayerNorm(d_model)
        self.ffn = GRN(d_model, ffn_mult * d_model, d_model, dropout)
        self.dropout = Dropout(dropout)
        self.use_attention = True

    def forward(self, v: Tensor, last_only: bool = True) -> Tensor:
        h, _ = self.lstm(v)  # (N, L, H)
        u = self.lstm_norm(v + self.lstm_gate(self.dropout(h)))  # (N, L, H)
        q = u[:, -1:] if last_only else u  # (N, Lq, H)
        if self.use_attention:
            length = u.shape[1]
            causal = None
            if not last_only:  # the last query may see every step anyway
                causal = torch.ones(length, length, dtype=torch.bool, device=u.device).triu(1)
            a, _ = self.attn(q, u, u, attn_mask=causal, need_weights=False)  # (N, Lq, H)
            q = self.attn_norm(q + self.attn_gate(self.dropout(a)))  # (N, Lq, H)
        out = self.ffn(q)  # (N, Lq, H)
        return out[:, -1] if last_only else out
