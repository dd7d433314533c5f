"""Derived columns for the GX suite, computed with polars (GX then validates one flat frame).

Every check of the suite is a per-row or per-table GX expectation on this frame, so day-level and
calendar facts are broadcast to rows:

* ``ret``: Close / previous Close of the same Code (by Date) - 1; null on a code's first row.
* ``ohlc_excess``: how far Open/Close lie outside [Low, High], relative
  (max of Open/High-1, Close/High-1, Low/Open-1, Low/Close-1); <= 0 when consistent.
* ``is_trading_day``: Date is an XTKS session (atft_core.calendar).
* ``session_idx``: the session's index in the calendar (null on non-trading dates); its distinct
  count must equal the number of sessions between the first and last Date.
* ``session_lag``: sessions between the latest expected day (as of the run) and the row's Date
  (a holiday counts as its previous session); min must be <= 0 (fresh), all >= 0 (not future).
* ``coverage``: distinct codes on the row's Date / median distinct codes per Date;
  ``coverage_latest``: the same, only on the last Date (null elsewhere).

Columns that are missing or of a non-castable dtype are "invalid": derived columns needing them
are not computed, and the GX checks on them report as skipped (the schema checks already fail).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import polars as pl

from atft_core import calendar as cal
from atft_core.data.schema import CANONICAL_SCHEMA, REQUIRED_SCHEMA

FLOAT_COLUMNS = ("Open", "High", "Low", "Close", "Volume")
# columns whose integer / float32 dtype is a lossless widening to Float64 (warning, not fatal)
CASTABLE_COLUMNS = (*FLOAT_COLUMNS, "TurnoverValue", "AdjustmentFactor")
# pandas dtype names GX sees for polars numeric columns (all castable to Float64)
NUMERIC_PANDAS_TYPES = [
    "float64", "float32", "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8",
]
DERIVED_NEEDS: dict[str, tuple[str, ...]] = {
    "ret": ("Date", "Code", "Close"),
    "ohlc_excess": ("Open", "High", "Low", "Close"),
    "is_trading_day": ("Date",),
    "session_idx": ("Date",),
    "session_lag": ("Date",),
    "coverage": ("Date", "Code"),
    "coverage_latest": ("Date", "Code"),
}


@lru_cache(maxsize=1)
def _sessions() -> np.ndarray:
    lo, hi = cal.bounds()
    return np.array(cal.trading_days(lo, hi), dtype="datetime64[D]")  # (S,)


@dataclass(frozen=True)
class Derived:
    """The frame GX validates plus the polars-side facts the report quotes.

    Shapes: ``frame`` (N rows, raw + derived columns); ``days`` (D rows: Date, n_codes, coverage,
    is_trading_day); ``bad_ticks`` (B rows: Date, Code, return).
    """

    frame: pl.DataFrame
    invalid_columns: frozenset[str]
    dtype_notes: dict[str, str]  # column -> "Volume is Int64 (expected Float64)"
    days: pl.DataFrame
    bad_ticks: pl.DataFrame
    rows: int
    codes: int
    first_date: dt.date | None
    last_date: dt.date | None
    median_codes: float | None
    n_sessions: int  # XTKS sessions in [first_date, last_date]
    missing_sessions: tuple[dt.date, ...]
    latest_expected_day: dt.date | None


def _column_status(df: pl.DataFrame) -> tuple[frozenset[str], dict[str, str]]:
    invalid: set[str] = set()
    notes: dict[str, str] = {}
    for col, want in CANONICAL_SCHEMA.items():
        if col not in df.columns:
            if col in REQUIRED_SCHEMA:
                invalid.add(col)
                notes[col] = f"{col} is missing"
            continue
        got = df.schema[col]
        if got == want:
            continue
        notes[col] = f"{col} is {got} (expected {want})"
        castable = col in CASTABLE_COLUMNS and got.is_numeric()
        if not castable:
            invalid.add(col)
    return frozenset(invalid), notes


def derive(df: pl.DataFrame, cfg, as_of: dt.date | None) -> Derived:
    """Compute the validated frame. ``cfg`` is a ValidationConfig."""
    invalid, notes = _column_status(df)
    keep = [c for c in CANONICAL_SCHEMA if c in df.columns]  # extra columns are not validated
    frame = df.select(keep)
    ok = [c for c in keep if c not in invalid]
    # castable numeric columns stay raw in `frame` (GX reports their dtype); derive from Float64
    num = {c: pl.col(c).cast(pl.Float64) for c in FLOAT_COLUMNS if c in ok}

    def can(name: str) -> bool:
        return all(c in ok for c in DERIVED_NEEDS[name])

    add: list[pl.Expr] = []
    if can("ret"):
        close = num["Close"]
        add.append((close / close.shift(1).over("Code", order_by="Date") - 1.0).alias("ret"))
    if can("ohlc_excess"):
        o, h, lo, c = num["Open"], num["High"], num["Low"], num["Close"]
        excess = pl.max_horizontal(o / h - 1.0, c / h - 1.0, lo / o - 1.0, lo / c - 1.0)
        positive = (o > 0) & (h > 0) & (lo > 0) & (c > 0)
        add.append(pl.when(positive).then(excess).otherwise(None).alias("ohlc_excess"))
    if add:
        frame = frame.with_columns(add)

    rows = frame.height
    codes = frame["Code"].n_unique() if "Code" in ok else 0
    days = pl.DataFrame(schema={"Date": pl.Date, "n_codes": pl.UInt32, "coverage": pl.Float64,
                                "is_trading_day": pl.Boolean})
    first = last = latest = None
    median = None
    n_sessions = 0
    missing: tuple[dt.date, ...] = ()
    if "Date" in ok:
        latest = cal.latest_expected_trading_day(as_of) if as_of is not None else None
        n_codes = pl.col("Code").n_unique() if "Code" in ok else pl.len()
        days = (frame.filter(pl.col("Date").is_not_null()).group_by("Date")
                .agg(n_codes.cast(pl.UInt32).alias("n_codes")).sort("Date"))
        sessions = _sessions()  # (S,)
        day64 = days["Date"].to_numpy().astype("datetime64[D]")  # (D,)
        pos = np.searchsorted(sessions, day64)  # (D,)
        is_td = (pos < len(sessions)) & (sessions[np.minimum(pos, len(sessions) - 1)] == day64)
        prev_idx = np.searchsorted(sessions, day64, side="right") - 1  # session <= Date
        if days.height:
            median = float(days["n_codes"].median())
            first, last = days["Date"][0], days["Date"][-1]
            span = sessions[(sessions >= np.datetime64(first, "D")) & (sessions <= np.datetime64(last, "D"))]
            n_sessions = len(span)
            have = set(day64[is_td].tolist())
            missing = tuple(s.item() for s in span if s.item() not in have)
        cov = (days["n_codes"].cast(pl.Float64) / median) if median else pl.Series([None] * days.height, dtype=pl.Float64)
        day_cols = [
            pl.Series("is_trading_day", is_td),
            pl.Series("session_idx", np.where(is_td, pos, -1)).cast(pl.Int64),
            cov.alias("coverage"),
        ]
        if latest is not None:
            lat = int(np.searchsorted(sessions, np.datetime64(latest, "D")))
            day_cols.append(pl.Series("session_lag", lat - prev_idx).cast(pl.Int64))
        days = days.with_columns(day_cols).with_columns(
            pl.when(pl.col("session_idx") >= 0).then(pl.col("session_idx")).alias("session_idx"),
            (pl.when(pl.col("Date") == last).then(pl.col("coverage")) if last is not None
             else pl.lit(None, dtype=pl.Float64)).alias("coverage_latest"),
        )
        frame = frame.join(days.drop("n_codes"), on="Date", how="left", maintain_order="left")
        days = days.select("Date", "n_codes", "coverage", "is_trading_day")

    if "ret" in frame.columns:
        lim = cfg.max_abs_daily_return
        bad_ticks = (frame.filter(pl.col("ret").is_not_null() & ~(pl.col("ret").abs() <= lim))
                     .select("Date", "Code", pl.col("ret").alias("return")).sort("Date", "Code"))
    else:
        bad_ticks = pl.DataFrame(schema={"Date": pl.Date, "Code": pl.String, "return": pl.Float64})
    return Derived(
        frame=frame, invalid_columns=invalid, dtype_notes=notes, days=days, bad_ticks=bad_ticks,
        rows=rows, codes=codes, first_date=first, last_date=last, median_codes=median,
        n_sessions=n_sessions, missing_sessions=missing, latest_expected_day=latest,
    )
