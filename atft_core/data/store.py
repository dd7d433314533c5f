"""Parquet store of canonical daily quotes (SPEC 3.1), one partition per trading day.

Layout (a local folder or ``s3://bucket/prefix``, same reader and writer)::

    ROOT/date=2019-01-04/part-0.parquet     (zstd, sorted by Code)
    ROOT/date=2019-01-07/part-0.parquet

Decisions recorded here (issue 10; SPEC is silent):
* **A write never loses rows.** ``write_store(df, root)`` merges by (Date, Code): for every day in
  ``df`` the day's stored rows with the same key are replaced, rows it does not contain are kept
  (``replace=True`` makes ``df`` the whole day and reports the rows it removed). Days not in
  ``df`` are never opened. Re-writing the same rows is byte-identical (deterministic parquet).
* **Atomic per day.** Each day is one object: a temp file + fsync + rename
  (:func:`atft_core.atomic.atomic_write_bytes`) locally, one PUT on S3. A reader, or a process
  killed mid-write, sees the whole day or none of it. Readers never match hidden temp names.
* **Corporate actions are applied at read** (never by rewriting history). A stored row may carry
  ``AdjustedThrough`` (a date >= its own Date): its prices already include every split whose
  ``AdjustmentFactor`` falls on or before that date. The J-Quants feed stores the raw bar
  (``AdjustedThrough = Date``); an adjusted export is stored with ``AdjustedThrough`` = its last
  day; null means final (synthetic / legacy data). :func:`scan_store` multiplies prices by, and
  divides Volume by, the product of the stock's factors dated after ``AdjustedThrough`` and on or
  before the read window's end. So a 2:1 split stored tonight re-adjusts every earlier day on the
  next read, the window is point-in-time (factors after ``end`` are not used), and re-running a
  day can never apply a factor twice. ``TurnoverValue`` (yen traded) is not adjusted.
* Readers are strict about the schema (:func:`atft_core.data.schema.check_schema`) but accept a
  lossless numeric widening (integer / float32 price or volume -> Float64).
* ``scan_store`` also reads a single parquet file, a legacy ``year=YYYY/part-0.parquet`` store
  (read-only: writing into it is refused with how to convert it), or a folder of parquet files.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from atft_core.atomic import atomic_write_bytes
from atft_core.data.schema import (
    CANONICAL_COLUMNS,
    CANONICAL_SCHEMA,
    KEY_COLUMNS,
    SchemaError,
    check_schema,
    complete_optional,
)

PART_NAME = "part-0.parquet"
DAY_GLOB = "date=*/part-*.parquet"
YEAR_GLOB = "year=*/part-*.parquet"
ADJUSTED_THROUGH = "AdjustedThrough"
# storage-only columns: kept in the partition files, not part of the canonical read table
STORAGE_EXTRA: dict[str, pl.DataType] = {ADJUSTED_THROUGH: pl.Date(), "MarketCode": pl.String()}
_NUMERIC_COLUMNS = ("Open", "High", "Low", "Close", "Volume", "TurnoverValue", "AdjustmentFactor")
_DAY_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")


# Total deadline of one S3 store call (a listing with all its pages, one day's get with its body,
# one put), retries included: a day partition is ~1 MB and a listing a few pages, so 120 s is
# generous; botocore's own timeouts are per read and a trickling server never trips them.
S3_DEADLINE_S = 120.0


class StoreError(ValueError):
    """The store path is missing, empty, or holds an unreadable file (the message names it)."""


# --------------------------------------------------------------------------- backends
class _Backend:
    """Day partitions in a local folder or under an S3 prefix: list, read, write one day."""

    def __init__(self, root: str | Path, deadline_s: float = S3_DEADLINE_S) -> None:
        self.root = str(root)
        self.deadline_s = deadline_s
        self.is_s3 = self.root.startswith("s3://")
        if self.is_s3:
            bucket, _, prefix = self.root[len("s3://"):].partition("/")
            if not bucket:
                raise StoreError(f"store URI {self.root!r} has no bucket")
            self.bucket, self.prefix = bucket, prefix.strip("/")
            self._s3 = _s3_client()
        else:
            self.path = Path(self.root)

    def key(self, day: dt.date) -> str:
        return f"date={day.isoformat()}/{PART_NAME}"

    def days(self) -> list[dt.date]:
        if self.is_s3:
            names = self._list_s3()
        else:
            if not self.path.exists():
                return []
            if not self.path.is_dir():
                raise StoreError(f"store root {self.path} exists and is not a directory")
            names = [p.relative_to(self.path).as_posix() for p in self.path.glob(DAY_GLOB)]
        out = []
        for name in names:
            folder, _, file = name.partition("/")
            m = _DAY_DIR.match(folder)
            if m and file == PART_NAME:
                out.append(dt.date.fromisoformat(m.group(1)))
        return sorted(out)

    def _bounded(self, what: str, fn):
        """``fn()`` (botocore calls) within one total deadline; any failure -> one StoreError line."""
        from atft_core.deadline import call_with_deadline

        try:
            return call_with_deadline(fn, self.deadline_s, name="atft-store-s3")
        except Exception as err:  # DeadlinePassed, botocore ClientError / EndpointConnectionError
            raise StoreError(f"cannot {what}: {_one_line(err)}") from None

    def _list_s3(self) -> list[str]:
        pre = f"{self.prefix}/" if self.prefix else ""

        def listing() -> list[str]:
            pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=pre)
            return [o["Key"][len(pre):] for page in pages for o in page.get("Contents", [])]

        return self._bounded(f"list store {self.root}", listing)

    def read_bytes(self, day: dt.date) -> bytes | None:
        if self.is_s3:
            def get() -> bytes | None:  # the body's read inside the deadline too
                try:
                    obj = self._s3.get_object(Bucket=self.bucket, Key=self._s3_key(day))
                except Exception as err:
                    if getattr(err, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                        return None  # the day is not stored
                    raise
                return obj["Body"].read()

            return self._bounded(f"read {self.root}/{self.key(day)}", get)
        f = self.path / self.key(day)
        return f.read_bytes() if f.exists() else None

    def write_bytes(self, day: dt.date, blob: bytes) -> Path | str:
        if self.is_s3:
            self._bounded(f"write {self.root}/{self.key(day)}",
                          lambda: self._s3.put_object(Bucket=self.bucket, Key=self._s3_key(day), Body=blob))
            return f"{self.root.rstrip('/')}/{self.key(day)}"
        if (self.path.exists() and not self.path.is_dir()):
            raise StoreError(f"store root {self.path} exists and is not a directory")
        if any(self.path.glob(YEAR_GLOB)):
            raise StoreError(
                f"{self.path} is a legacy year-partitioned store (read-only); convert it with "
                f"`atft ingest {self.path} --out NEW_STORE` and write there")
        return atomic_write_bytes(self.path / self.key(day), blob, mode=0o644)

    def _s3_key(self, day: dt.date) -> str:
        return f"{self.prefix}/{self.key(day)}" if self.prefix else self.key(day)


def _s3_client():
    """boto3 S3 client: AWS_ENDPOINT_URL honoured (boto3 reads it), bounded timeouts/retries."""
    import boto3
    from botocore.config import Config

    cfg = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"})
    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None, config=cfg)


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


# --------------------------------------------------------------------------- write
def _prepare(df: pl.DataFrame) -> pl.DataFrame:
    """Canonical columns + storage extras, canonical dtypes, sorted by (Date, Code)."""
    if not isinstance(df, pl.DataFrame):
        raise TypeError(f"write_store expects a polars DataFrame, got {type(df).__name__}")
    df = _widen_numeric(df)
    check_schema(df.schema)
    extras = [
        (df[c].cast(t) if c in df.columns else pl.Series(c, [None] * df.height, dtype=t)).alias(c)
        for c, t in STORAGE_EXTRA.items()
    ]
    return complete_optional(df).with_columns(extras).sort(list(KEY_COLUMNS))


def _day_blob(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=True, row_group_size=65_536)
    return buf.getvalue()


@dataclass(frozen=True)
class WriteResult:
    """Partitions written, and how many stored rows each write kept, replaced or removed."""

    written: tuple[str, ...]
    days: tuple[dt.date, ...]
    unchanged_days: int
    rows_kept: int  # stored rows the input did not contain (left as they were)
    rows_replaced: int  # stored rows with the same key as an input row
    rows_removed: int  # only with replace=True
    removed_examples: tuple[str, ...]


def write_store(df: pl.DataFrame, root: str | Path, *, replace: bool = False) -> list[Path | str]:
    """Merge canonical quotes into the day-partitioned store; return the partitions written."""
    return list(write_days(df, root, replace=replace).written)


def write_days(df: pl.DataFrame, root: str | Path, *, replace: bool = False) -> WriteResult:
    """Write every day of ``df`` into ``root``, one atomic object per day (see module doc).

    Raises:
        SchemaError: missing columns / wrong dtypes. StoreError: empty input, null Dates,
        duplicate (Date, Code) keys, AdjustedThrough before Date, a legacy year store.
    """
    df = _prepare(df)
    if df.height == 0:
        raise StoreError("write_store: refusing to write an empty table")
    if df["Date"].null_count():
        raise StoreError(f"write_store: {df['Date'].null_count()} row(s) have a null Date")
    dup = df.filter(pl.struct(*KEY_COLUMNS).is_duplicated())
    if dup.height:
        raise StoreError(f"write_store: duplicate (Date, Code) key, e.g. ({dup['Date'][0]}, {dup['Code'][0]})")
    bad_at = df.filter(pl.col(ADJUSTED_THROUGH) < pl.col("Date"))
    if bad_at.height:
        raise StoreError(f"write_store: AdjustedThrough before Date for ({bad_at['Date'][0]}, {bad_at['Code'][0]})")
    backend = _Backend(root)
    existing = set(backend.days())
    written, days, kept, replaced, removed, examples, unchanged = [], [], 0, 0, 0, [], 0
    for (day,), part in df.group_by("Date", maintain_order=True):
        old_blob = backend.read_bytes(day) if day in existing else None
        if old_blob is not None:
            old = _read_blob(old_blob, f"{backend.root}/{backend.key(day)}")
            old = _prepare(old)
            same = old.filter(pl.col("Code").is_in(part["Code"].implode()))
            rest = old.filter(~pl.col("Code").is_in(part["Code"].implode()))
            replaced += same.height
            if replace:
                removed += rest.height
                examples += [f"{day} {c}" for c in rest["Code"].head(5)]
            else:
                kept += rest.height
                part = pl.concat([rest, part], how="vertical")
        part = part.sort("Code")
        blob = _day_blob(part)
        if old_blob == blob:
            unchanged += 1
            continue
        written.append(backend.write_bytes(day, blob))
        days.append(day)
    return WriteResult(tuple(written), tuple(days), unchanged, kept, replaced, removed, tuple(examples[:10]))


def write_day(df: pl.DataFrame, root: str | Path, day: dt.date) -> str:
    """Replace the whole of ``day`` with ``df`` (the feed's complete answer for that day)."""
    if df.height and (df["Date"] != day).any():
        raise StoreError(f"write_day({day}): the frame has rows of other days")
    res = write_days(df, root, replace=True)
    return res.written[0] if res.written else f"{root}/date={day.isoformat()}/{PART_NAME} (unchanged)"


def stored_days(root: str | Path) -> list[dt.date]:
    """Days with a complete partition in the store (empty list for a missing store)."""
    return _Backend(root).days()


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


def _read_blob(blob: bytes, name: str) -> pl.DataFrame:
    try:
        return pl.read_parquet(io.BytesIO(blob))
    except Exception as err:
        raise StoreError(f"unreadable parquet file {name}: {_one_line(err)}") from None


def store_files(root_or_file: str | Path, start: dt.date | None = None,
                end: dt.date | None = None) -> list[Path]:
    """The local parquet files a scan of ``root_or_file`` reads (partitions outside the window
    are pruned by their directory name)."""
    path = Path(root_or_file)
    if not path.exists():
        raise StoreError(f"quotes store not found: {path}")
    if path.is_file():
        return [path]
    day_files = sorted(path.glob(DAY_GLOB))
    year_files = sorted(path.glob(YEAR_GLOB))
    if day_files and year_files:
        raise StoreError(f"{path} mixes date=* and year=* partitions; keep one layout")
    if day_files:
        def keep_day(f: Path) -> bool:
            m = _DAY_DIR.match(f.parent.name)
            if not m:
                return False
            d = dt.date.fromisoformat(m.group(1))
            return (start is None or d >= start) and (end is None or d <= end)

        return [f for f in day_files if keep_day(f)]
    if year_files:
        def keep(f: Path) -> bool:
            year = int(f.parent.name.split("=", 1)[1])
            return (start is None or year >= start.year) and (end is None or year <= end.year)

        return [f for f in year_files if keep(f)]
    files = sorted(
        f for f in path.rglob("*.parquet")
        if not any(part.startswith((".", "_")) for part in f.relative_to(path).parts)
    )
    if not files:
        raise StoreError(f"quotes store {path} is empty (no {DAY_GLOB}, {YEAR_GLOB} or *.parquet files)")
    return files


def _check_schema_of(schema: pl.Schema, name: str) -> None:
    widened = {
        c: (pl.Float64() if c in _NUMERIC_COLUMNS and (t.is_integer() or t == pl.Float32) else t)
        for c, t in schema.items()
    }
    try:
        check_schema(widened)
    except SchemaError as err:
        raise SchemaError(f"{name}: {err}") from None


def _check_file(f: Path) -> pl.Schema:
    try:
        schema = pl.read_parquet_schema(f)
    except Exception as err:  # polars raises ComputeError/OSError variants for bad footers
        raise StoreError(f"unreadable parquet file {f}: {_one_line(err)}") from None
    _check_schema_of(schema, str(f))
    return schema


def _raw_scan(root_or_file: str | Path, start: dt.date | None, end: dt.date | None) -> pl.LazyFrame:
    """Stored rows in the window, numeric columns widened, storage extras present (maybe null)."""
    if str(root_or_file).startswith("s3://"):
        backend = _Backend(root_or_file)
        days = [d for d in backend.days() if (start is None or d >= start) and (end is None or d <= end)]
        frames = []
        for d in days:
            blob = backend.read_bytes(d)
            if blob is None:
                continue
            frame = _read_blob(blob, f"{backend.root}/{backend.key(d)}")
            _check_schema_of(frame.schema, f"{backend.root}/{backend.key(d)}")
            frames.append(_prepare(frame))
        if not frames:
            if not backend.days():
                raise StoreError(f"quotes store {root_or_file} is empty (no {DAY_GLOB} objects)")
            return _prepare(pl.DataFrame(schema=CANONICAL_SCHEMA)).lazy()
        return pl.concat(frames, how="vertical").lazy()
    files = store_files(root_or_file, start, end)
    groups: dict[tuple, list[str]] = {}
    for f in files:  # footers are cheap; one scan per distinct file schema (legacy + new mixes)
        groups.setdefault(tuple(_check_file(f).items()), []).append(str(f))
    if not files:
        return _prepare(pl.DataFrame(schema=CANONICAL_SCHEMA)).lazy()
    scans = []
    for schema, group in groups.items():
        lf = _widen_numeric(pl.scan_parquet(group, hive_partitioning=False))
        names = [c for c, _ in schema]
        lf = lf.with_columns([pl.lit(None, dtype=t).alias(c) for c, t in
                              {**CANONICAL_SCHEMA, **STORAGE_EXTRA}.items() if c not in names])
        if "TurnoverValue" not in names:
            lf = lf.with_columns((pl.col("Close") * pl.col("Volume")).alias("TurnoverValue"))
        if "AdjustmentFactor" not in names:
            lf = lf.with_columns(pl.lit(1.0).alias("AdjustmentFactor"))
        scans.append(lf.select(*CANONICAL_COLUMNS, *STORAGE_EXTRA).cast(
            {**CANONICAL_SCHEMA, **STORAGE_EXTRA}))
    lf = scans[0] if len(scans) == 1 else pl.concat(scans, how="vertical")
    if start is not None:
        lf = lf.filter(pl.col("Date") >= start)
    if end is not None:
        lf = lf.filter(pl.col("Date") <= end)
    return lf


def _apply_corporate_actions(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Prices x, Volume / the product of the stock's factors dated after AdjustedThrough (in the
    scanned window). Splits are rare, so the join of rows with split events stays small."""
    events = lf.filter(pl.col("AdjustmentFactor").is_not_null() & (pl.col("AdjustmentFactor") != 1.0)).select(
        "Code", pl.col("Date").alias("_event"), pl.col("AdjustmentFactor").alias("_factor"))
    mult = (
        lf.filter(pl.col(ADJUSTED_THROUGH).is_not_null())
        .select("Code", "Date", ADJUSTED_THROUGH)
        .join(events, on="Code", how="inner")
        .filter(pl.col("_event") > pl.col(ADJUSTED_THROUGH))
        .group_by("Code", "Date")
        .agg(pl.col("_factor").product().alias("_mult"))
    )
    m = pl.col("_mult").fill_null(1.0)
    return (
        lf.join(mult, on=["Code", "Date"], how="left")
        .with_columns([(pl.col(c) * m).alias(c) for c in ("Open", "High", "Low", "Close")]
                      + [(pl.col("Volume") / m).alias("Volume")])
        .drop("_mult")
    )


def scan_store(root_or_file: str | Path, start: dt.date | str | None = None,
               end: dt.date | str | None = None) -> pl.LazyFrame:
    """Lazily scan canonical quotes with ``start <= Date <= end`` (inclusive), split-adjusted.

    Partitions outside the window are never opened; every file's footer and schema is checked
    up front, so a truncated file or a wrong dtype fails here with its path. Prices are adjusted
    with the split factors inside the window (module doc), so the result is point-in-time.

    Shapes:
        returns a LazyFrame with exactly ``CANONICAL_COLUMNS`` (optional columns completed).
    """
    start_d, end_d = _to_date(start), _to_date(end)
    if start_d and end_d and start_d > end_d:
        raise ValueError(f"empty window: start {start_d} is after end {end_d}")
    lf = _raw_scan(root_or_file, start_d, end_d)
    return complete_optional(_apply_corporate_actions(lf))


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
        if not str(root_or_file).startswith("s3://"):
            for f in store_files(root_or_file, _to_date(start), _to_date(end)):
                try:
                    pl.read_parquet(f)
                except Exception as file_err:
                    raise StoreError(f"unreadable parquet file {f}: {_one_line(file_err)}") from None
        raise StoreError(f"reading quotes from {root_or_file} failed: {_one_line(err)}") from err
    return df.sort(list(KEY_COLUMNS)).select(CANONICAL_COLUMNS)


# --------------------------------------------------------------------------- provenance
def is_partitioned_store(source: str | Path) -> bool:
    """An S3 store, or a local folder with date=* partitions (read through :func:`scan_store`)."""
    if str(source).startswith("s3://"):
        return True
    path = Path(source)
    return path.is_dir() and any(path.glob(DAY_GLOB))


def data_source_kind(source: str | Path | None) -> str:
    """``"synthetic"`` for no source or a store written by ``atft synth`` (it carries the
    synthetic marker file), else ``"store"`` (market data). Recorded in the manifest."""
    if source is None:
        return "synthetic"
    from atft_core.data.synthetic import META_FILE

    if not str(source).startswith("s3://") and (Path(source) / META_FILE).exists():
        return "synthetic"
    return "store"


def preview_with(root: str | Path, staged: pl.DataFrame, start: dt.date | str | None,
                 end: dt.date | str | None) -> pl.DataFrame:
    """The window as :func:`read_quotes` would return it once ``staged`` (store rows of some
    days, not yet written) replaced those days: what a validation before the commit must see."""
    start_d, end_d = _to_date(start), _to_date(end)
    staged = _prepare(staged)
    new_days = staged["Date"].unique().implode()
    parts = [staged.lazy()]
    if stored_days(root):
        parts.insert(0, _raw_scan(root, start_d, end_d).filter(~pl.col("Date").is_in(new_days)))
    lf = pl.concat(parts, how="vertical")
    if start_d is not None:
        lf = lf.filter(pl.col("Date") >= start_d)
    if end_d is not None:
        lf = lf.filter(pl.col("Date") <= end_d)
    return complete_optional(_apply_corporate_actions(lf)).collect().sort(list(KEY_COLUMNS))
