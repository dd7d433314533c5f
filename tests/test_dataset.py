"""Splits, panel, DayBatchLoader: windows vs a slow gather, masks, per-day targets, epochs,
graphs point in time and in the day's node order."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
import torch
from scipy.special import ndtri
from scipy.stats import rankdata

from atft_core.config import Config, apply_overrides
from atft_core.dataset import (
    DayBatchLoader,
    build_panel,
    day_graph,
    make_splits,
    predictions_frame,
)
from atft_core.features import FEATURE_COLUMNS, build_features
from atft_core.graph import build_day_graph

CFG = apply_overrides(
    Config(),
    ["split.val_days=10", "split.holdout_days=10", "split.embargo_days=3", "dataset.lookback=8",
     "dataset.days_per_batch=4", "graph.corr_window=20", "graph.k=4", "features.min_history=10"],
)


def make_quotes(n_stocks: int = 25, n_days: int = 150, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    dates = [dt.date(2022, 1, 3) + dt.timedelta(days=i) for i in range(n_days)]
    r = rng.normal(0, 0.02, (n_stocks, n_days)) + rng.normal(0, 0.01, (1, n_days))
    close = 100 * np.exp(np.cumsum(r, axis=1))
    present = rng.random((n_stocks, n_days)) > 0.03
    present[0, :50] = False  # late listing
    present[1, -30:] = False  # delisted
    s, t = np.nonzero(present)
    c = close[s, t]
    return pl.DataFrame(
        {
            "Date": [dates[i] for i in t], "Code": [f"{2000 + i}" for i in s],
            "Open": c, "High": c * 1.01 + rng.uniform(0, 1, len(s)), "Low": c * 0.99, "Close": c,
            "Volume": rng.lognormal(10, 1, len(s)),
            "Sector33Code": [None if i % 6 == 0 else str(i % 3) for i in s],
        }
    ).sort("Date", "Code")


@pytest.fixture(scope="module")
def feats():
    return build_features(make_quotes(), CFG)


@pytest.fixture(scope="module")
def panel(feats):
    return build_panel(feats, CFG)


# --------------------------------------------------------------------------- splits
def test_splits_disjoint_ordered_and_purged():
    days = [dt.date(2020, 1, 1) + dt.timedelta(days=i) for i in range(200)]
    sp = make_splits(days, CFG)
    pos = {d: i for i, d in enumerate(days)}
    windows = [sp.train, sp.val, sp.holdout, sp.unlabelled]
    assert all(len(w) > 0 for w in windows)
    assert len(sp.val) == 10 and len(sp.holdout) == 10
    flat = [d for w in windows for d in w]
    assert len(flat) == len(set(flat)), "windows overlap"
    need = CFG.purge_days + CFG.split.embargo_days
    assert CFG.purge_days >= 1 + max(CFG.horizons)
    for a, b in zip(windows[:2], windows[1:3]):
        assert pos[b[0]] - pos[a[-1]] - 1 >= need  # days strictly between
        assert max(pos[d] for d in a) < min(pos[d] for d in b)
    # holdout ends at the last day whose max-horizon label is known; nothing after is labelled
    assert pos[sp.holdout[-1]] == len(days) - 1 - (1 + max(CFG.horizons))
    assert len(sp.unlabelled) == 1 + max(CFG.horizons)
    # train labels (t+1+h) never reach into val
    assert pos[sp.train[-1]] + 1 + max(CFG.horizons) < pos[sp.val[0]]


def test_splits_errors_and_train_days():
    days = [dt.date(2020, 1, 1) + dt.timedelta(days=i) for i in range(80)]
    with pytest.raises(ValueError, match="not enough trading days"):
        make_splits(days, CFG)
    with pytest.raises(ValueError, match="purge_days"):
        make_splits(days, apply_overrides(CFG, ["split.purge_days=5"]))
    many = [dt.date(2020, 1, 1) + dt.timedelta(days=i) for i in range(400)]
    sp = make_splits(many, apply_overrides(CFG, ["split.train_days=50"]))
    assert len(sp.train) == 50


# --------------------------------------------------------------------------- panel / loader
def test_panel_matches_long_frame(feats, panel):
    S, T, F = panel.x.shape
    assert F == len(FEATURE_COLUMNS) and panel.feature_names == FEATURE_COLUMNS
    assert panel.horizons == CFG.horizons
    si = {c: i for i, c in enumerate(panel.codes)}
    ti = {d: i for i, d in enumerate(panel.dates)}
    for row in feats.sample(300, seed=1).iter_rows(named=True):
        s, t = si[row["Code"]], ti[row["Date"]]
        expect = np.nan_to_num(np.array([row[f] if row[f] is not None else np.nan for f in FEATURE_COLUMNS], dtype=np.float32))
        np.testing.assert_array_equal(panel.x[s, t].numpy(), expect)
        usable = row["history_days"] >= CFG.features.min_history
        assert bool(panel.usable[s, t]) == usable
        for j, h in enumerate(CFG.horizons):
            y = row[f"y_{h}d"]
            known = usable and y is not None
            assert bool(panel.mask[s, t, j]) == known
            if known:
                assert float(panel.y_raw[s, t, j]) == pytest.approx(y, rel=1e-6)
            else:
                assert np.isnan(float(panel.y_raw[s, t, j])) and float(panel.y[s, t, j]) == 0.0


@pytest.mark.slow
def test_batches_windows_targets_and_masks(panel):
    L = CFG.dataset.lookback
    dl = DayBatchLoader(panel, panel.usable_dates(), CFG, shuffle=False)
    x_np = panel.x.numpy()
    seen = 0
    for b in dl:
        assert b.x.shape[1:] == (L, len(FEATURE_COLUMNS))
        assert b.day_ptr[-1] == b.num_stock_days
        day = b.day_index()
        for i in range(0, b.num_stock_days, 23):  # slow reference gather on a subset of rows
            s = int(np.nonzero(panel.codes == b.codes[i])[0][0])
            t = panel.dates.index(b.dates[int(day[i])])
            ref = np.zeros((L, x_np.shape[2]), np.float32)
            for k in range(L):
                tt = t - L + 1 + k
                if tt >= 0:
                    ref[k] = x_np[s, tt]
            np.testing.assert_array_equal(b.x[i].numpy(), ref)
            assert bool(panel.usable[s, t])
        # masked targets are masked, not zero-filled
        assert torch.equal(~b.mask, torch.isnan(b.y_raw))
        assert bool((b.y[~b.mask] == 0).all())
        assert bool(torch.isfinite(b.y).all()) and bool(torch.isfinite(b.x).all())
        seen += b.num_stock_days
    assert seen == int(panel.usable[:, panel.date_index(panel.usable_dates())].sum())
    # a delisted stock's last labelled days are masked
    s = int(np.nonzero(panel.codes == "2001")[0][0])
    last = int(np.nonzero(panel.usable[s].numpy())[0][-1])
    assert not bool(panel.mask[s, last].any())


@pytest.mark.parametrize("how", ["rankgauss", "zscore"])
def test_per_day_target_normalisation(feats, how):
    cfg = apply_overrides(CFG, [f"dataset.target_norm={how}"])
    p = build_panel(feats, cfg)
    for t in (40, 80, 110):
        for j in range(len(cfg.horizons)):
            m = p.mask[:, t, j].numpy()
            y = p.y_raw[m, t, j].numpy().astype(np.float64)
            if how == "rankgauss":
                ref = ndtri((rankdata(y) - 0.5) / len(y))
            else:
                ref = (y - y.mean()) / y.std()
            np.testing.assert_allclose(p.y[m, t, j].numpy(), ref, atol=1e-5)


def test_epoch_order_is_seeded_and_complete(panel):
    days = panel.usable_dates()
    a = DayBatchLoader(panel, days, CFG, shuffle=True, seed=7)
    b = DayBatchLoader(panel, days, CFG, shuffle=True, seed=7)
    assert len(a) == -(-a.num_days // CFG.dataset.days_per_batch)
    a.set_epoch(3)
    b.set_epoch(3)
    assert np.array_equal(a.day_order(), b.day_order())
    b.set_epoch(4)
    assert not np.array_equal(a.day_order(), b.day_order())
    assert sorted(a.day_order()) == sorted(b.day_order()) == sorted(panel.date_index(days))
    first = [bt.dates for bt in a]
    again = [bt.dates for bt in a]
    assert first == again  # same epoch -> same batches (graph cache does not change anything)
    ordered = DayBatchLoader(panel, days, CFG, shuffle=False)
    assert [d for bt in ordered for d in bt.dates] == days


def test_batch_graph_in_day_node_order(panel):
    dl = DayBatchLoader(panel, panel.usable_dates()[30:38], CFG)
    b = next(iter(dl))
    ptr = b.day_ptr.tolist()
    day = b.day_index()
    assert bool((day[b.edge_index[0]] == day[b.edge_index[1]]).all()), "edge crosses days"
    for k, d in enumerate(b.dates):
        t = panel.dates.index(d)
        rows = [int(np.nonzero(panel.codes == c)[0][0]) for c in b.codes[ptr[k] : ptr[k + 1]]]
        lo = max(0, t - CFG.graph.corr_window + 1)
        ref_ei, ref_ea = build_day_graph(panel.returns[rows, lo : t + 1], panel.sector[rows, t].long(), CFG.graph)
        sel = day[b.edge_index[0]] == k
        assert torch.equal(b.edge_index[:, sel] - ptr[k], ref_ei)
        assert torch.equal(b.edge_attr[sel], ref_ea)
    # second epoch / another loader on the same panel read the cache and get identical graphs
    cached = len(panel.graph_cache)
    assert cached >= len(b.dates)
    b2 = next(iter(DayBatchLoader(panel, panel.usable_dates()[30:38], CFG)))
    assert len(panel.graph_cache) == cached
    assert torch.equal(b.edge_index, b2.edge_index) and torch.equal(b.edge_attr, b2.edge_attr)


def test_graph_passes_split_by_the_element_budget(panel, monkeypatch):
    """A batch's days built one per pass (budget below one day) == all in one pass, cache off."""
    import atft_core.dataset as ds

    saved = dict(panel.graph_cache)
    panel.graph_cache.clear()  # other tests may have cached these days
    try:
        days = panel.usable_dates()[30:38]
        whole = next(iter(DayBatchLoader(panel, days, CFG, cache_graphs=False)))
        calls = []
        real = ds.build_day_graphs
        monkeypatch.setattr(ds, "build_day_graphs", lambda r, s, g: calls.append(len(r)) or real(r, s, g))
        monkeypatch.setattr(ds, "GRAPH_PASS_ELEMENTS", 1)
        split = next(iter(DayBatchLoader(panel, days, CFG, cache_graphs=False)))
    finally:
        panel.graph_cache.update(saved)
    assert calls == [1] * CFG.dataset.days_per_batch
    assert torch.equal(whole.edge_index, split.edge_index) and torch.equal(whole.edge_attr, split.edge_attr)


