"""Frequency Adaptive Normalization (Ye et al., NeurIPS 2024).

Per stock window and feature channel the window is transformed with an rFFT along time; the
``top_k`` frequencies with the largest amplitude are taken as the non-stationary part (level,
trend, dominant cycles), removed by an inverse rFFT, and the stationary residual is what the
rest of the model sees. The removed part is not thrown away: the model receives a learned
projection of it, so level information stays available but no longer dominates the input.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FAN(nn.Module):
    """Split a window into its top-k-frequency part and the residual.

    Args:
        n_features: number of input channels F.
        top_k: number of rFFT frequencies (largest amplitude, per window and channel) removed.
        d_out: width of the projection of the removed part.

    Shapes:
        x: (N, L, F) -> residual (N, L, F), removed-part projection (N, L, d_out)
    """

    def __init__(self, n_features: int, top_k: int, d_out: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.nonstat_proj = nn.Linear(n_features, d_out)

    @staticmethod
    def decompose(x: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
        """Return ``(residual, removed)`` with ``residual + removed == x`` (fp32, no parameters)."""
        length = x.shape[1]
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float()  # FFT has no bf16 kernel and needs the precision anyway
            spec = torch.fft.rfft(xf, dim=1)  # (N, L//2+1, F) complex
            k = min(top_k, spec.shape[1])
            top = spec.abs().topk(k, dim=1).indices  # (N, k, F)
            keep = torch.zeros(spec.shape, dtype=torch.bool, device=x.device)
            keep.scatter_(1, top, True)
            removed = torch.fft.irfft(spec * keep, n=length, dim=1)  # (N, L, F)
            return xf - removed, removed

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        residual, removed = self.decompose(x, self.top_k)  # (N, L, F) each
        return residual.to(x.dtype), self.nonstat_proj(removed)  # (N, L, F), (N, L, d_out)
