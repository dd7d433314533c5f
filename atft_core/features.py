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

Extra, non-feature columns: ``history_days`` (real rows of the stock up to and including t) and
``ret_1d_raw`` (the raw 1-day log return; the graph's correlation input).
"""

from __future__ import annotations

import math

import polars as pl

from atft_core.config import Config
from atft_core.data.schema import check_schema, complete_optional

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


def target_columns(horizons: tuple[int, ...]) -> tuple[str, ...]:
    return tuple(f"y_{h}d" for h in horizons)


def min_samples(window: int) -> int:
    """Rolling statistics need at least half the window (and 2 points for a std)."""
    return max(2, math.ceil(window / 2))


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


def _dense_grid(lf: pl.LazyFrame, all_dates: pl.LazyFrame) -> pl.LazyFrame:
    """One row per (Code, market date) inside each code's listing span; ``present`` marks real rows."""
    dates = all_dates.with_row_index("t").with_columns(pl.col("t").cast(pl.Int64))
    real = lf.join(dates, on="Date", how="inner").with_columns(pl.lit(True).alias("present"))
    spans = real.group_by("Code").agg(pl.col("t").min().alias("t0"), pl.col("t").max().alias("t1"))
    grid = (
        spans.select("Code", pl.int_ranges("t0", pl.col("t1") + 1).alias("t"))
        .explode("t")
        .join(dates, on="t", how="left")
    )
    out = grid.join(real.drop("Date"), on=["Code", "t"], how="left").with_columns(
        pl.col("present").fill_null(False)
    )
    return out.sort("Code", "t")


def _per_stock(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Features computed along each stock's own history (rows sorted by Code, t)."""
    by = "Code"
    present = pl.col("present")
    lc_ff = pl.col("Close").log().forward_fill().over(by)
    lf = lf.with_columns(
        lc_ff.alias("_lc"),
        pl.col("Close").forward_fill().over(by).alias("_cff"),
        # forward fill only: a sector learnt later must not leak backwards (null -> market)
        pl.col("Sector33Code").forward_fill().over(by).alias("Sector33Code"),
        present.cast(pl.Int32).cum_sum().over(by).alias("history_days"),
        pl.when(present).then(pl.col("Volume").clip(lower_bound=0).log1p()).alias("_lv"),
        pl.when(present)
        .then(pl.col("TurnoverValue").fill_null(pl.col("Close") * pl.col("Volume")).clip(lower_bound=0).log1p())
        .alias("_lt"),
        pl.when(present).then((pl.col("High") / pl.col("Low")).log()).alias("hl_range"),
    )
    rets = {
        f"ret_{n}d": pl.when(present).then(pl.col("_lc") - pl.col("_lc").shift(n).over(by))
        for n in RETURN_WINDOWS
    }
    lf = lf.with_columns(**rets)
    r1 = pl.col("ret_1d")
    gain = r1.clip(lower_bound=0).rolling_mean(RSI_WINDOW, min_samples=min_samples(RSI_WINDOW))
    loss = (-r1).clip(lower_bound=0).rolling_mean(RSI_WINDOW, min_samples=min_samples(RSI_WINDOW))
    zw, zm = ZSCORE_WINDOW, min_samples(ZSCORE_WINDOW)
    exprs = {
        **{
            f"vol_{n}d": pl.when(present).then(r1.rolling_std(n, min_samples=min_samples(n)).over(by))
            for n in VOL_WINDOWS
        },
        **{
            f"ma_gap_{n}": pl.when(present).then(
                pl.col("Close") / pl.col("Close").rolling_mean(n, min_samples=min_samples(n)).over(by) - 1
            )
            for n in MA_WINDOWS
        },
        f"rsi_{RSI_WINDOW}": pl.when(present & ((gain + loss).over(by) > 0)).then(
            100 * gain.over(by) / (gain + loss).over(by)
        ),
        "volume_z": pl.when(present).then(
            (pl.col("_lv") - pl.col("_lv").rolling_mean(zw, min_samples=zm).over(by))
            / pl.col("_lv").rolling_std(zw, min_samples=zm).over(by)
        ),
        "turnover_z": pl.when(present).then(
            (pl.col("_lt") - pl.col("_lt").rolling_mean(zw, min_samples=zm).over(by))
            / pl.col("_lt").rolling_std(zw, min_samples=zm).over(by)
        ),
        "mom_20_5": pl.col("ret_20d") - pl.col("ret_5d"),
        "mom_60_20": pl.col("ret_60d") - pl.col("ret_20d"),
    }
    lf = lf.with_columns(**exprs)
    return lf.with_columns(
        (-pl.col("ret_5d") / pl.col("vol_20d")).alias("rev_5d_volscaled"),
    )


def _cross_section(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Market / sector relative returns and the rolling beta to the market."""
    present = pl.col("present")
    rets = [f"ret_{n}d" for n in RELATIVE_WINDOWS]
    real = lf.filter(present).select("Date", "Sector33Code", *rets)
    mkt = real.group_by("Date").agg([pl.col(f"ret_{n}d").mean().alias(f"_mkt_{n}") for n in RELATIVE_WINDOWS])
    sec = (
        real.filter(pl.col("Sector33Code").is_not_null())
        .group_by("Date", "Sector33Code")
        .agg([pl.col(f"ret_{n}d").mean().alias(f"_sec_{n}") for n in RELATIVE_WINDOWS])
    )
    # maintain_order: the rolling beta below relies on the (Code, t) row order
    lf = lf.join(mkt, on="Date", how="left", maintain_order="left").join(
        sec, on=["Date", "Sector33Code"], how="left", maintain_order="left"
    )
    rel = {}
    for n in RELATIVE_WINDOWS:
        r = pl.col(f"ret_{n}d")
        # null sector -> the market is the stock's peer group
        sector_mean = pl.when(pl.col("Sector33Code").is_null()).then(pl.col(f"_mkt_{n}")).otherwise(
            pl.col(f"_sec_{n}")
        )
        rel[f"rel_sec_{n}d"] = r - sector_mean
    lf = lf.with_columns(**rel)
    # beta over pairs where the stock has a return (same pairs for both moments)
    r1 = pl.col("ret_1d")
    m = pl.when(r1.is_not_null()).then(pl.col("_mkt_1"))
    w, ms = BETA_WINDOW, 20
    mean = lambda e: e.rolling_mean(w, min_samples=ms).over("Code")  # noqa: E731
    cov = mean(r1 * m) - mean(r1) * mean(m)
    var = mean(m * m) - mean(m) ** 2
    return lf.with_columns(
        pl.when(present & (var > 1e-12)).then(cov / var).alias(f"beta_{BETA_WINDOW}d")
    )


def _targets(lf: pl.LazyFrame, horizons: tuple[int, ...]) -> pl.LazyFrame:
    c = pl.col("Close")  # raw: null on gaps / masked rows / beyond the listing span
    return lf.with_columns(
        **{
            f"y_{h}d": (c.shift(-(1 + h)) / c.shift(-1) - 1).over("Code")
            for h in horizons
        }
    )


def robust_z(lf: pl.LazyFrame, cols: tuple[str, ...], usable: pl.Expr, clip: float) -> pl.LazyFrame:
    """Per-day robust z of ``cols``: median / 1.4826*MAD over the day's usable rows, clipped.

    Per-day statistics come from ``group_by("Date")`` on plain columns + join (window or agg
    expressions over computed inputs take polars' per-group slow path: ~100x slower here).
    """
    # only plain column aggregations inside group_by: an expression such as (x - m).abs() inside
    # agg() is evaluated group by group (slow path)
    u = lf.filter(usable).select("Date", *cols)
    med = u.group_by("Date").agg(
        [pl.col(c).median().alias(f"_med_{c}") for c in cols]
        + [pl.col(c).std().alias(f"_std_{c}") for c in cols]
    )
    absdev = u.join(med, on="Date", how="left").select(
        "Date", *[(pl.col(c) - pl.col(f"_med_{c}")).abs().alias(c) for c in cols]
    )
    dev = absdev.group_by("Date").agg([(pl.col(c).median() * MAD_SCALE).alias(f"_mad_{c}") for c in cols])
    lf = lf.join(med, on="Date", how="left", maintain_order="left").join(
        dev, on="Date", how="left", maintain_order="left"
    )
    out = []
    for c in cols:
        x, m, mad, sd = pl.col(c), pl.col(f"_med_{c}"), pl.col(f"_mad_{c}"), pl.col(f"_std_{c}")
        # thresholds, not > 0: a constant column has a float-noise std of ~1e-17
        scale = pl.when(mad > SCALE_EPS).then(mad).when(sd > SCALE_EPS).then(sd)
        out.append(
            pl.when(x.is_null()).then(None)
            .when(scale.is_null()).then(0.0)
            .otherwise(((x - m) / scale).clip(-clip, clip))
            .alias(c)
        )
    drop = [f"_{k}_{c}" for k in ("med", "mad", "std") for c in cols]
    return lf.with_columns(out).drop(drop)


def build_features(
    quotes: pl.DataFrame | pl.LazyFrame, cfg: Config, mask: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Canonical quotes -> per-stock-day features (per-day robust z) and raw targets.

    Args:
        quotes: canonical daily quotes (SPEC 3.1); any row order.
        cfg: uses ``cfg.features`` (horizons, clip, min_history).
        mask: optional (Date, Code) rows flagged by validation (bad ticks): treated as gaps.

    Returns:
        pl.DataFrame sorted by (Date, Code) with Date, Code, Sector33Code, ``FEATURE_COLUMNS``
        (Float32, null where undefined), ``y_{h}d`` (Float64, null where unknown),
        ``history_days`` (Int32) and ``ret_1d_raw`` (Float32). One row per real stock-day.
    """
    fc = cfg.features
    lf = _clean(quotes, mask)
    all_dates = quotes.lazy().select("Date").unique().sort("Date")
    lf = _dense_grid(lf, all_dates)
    lf = _per_stock(lf)
    lf = _cross_section(lf)
    lf = _targets(lf, fc.horizons)
    ycols = target_columns(fc.horizons)
    # materialise the per-stock part once (the z-score step reads it several times; a lazy plan
    # would recompute the rolling windows for each read) with only the columns still needed
    raw = (
        lf.filter(pl.col("present"))
        .select(
            "Date",
            "Code",
            "Sector33Code",
            # inf (e.g. a zero volume std) is not a value: null it before the z-score
            *[pl.when(pl.col(f).is_finite()).then(pl.col(f)).alias(f) for f in FEATURE_COLUMNS],
            *ycols,
            pl.col("history_days").cast(pl.Int32),
            pl.col("ret_1d").cast(pl.Float32).alias("ret_1d_raw"),
        )
        .sort("Date", "Code")
        .collect()
    )
    usable = pl.col("history_days") >= fc.min_history
    return (
        robust_z(raw.lazy(), FEATURE_COLUMNS, usable, fc.clip)
        .with_columns([pl.col(f).cast(pl.Float32) for f in FEATURE_COLUMNS])
        .collect()
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
    real = df[pres]
    for n in RELATIVE_WINDOWS:
        r = f"ret_{n}d"
        mkt = real.groupby("Date")[r].mean()
        sec = real.groupby(["Date", "Sector33Code"])[r].mean()
        m = mkt.reindex(df["Date"]).to_numpy()
        s = sec.reindex(pd.MultiIndex.from_frame(df[["Date", "Sector33Code"]])).to_numpy()
        s = np.where(df["Sector33Code"].isna(), m, s)
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
    for h in fc.horizons:
        df[f"y_{h}d"] = g["Close"].shift(-(1 + h)) / g["Close"].shift(-1) - 1
    df["ret_1d_raw"] = df["ret_1d"]
    out = df[pres].copy()
    usable = out["history_days"] >= fc.min_history
    for f in FEATURE_COLUMNS:
        x = out[f].replace([np.inf, -np.inf], np.nan)
        xu = x.where(usable)
        med = xu.groupby(out["Date"]).transform("median")
        mad = (xu - med).abs().groupby(out["Date"]).transform("median") * MAD_SCALE
        std = xu.groupby(out["Date"]).transform("std")
        scale = mad.where(mad > SCALE_EPS, std.where(std > SCALE_EPS))
        z = ((x - med) / scale).clip(-fc.clip, fc.clip)
        z = z.where(scale.notna(), 0.0).where(x.notna())
        out[f] = z.astype("float32")
    cols = ["Date", "Code", "Sector33Code", *FEATURE_COLUMNS, *target_columns(fc.horizons),
            "history_days", "ret_1d_raw"]
    return out[cols].sort_values(["Date", "Code"]).reset_index(drop=True)
