"""Score one day's cross-section with a model run: the daily signal (issue 11 item 1).

``predict_day(registry, day, quotes)`` resolves an alias (default ``champion``) through the
registry's verified load (alias -> manifest pinned by sha256 -> every file's sha256), then
:func:`score_run` builds day D's features and graph and predicts every horizon with the same
functions training and evaluation use (``features.build_features``, ``dataset.build_panel``,
``train.api.load_model`` / ``predict_window``): there is no second implementation of the model's
input.

Decisions:
* The quotes window is the last :func:`history_trading_days` sessions of the data up to D. Every
  feature is a trailing window of at most ``LONGEST_FEATURE_WINDOW`` sessions (no EWM, no
  expanding statistic but ``history_days``), so D's features on this window are the ones a build
  over the whole history gives; the window also covers ``min_history``, the model's lookback and
  the graph's correlation window.
* The signal holds ``pred_{h}d`` (the model's score) and ``rank_{h}d`` (1 = highest score of the
  day, ties by Code) per horizon, one row per stock in D's cross-section, sorted by Code; its
  parquet bytes are deterministic (same model + same data -> same bytes), which is what makes
  re-publishing a day idempotent.
* The data fingerprint is the sha256 of the window's Date, Code, OHLCV and sector columns in
  (Date, Code) order, so it names the data, not a file layout.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from atft_core.serving.drift import REFERENCE_FILE

FINGERPRINT_COLUMNS = ("Open", "High", "Low", "Close", "Volume", "TurnoverValue", "Sector33Code")


def longest_feature_window() -> int:
    from atft_core import features as f

    return max(*f.RETURN_WINDOWS, *f.VOL_WINDOWS, *f.MA_WINDOWS, *f.RELATIVE_WINDOWS,
               f.RSI_WINDOW, f.ZSCORE_WINDOW, f.BETA_WINDOW)


def history_trading_days(cfg: Any) -> int:
    """Sessions of quotes before D that scoring D needs (features, usability, lookback, graph)."""
    return (longest_feature_window() + max(cfg.features.min_history, cfg.graph.corr_window)
            + cfg.dataset.lookback + 5)


def as_date(day: dt.date | str) -> dt.date:
    if isinstance(day, dt.datetime):
        return day.date()
    if isinstance(day, dt.date):
        return day
    try:
        return dt.date.fromisoformat(str(day))
    except ValueError:
        raise ValueError(f"date {day!r} is not YYYY-MM-DD") from None


def _lazy(quotes: Any, start: dt.date | None = None, end: dt.date | None = None) -> pl.LazyFrame:
    """Quotes with start <= Date <= end. A store path is read through ``scan_store`` with that
    window, so split adjustments are those known at ``end`` (point in time)."""
    if isinstance(quotes, pl.DataFrame | pl.LazyFrame):
        lf = quotes.lazy()
        if start is not None:
            lf = lf.filter(pl.col("Date") >= start)
        return lf.filter(pl.col("Date") <= end) if end is not None else lf
    from atft_core.data.store import scan_store

    return scan_store(quotes, start=start, end=end)


def day_window(quotes: Any, day: dt.date | str, sessions: int) -> pl.DataFrame:
    """Quotes of the last ``sessions`` dates present in the data up to ``day`` (inclusive).

    Raises ValueError when ``day`` itself is not in the data."""
    day = as_date(day)
    lf = _lazy(quotes, end=day)
    dates = lf.select(pl.col("Date").unique()).collect().get_column("Date").sort()
    if dates.is_empty() or dates[-1] != day:
        last = dates[-1] if not dates.is_empty() else None
        raise ValueError(f"no quotes for {day} in the data (latest day on or before it: {last})")
    start = dates[max(0, len(dates) - sessions)]
    return lf.filter(pl.col("Date") >= start).collect().sort("Date", "Code")


def data_fingerprint(window: pl.DataFrame) -> str:
    """sha256 over the window's Date, Code and price/volume/sector columns, (Date, Code) order."""
    w = window.sort("Date", "Code")
    h = hashlib.sha256()
    h.update(w.get_column("Date").cast(pl.Int32).to_numpy().tobytes())
    h.update("\n".join(w.get_column("Code").cast(pl.String).to_list()).encode())
    for c in FINGERPRINT_COLUMNS:
        if c not in w.columns:
            continue
        col = w.get_column(c)
        h.update(c.encode())
        if col.dtype.is_numeric():
            h.update(col.cast(pl.Float64).fill_null(float("nan")).to_numpy().tobytes())
        else:
            h.update("\n".join("" if v is None else str(v) for v in col.to_list()).encode())
    return h.hexdigest()


