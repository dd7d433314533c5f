"""Evaluation metrics against slow references (scipy / numpy loops) and a hand-made JPX example."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import polars as pl
import pytest
from scipy.stats import pearsonr, spearmanr

from atft_core.evaluate import daily_metrics, evaluate_predictions, max_drawdown

HORIZONS = (1, 5)


def _frame(n_days=25, n_codes=40, seed=0) -> pl.DataFrame:
    """Random panel with ties in pred and y, NaN/null targets, NaN preds and missing stocks."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(n_days):
        date = dt.date(2024, 1, 4) + dt.timedelta(days=d)
        codes = rng.permutation(n_codes)[: n_codes - rng.integers(0, 6)]  # stocks come and go
        for c in codes:
            row = {"Date": date, "Code": f"{1300 + c}"}
            for h in HORIZONS:
                p = float(np.round(rng.normal(), 1))  # ties
                y = float(np.round(rng.normal(0.001 * p, 0.02), 3))  # ties + weak signal
                if rng.random() < 0.05:
                    p = math.nan
                if rng.random() < 0.05:
                    y = math.nan
                row[f"pred_{h}d"] = p
                row[f"y_{h}d"] = None if rng.random() < 0.05 else y
            rows.append(row)
    # a day where only one stock has a target: must be skipped
    rows.append({"Date": dt.date(2024, 3, 1), "Code": "1301", "pred_1d": 0.3, "y_1d": 0.01,
                 "pred_5d": 0.1, "y_5d": None})
    return pl.DataFrame(rows)


def _ref_days(df: pl.DataFrame, h: int):
    """Slow reference: per date, the valid (code, pred, y) rows."""
    out = {}
    for (date,), g in df.sort("Date").group_by(["Date"], maintain_order=True):
        codes = g["Code"].to_list()
        p = g[f"pred_{h}d"].cast(pl.Float64).fill_null(math.nan).to_numpy()
        y = g[f"y_{h}d"].cast(pl.Float64).fill_null(math.nan).to_numpy()
        ok = np.isfinite(p) & np.isfinite(y)
        if ok.sum() >= 2:
            out[date] = ([c for c, k in zip(codes, ok) if k], p[ok], y[ok])
    return out


def _order(codes, p):
    """Indices by pred descending, ties by code ascending (the documented convention)."""
    return sorted(range(len(p)), key=lambda i: (-p[i], codes[i]))


def _reference(df: pl.DataFrame, h: int) -> dict:
    days = _ref_days(df, h)
    ics, rics, ls, hits, hit_n, turns = [], [], [], 0, 0, []
    prev = None
    for _date, (codes, p, y) in days.items():
        ics.append(pearsonr(p, y).statistic)
        rics.append(spearmanr(p, y).statistic)
        n = len(p)
        nq = max(1, int(math.floor(0.2 * n)))
        o = _order(codes, p)
        long_i, short_i = o[:nq], o[n - nq:]
        ls.append(np.mean(y[long_i]) - np.mean(y[short_i]))
        for pi, yi in zip(p - p.mean(), y - y.mean()):
            if pi != 0 and yi != 0:
                hit_n += 1
                hits += int(np.sign(pi) == np.sign(yi))
        books = ({codes[i] for i in long_i}, {codes[i] for i in short_i})
        if prev is not None:
            turns.append(np.mean([len(b - pb) / len(b) for b, pb in zip(books, prev)]))
        prev = books
    ics, rics, ls = (np.array(a, dtype=float) for a in (ics, rics, ls))
    peak, cum, mdd = 0.0, 0.0, 0.0
    for r in ls:
        cum += r
        peak = max(peak, cum)
        mdd = max(mdd, peak - cum)
    return {
        f"ic_{h}d": np.nanmean(ics), f"ic_std_{h}d": np.nanstd(ics, ddof=1),
        f"icir_{h}d": np.nanmean(ics) / np.nanstd(ics, ddof=1),
        f"rank_ic_{h}d": np.nanmean(rics), f"rank_ic_std_{h}d": np.nanstd(rics, ddof=1),
        f"rank_ic_tstat_{h}d": np.nanmean(rics) / np.nanstd(rics, ddof=1) * math.sqrt(np.isfinite(rics).sum()),
        f"hit_rate_{h}d": hits / hit_n,
        f"sharpe_{h}d": ls.mean() / ls.std(ddof=1) * math.sqrt(245),
        f"max_drawdown_{h}d": mdd, f"turnover_{h}d": np.mean(turns),
    }


