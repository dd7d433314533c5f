"""The two classic factor baselines of the replay, on the rows the deep policies served.

* ``reversal_1d``: minus the stock's 1-day log return of day t (``ret_1d_raw`` from
  ``build_features``: Close(t)/Close(t-1) of the raw close, the day after a gap spans the gap).
* ``low_vol_20d``: minus the standard deviation (ddof=1) of its last 20 daily log returns (rows
  up to and including t; at least 10 returns, else no signal that day).

Both are point in time (the close of t) and serve the same value for every horizon; a stock-day
without a value gets no prediction and drops out of that day's score, as in
``evaluate.evaluate_predictions``.
"""

from __future__ import annotations

import polars as pl

LOW_VOL_WINDOW = 20
LOW_VOL_MIN_RETURNS = 10


def factor_signals(features: pl.DataFrame) -> pl.DataFrame:
    """Date, Code, reversal_1d, low_vol_20d from a ``build_features`` frame."""
    r = pl.col("ret_1d_raw").cast(pl.Float64)
    return (
        features.select("Date", "Code", "ret_1d_raw").sort("Code", "Date")
        .with_columns(
            (-r).alias("reversal_1d"),
            (-r.rolling_std(LOW_VOL_WINDOW, min_samples=LOW_VOL_MIN_RETURNS).over("Code"))
            .alias("low_vol_20d"),
        )
        .select("Date", "Code", "reversal_1d", "low_vol_20d")
    )


def factor_predictions(features: pl.DataFrame, rows: pl.DataFrame,
                       horizons: tuple[int, ...]) -> dict[str, pl.DataFrame]:
    """{factor: predictions frame} on ``rows`` (Date, Code, y_{h}d): pred_{h}d = the factor."""
    sig = factor_signals(features)
    out = {}
    for name in ("reversal_1d", "low_vol_20d"):
        joined = rows.join(sig.select("Date", "Code", name), on=["Date", "Code"], how="left")
        out[name] = joined.select(
            "Date", "Code", *[pl.col(name).alias(f"pred_{h}d") for h in horizons],
            *[f"y_{h}d" for h in horizons],
        ).sort("Date", "Code")
    return out
