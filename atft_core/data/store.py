"""Parquet store of canonical daily quotes (SPEC 3.1), partitioned by year.

Layout::

    ROOT/year=2018/part-0.parquet     (zstd, sorted by Date, Code)
    ROOT/year=2019/part-0.parquet

Decisions recorded here (SPEC is silent):
* ``write_store(df, root)`` REPLACES every year present in ``df`` and leaves other years alone,
  so re-writing a year is idempotent and a nightly job can rewrite the current year.
* Atomicity: all year files are first written to hidden temp files next to their final place
  (``.part-0.parquet.tmp-<uuid>``) and fsync'd; only when every file is complete are they
  renamed over the live files (``os.replace`` is atomic per file) and the directories fsync'd.
  A failure while writing removes the temp files (and a root created by this call), so the store
  is exactly as before. Readers only ever see complete files: the scanner matches
  ``year=*/part-*.parquet`` and never hidden temp names.
* Readers are strict about the schema (:func:`atft_core.data.schema.check_schema`) but accept a
  lossless numeric widening: integer/float32 price or volume columns are cast to Float64 (a
  canonical export with Int64 Volume is common). Anything else of the wrong dtype is an error.
* ``scan_store`` also accepts a single parquet file, or a directory of parquet files that is not
  in the year layout (a landing folder of daily files), read recursively.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from atft_core.atomic import fsync_dir
from atft_core.data.schema import (
    CANONICAL_COLUMNS,
    CANONICAL_SCHEMA,
    KEY_COLUMNS,
    SchemaError,
    check_schema,
    complete_optional,
)

PART_NAME = "part-0.parquet"
YEAR_GLOB = "year=*/part-*.parquet"
# float columns that may be stored as any integer / float32 type and widened losslessly
_NUMERIC_COLUMNS = ("Open", "High", "Low", "Close", "Volume", "TurnoverValue", "AdjustmentFactor")


class StoreError(ValueError):
    """The store path is missing, empty, or holds an unreadable file (the message names it)."""


# --------------------------------------------------------------------------- write
def _prepare(df: pl.DataFrame) -> pl.DataFrame:
    """Canonical columns and dtypes, sorted by (Date, Code); raises SchemaError."""
    if not isinstance(df, pl.DataFrame):
        raise TypeError(f"write_store expects a polars DataFrame, got {type(df).__name__}")
    df = _widen_numeric(df)
    check_schema(df.schema)
    return complete_optional(df).sort(list(KEY_COLUMNS))


def write_store(df: pl.DataFrame, root: str | Path) -> list[Path]:
    """Write canonical quotes into a year-partitioned store, replacing the years in ``df``.

    Args:
        df: canonical quotes (required columns; optional ones are completed, extra ones dropped).
        root: store directory (created if absent).

    Returns:
        The year files written, sorted.

    Raises:
        SchemaError: missing columns / wrong dtypes. StoreError: ``df`` is empty or has null Dates.
    """
    df = _prepare(df)
    if df.height == 0:
        raise StoreError("write_store: refusing to write an empty table")
    if df["Date"].null_count():
        raise StoreError(f"write_store: {df['Date'].null_count()} row(s) have a null Date")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise StoreError(f"store root {root} exists and is not a directory")
    created_root = not root.exists()
    token = uuid.uuid4().hex
    years = df.get_column("Date").dt.year().unique().sort().to_list()

    pending: list[tuple[Path, Path]] = []  # (temp file, final file)
    created_dirs: list[Path] = []
    try:
        root.mkdir(parents=True, exist_ok=True)
        for year in years:
            part = df.filter(pl.col("Date").dt.year() == year)
            ydir = root / f"year={year}"
            if not ydir.exists():
                ydir.mkdir()
                created_dirs.append(ydir)
            final = ydir / PART_NAME
            tmp = ydir / f".{PART_NAME}.tmp-{token}"
            pending.append((tmp, final))
            _write_file(part, tmp)
    except BaseException:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        for d in created_dirs:
            shutil.rmtree(d, ignore_errors=True)
        if created_root:
            shutil.rmtree(root, ignore_errors=True)
        raise
    # commit: every temp file is complete and durable; renames are atomic per file
    for tmp, final in pending:
        os.replace(tmp, final)
    for d in {final.parent for _, final in pending} | {root}:
        fsync_dir(d)
    return sorted(final for _, final in pending)


def _write_file(df: pl.DataFrame, path: Path) -> None:
    with open(path, "wb") as fh:
        # row groups of ~64k rows keep Date statistics useful for window pushdown
        df.write_parquet(fh, compression="zstd", statistics=True, row_group_size=65_536)
        fh.flush()
        os.fsync(fh.fileno())


# --------------------------------------------------------------------------- read
def _widen_numeric(frame):
    schema = frame.collect_schema() if isinstance(frame, pl.LazyFrame) else frame.schema
    casts = [
        pl.col(c).cast(pl.Float64)
        for c in _NUMERIC_COLUMNS
        if c in schema and schema[c] != pl.Float64 and (schema[c].is_integer() or schema[c] == pl.Float32)
    ]
    return frame.with_columns(casts) if casts else frame


def _to_date(d: dt.date | str | None) -> dt.date | None:
    if d is None or isinstance(d, dt.date):
        return d
    try:
        return dt.date.fromisoformat(d)
    except ValueError:
        raise ValueError(f"not an ISO date (YYYY-MM-DD): {d!r}") from None


def store_files(root_or_file: str | Path, start: dt.date | None = None,
                end: dt.date | None = None) -> list[Path]:
    """The parquet files a scan of ``root_or_file`` reads (year partitions outside the window
    are pruned by their directory name)."""
    path = Path(root_or_file)
    if not path.exists():
        raise StoreError(f"quotes store not found: {path}")
    if path.is_file():
        return [path]
    files = sorted(path.glob(YEAR_GLOB))
    if files:
        def keep(f: Path) -> bool:
            year = int(f.parent.name.split("=", 1)[1])
            return (start is None or year >= start.year) and (end is None or year <= end.year)

        kept = [f for f in files if keep(f)]
        return kept
    files = sorted(
        f for f in path.rglob("*.parquet")
        if not any(part.startswith((".", "_")) for part in f.relative_to(path).parts)
    )
    if not files:
        raise StoreError(f"quotes store {path} is empty (no {YEAR_GLOB} or *.parquet files)")
    return files


def _file_schema(f: Path) -> pl.Schema:
    try:
        return pl.read_parquet_schema(f)
    except Exception as err:  # polars raises ComputeError/OSError variants for bad footers
        raise StoreError(f"unreadable parquet file {f}: {err}") from None


def _check_file(f: Path) -> None:
    schema = _file_schema(f)
    widened = {
        c: (pl.Float64() if c in _NUMERIC_COLUMNS and (t.is_integer() or t == pl.Float32) else t)
        for c, t in schema.items()
    }
    try:
        check_schema(widened)
    except SchemaError as err:
        raise SchemaError(f"{f}: {err}") from None


def scan_store(root_or_file: str | Path, start: dt.date | str | None = None,
               end: dt.date | str | None = None) -> pl.LazyFrame:
    """Lazily scan canonical quotes, restricted to ``start <= Date <= end`` (inclusive).

    Year partitions outside the window are never opened; inside a file the Date filter is pushed
    down to the parquet row-group statistics. Every file's footer and schema is checked up front
    (cheap metadata reads), so a truncated file or a wrong dtype fails here with its path.

    Args:
        root_or_file: a store directory (year layout or a folder of parquet files) or one file.
        start, end: optional inclusive window (date or 'YYYY-MM-DD').

    Shapes:
        returns a LazyFrame with exactly ``CANONICAL_COLUMNS`` (optional columns completed).
    """
    start_d, end_d = _to_date(start), _to_date(end)
    if start_d and end_d and start_d > end_d:
        raise ValueError(f"empty window: start {start_d} is after end {end_d}")
    files = store_files(root_or_file, start_d, end_d)
    for f in files:
        _check_file(f)
    if not files:  # year store with no partition in the window: empty but well-typed
        return pl.LazyFrame(schema=CANONICAL_SCHEMA)
    lf = pl.scan_parquet(
        [str(f) for f in files], hive_partitioning=False,
        missing_columns="insert", extra_columns="ignore",
    )
    lf = _widen_numeric(lf)
    if start_d is not None:
        lf = lf.filter(pl.col("Date") >= start_d)
    if end_d is not None:
        lf = lf.filter(pl.col("Date") <= end_d)
    return complete_optional(lf)


def read_quotes(root_or_file: str | Path, start: dt.date | str | None = None,
                end: dt.date | str | None = None, codes: Sequence[str] | None = None) -> pl.DataFrame:
    """Eager :func:`scan_store`, optionally restricted to ``codes``; sorted by (Date, Code).

    A data page that fails to decode (corruption past the footer) is reported with its file.
    """
    lf = scan_store(root_or_file, start, end)
    if codes is not None:
        lf = lf.filter(pl.col("Code").is_in(list(codes)))
    try:
        df = lf.collect()
    except Exception as err:
        for f in store_files(root_or_file, _to_date(start), _to_date(end)):
            try:
                pl.read_parquet(f)
            except Exception as file_err:
                raise StoreError(f"unreadable parquet file {f}: {file_err}") from None
        raise StoreError(f"reading quotes from {root_or_file} failed: {err}") from err
    return df.sort(list(KEY_COLUMNS)).select(CANONICAL_COLUMNS)