def _jpx_reference(df: pl.DataFrame) -> float:
    spreads = []
    for _date, (codes, p, y) in _ref_days(df, 1).items():
        size = min(200, len(p) // 2)
        w = np.linspace(2, 1, size)
        o = _order(codes, p)
        top, bottom = y[o[:size]], y[o[::-1][:size]]
        spreads.append((top * w).sum() / w.mean() - (bottom * w).sum() / w.mean())
    s = np.array(spreads)
    return s.mean() / s.std(ddof=1)


@pytest.mark.filterwarnings("ignore:Degrees of freedom")  # the reference's one-stock day
def test_every_metric_equals_the_slow_reference():
    df = _frame()
    res = evaluate_predictions(df, HORIZONS)
    for h in HORIZONS:
        for key, ref in _reference(df, h).items():
            assert res[key] == pytest.approx(ref, rel=1e-9, abs=1e-12), key
    assert res["jpx_sharpe"] == pytest.approx(_jpx_reference(df), rel=1e-9)
    assert res["n_days"] == df["Date"].n_unique()
    finite = np.isfinite(df["pred_1d"].to_numpy()) & np.isfinite(df["pred_5d"].to_numpy())
    assert res["coverage"] == pytest.approx(finite.mean())
    stds = [np.nanstd(g["pred_1d"].to_numpy()[np.isfinite(g["pred_1d"].to_numpy())], ddof=1)
            for _, g in df.group_by("Date")]
    assert res["pred_std_1d"] == pytest.approx(np.nanmean(stds))
    json.dumps(res, allow_nan=False)  # strict JSON


def test_daily_block_and_contract_keys():
    df = _frame()
    res = evaluate_predictions(df, HORIZONS)
    for h in HORIZONS:
        for k in ("rank_ic", "ic", "rank_ic_std", "icir", "rank_ic_tstat", "hit_rate", "sharpe",
                  "max_drawdown", "turnover", "pred_std"):
            assert f"{k}_{h}d" in res
    daily = res["daily"]
    assert daily["date"] == sorted(d.isoformat() for d in df["Date"].unique())
    assert len(daily["rank_ic_1d"]) == len(daily["ls_return_1d"]) == len(daily["date"])
    assert daily["rank_ic_1d"][-1] is None  # the one-stock day
    ref = _ref_days(df, 1)
    first = min(ref)
    assert daily["rank_ic_1d"][0] == pytest.approx(spearmanr(ref[first][1], ref[first][2]).statistic)


def test_jpx_sharpe_hand_example():
    # 2 days x 4 stocks -> S = min(200, 4 // 2) = 2, weights [2, 1], mean weight 1.5
    d1, d2 = dt.date(2024, 1, 4), dt.date(2024, 1, 5)
    df = pl.DataFrame({
        "Date": [d1] * 4 + [d2] * 4,
        "Code": ["A", "B", "C", "D"] * 2,
        "pred_1d": [4.0, 3.0, 2.0, 1.0, 1.0, 2.0, 3.0, 4.0],
        "y_1d": [0.03, 0.01, -0.01, -0.02, 0.00, 0.01, 0.02, -0.01],
    })
    # day 1: long A(w2) B(w1): (2*.03 + .01)/1.5 = .07/1.5; short D(w2) C(w1): (2*-.02 - .01)/1.5
    s1 = 0.07 / 1.5 - (-0.05) / 1.5  # = 0.08
    # day 2: long D(w2) C(w1): (2*-.01 + .02)/1.5 = 0; short A(w2) B(w1): (0 + .01)/1.5
    s2 = 0.0 - 0.01 / 1.5
    expected = np.mean([s1, s2]) / np.std([s1, s2], ddof=1)
    res = evaluate_predictions(df, (1,))
    assert res["daily"]["jpx_spread"] == pytest.approx([s1, s2])
    assert res["jpx_sharpe"] == pytest.approx(expected)
    # long-short (top/bottom max(1, floor(0.8)) = 1 stock): day 1 .03 - -.02, day 2 -.01 - 0
    assert res["daily"]["ls_return_1d"] == pytest.approx([0.05, -0.01])
    assert res["turnover_1d"] == pytest.approx(1.0)  # both books fully replaced
    assert res["max_drawdown_1d"] == pytest.approx(0.01)


def test_perfect_and_reversed_predictions():
    rng = np.random.default_rng(3)
    n, days = 50, 10
    y = rng.normal(0, 0.02, (days, n))
    base = {"Date": [dt.date(2024, 1, 4) + dt.timedelta(days=d) for d in range(days) for _ in range(n)],
            "Code": [f"{i}" for i in range(n)] * days, "y_1d": y.ravel()}
    good = evaluate_predictions(pl.DataFrame({**base, "pred_1d": y.ravel()}), (1,))
    bad = evaluate_predictions(pl.DataFrame({**base, "pred_1d": -y.ravel()}), (1,))
    assert good["rank_ic_1d"] == pytest.approx(1.0) and bad["rank_ic_1d"] == pytest.approx(-1.0)
    assert good["hit_rate_1d"] == 1.0 and bad["hit_rate_1d"] == 0.0
    assert good["sharpe_1d"] > 0 > bad["sharpe_1d"] and good["jpx_sharpe"] > 0
    assert good["max_drawdown_1d"] == 0.0
    assert good["rank_ic_std_1d"] == pytest.approx(0.0, abs=1e-12)
    assert good["icir_1d"] is None or good["icir_1d"] > 1e6  # zero std -> undefined, never NaN


def test_max_drawdown_by_hand():
    assert max_drawdown(np.array([0.1, -0.2, 0.05, -0.1, 0.3])) == pytest.approx(0.25)
    assert max_drawdown(np.array([-0.1, 0.05])) == pytest.approx(0.1)  # peak starts at 0


def test_bad_frames_raise():
    df = _frame(n_days=3)
    with pytest.raises(ValueError, match=r"lacks columns \['pred_10d', 'y_10d'\]"):
        evaluate_predictions(df, (1, 10))
    with pytest.raises(ValueError, match="duplicate"):
        evaluate_predictions(pl.concat([df, df.head(1)]), HORIZONS)
    with pytest.raises(TypeError):
        daily_metrics(df.to_pandas(), HORIZONS)
