"""Gated residual network (TFT, Lim et al. 2021): the shared nonlinearity of VSN and temporal fusion."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class GLU(nn.Module):
    """Gated linear unit ``a * sigmoid(b)`` with ``[a, b] = Linear(x)``.

    Args:
        d_in: input width.
        d_out: output width.

    Shapes:
        x: (..., d_in) -> (..., d_out)
    """

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, 2 * d_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.glu(self.proj(x), dim=-1)  # a * sigmoid(b), one fused kernel (fwd and bwd)


class GRN(nn.Module):
    """``LayerNorm(skip(x) + GLU(Dropout(W2 ELU(W1 x))))``.

    Args:
        d_in: input width.
        d_hidden: width of the inner ELU layer.
        d_out: output width (a linear skip projection is added when ``d_in != d_out``).
        dropout: dropout before the gate.

    Shapes:
        x: (..., d_in) -> (..., d_out)
    """

    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_hidden)
        self.gate = GLU(d_hidden, d_out)
        self.skip = nn.Linear(d_in, d_out) if d_in != d_out else nn.Identity()
        self.norm = nn.LayerNorm(d_out)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc2(F.elu(self.fc1(x)))  # (..., d_hidden)
        return self.norm(self.skip(x) + self.gate(self.dropout(h)))  # (..., d_out)
