"""Task functions of the nightly ``atft_ingest`` DAG: fetch day D -> validate D -> commit D.

Same ``ctx`` dict as :mod:`atft_core.pipeline` (built by ``atft_airflow_utils.task_ctx``); the
trading day D is the run's ``as_of``. Nothing here imports Airflow; the DAG resolves the API key
from its connection and passes it in.

Decisions (issue 10 item 6):
* The store is ``data.source`` of the run's config (``ATFT_QUOTES_STORE`` overrides where it
  lives), the same store ``atft_retrain`` reads: one source of truth. A synthetic config is
  refused (there is nothing to ingest into).
* fetch writes D's rows to the run's work dir only (staging, atomic); validate runs the GX suite
  on the last ``VALIDATION_DAYS`` trading days as they WILL read once D is committed
  (split-adjusted, :func:`atft_core.data.store.preview_with`); commit writes D's one partition
  (atomic; byte-identical re-runs change nothing), after which the DAG emits the store Asset.
  So a bad day never reaches the store, and a backfill (Airflow backfill of atft_ingest over a
  date range) is the same three steps per day, idempotent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

from atft_core import calendar
from atft_core.atomic import atomic_write_bytes

VALIDATION_DAYS = 60  # history the day is judged with (returns, coverage medians)


class IngestConfigError(ValueError):
    """The run's config has no quotes store to ingest into."""


def _store_and_day(ctx: dict[str, Any]) -> tuple[str, dt.date, Path]:
    from atft_core.pipeline import _safe, task_config

    cfg = task_config(ctx)
    if cfg.data.source is None:
        raise IngestConfigError("atft_ingest needs data.source to be the quotes store "
                                "(the config says synthetic)")
    day = calendar.latest_expected_trading_day(ctx["as_of"])
    run = hashlib.sha256(str(ctx.get("run_id", "")).encode()).hexdigest()[:8]
    wd = Path(cfg.work_root) / _safe(ctx["dag_id"]) / f"{day}-{run}"
    return cfg.data.source, day, wd


def fetch_day(ctx: dict[str, Any], api_key: str) -> dict[str, Any]:
    """J-Quants bars of day D (all pages, master joined) -> the run's staging file."""
    from atft_core.data.jquants import JQuantsFeed, fetch_one_day

    store, day, wd = _store_and_day(ctx)
    frame = fetch_one_day(JQuantsFeed(api_key), day)
    staged = wd / "staged.parquet"
    atomic_write_bytes(staged, lambda fh: frame.write_parquet(fh, compression="zstd"), mode=0o644)
    return {"day": day.isoformat(), "rows": frame.height, "codes": frame["Code"].n_unique(),
            "staged": str(staged), "store": store}


def validate_day(ctx: dict[str, Any], fetched: dict[str, Any]) -> dict[str, Any]:
    """GX suite on the trailing window with D as it will read after the commit; raises
    :class:`atft_core.validation.DataValidationError` on failure (nothing is committed)."""
    import polars as pl

    from atft_core.data.store import preview_with
    from atft_core.pipeline import task_config
    from atft_core.validation import DataValidationError, validate_quotes

    cfg = task_config(ctx)
    store, day, wd = _store_and_day(ctx)
    start = calendar.add_trading_days(day, -(VALIDATION_DAYS - 1))
    frame = preview_with(store, pl.read_parquet(fetched["staged"]), start, day)
    report = validate_quotes(frame, cfg.validation, as_of=day, docs_dir=wd / "validation",
                             start=start, end=day)
    if not report.success:
        raise DataValidationError(report)
    return {"day": day.isoformat(), "rows": report.rows, "bad_ticks": report.bad_ticks.height,
            "warnings": len(report.warnings)}


def commit_day(ctx: dict[str, Any], fetched: dict[str, Any]) -> dict[str, Any]:
    """Write day D's partition into the store (atomic; an identical re-run rewrites nothing)."""
    import polars as pl

    from atft_core.data.store import stored_days, write_day

    store, day, _ = _store_and_day(ctx)
    had = day in set(stored_days(store))
    path = write_day(pl.read_parquet(fetched["staged"]), store, day)
    return {"day": day.isoformat(), "store": store, "partition": str(path), "rows": fetched["rows"],
            "replaced_existing_day": had}
