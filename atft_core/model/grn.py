"""Gated residual network (TFT, Lim et al. 2021): the shared nonlinearity of VSN and temporal fusion."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def cpu_fp32(x: Tensor) -> bool:
    """fp32 on the CPU outside autocast: where the CPU paths of this package (split LayerNorm / GLU,
    15-bit dropout mask, CSR GAT) were measured faster; elsewhere the stock kernels run."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


_MASK_LEVELS = 32768  # dropout masks from 15-bit integers: rate resolution 1 / 32768


def keep_mask(shape: tuple[int, ...], p: float, device: torch.device | str = "cpu") -> tuple[Tensor, float]:
    """A Bernoulli keep mask (``True`` with probability ``1 - p'``) and its scale ``1 / (1 - p')``,
    where ``p' = round(p * 32768) / 32768`` (within 1.5e-5 of ``p``; the scale uses ``p'``, so the
    dropout stays unbiased).

    Why: ``bernoulli_`` spends ~6.7 ns per element on the CPU; here each random int64 word gives
    four 15-bit integers (its four int16 lanes, sign bit masked: ``random_`` fills 63 bits), and
    ``int >= cut`` is the mask. Dropout forward+backward on (40 k, 256): 79 -> 36 ms (issue 15).
    Seeded by torch's generator like any other draw.
    """
    cut = min(round(p * _MASK_LEVELS), _MASK_LEVELS - 1)
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_()
    keep = (words.view(torch.int16)[:n].view(shape) & 0x7FFF) >= cut
    return keep, _MASK_LEVELS / (_MASK_LEVELS - cut)


def keep_mask_applies(x: Tensor, p: float) -> bool:
    """Whether dropout of rate ``p`` on ``x`` takes the :func:`keep_mask` path: fp32 on the CPU
    (:func:`cpu_fp32`) and a rate that 1/32768 steps can express (not 0, not 1); the one rule for
    every dropout of the model (``Dropout``, the VSN's shared mask, the stacked LSTM)."""
    return cpu_fp32(x) and 0 < round(p * _MASK_LEVELS) < _MASK_LEVELS


def masked_dropout(x: Tensor, p: float, mask_shape: tuple[int, ...] | None = None) -> Tensor:
    """``x`` with a :func:`keep_mask` applied and rescaled; ``mask_shape`` (default ``x.shape``) may
    broadcast, e.g. one mask shared over a window's steps."""
    keep, scale = keep_mask(tuple(x.shape) if mask_shape is None else mask_shape, p, x.device)
    return torch.where(keep, x, 0.0) * scale


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask comes from :func:`keep_mask` for fp32 on the CPU in training
    (elsewhere, and in place, ``nn.Dropout`` itself).

    Shapes:
        x: (...) -> (...)
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.inplace or not keep_mask_applies(x, self.p):
            return super().forward(x)
        return masked_dropout(x, self.p)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters, same output) that applies its gain and shift as a
    separate ``addcmul`` for fp32 on the CPU (no autocast) when the width is narrow or not a
    multiple of 8.

    Why: there PyTorch's fused CPU kernel computes the gain/shift gradients on a slow path, e.g.
    (1 M, 8) forward+backward 89 ms fused vs 40 ms split (2.25x), (320 k, 25) 53 vs 39 ms; at
    widths 16, 24, 32, 48, ... the fused kernel is faster (16-32 vs 26-35 ms) and is kept (issue
    15, measured over 8 M elements). The forward is bit-identical; gradients differ by rounding.

    Shapes:
        x: (..., d) -> (..., d)
    """

    def forward(self, x: Tensor) -> Tensor:
        d = self.normalized_shape[-1]
        if not cpu_fp32(x) or self.weight is None or self.bias is None or (d >= 16 and d % 8 == 0):
            return super().forward(x)  # the fused kernel (and its dtype rules under autocast)
        return torch.addcmul(self.bias, F.layer_norm(x, self.normalized_shape, eps=self.eps), self.weight)


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
        d = self.proj.out_features // 2
        if not cpu_fp32(x) or d >= 64:
            return F.glu(self.proj(x), dim=-1)  # a * sigmoid(b), one fused kernel (fwd and bwd)
        # narrow, fp32 on the CPU: the two halves as two matmuls (contiguous outputs, same parameters);
        # PyTorch's fused glu backward is slow there: (1 M, 8) 80 -> 46 ms, (1 M, 32) 288 -> 195 ms
        # forward+backward with the projection; at 256 wide the fused one is 4-6% faster (issue 15)
        w, b = self.proj.weight, self.proj.bias
        return F.linear(x, w[:d], b[:d]) * torch.sigmoid(F.linear(x, w[d:], b[d:]))


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
        self.norm = LayerNorm(d_out)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc2(F.elu(self.fc1(x)))  # (..., d_hidden)
        return self.norm(self.skip(x) + self.gate(self.dropout(h)))  # (..., d_out)
