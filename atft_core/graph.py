"""The day graph (SPEC 3.5): correlation kNN + same-sector edges, vectorised in torch.

Decisions:

* **Correlation with gaps.** Each stock's window is demeaned and scaled over its own finite
  entries; missing entries then contribute 0 ("zero-imputed" Pearson). With no gaps this is exactly
  the Pearson correlation (``np.corrcoef``). A stock with fewer than ``min_obs`` finite returns in
  the window (new listings) gets rho = 0 to everyone, so it only has sector edges.
* **Ranking.** kNN picks the k partners with the largest ``|rho|`` (a strongly negative partner is
  as informative as a positive one) among those with ``|rho| >= min_abs_corr``. Same-sector edges
  go to up to ``max_sector_neighbours`` same-sector stocks, again by largest ``|rho|`` (``topk``:
  exact ties, e.g. short-history stocks with rho = 0, are broken deterministically but by
  position). Stocks with an unknown sector (id < 0) get no sector edges.
* The union is made undirected (both directions present), deduplicated, without self loops, and
  sorted by (src, dst) so the output is a deterministic function of the input.
"""

from __future__ import annotations

import torch
from torch import Tensor

from atft_core.config import GraphConfig


def window_correlation(returns: Tensor, min_obs: int) -> Tensor:
    """NaN-safe Pearson correlation between rows.

    Shapes: returns (N, W) (NaN = missing) -> rho (N, N) float32, diagonal 0.
    """
    r = returns.to(torch.float64)
    ok = torch.isfinite(r)
    n_obs = ok.sum(1)  # (N,)
    r0 = torch.where(ok, r, torch.zeros((), dtype=r.dtype))
    mean = r0.sum(1) / n_obs.clamp(min=1)
    d = torch.where(ok, r - mean[:, None], torch.zeros((), dtype=r.dtype))  # (N, W)
    norm = d.pow(2).sum(1).sqrt()  # (N,)
    valid = (n_obs >= min_obs) & (norm > 1e-12)
    z = torch.where(valid[:, None], d / norm.clamp(min=1e-12)[:, None], torch.zeros((), dtype=r.dtype))
    rho = (z @ z.T).clamp(-1.0, 1.0)
    rho.fill_diagonal_(0.0)
    return rho.to(torch.float32)


def build_day_graph(returns: Tensor, sectors: Tensor, cfg: GraphConfig) -> tuple[Tensor, Tensor]:
    """Edges of one day's graph; node i is row i of ``returns``.

    Args:
        returns: (N, W) trailing daily returns ending at the day itself (inclusive), NaN = missing.
        sectors: (N,) int64 sector id, < 0 = unknown.
        cfg: k, min_abs_corr, sector_edges, max_sector_neighbours.

    Returns:
        edge_index (2, E) int64 and edge_attr (E, 2) float32 = [rho, same_sector].
    """
    n = returns.shape[0]
    if n < 2:
        return torch.zeros((2, 0), dtype=torch.int64), torch.zeros((0, 2), dtype=torch.float32)
    min_obs = max(3, returns.shape[1] // 2)
    rho = window_correlation(returns, min_obs)  # (N, N)
    score = rho.abs()
    eye = torch.eye(n, dtype=torch.bool)
    src_parts, dst_parts = [], []

    k = min(cfg.k, n - 1)
    if k > 0:
        s = score.masked_fill(eye, -1.0)
        top, order = torch.topk(s, k, dim=1)  # (N, k)
        keep = top >= max(cfg.min_abs_corr, 1e-12)
        rows = torch.arange(n)[:, None].expand(n, k)
        src_parts.append(rows[keep])
        dst_parts.append(order[keep])

    same = (sectors[:, None] == sectors[None, :]) & (sectors[:, None] >= 0) & ~eye  # (N, N)
    m = min(cfg.max_sector_neighbours, n - 1)
    if cfg.sector_edges and m > 0 and bool(same.any()):
        s = torch.where(same, score, torch.full_like(score, -1.0))
        order = torch.topk(s, m, dim=1).indices  # (N, m)
        keep = torch.gather(same, 1, order)
        rows = torch.arange(n)[:, None].expand(n, m)
        src_parts.append(rows[keep])
        dst_parts.append(order[keep])

    if not src_parts:
        return torch.zeros((2, 0), dtype=torch.int64), torch.zeros((0, 2), dtype=torch.float32)
    src = torch.cat(src_parts)
    dst = torch.cat(dst_parts)
    a = torch.cat([src, dst])
    b = torch.cat([dst, src])
    key = torch.unique(a * n + b)  # sorted -> deterministic (src, dst) order
    src, dst = key // n, key % n
    attr = torch.stack([rho[src, dst], same[src, dst].to(torch.float32)], dim=1)
    return torch.stack([src, dst]), attr