def test_graph_and_features_point_in_time():
    q = make_quotes()
    dates = sorted(q["Date"].unique().to_list())
    cut = dates[100]
    rng = np.random.default_rng(5)
    shock = np.where((q["Date"] > cut).to_numpy(), rng.uniform(0.7, 1.3, q.height), 1.0)
    q2 = q.with_columns([(pl.col(c) * shock).alias(c) for c in ("Open", "High", "Low", "Close")])
    p1 = build_panel(build_features(q, CFG), CFG)
    p2 = build_panel(build_features(q2, CFG), CFG)
    t = p1.dates.index(cut)
    stocks = torch.nonzero(p1.usable[:, t]).squeeze(1)
    g1, g2 = day_graph(p1, stocks, t, CFG.graph), day_graph(p2, stocks, t, CFG.graph)
    assert torch.equal(g1[0], g2[0]) and torch.equal(g1[1], g2[1])
    assert torch.equal(p1.x[:, : t + 1], p2.x[:, : t + 1])
    # targets at t look ahead and change
    m = p1.mask[:, t, 0]
    assert not torch.allclose(p1.y_raw[m, t, 0], p2.y_raw[m, t, 0])


def test_predictions_frame(panel):
    b = next(iter(DayBatchLoader(panel, panel.usable_dates()[-40:], CFG)))
    pred = torch.randn(b.num_stock_days, len(CFG.horizons))
    df = predictions_frame(b, pred, CFG.horizons)
    assert df.columns == ["Date", "Code", *[f"pred_{h}d" for h in CFG.horizons], *[f"y_{h}d" for h in CFG.horizons]]
    assert df.height == b.num_stock_days
    assert df["y_20d"].null_count() == int((~b.mask[:, 3]).sum())
    np.testing.assert_allclose(df["pred_5d"].to_numpy(), pred[:, 1].numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="pred has shape"):
        predictions_frame(b, pred[:, :2], CFG.horizons)


def test_build_panel_errors(feats):
    with pytest.raises(ValueError, match="lacks column"):
        build_panel(feats.drop("ret_5d"), CFG)
    with pytest.raises(ValueError, match="duplicate"):
        build_panel(pl.concat([feats, feats.head(1)]), CFG)


def test_average_ranks_equal_scipy_with_ties_and_nans():
    from atft_core.dataset import average_ranks

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, (50, 7, 3)).astype(float)  # many ties (e.g. unchanged prices)
    np.testing.assert_array_equal(average_ranks(y), rankdata(y, axis=0))
    y = rng.normal(size=(40, 9))
    y[rng.random(y.shape) < 0.2] = np.nan
    ok = np.isfinite(y)
    np.testing.assert_allclose(average_ranks(y)[ok], rankdata(y, axis=0, nan_policy="omit")[ok])
