"""The day graph (SPEC 3.5): correlation kNN + same-sector edges, vectorised in torch.

Decisions:

* **Correlation with gaps.** Each stock's window is demeaned and scaled over its own finite
  entries; missing entries then contribute 0 ("zero-imputed" Pearson). With no gaps this is exactly
  the Pearson correlation (``np.corrcoef``). A stock with fewer than ``min_obs`` finite returns in
  the window (new listings) gets rho = 0 to everyone, so it only has sector edges.
* **Ranking.** kNN picks the k partners with the largest ``|rho|`` (a strongly negative partner is
  as informative as a positive one) among those with ``|rho| >= min_abs_corr``. Same-sector edges
  go to up to ``max_sector_neighbours`` same-sector stocks, again by largest ``|rho|`` (exact
  ties, e.g. short-history stocks with rho = 0, go to the lower row index). Stocks with an unknown sector (id < 0) get no sector edges.
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


def _tie_broken(score: Tensor) -> Tensor:
    """``score`` in float64 minus ``1e-15 * column``: exact ties go to the lower column index, in
    :func:`build_day_graph` and :func:`build_day_graphs` alike (``topk`` alone breaks ties in an
    order that depends on the row length, i.e. on padding). Scores are float32 |rho| values, far
    coarser than the shift, so distinct scores keep their order."""
    cols = torch.arange(score.shape[-1], dtype=torch.float64)
    return score.to(torch.float64) - 1e-15 * cols


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
        order = torch.topk(_tie_broken(s), k, dim=1).indices  # (N, k)
        keep = torch.gather(s, 1, order) >= max(cfg.min_abs_corr, 1e-12)
        rows = torch.arange(n)[:, None].expand(n, k)
        src_parts.append(rows[keep])
        dst_parts.append(order[keep])

    same = (sectors[:, None] == sectors[None, :]) & (sectors[:, None] >= 0) & ~eye  # (N, N)
    m = min(cfg.max_sector_neighbours, n - 1)
    if cfg.sector_edges and m > 0 and bool(same.any()):
        s = torch.where(same, score, torch.full_like(score, -1.0))
        order = torch.topk(_tie_broken(s), m, dim=1).indices  # (N, m)
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


def build_day_graphs(returns: list[Tensor], sectors: list[Tensor], cfg: GraphConfig) -> list[tuple[Tensor, Tensor]]:
    """:func:`build_day_graph` for several days in one batched pass (same edges, same order).

    Days are padded to (D, N_max, W_max): missing returns are NaN (already "missing" to the
    correlation), padded stocks have score -1 (never picked) and are never sources; per-day k,
    m and ``min_obs`` are applied as masks. Why: per day the graph is ~30 small tensor ops, and
    their fixed cost, not arithmetic, dominated the loader's first pass (issue 15).
    """
    d = len(returns)
    if d == 0:
        return []
    ns = [int(r.shape[0]) for r in returns]
    n_max, w_max = max(ns), max(int(r.shape[1]) for r in returns)
    if n_max < 2:
        return [build_day_graph(r, s, cfg) for r, s in zip(returns, sectors)]
    r = torch.full((d, n_max, w_max), float("nan"), dtype=torch.float64)
    sec = torch.full((d, n_max), -1, dtype=torch.int64)
    for i, (ri, si) in enumerate(zip(returns, sectors)):
        r[i, : ri.shape[0], w_max - ri.shape[1]:] = ri  # windows are aligned at their last day
        sec[i, : si.shape[0]] = si
    n = torch.tensor(ns)
    real = torch.arange(n_max)[None, :] < n[:, None]  # (D, N)
    min_obs = torch.tensor([max(3, int(x.shape[1]) // 2) for x in returns])  # per day, as in build_day_graph
    ok = torch.isfinite(r)
    n_obs = ok.sum(2)  # (D, N)
    r0 = torch.where(ok, r, 0.0)
    mean = r0.sum(2) / n_obs.clamp(min=1)
    dev = torch.where(ok, r - mean[..., None], 0.0)
    norm = dev.pow(2).sum(2).sqrt()
    valid = (n_obs >= min_obs[:, None]) & (norm > 1e-12)
    z = torch.where(valid[..., None], dev / norm.clamp(min=1e-12)[..., None], 0.0)
    rho = torch.bmm(z, z.transpose(1, 2)).clamp(-1.0, 1.0).to(torch.float32)  # (D, N, N)
    eye = torch.eye(n_max, dtype=torch.bool)[None]
    rho = rho.masked_fill(eye, 0.0)
    pair = real[:, :, None] & real[:, None, :] & ~eye  # (D, N, N) real, non-self pairs
    score = torch.where(pair, rho.abs(), -1.0)
    rows = torch.arange(n_max)[None, :, None]
    src_parts: list[Tensor] = []  # flat keys day * N^2 + src * N + dst
    k_day = (n - 1).clamp(max=cfg.k)  # (D,)
    k = int(k_day.max())
    if k > 0:
        order = torch.topk(_tie_broken(score), k, dim=2).indices  # (D, N, k)
        keep = (torch.gather(score, 2, order) >= max(cfg.min_abs_corr, 1e-12)) & (torch.arange(k)[None, None, :] < k_day[:, None, None])
        keep &= real[..., None]
        day = torch.arange(d)[:, None, None]
        src_parts.append(((day * n_max + rows) * n_max + order)[keep])
    same = (sec[:, :, None] == sec[:, None, :]) & (sec[:, :, None] >= 0) & pair
    m_day = (n - 1).clamp(max=cfg.max_sector_neighbours)
    m = int(m_day.max())
    if cfg.sector_edges and m > 0:
        s = torch.where(same, score, -1.0)
        order = torch.topk(_tie_broken(s), m, dim=2).indices
        keep = torch.gather(same, 2, order) & (torch.arange(m)[None, None, :] < m_day[:, None, None])
        day = torch.arange(d)[:, None, None]
        src_parts.append(((day * n_max + rows) * n_max + order)[keep])
    out = []
    if src_parts:
        key = torch.cat(src_parts)
        day, rest = key // (n_max * n_max), key % (n_max * n_max)
        a, b = rest // n_max, rest % n_max
        both = torch.cat([torch.stack([day, a, b]), torch.stack([day, b, a])], dim=1)  # undirected
        flat = torch.unique((both[0] * n_max + both[1]) * n_max + both[2])  # sorted by (day, src, dst)
        day, rest = flat // (n_max * n_max), flat % (n_max * n_max)
        src, dst = rest // n_max, rest % n_max
        attr = torch.stack([rho[day, src, dst], same[day, src, dst].to(torch.float32)], dim=1)
        bounds = torch.searchsorted(day, torch.arange(d + 1)).tolist()
    for i in range(d):
        if ns[i] < 2 or not src_parts or bounds[i] == bounds[i + 1]:
            out.append((torch.zeros((2, 0), dtype=torch.int64), torch.zeros((0, 2), dtype=torch.float32)))
            continue
        lo, hi = bounds[i], bounds[i + 1]
        out.append((torch.stack([src[lo:hi], dst[lo:hi]]), attr[lo:hi]))
    return out
