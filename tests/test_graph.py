"""Day graph: correlation vs numpy, edges vs a slow reference, permutation, point in time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from atft_core.config import GraphConfig
from atft_core.graph import build_day_graph, window_correlation


def clustered_returns(n: int = 40, w: int = 60, n_clusters: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cluster = np.arange(n) % n_clusters
    f = rng.normal(size=(n_clusters, w))
    load = rng.uniform(0.3, 1.5, n)
    return load[:, None] * f[cluster] + rng.normal(size=(n, w))


def reference_edges(r: np.ndarray, sectors: np.ndarray, cfg: GraphConfig) -> dict[tuple[int, int], tuple[float, float]]:
    """Slow obvious version: per node, loop over partners, sort by |rho|."""
    n = len(r)
    rho = np.corrcoef(r)
    directed = set()
    for i in range(n):
        partners = sorted((j for j in range(n) if j != i), key=lambda j: -abs(rho[i, j]))
        for j in partners[: cfg.k]:
            if abs(rho[i, j]) >= cfg.min_abs_corr:
                directed.add((i, j))
        if cfg.sector_edges and sectors[i] >= 0:
            same = [j for j in partners if sectors[j] == sectors[i]]
            for j in same[: cfg.max_sector_neighbours]:
                directed.add((i, j))
    und = directed | {(j, i) for i, j in directed}
    return {(i, j): (rho[i, j], float(sectors[i] == sectors[j] and sectors[i] >= 0)) for i, j in und}


def _tie_broken(score: Tensor) -> Tensor:
    """``score`` in float64 minus ``1e-15 * column``: exact ties go to the lower column index
    (``topk`` alone breaks ties in an order that depends on the row length, i.e. on padding). Scores are float32 |rho| values, far
    coarser than the shift, so distinct scores keep their order."""
    cols = torch.arange(score.shape[-1], dtype=torch.float64)
    return score.to(torch.float64) - 1e-15 * cols


def per_day_reference(returns: Tensor, sectors: Tensor, cfg: GraphConfig) -> tuple[Tensor, Tensor]:
    """The per-day implementation that preceded the batched one (float64 tie-broken ``topk`` +
    ``unique``), kept as an independent reference for ``build_day_graphs``; arguments and
    results as :func:`build_day_graph`."""
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


def as_dict(ei: torch.Tensor, ea: torch.Tensor) -> dict[tuple[int, int], tuple[float, float]]:
    return {(int(a), int(b)): (float(x), float(s)) for (a, b), (x, s) in zip(ei.T.tolist(), ea.tolist())}


def test_correlation_equals_numpy():
    r = clustered_returns()
    rho = window_correlation(torch.from_numpy(r), min_obs=10).numpy()
    ref = np.corrcoef(r)
    np.fill_diagonal(ref, 0)
    np.testing.assert_allclose(rho, ref, atol=1e-6)


@pytest.mark.parametrize("k,thr,m", [(5, 0.3, 3), (10, 0.0, 10), (3, 0.6, 0)])
def test_edges_equal_slow_reference(k, thr, m):
    cfg = GraphConfig(k=k, min_abs_corr=thr, max_sector_neighbours=m, sector_edges=m > 0)
    r = clustered_returns(seed=k)
    sectors = np.arange(len(r)) % 5
    sectors[::9] = -1  # unknown sectors get no sector edges
    ei, ea = build_day_graph(torch.from_numpy(r), torch.from_numpy(sectors), cfg)
    got, ref = as_dict(ei, ea), reference_edges(r, sectors, cfg)
    assert got.keys() == ref.keys()
    for key, (rho, same) in ref.items():
        assert got[key][0] == pytest.approx(rho, abs=1e-5)
        assert got[key][1] == same
    # structural invariants
    assert ei.dtype == torch.int64 and ea.dtype == torch.float32
    assert not bool((ei[0] == ei[1]).any()), "self loop"
    assert len(got) == ei.shape[1], "duplicate edges"


def test_knn_finds_the_planted_clusters():
    r = clustered_returns(n=60, seed=2)
    cluster = np.arange(60) % 4
    cfg = GraphConfig(k=5, min_abs_corr=0.2, sector_edges=False)
    ei, _ = build_day_graph(torch.from_numpy(r), torch.full((60,), -1), cfg)
    same = cluster[ei[0].numpy()] == cluster[ei[1].numpy()]
    assert same.mean() > 0.85  # random edges would give ~0.25


def test_permuting_stocks_permutes_the_graph():
    r = clustered_returns(seed=4)
    sectors = np.arange(len(r)) % 6
    cfg = GraphConfig(k=6, min_abs_corr=0.25, max_sector_neighbours=4)
    ei, ea = build_day_graph(torch.from_numpy(r), torch.from_numpy(sectors), cfg)
    perm = np.random.default_rng(0).permutation(len(r))  # new node i = old node perm[i]
    ei2, ea2 = build_day_graph(torch.from_numpy(r[perm]), torch.from_numpy(sectors[perm]), cfg)
    mapped = {(int(perm[a]), int(perm[b])): v for (a, b), v in as_dict(ei2, ea2).items()}
    base = as_dict(ei, ea)
    assert mapped.keys() == base.keys()
    for key in base:
        assert mapped[key] == pytest.approx(base[key], abs=1e-6)


def test_nan_safe_short_history():
    r = clustered_returns(n=20, w=60)
    r[3, :50] = np.nan  # listed 10 days ago: < half the window
    r[4, ::7] = np.nan  # a few gaps
    sectors = np.zeros(20, dtype=np.int64)
    cfg = GraphConfig(k=4, min_abs_corr=0.1, max_sector_neighbours=2)
    ei, ea = build_day_graph(torch.from_numpy(r), torch.from_numpy(sectors), cfg)
    assert torch.isfinite(ea).all()
    rows = ea[(ei[0] == 3)]
    assert len(rows) > 0 and bool((rows[:, 0] == 0).all()) and bool((rows[:, 1] == 1).all())
    rho = window_correlation(torch.from_numpy(r), min_obs=30)
    ok = np.isfinite(r[4]) & np.isfinite(r[5])
    assert float(rho[4, 5]) == pytest.approx(np.corrcoef(r[4, ok], r[5, ok])[0, 1], abs=0.1)


def test_tiny_days():
    cfg = GraphConfig()
    ei, ea = build_day_graph(torch.randn(1, 60), torch.zeros(1, dtype=torch.int64), cfg)
    assert ei.shape == (2, 0) and ea.shape == (0, 2)
    ei, ea = build_day_graph(torch.randn(2, 60), torch.zeros(2, dtype=torch.int64), cfg)
    assert sorted(map(tuple, ei.T.tolist())) == [(0, 1), (1, 0)]


@pytest.mark.slow
def test_graph_recovers_hidden_clusters_on_synthetic_market():
    """The 'neighbour' signal lives in hidden correlation clusters (not sectors): the day graph's
    correlation edges must find them far above chance (measured: 95% of kNN edges inside a
    cluster vs 25% inside a sector; chance 1/6)."""
    from atft_core.config import Config, SyntheticConfig
    from atft_core.data.synthetic import generate_market
    from atft_core.dataset import build_panel, day_graph
    from atft_core.features import build_features

    syn = SyntheticConfig(n_stocks=120, n_days=160, n_clusters=6, signal="neighbour", seed=3)
    market = generate_market(syn)
    cfg = Config()
    panel = build_panel(build_features(market.quotes, cfg), cfg)
    t = len(panel.dates) - 1
    stocks = torch.nonzero(panel.usable[:, t]).squeeze(1)
    ei, ea = day_graph(panel, stocks, t, GraphConfig(k=5, min_abs_corr=0.0, sector_edges=False))
    cluster = np.array([market.cluster[c] for c in panel.codes[stocks.numpy()]])
    sector = panel.sector[stocks, t].numpy()
    same_cluster = cluster[ei[0].numpy()] == cluster[ei[1].numpy()]
    same_sector = sector[ei[0].numpy()] == sector[ei[1].numpy()]
    assert same_cluster.mean() > 3 * (1 / syn.n_clusters)
    assert same_cluster.mean() > same_sector.mean()


@pytest.mark.parametrize("k,thr,m", [(5, 0.3, 3), (10, 0.0, 10), (3, 0.6, 0)])
def test_batched_day_graphs_equal_the_per_day_ones(k, thr, m):
    """build_day_graphs (one padded pass over several days) == the old per-day implementation day
    by day: days of different sizes and window lengths, gaps, short histories (sector ties at
    rho 0), duplicated stocks (kNN ties at |rho| 1), unknown sectors, tiny days."""
    from atft_core.graph import build_day_graphs

    cfg = GraphConfig(k=k, min_abs_corr=thr, max_sector_neighbours=m, sector_edges=m > 0)
    rng = np.random.default_rng(k)
    rets, secs = [], []
    for n, w in [(40, 60), (25, 60), (1, 60), (33, 12), (2, 30), (50, 45)]:
        r = clustered_returns(seed=n + w)[:n, :w] if n <= 40 else rng.normal(size=(n, w))
        r = r.copy()
        r[rng.random(r.shape) < 0.05] = np.nan
        if n > 5:
            r[0, : w - 4] = np.nan  # a new listing: rho 0 to everyone
            r[1] = r[2] = r[3]  # three identical stocks: rho 1 ties
            r[4] = -r[3]
        s = rng.integers(-1, 4, n)
        rets.append(torch.from_numpy(r))
        secs.append(torch.from_numpy(s))
    got = build_day_graphs(rets, secs, cfg)
    for (ei, ea), r, s in zip(got, rets, secs):
        ref_ei, ref_ea = per_day_reference(r, s, cfg)
        assert torch.equal(ei, ref_ei)
        torch.testing.assert_close(ea, ref_ea)
