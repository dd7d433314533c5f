"""Evaluation of a predictions frame over a window of days (SPEC 5), vectorised with polars.

Input: ``pl.DataFrame`` with ``Date``, ``Code``, ``pred_{h}d`` and ``y_{h}d`` (raw returns, null
where unknown) for every horizon h. Output of :func:`evaluate_predictions`: a JSON-able dict.

Definitions (decisions recorded here; SPEC names the metrics, not every convention):
* Valid rows of horizon h: ``pred_{h}d`` finite and ``y_{h}d`` non-null and finite. A day needs
  >= 2 valid rows; a day whose IC is undefined (constant pred or y) is left out of the IC means.
* IC / RankIC: daily Pearson of (pred, y) / of their average ranks (ties share the mean rank, as
  ``scipy.stats.spearmanr``); ``ic_{h}d``/``rank_ic_{h}d`` = mean over days, ``*_std`` with ddof=1,
  ``icir_{h}d`` = mean/std of the daily IC (Qlib's "ICIR"), ``rank_icir_{h}d`` the same for RankIC,
  ``rank_ic_tstat_{h}d`` = mean / (std / sqrt(days)).
* Hit rate: cross-sectional sign agreement, pooled over all valid rows: sign(pred - day mean of
  pred) == sign(y - day mean of y). Demeaning per day removes the market move the model is not
  asked to predict (it is trained on a per-day normalised target); rows where either demeaned
  value is exactly 0 do not count.
* Long-short: per day order valid rows by pred (descending, ties by Code), long the top
  ``max(1, floor(0.2 n))``, short the bottom as many, equal weight; the day's return is
  mean(y long) - mean(y short). ``sharpe_{h}d`` = mean/std (ddof=1) * sqrt(TRADING_DAYS_PER_YEAR=245). For h > 1 the
  daily series holds overlapping h-day returns (each day's h-day label taken as that day's P&L,
  as Qlib does with its label), so this Sharpe overstates a tradable h-day strategy's.
* ``max_drawdown_{h}d``: largest fall (a positive number) of the cumulative SUM of daily
  long-short returns from its running peak (the peak starts at 0).
* ``turnover_{h}d``: for consecutive evaluated days, fraction of today's long book not in
  yesterday's long book, averaged with the same for the short book; mean over day pairs.
* ``jpx_sharpe``: the JPX Tokyo Stock Exchange Prediction competition's daily spread return on the
  1-day target (``y_1d``; the first horizon if 1 is absent): rank by pred (descending, ties by
  Code), top S long with weights linspace(2, 1, S), bottom S short with the lowest-ranked stock at
  weight 2, spread = sum(w y_long)/mean(w) - sum(w y_short)/mean(w), S = min(200, n // 2) (the
  competition had ~2000 stocks; with fewer than 400 this keeps the books disjoint). jpx_sharpe =
  mean/std (ddof=1) of the daily spread, not annualised.
* ``coverage``: fraction of rows whose predictions are finite for every horizon.
  ``pred_std_{h}d``: mean over days of the cross-sectional std (ddof=1) of finite predictions.
* Undefined numbers (too few days, zero std) are ``None`` so the dict is strict JSON.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

TRADING_DAYS_PER_YEAR = 245  # JPX sessions in a typical year
SHARPE_ANNUALISATION = math.sqrt(TRADING_DAYS_PER_YEAR)  # daily mean/std -> annualised Sharpe
LS_QUANTILE = 0.2
JPX_PORTFOLIO = 200


def _check(preds: pl.DataFrame, horizons: tuple[int, ...]) -> None:
    if not isinstance(preds, pl.DataFrame):
        raise TypeError(f"preds must be a polars DataFrame, got {type(preds).__name__}")
    if not horizons:
        raise ValueError("horizons must not be empty")
    need = ["Date", "Code"] + [f"{k}_{h}d" for h in horizons for k in ("pred", "y")]
    missing = [c for c in need if c not in preds.columns]
    if missing:
        raise ValueError(f"predictions frame lacks columns {missing}")
    if preds.select("Date", "Code").is_duplicated().any():
        raise ValueError("predictions frame has duplicate (Date, Code) rows")


def _valid(preds: pl.DataFrame, h: int) -> pl.DataFrame:
    p, y = pl.col(f"pred_{h}d").cast(pl.Float64), pl.col(f"y_{h}d").cast(pl.Float64)
    return (
        preds.select("Date", pl.col("Code").cast(pl.String), p.alias("p"), y.alias("y"))
        .filter(pl.col("p").is_finite().fill_null(False) & pl.col("y").is_finite().fill_null(False))
        .filter(pl.len().over("Date") >= 2)
        .sort("Date", "Code")
    )


def _ordered(v: pl.DataFrame) -> pl.DataFrame:
    """Adds n (valid rows of the day) and pos (0 = highest pred; ties by Code)."""
    return (
        v.sort(["Date", "p", "Code"], descending=[False, True, False])
        .with_columns(pos=pl.int_range(pl.len()).over("Date"), n=pl.len().over("Date"))
    )


def _horizon_daily(v: pl.DataFrame, h: int) -> pl.DataFrame:
    """Per-day IC, RankIC, long-short return, hit counts and turnover for one horizon."""
    v = _ordered(v).with_columns(
        pr=pl.col("p").rank("average").over("Date"),
        yr=pl.col("y").rank("average").over("Date"),
        sp=(pl.col("p") - pl.col("p").mean().over("Date")).sign(),
        sy=(pl.col("y") - pl.col("y").mean().over("Date")).sign(),
        nq=pl.max_horizontal(pl.lit(1), (pl.col("n") * LS_QUANTILE).floor().cast(pl.Int64)),
    ).with_columns(
        long=pl.col("pos") < pl.col("nq"),
        short=pl.col("pos") >= pl.col("n") - pl.col("nq"),
    )
    daily = v.group_by("Date", maintain_order=True).agg(
        pl.len().alias(f"n_{h}d"),
        pl.corr("p", "y").alias(f"ic_{h}d"),
        pl.corr("pr", "yr").alias(f"rank_ic_{h}d"),
        (pl.col("y").filter(pl.col("long")).mean() - pl.col("y").filter(pl.col("short")).mean())
        .alias(f"ls_return_{h}d"),
        ((pl.col("sp") * pl.col("sy")) > 0).sum().alias(f"hits_{h}d"),
        ((pl.col("sp") * pl.col("sy")) != 0).sum().alias(f"hit_n_{h}d"),
    )
    # turnover: fraction of today's book that was not in the previous evaluated day's book
    days = daily.select("Date").with_row_index("t")
    book = v.join(days, on="Date").select("t", "Code", "long", "short")
    parts = []
    for side in ("long", "short"):
        members = book.filter(pl.col(side)).select("t", "Code")
        prev = members.with_columns(pl.col("t") + 1)
        stay = members.join(prev, on=["t", "Code"]).group_by("t").agg(pl.len().alias("kept"))
        size = members.group_by("t").agg(pl.len().alias("size"))
        parts.append(
            size.join(stay, on="t", how="left")
            .select("t", (1 - pl.col("kept").fill_null(0) / pl.col("size")).alias(side))
        )
    turnover = (
        parts[0].join(parts[1], on="t")
        .filter(pl.col("t") > 0)
        .select("t", ((pl.col("long") + pl.col("short")) / 2).alias(f"turnover_{h}d"))
    )
    return (
        daily.with_row_index("t").join(turnover, on="t", how="left").drop("t")
        .with_columns(pl.col(f"ic_{h}d", f"rank_ic_{h}d").fill_nan(None))
    )


def _jpx_daily(v: pl.DataFrame) -> pl.DataFrame:
    v = _ordered(v).with_columns(size=pl.min_horizontal(pl.lit(JPX_PORTFOLIO), pl.col("n") // 2))
    # linspace(2, 1, S)[i] = 2 - i / (S - 1); S = 1 -> weight 2 (the mean weight cancels anyway)
    step = pl.when(pl.col("size") > 1).then(1.0 / (pl.col("size") - 1)).otherwise(0.0)
    down = pl.col("n") - 1 - pl.col("pos")  # 0 = lowest pred
    v = v.with_columns(
        w_long=pl.when(pl.col("pos") < pl.col("size")).then(2.0 - pl.col("pos") * step),
        w_short=pl.when(down < pl.col("size")).then(2.0 - down * step),
    )
    return v.group_by("Date", maintain_order=True).agg(
        ((pl.col("w_long") * pl.col("y")).sum() / pl.col("w_long").mean()
         - (pl.col("w_short") * pl.col("y")).sum() / pl.col("w_short").mean()).alias("jpx_spread")
    )


def daily_metrics(preds: pl.DataFrame, horizons: tuple[int, ...]) -> pl.DataFrame:
    """One row per Date of ``preds``: per horizon ``n_, ic_, rank_ic_, ls_return_, hits_, hit_n_,
    turnover_, pred_std_{h}d``, and ``jpx_spread``. Days without enough valid rows hold null."""
    horizons = tuple(int(h) for h in horizons)
    _check(preds, horizons)
    out = preds.select(pl.col("Date").unique().sort())
    for h in horizons:
        out = out.join(_horizon_daily(_valid(preds, h), h), on="Date", how="left")
        p = pl.col(f"pred_{h}d").cast(pl.Float64)
        std = (preds.filter(p.is_not_null() & p.is_finite())
               .group_by("Date").agg(p.std().alias(f"pred_std_{h}d")))
        out = out.join(std, on="Date", how="left")
    jpx_h = 1 if 1 in horizons else horizons[0]
    return out.join(_jpx_daily(_valid(preds, jpx_h)), on="Date", how="left").sort("Date")


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _mean_std(a: np.ndarray) -> tuple[float, float]:
    a = a[np.isfinite(a)]
    mean = float(a.mean()) if len(a) else math.nan
    std = float(a.std(ddof=1)) if len(a) >= 2 else math.nan
    return mean, std


def _ratio(mean: float, std: float) -> float:
    return mean / std if std > 0 else math.nan


def max_drawdown(returns: np.ndarray) -> float:
    """Largest fall of the cumulative sum of ``returns`` from its running peak (peak starts at 0)."""
    r = returns[np.isfinite(returns)]
    if not len(r):
        return math.nan
    cum = np.concatenate([[0.0], np.cumsum(r)])
    return float(np.max(np.maximum.accumulate(cum) - cum))


def evaluate_predictions(preds: pl.DataFrame, horizons: tuple[int, ...]) -> dict[str, Any]:
    """Summary metrics of a predictions frame (keys: see the module docstring and CONTRACTS.md).

    Args:
        preds: Date, Code, ``pred_{h}d``, ``y_{h}d`` for each horizon.
        horizons: the horizons to evaluate, e.g. ``(1, 5, 10, 20)``.

    Returns:
        JSON-able dict with per-horizon metrics, ``jpx_sharpe``, ``n_days``, ``coverage``,
        ``pred_std_1d`` ... and ``daily`` (lists per evaluated date).
    """
    horizons = tuple(int(h) for h in horizons)
    daily = daily_metrics(preds, horizons)
    res: dict[str, Any] = {"n_days": int(daily.height)}
    finite = pl.all_horizontal(
        pl.col(f"pred_{h}d").cast(pl.Float64).is_finite().fill_null(False) for h in horizons)
    res["coverage"] = _num(preds.select(finite.mean()).item()) if preds.height else None
    for h in horizons:
        col = lambda c: daily[c].cast(pl.Float64).fill_null(math.nan).to_numpy()  # noqa: E731
        ic_m, ic_s = _mean_std(col(f"ic_{h}d"))
        ric = col(f"rank_ic_{h}d")
        ric_m, ric_s = _mean_std(ric)
        n_ric = int(np.isfinite(ric).sum())
        ls = col(f"ls_return_{h}d")
        ls_m, ls_s = _mean_std(ls)
        hits, hit_n = daily[f"hits_{h}d"].sum(), daily[f"hit_n_{h}d"].sum()
        res.update({
            f"ic_{h}d": _num(ic_m),
            f"ic_std_{h}d": _num(ic_s),
            f"icir_{h}d": _num(_ratio(ic_m, ic_s)),
            f"rank_ic_{h}d": _num(ric_m),
            f"rank_ic_std_{h}d": _num(ric_s),
            f"rank_icir_{h}d": _num(_ratio(ric_m, ric_s)),
            f"rank_ic_tstat_{h}d": _num(_ratio(ric_m, ric_s) * math.sqrt(n_ric)),
            f"hit_rate_{h}d": _num(hits / hit_n) if hit_n else None,
            f"ls_return_{h}d": _num(ls_m),
            f"sharpe_{h}d": _num(_ratio(ls_m, ls_s) * SHARPE_ANNUALISATION),
            f"max_drawdown_{h}d": _num(max_drawdown(ls)),
            f"turnover_{h}d": _num(_mean_std(col(f"turnover_{h}d"))[0]),
            f"pred_std_{h}d": _num(_mean_std(col(f"pred_std_{h}d"))[0]),
            f"n_days_{h}d": n_ric,
        })
    spread = daily["jpx_spread"].cast(pl.Float64).fill_null(math.nan).to_numpy()
    res["jpx_sharpe"] = _num(_ratio(*_mean_std(spread)))
    lists = lambda c: [_num(x) for x in daily[c].cast(pl.Float64).to_list()]  # noqa: E731
    res["daily"] = {"date": [d.isoformat() for d in daily["Date"].to_list()]}
    for h in horizons:
        res["daily"][f"rank_ic_{h}d"] = lists(f"rank_ic_{h}d")
        res["daily"][f"ls_return_{h}d"] = lists(f"ls_return_{h}d")
    res["daily"]["jpx_spread"] = lists("jpx_spread")
    return res
