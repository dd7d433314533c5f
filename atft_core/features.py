"""Point-in-time features and executable targets (SPEC 3.3).

``build_features(quotes, cfg)`` turns the canonical daily quotes into one row per real stock-day
with the feature columns :data:`FEATURE_COLUMNS` (per-DAY cross-sectional robust z, clipped to
``+-cfg.features.clip``) and the raw targets ``y_{h}d``.

Decisions (SPEC is silent or leaves a choice):

* **Calendar.** The time axis is the set of dates present in the quotes (the market's trading
  days). Each stock gets a dense row per market date from its first to its last row (its listing
  span), so ``shift(n)`` means "n trading days ago" even when the stock missed days. Rows that do
  not exist in the source (suspensions, missing data) are gaps: prices are forward-filled for the
  price-level features (a suspended stock's price did not move), the gap day itself is never
  emitted, and the daily return of the first day after a gap spans the gap.
* **Point in time.** Every feature at t is a function of rows with Date <= t of the same stock
  and of the same day's cross-section (market / sector means, the per-day z-score): nothing after
  the close of t is used. Targets are the only columns that look ahead.
* **Targets.** ``y_h(t) = Close(t+1+h) / Close(t+1) - 1`` on the raw (not forward-filled) close,
  so the label is null (never 0) when t+1 or t+1+h is beyond the data, after the stock's last row
  (delisting), a missing stock-day, or a masked bad tick.
* **AdjustmentFactor.** The canonical table's prices are already split-adjusted (SPEC 3.1), so the
  factor is ignored here; applying it again would double-adjust.
* **Bad ticks.** ``mask`` (optional frame with Date, Code) lists rows validation flagged. They are
  removed before anything is computed, i.e. they become gaps: no feature row is emitted for them,
  no return/rolling statistic uses their prices, and targets that need their close are null.
  Rows with Close <= 0 or non-finite prices are treated the same way.
* **Normalisation.** Robust z per day: ``(x - median) / (1.4826 * MAD)`` with the median/MAD taken
  over that day's *usable* stock-days (history >= ``cfg.features.min_history``), clipped; where the
  MAD is ~0 (< 1e-10) the day's standard deviation is the scale, and where that is 0 too the feature is 0.
  Nothing is fitted across days, so there is no train-window statistic that could leak.
  Nulls stay null here (the panel turns them into 0 = the day's median).

Computation: :func:`build_features` runs on a dense (day x stock) numpy grid
(:mod:`atft_core.features_grid`, which says why and how it stays exact); the straightforward pandas
version :func:`build_features_pandas` is the independent reference tests and the benchmark use.

Extra, non-feature columns: ``history_days`` (real rows of the stock up to and including t) and
``ret_1d_raw`` (the raw 1-day log return; the graph's correlation input).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import polars as pl

from atft_core import features_grid as grid
from atft_core.config import Config
from atft_core.data.schema import check_schema, complete_optional

log = logging.getLogger("atft.features")

MAD_SCALE = 1.4826  # MAD of a standard normal = 1/1.4826
SCALE_EPS = 1e-10  # a per-day scale below this means "constant across the day" -> z = 0

RETURN_WINDOWS = (1, 5, 10, 20, 60)
VOL_WINDOWS = (5, 20)
MA_WINDOWS = (5, 20, 60)
RELATIVE_WINDOWS = (1, 5, 10, 20)
RSI_WINDOW = 14
ZSCORE_WINDOW = 20  # trailing window of the volume / turnover z-scores
BETA_WINDOW = 60

FEATURE_COLUMNS: tuple[str, ...] = (
    *(f"ret_{n}d" for n in RETURN_WINDOWS),
    *(f"vol_{n}d" for n in VOL_WINDOWS),
    "mom_20_5",
    "mom_60_20",
    "rev_5d_volscaled",
    *(f"ma_gap_{n}" for n in MA_WINDOWS),
    f"rsi_{RSI_WINDOW}",
    "hl_range",
    "volume_z",
    "turnover_z",
    *(f"rel_sec_{n}d" for n in RELATIVE_WINDOWS),
    f"beta_{BETA_WINDOW}d",
)
# Not a feature: ``rel_mkt_{n}d = ret_{n}d - market mean`` (dropped, issue 15): subtracting one
# number per day does not change a per-day z-score, so it was ``ret_{n}d`` again, column for
# column. The sector-relative ``rel_sec_{n}d`` survives the z (the mean differs across sectors).
EXTRA_COLUMNS: tuple[str, ...] = ("history_days", "ret_1d_raw")

# Optional features (``cfg.features.extra``, default none), appended after FEATURE_COLUMNS in the
# config's order and z-scored per day like the rest. Exact definitions (all point in time):
# * ret_overnight_1d = log(Open_t) - log(Close_prev), ret_intraday_1d = log(Close_t / Open_t):
#   Close_prev is the last close before t (after a gap it spans the gap, as for ret_1d), so
#   overnight + intraday = ret_1d; null on the stock's first row (overnight) / not-real rows.
# * ret_overnight_5d / ret_intraday_5d: the sum of the 1-day values over the trailing 5 trading
#   days, defined where ret_5d is (so overnight_5d + intraday_5d = ret_5d, gaps included).
# * turnover_ratio_5_60 = log(mean TurnoverValue over 5 days / mean over 60 days) (trailing
#   windows, >= half the window present; TurnoverValue null -> Close * Volume): a liquidity-shock
#   level, where turnover_z is a z-score.
# * resid_ret_{n}d (n = 1, 5, 20): e = ret_{n}d - beta_60d * market_{n}d (beta_60d the raw rolling
#   1-day beta at t, market_{n}d the same-day equal-weight mean of ret_{n}d over the real
#   stock-days), then e minus the same-day mean of e over the stock's sector (null sector -> all
#   stocks with an e that day). Null where beta_60d is (short history).
RESID_WINDOWS = (1, 5, 20)
EXTRA_FEATURES: tuple[str, ...] = (
    "ret_overnight_1d",
    "ret_intraday_1d",
    "ret_overnight_5d",
    "ret_intraday_5d",
    "turnover_ratio_5_60",
    *(f"resid_ret_{n}d" for n in RESID_WINDOWS),
)


def feature_columns(cfg: Config) -> tuple[str, ...]:
    """The model's input columns for ``cfg``: the 22 defaults, then ``cfg.features.extra``.
    Every consumer (panel, trainer, scorer, serving) takes its feature list from here."""
    return FEATURE_COLUMNS + tuple(cfg.features.extra)


def target_columns(horizons: tuple[int, ...]) -> tuple[str, ...]:
    return tuple(f"y_{h}d" for h in horizons)


def min_samples(window: int) -> int:
    """Rolling statistics need at least half the window (and 2 points for a std)."""
    return grid.min_samples(window)


# --------------------------------------------------------------------------- steps
def _clean(quotes: pl.DataFrame | pl.LazyFrame, mask: pl.DataFrame | None) -> pl.LazyFrame:
    lf = quotes.lazy()
    check_schema(lf.collect_schema())
    lf = complete_optional(lf)
    finite = pl.all_horizontal(
        [pl.col(c).is_finite() & (pl.col(c) > 0) for c in ("Open", "High", "Low", "Close")]
    )
    lf = lf.filter(finite)
    if mask is not None:
        missing = {"Date", "Code"} - set(mask.columns)
        if missing:
            raise ValueError(f"mask frame lacks column(s) {sorted(missing)}; needs Date, Code")
        lf = lf.join(mask.lazy().select("Date", "Code").unique(), on=["Date", "Code"], how="anti")
    return lf


def _per_stock(g: grid.Grid, sl: slice, out: dict[str, np.ndarray]) -> None:
    """Features along each stock's own history, for the stocks ``sl`` (written into ``out``).

    Cells outside a stock's span (first to last real row) are NaN, which a trailing window treats
    exactly like rows that do not exist in the long format. Each feature goes into its ``out``
    column as soon as it is known (a block keeps few temporaries alive: fewer page faults)."""
    present, close = g.present[:, sl], g.close[:, sl]
    absent = ~present

    def put(name: str, v: np.ndarray) -> None:
        if name in out:
            dst = out[name][:, sl]
            np.copyto(dst, v)
            np.copyto(dst, np.nan, where=absent)

    lc = grid.ffill(np.log(close))  # gaps carry the last price; ret after a gap spans it
    ret = {}
    for n in RETURN_WINDOWS:
        r = ret[n] = out[f"ret_{n}d"][:, sl]
        r[:n] = np.nan
        np.subtract(lc[n:], lc[:-n], out=r[n:])
        np.copyto(r, np.nan, where=absent)
    r = ret[1]
    r1 = grid.Rolling(r)
    with np.errstate(invalid="ignore", divide="ignore"):
        for n in VOL_WINDOWS:
            put(f"vol_{n}d", r1.std(n))
        roll_close = grid.Rolling(close)
        for n in MA_WINDOWS:
            m = roll_close.mean(n)
            np.divide(close, m, out=m)
            m -= 1
            put(f"ma_gap_{n}", m)
        del roll_close
        # mean gain = (mean r + mean |r|) / 2 and gain + loss = |r|, so one more cumulative sum
        abs_mean = grid.Rolling(np.abs(r), like=r1).mean(RSI_WINDOW)
        rsi = r1.mean(RSI_WINDOW)
        rsi += abs_mean
        rsi *= 100
        abs_mean *= 2
        rsi /= abs_mean
        np.copyto(rsi, np.nan, where=r1.all_zero(RSI_WINDOW))  # no move: gain + loss == 0
        put(f"rsi_{RSI_WINDOW}", rsi)
        del r1, rsi, abs_mean
        hl = np.divide(g.high[:, sl], g.low[:, sl])
        put("hl_range", np.log(hl, out=hl))
        for name, x in (("volume_z", g.volume[:, sl]), ("turnover_z", g.turnover[:, sl])):
            x = np.log1p(np.maximum(x, 0.0))
            roll = grid.Rolling(x)
            sd = roll.std(ZSCORE_WINDOW)
            z = np.subtract(x, roll.mean(ZSCORE_WINDOW))
            z /= sd
            put(name, z)
    if any(k in out for k in ("ret_overnight_1d", "ret_intraday_1d", "ret_overnight_5d",
                              "ret_intraday_5d")):
        log_open = np.log(g.open[:, sl])
        parts = {"overnight": np.where(present, log_open - grid.shift(lc, 1), np.nan),
                 "intraday": np.where(present, np.log(close / g.open[:, sl]), np.nan)}
        for part, x in parts.items():
            put(f"ret_{part}_1d", x)
            put(f"ret_{part}_5d", np.where(np.isnan(ret[5]), np.nan, grid.Rolling(x).sum(5, 1)))
    if "turnover_ratio_5_60" in out:
        tv = grid.Rolling(np.maximum(g.turnover[:, sl], 0.0))
        with np.errstate(invalid="ignore", divide="ignore"):
            put("turnover_ratio_5_60", np.log(tv.mean(5) / tv.mean(60)))


def _market(g: grid.Grid, rows: slice, out: dict[str, np.ndarray], mkt: dict[int, np.ndarray]) -> None:
    """The same-day equal-weight means of ret_{n}d (``mkt``'s windows) for the days ``rows``."""
    for n, m in mkt.items():
        r = out[f"ret_{n}d"][rows]
        m[rows] = grid.day_mean(r, g.present[rows] & ~np.isnan(r))


def _same_day(g: grid.Grid, out: dict[str, np.ndarray], mkt: dict[int, np.ndarray],
              columns: tuple[str, ...]) -> dict[str, Callable[[slice], np.ndarray]]:
    """The columns that are a same-day function of stored ones, as functions of a day block:
    the per-day z computes them block by block, so they never take a (T, S) array of their own
    (memory the build would have to fault in, and a pass to store and reload)."""
    n_sec = len(g.sectors)

    def minus_peers(x: np.ndarray, rows: slice) -> np.ndarray:
        return x - grid.peer_mean(x, g.present[rows] & ~np.isnan(x), g.sector[rows], n_sec)

    def rel_sec(n: int):
        return lambda rows: minus_peers(out[f"ret_{n}d"][rows], rows)

    def resid(n: int):
        def f(rows: slice) -> np.ndarray:
            beta = out[f"beta_{BETA_WINDOW}d"][rows]
            return minus_peers(out[f"ret_{n}d"][rows] - beta * mkt[n][rows, None], rows)
        return f

    def rev_5d_volscaled(rows: slice) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.divide(np.negative(out["ret_5d"][rows]), out["vol_20d"][rows])

    fns = {
        "mom_20_5": lambda rows: out["ret_20d"][rows] - out["ret_5d"][rows],
        "mom_60_20": lambda rows: out["ret_60d"][rows] - out["ret_20d"][rows],
        "rev_5d_volscaled": rev_5d_volscaled,
        **{f"rel_sec_{n}d": rel_sec(n) for n in RELATIVE_WINDOWS},
        **{f"resid_ret_{n}d": resid(n) for n in RESID_WINDOWS},
    }
    return {c: fns[c] for c in columns if c in fns}


def _beta(g: grid.Grid, sl: slice, out: dict[str, np.ndarray], mkt1: np.ndarray) -> None:
    """Rolling beta to the market over pairs where the stock has a return (same pairs for both
    moments)."""
    r = out["ret_1d"][:, sl]
    m = np.where(np.isnan(r), np.nan, mkt1[:, None])
    w, ms = BETA_WINDOW, 20
    roll_r = grid.Rolling(r)  # r, m, r*m and m*m miss the same cells: one set of counts
    mr, mm = roll_r.mean(w, ms), grid.Rolling(m, like=roll_r).mean(w, ms)
    cov = grid.Rolling(r * m, like=roll_r).mean(w, ms) - mr * mm
    var = grid.Rolling(m * m, like=roll_r).mean(w, ms) - mm * mm
    with np.errstate(invalid="ignore", divide="ignore"):
        out[f"beta_{BETA_WINDOW}d"][:, sl] = np.where(g.present[:, sl] & (var > 1e-12), cov / var, np.nan)


def _raw_features(g: grid.Grid, columns: tuple[str, ...]) -> dict[str, np.ndarray | Callable]:
    """The un-normalised ``columns`` (NaN = null): a (T, S) grid array each, computed block by
    block (stock blocks for the time-series steps, day blocks for the market means), or for the
    same-day combinations of those a function of a day block (:func:`_same_day`)."""
    T, S = g.present.shape
    out: dict[str, np.ndarray] = {}
    mkt: dict[int, np.ndarray] = {}
    derived = _same_day(g, out, mkt, columns)  # reads out / mkt once they are filled below
    out.update({f: np.empty((T, S)) for f in columns if f not in derived})
    grid.by_stock(lambda sl: _per_stock(g, sl, out), T, S)
    mkt.update({n: np.empty(T) for n in sorted({1} | {n for n in RESID_WINDOWS if f"resid_ret_{n}d" in columns})})
    grid.by_day(lambda rows: _market(g, rows, out, mkt), T, S)
    grid.by_stock(lambda sl: _beta(g, sl, out, mkt[1]), T, S)
    return {f: derived[f] if f in derived else out[f] for f in columns}


def build_features(
    quotes: pl.DataFrame | pl.LazyFrame, cfg: Config, mask: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Canonical quotes -> per-stock-day features (per-day robust z) and raw targets.

    Computed on a dense (day x stock) numpy grid (:mod:`atft_core.features_grid` says why).

    Args:
        quotes: canonical daily quotes (SPEC 3.1); any row order.
        cfg: uses ``cfg.features`` (horizons, clip, min_history, extra).
        mask: optional (Date, Code) rows flagged by validation (bad ticks): treated as gaps.

    Returns:
        pl.DataFrame sorted by (Date, Code) with Date, Code, Sector33Code,
        :func:`feature_columns` (Float32, null where undefined), ``y_{h}d`` (Float64, null where unknown),
        ``history_days`` (Int32) and ``ret_1d_raw`` (Float32). One row per real stock-day.
    """
    fc = cfg.features
    t0 = time.perf_counter()
    clean = _clean(quotes, mask).collect()
    dates = quotes.lazy().select(pl.col("Date").unique().sort()).collect().to_series()
    g = grid.load_grid(clean, dates, with_open=any(c.startswith(("ret_overnight", "ret_intraday"))
                                                   for c in cfg.features.extra))
    del clean
    present = g.present
    history = np.cumsum(present, axis=0, dtype=np.int32)
    columns = feature_columns(cfg)
    # progress (issue 13 item 4): a line per stage, a large market takes tens of seconds
    log.info("features: %d days x %d stocks (%d stock-days) on the grid in %.1fs", *present.shape,
             int(present.sum()), time.perf_counter() - t0)
    raw = _raw_features(g, columns)
    ret_1d_raw = raw["ret_1d"][present].astype(np.float32)
    log.info("features: %d raw columns at %.1fs", len(columns), time.perf_counter() - t0)
    z = grid.robust_z_all(raw, present, present & (history >= fc.min_history), fc.clip,
                          MAD_SCALE, SCALE_EPS)
    del raw
    log.info("features: per-day robust z at %.1fs", time.perf_counter() - t0)
    cells = np.flatnonzero(present)  # row-major: sorted by (Date, Code)
    entry = grid.lead(g.close, cells, 1)  # raw: null on gaps / masked rows / beyond the span
    with np.errstate(invalid="ignore", divide="ignore"):
        ys = {f"y_{h}d": grid.lead(g.close, cells, 1 + h) / entry - 1 for h in fc.horizons}
    t_idx, s_idx = np.divmod(cells, present.shape[1])
    sec = g.sector[present]
    sector = (
        g.sectors.gather(np.maximum(sec, 0)).scatter(np.flatnonzero(sec < 0), None)
        if len(g.sectors) else pl.repeat(None, len(sec), dtype=g.sectors.dtype, eager=True)
    )
    return pl.DataFrame(
        [
            g.dates.gather(t_idx).alias("Date"),
            g.codes.gather(s_idx).alias("Code"),
            sector.alias("Sector33Code"),
            *[pl.Series(f, z[f], pl.Float32, nan_to_null=True) for f in columns],
            *[pl.Series(k, v, pl.Float64, nan_to_null=True) for k, v in ys.items()],
            pl.Series("history_days", history[present], pl.Int32),
            pl.Series("ret_1d_raw", ret_1d_raw, pl.Float32, nan_to_null=True),
        ]
    )


# --------------------------------------------------------------------------- pandas reference
def build_features_pandas(quotes, cfg: Config, mask=None):
    """The same features written the straightforward pandas way (groupby + rolling).

    The benchmark (``atft bench features``) times it against :func:`build_features` and the tests
    use it as an independent reference. Returns a pandas DataFrame with the same columns/order.
    """
    import numpy as np
    import pandas as pd

    fc = cfg.features
    df = quotes.to_pandas() if isinstance(quotes, pl.DataFrame) else quotes.copy()
    if "TurnoverValue" not in df:
        df["TurnoverValue"] = np.nan
    if "Sector33Code" not in df:
        df["Sector33Code"] = None
    df["TurnoverValue"] = df["TurnoverValue"].astype(float)
    ok = np.ones(len(df), bool)
    for c in ("Open", "High", "Low", "Close"):
        ok &= np.isfinite(df[c].to_numpy(float)) & (df[c].to_numpy(float) > 0)
    df = df[ok]
    all_dates = np.sort(quotes["Date"].unique().to_numpy() if isinstance(quotes, pl.DataFrame) else quotes["Date"].unique())
    if mask is not None:
        m = mask.to_pandas() if isinstance(mask, pl.DataFrame) else mask
        key = pd.MultiIndex.from_frame(m[["Date", "Code"]])
        df = df[~pd.MultiIndex.from_frame(df[["Date", "Code"]]).isin(key)]
    tmap = pd.Series(np.arange(len(all_dates)), index=pd.Index(all_dates))
    df = df.assign(t=tmap.reindex(df["Date"].to_numpy()).to_numpy(), present=True)
    span = df.groupby("Code")["t"].agg(["min", "max"])
    grid = pd.DataFrame(
        {
            "Code": np.repeat(span.index.to_numpy(), (span["max"] - span["min"] + 1).to_numpy()),
            "t": np.concatenate([np.arange(a, b + 1) for a, b in zip(span["min"], span["max"])]),
        }
    )
    grid["Date"] = all_dates[grid["t"].to_numpy()]
    df = grid.merge(df.drop(columns="Date"), on=["Code", "t"], how="left")
    df["present"] = df["present"].eq(True)
    df = df.sort_values(["Code", "t"]).reset_index(drop=True)
    g = df.groupby("Code", sort=False)
    pres = df["present"]
    df["_lc"] = g["Close"].transform(lambda s: np.log(s).ffill())
    df["Sector33Code"] = g["Sector33Code"].transform(lambda s: s.ffill())
    df["history_days"] = g["present"].cumsum()
    df["_lv"] = np.log1p(df["Volume"].clip(lower=0)).where(pres)
    tv = df["TurnoverValue"].fillna(df["Close"] * df["Volume"])
    df["_lt"] = np.log1p(tv.clip(lower=0)).where(pres)
    df["hl_range"] = np.log(df["High"] / df["Low"]).where(pres)
    g = df.groupby("Code", sort=False)
    for n in RETURN_WINDOWS:
        df[f"ret_{n}d"] = (df["_lc"] - g["_lc"].shift(n)).where(pres)
    g = df.groupby("Code", sort=False)

    def roll(col, n, how, minp=None):
        r = g[col].rolling(n, min_periods=minp or min_samples(n))
        return getattr(r, how)().reset_index(level=0, drop=True).sort_index()

    for n in VOL_WINDOWS:
        df[f"vol_{n}d"] = roll("ret_1d", n, "std").where(pres)
    for n in MA_WINDOWS:
        df[f"ma_gap_{n}"] = (df["Close"] / roll("Close", n, "mean") - 1).where(pres)
    df["_gain"] = df["ret_1d"].clip(lower=0)
    df["_loss"] = (-df["ret_1d"]).clip(lower=0)
    g = df.groupby("Code", sort=False)
    gain, loss = roll("_gain", RSI_WINDOW, "mean"), roll("_loss", RSI_WINDOW, "mean")
    df[f"rsi_{RSI_WINDOW}"] = (100 * gain / (gain + loss)).where(pres & (gain + loss > 0))
    for col, src in (("volume_z", "_lv"), ("turnover_z", "_lt")):
        df[col] = ((df[src] - roll(src, ZSCORE_WINDOW, "mean")) / roll(src, ZSCORE_WINDOW, "std")).where(pres)
    df["mom_20_5"] = df["ret_20d"] - df["ret_5d"]
    df["mom_60_20"] = df["ret_60d"] - df["ret_20d"]
    df["rev_5d_volscaled"] = -df["ret_5d"] / df["vol_20d"]
    # optional extras (EXTRA_FEATURES says what they are)
    df["ret_overnight_1d"] = (np.log(df["Open"]) - g["_lc"].shift(1)).where(pres)
    df["ret_intraday_1d"] = np.log(df["Close"] / df["Open"]).where(pres)
    df["_tv"] = tv.clip(lower=0).where(pres)
    g = df.groupby("Code", sort=False)
    for part in ("overnight", "intraday"):
        df[f"ret_{part}_5d"] = roll(f"ret_{part}_1d", 5, "sum", 1).where(df["ret_5d"].notna())
    df["turnover_ratio_5_60"] = np.log(roll("_tv", 5, "mean") / roll("_tv", 60, "mean")).where(pres)

    def peer_mean(col):
        """Same-day mean of col over the stock's sector (market where the sector is null)."""
        v = df.loc[pres, ["Date", "Sector33Code", col]]
        m = v.groupby("Date")[col].mean().reindex(df["Date"]).to_numpy()
        s = v.groupby(["Date", "Sector33Code"])[col].mean()
        s = s.reindex(pd.MultiIndex.from_frame(df[["Date", "Sector33Code"]])).to_numpy()
        return m, np.where(df["Sector33Code"].isna(), m, s)

    for n in sorted({*RELATIVE_WINDOWS, *RESID_WINDOWS}):
        r = f"ret_{n}d"
        m, s = peer_mean(r)
        df[f"_mkt_{n}"] = m
        df[f"rel_sec_{n}d"] = df[r] - s
    df["_m"] = df["_mkt_1"].where(df["ret_1d"].notna())
    df["_rm"] = df["ret_1d"] * df["_m"]
    df["_mm"] = df["_m"] * df["_m"]
    g = df.groupby("Code", sort=False)
    mean = {c: roll(c, BETA_WINDOW, "mean", 20) for c in ("ret_1d", "_m", "_rm", "_mm")}
    cov = mean["_rm"] - mean["ret_1d"] * mean["_m"]
    var = mean["_mm"] - mean["_m"] ** 2
    df[f"beta_{BETA_WINDOW}d"] = (cov / var).where(pres & (var > 1e-12))
    for n in RESID_WINDOWS:
        df["_e"] = df[f"ret_{n}d"] - df[f"beta_{BETA_WINDOW}d"] * df[f"_mkt_{n}"]
        df[f"resid_ret_{n}d"] = df["_e"] - peer_mean("_e")[1]
    for h in fc.horizons:
        df[f"y_{h}d"] = g["Close"].shift(-(1 + h)) / g["Close"].shift(-1) - 1
    df["ret_1d_raw"] = df["ret_1d"]
    out = df[pres].copy()
    usable = out["history_days"] >= fc.min_history
    columns = feature_columns(cfg)
    for f in columns:
        x = out[f].replace([np.inf, -np.inf], np.nan)
        xu = x.where(usable)
        med = xu.groupby(out["Date"]).transform("median")
        mad = (xu - med).abs().groupby(out["Date"]).transform("median") * MAD_SCALE
        std = xu.groupby(out["Date"]).transform("std")
        scale = mad.where(mad > SCALE_EPS, std.where(std > SCALE_EPS))
        z = ((x - med) / scale).clip(-fc.clip, fc.clip)
        z = z.where(scale.notna(), 0.0).where(x.notna())
        out[f] = z.astype("float32")
    cols = ["Date", "Code", "Sector33Code", *columns, *target_columns(fc.horizons),
            "history_days", "ret_1d_raw"]
    return out[cols].sort_values(["Date", "Code"]).reset_index(drop=True)
