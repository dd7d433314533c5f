"""Live performance of the served signals once their labels are known (issue 11 item 2).

The label of a signal of day D at horizon h is the executable return the features module
defines, ``y_h(D) = Close(D+1+h) / Close(D+1) - 1`` (``features.build_features``' ``y_{h}d``),
known from the close of D+1+h on. :func:`live_metrics` joins signals with those labels and
scores each day with :func:`atft_core.evaluate.daily_metrics` -- the evaluation module's own
per-day code -- so a live RankIC equals the RankIC evaluation reports on the same days, exactly.

:func:`rolling` summarises per (role, horizon) over the last 20 / 60 scored days: mean RankIC,
mean IC, mean long-short return, ICIR (mean / std of the daily RankIC) and hit rate (share of
stock-days whose prediction and label fall on the same side of the day's mean, as evaluate's
``hit_rate``); the cumulative long-short return is the sum of the daily returns (window "cum").
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

log = logging.getLogger(__name__)

WINDOWS = (20, 60)
DAILY_COLUMNS = ("ic", "rank_ic", "ls_return", "hits", "hit_n", "n")


def live_metrics(signals: pl.DataFrame, labels: pl.DataFrame, horizons: Sequence[int]) -> pl.DataFrame:
    """One row per (Date, horizon) whose label is known: Date, horizon, ic, rank_ic, ls_return,
    hits, hit_n, n (see the module doc). Days without a known label are left out."""
    from atft_core.evaluate import daily_metrics

    horizons = tuple(int(h) for h in horizons)
    need_s = ["Date", "Code", *[f"pred_{h}d" for h in horizons]]
    need_l = ["Date", "Code", *[f"y_{h}d" for h in horizons]]
    for name, frame, need in (("signals", signals, need_s), ("labels", labels, need_l)):
        missing = [c for c in need if c not in frame.columns]
        if missing:
            raise ValueError(f"live metrics: {name} lack column(s) {missing}")
    joined = signals.select(need_s).join(labels.select(need_l), on=["Date", "Code"], how="inner")
    if joined.is_empty():
        return _empty()
    daily = daily_metrics(joined, horizons)
    parts = []
    for h in horizons:
        cols = {c: f"{c}_{h}d" for c in DAILY_COLUMNS}
        part = (daily.select("Date", *[pl.col(v).alias(k) for k, v in cols.items()])
                .filter(pl.col("n").is_not_null() & pl.col("rank_ic").is_not_null())
                .with_columns(pl.lit(h, dtype=pl.Int32).alias("horizon")))
        parts.append(part)
    return pl.concat(parts).select("Date", "horizon", *DAILY_COLUMNS).with_columns(
        [pl.col(c).cast(pl.Float64) for c in ("ic", "rank_ic", "ls_return")]
        + [pl.col(c).cast(pl.Int64) for c in ("hits", "hit_n", "n")]).sort("horizon", "Date")


def _empty() -> pl.DataFrame:
    return pl.DataFrame(schema={"Date": pl.Date, "horizon": pl.Int32, "ic": pl.Float64,
                                "rank_ic": pl.Float64, "ls_return": pl.Float64, "hits": pl.Int64,
                                "hit_n": pl.Int64, "n": pl.Int64})


def _stats(rows: pl.DataFrame) -> dict[str, float]:
    r = rows.get_column("rank_ic").to_numpy()
    sd = float(np.std(r, ddof=1)) if len(r) > 1 else float("nan")
    hit_n = int(rows.get_column("hit_n").sum())
    return {
        "rank_ic": float(np.mean(r)),
        "ic": float(rows.get_column("ic").mean()),
        "ls_return": float(rows.get_column("ls_return").mean()),
        "icir": float(np.mean(r)) / sd if sd and math.isfinite(sd) and sd > 0 else float("nan"),
        "hit_rate": int(rows.get_column("hits").sum()) / hit_n if hit_n else float("nan"),
        "days": float(rows.height),
    }


def rolling(daily: pl.DataFrame, windows: Sequence[int] = WINDOWS) -> list[dict[str, Any]]:
    """Per (role, horizon) and window: the stats of the last ``w`` scored days (fewer if the
    history is shorter; ``days`` says how many), plus the latest day ("1d") and "cum" (all days;
    ``ls_cum`` = summed daily long-short return). ``daily`` needs a ``role`` column."""
    out = []
    for (role, h), rows in sorted(daily.group_by(["role", "horizon"]), key=lambda kv: kv[0]):
        rows = rows.sort("Date")
        for name, w in [("1d", 1), *[(f"{w}d", w) for w in windows], ("cum", rows.height)]:
            s = _stats(rows.tail(w))
            if name == "cum":
                s["ls_cum"] = float(rows.get_column("ls_return").sum())
            out.append({"role": role, "horizon": int(h), "window": name,
                        "last_date": str(rows.get_column("Date")[-1])} | s)
    return out


def labels_frame(quotes: Any, cfg: Any, start: dt.date, end: dt.date) -> pl.DataFrame:
    """Date, Code, y_{h}d for start <= Date <= end from the quotes known up to ``end``
    (``build_features``' executable label: null until it has matured)."""
    from atft_core.features import build_features, target_columns
    from atft_core.serving.predict import _lazy

    window = _lazy(quotes, start=start, end=end).collect()
    if window.is_empty():
        return pl.DataFrame()
    feats = build_features(window, cfg)
    return feats.select("Date", "Code", *target_columns(tuple(cfg.horizons)))


def signal_age_days(latest_signal_day: dt.date | None, as_of: dt.date) -> float:
    """Trading days between the newest signal's day and the latest session expected by ``as_of``
    (0 = the newest session is scored); NaN when there is no signal."""
    from atft_core import calendar

    if latest_signal_day is None:
        return float("nan")
    expected = calendar.latest_expected_trading_day(as_of)
    if latest_signal_day >= expected:
        return 0.0
    return float(len(calendar.trading_days(latest_signal_day, expected)) - 1)


def monitor(registry: Any, quotes: Any, as_of: dt.date | str, cfg: Any, history_path: str | Path,
            pusher: Any = None, lookback_sessions: int = 130) -> dict[str, Any]:
    """Score the champion and shadow signals of the last ``lookback_sessions`` sessions whose
    labels are known by ``as_of``; write the daily history (parquet, atomic) and push gauges."""
    from atft_core import calendar
    from atft_core.atomic import atomic_write_bytes
    from atft_core.serving.predict import as_date
    from atft_core.serving.signals import list_signals, read_signals

    as_of = as_date(as_of)
    start = calendar.add_trading_days(calendar.latest_expected_trading_day(as_of), -lookback_sessions)
    horizons = tuple(cfg.horizons)
    parts, latest = [], {}
    labels = None
    for role in ("champion", "shadow"):
        days = [d for d, _ in list_signals(registry, role) if d <= as_of]
        latest[role] = days[-1] if days else None
        sig = read_signals(registry, role, start=start, end=as_of)
        if sig is None:
            continue
        if labels is None:
            first = sig.get_column("Date").min()
            labels = labels_frame(quotes, cfg, first, as_of)
        if labels.is_empty():
            continue
        daily = live_metrics(sig, labels, horizons)
        run_of_day = sig.select("Date", "run_id").unique()
        parts.append(daily.join(run_of_day, on="Date", how="left")
                     .with_columns(pl.lit(role).alias("role")))
    history = pl.concat(parts) if parts else _empty().with_columns(
        pl.lit(None, dtype=pl.String).alias("run_id"), pl.lit(None, dtype=pl.String).alias("role"))
    history = history.select("role", "run_id", "Date", "horizon", *DAILY_COLUMNS).sort("role", "horizon", "Date")
    history_path = Path(history_path)
    history_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(history_path, lambda f: history.write_parquet(f))
    summary = rolling(history) if history.height else []
    age = signal_age_days(latest["champion"], as_of)
    if pusher is not None:
        pusher.live_metrics(summary, age)
    return {"history_path": str(history_path), "rows": history.height, "summary": summary,
            "signal_age_sessions": age,
            "latest_signal": {k: str(v) if v else None for k, v in latest.items()}}