def rank_frame(preds: pl.DataFrame, horizons: tuple[int, ...]) -> pl.DataFrame:
    """Date, Code, pred_{h}d -> + rank_{h}d (1 = highest pred of the day, ties by Code)."""
    df = preds.select("Date", pl.col("Code").cast(pl.String),
                      *[pl.col(f"pred_{h}d").cast(pl.Float64) for h in horizons]).sort("Date", "Code")
    ranks = [pl.col(f"pred_{h}d").rank("ordinal", descending=True).over("Date").cast(pl.Int32)
             .alias(f"rank_{h}d") for h in horizons]
    return df.with_columns(ranks)


@dataclass(frozen=True)
class DaySignal:
    """One day's scores by one model (see docs/CONTRACTS.md, Serving)."""

    day: dt.date
    run_id: str
    horizons: tuple[int, ...]
    frame: pl.DataFrame
    data_fingerprint: str
    manifest_sha256: str | None = None
    features: pl.DataFrame | None = field(default=None, repr=False)
    drift_reference: dict[str, Any] | None = field(default=None, repr=False)

    def to_parquet_bytes(self) -> bytes:
        buf = io.BytesIO()
        self.frame.write_parquet(buf, compression="zstd", statistics=False)
        return buf.getvalue()


def _day_features(panel: Any, t: int) -> pl.DataFrame:
    usable = panel.usable[:, t].numpy()
    x = panel.x[:, t, :].numpy()[usable]
    cols: dict[str, Any] = {"Code": panel.codes[usable].astype(str)}
    for j, name in enumerate(panel.feature_names):
        cols[name] = x[:, j].astype(np.float64)
    return pl.DataFrame(cols)


def score_run(run_dir: str | Path, day: dt.date | str, quotes: Any, *, run_id: str | None = None,
              manifest_sha256: str | None = None, device: str = "cpu") -> DaySignal:
    """Scores of ``day``'s cross-section by the run in ``run_dir`` (model.safetensors + config.yaml).

    Raises ValueError (one line) when the day is missing from the data or has < 2 usable stocks,
    or when the weights do not fit the run's config."""
    from atft_core.baselines.scorer import load_scorer
    from atft_core.dataset import build_panel
    from atft_core.features import build_features

    day = as_date(day)
    run_dir = Path(run_dir)
    # one scoring entry point for every model family (a ridge champion is served the same way)
    scorer = load_scorer(run_dir)
    cfg = scorer._cfg
    window = day_window(quotes, day, history_trading_days(cfg))
    fingerprint = data_fingerprint(window)
    features = build_features(window, cfg)
    panel = build_panel(features, cfg)
    if day not in panel.dates:
        raise ValueError(f"{day}: no feature rows (no stock traded that day?)")
    t = panel.dates.index(day)
    if int(panel.usable[:, t].sum()) < 2:
        raise ValueError(f"{day}: fewer than 2 stocks with {cfg.features.min_history} days of "
                         "history in the data; nothing to rank")
    horizons = tuple(scorer.horizons)
    frame = rank_frame(scorer(features, [day]), horizons)
    ref_path = run_dir / REFERENCE_FILE
    reference = json.loads(ref_path.read_text()) if ref_path.is_file() else None
    return DaySignal(day=day, run_id=run_id or run_dir.name, horizons=horizons, frame=frame,
                     data_fingerprint=fingerprint, manifest_sha256=manifest_sha256,
                     features=_day_features(panel, t), drift_reference=reference)


def predict_day(registry: Any, day: dt.date | str, quotes: Any, *, alias: str = "champion",
                device: str = "cpu") -> DaySignal:
    """Scores of ``day`` by the run ``alias`` points to, loaded and verified by the registry.

    Raises registry.NotFoundError (alias unset) or registry.IntegrityError (a file of the run does
    not match its manifest, e.g. tampered weights): nothing is scored then."""
    loaded = registry.load_champion(alias)  # every sha256 checked before it returns
    try:
        return score_run(loaded.path, day, quotes, run_id=loaded.run_id,
                         manifest_sha256=loaded.manifest_sha256, device=device)
    finally:
        shutil.rmtree(loaded.path, ignore_errors=True)  # our own verified temp copy
