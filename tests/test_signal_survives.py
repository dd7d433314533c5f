"""The planted signal survives the feature pipeline: a ridge regression on FEATURE_COLUMNS, fit on
the train window and scored on the holdout, reaches a RankIC close to the oracle's on the same
rows; with no planted signal it gets ~0.

Measured (300 stocks x 600 days, seed 1, holdout 120 days), ridge / oracle RankIC:
1d 0.107/0.156 = 0.69, 5d 0.205/0.288 = 0.71, 10d 0.206/0.286 = 0.72, 20d 0.152/0.255 = 0.60.
The gap is the hidden-cluster factor in every return: the oracle knows the idiosyncratic shock,
the features only see returns relative to market and sector.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy.special import ndtri

from atft_core.config import Config, SyntheticConfig, apply_overrides
from atft_core.data.synthetic import generate_market
from atft_core.dataset import make_splits
from atft_core.features import FEATURE_COLUMNS, build_features

CFG = apply_overrides(Config(), ["split.holdout_days=120"])
HORIZONS = CFG.horizons


def daily_rank_ic(df: pl.DataFrame, pred: str, y: str) -> float:
    per_day = (
        df.filter(pl.col(y).is_not_null())
        .group_by("Date")
        .agg(pl.corr(pl.col(pred).rank(), pl.col(y).rank()).alias("ic"), pl.len().alias("n"))
        .filter(pl.col("n") >= 10)
    )
    return float(per_day["ic"].mean())


def ridge_vs_oracle(signal: str) -> dict[int, tuple[float, float]]:
    m = generate_market(SyntheticConfig(n_stocks=300, n_days=600, signal=signal, seed=1), HORIZONS)
    f = (
        build_features(m.quotes, CFG)
        .join(m.oracle, on=["Date", "Code"])
        .filter(pl.col("history_days") >= CFG.features.min_history)
    )
    sp = make_splits(f["Date"].unique(), CFG)
    train = f.filter(pl.col("Date").is_in(sp.train))
    hold = f.filter(pl.col("Date").is_in(sp.holdout))
    x_tr = np.nan_to_num(train.select(FEATURE_COLUMNS).to_numpy().astype(np.float64))
    x_ho = np.nan_to_num(hold.select(FEATURE_COLUMNS).to_numpy().astype(np.float64))
    x_tr = np.c_[x_tr, np.ones(len(x_tr))]
    x_ho = np.c_[x_ho, np.ones(len(x_ho))]
    out = {}
    for h in HORIZONS:
        y = f"y_{h}d"
        # per-day rank-gauss target, as the trainer uses
        u = train.with_columns(((pl.col(y).rank() - 0.5) / pl.col(y).count()).over("Date").alias("u"))
        t = ndtri(u["u"].to_numpy())
        ok = np.isfinite(t)
        a = x_tr[ok]
        w = np.linalg.solve(a.T @ a + np.eye(a.shape[1]), a.T @ t[ok])
        scored = hold.with_columns(pl.Series("pred", x_ho @ w))
        out[h] = (daily_rank_ic(scored, "pred", y), daily_rank_ic(scored, f"oracle_{h}d", y))
    return out


@pytest.mark.slow
def test_own_signal_reaches_most_of_the_oracle():
    res = ridge_vs_oracle("own")
    for h, (ridge, oracle) in res.items():
        print(f"h={h}: ridge {ridge:.4f} oracle {oracle:.4f} ratio {ridge / oracle:.3f}")
    for h in HORIZONS:
        ridge, oracle = res[h]
        assert oracle > 0.1, f"oracle RankIC@{h}d {oracle:.3f}: synthetic signal too weak to test"
        assert ridge <= oracle + 0.02, f"{h}d: ridge beats the oracle -> leakage"
        assert ridge / oracle >= (0.6 if h < 20 else 0.5), f"{h}d: ridge/oracle {ridge / oracle:.2f}"


@pytest.mark.slow
def test_no_signal_gives_zero_rank_ic():
    res = ridge_vs_oracle("none")
    for h in (1, 5):
        assert abs(res[h][0]) < 0.03, f"{h}d RankIC {res[h][0]:.3f} without any planted signal"
