"""Convert vendor exports into the canonical quotes store (``atft ingest``).

Sources:
* ``yfinance``: a directory of CSV files, one per code (``7203.T.csv`` or ``7203.csv``), columns
  ``Date, Open, High, Low, Close, Adj Close, Volume``. When ``Adj Close`` is present the OHLC bar
  is scaled by ``Adj Close / Close`` (dividend + split adjusted, the way yfinance adjusts);
  ``TurnoverValue`` is the unscaled ``Close * Volume`` (yen actually traded, approximately).
* ``jquants``: a J-Quants daily-quotes export (one parquet/CSV file or a directory of them) with
  columns ``Date, Code, Open, High, Low, Close, Volume, TurnoverValue, AdjustmentFactor`` and,
  when present, ``AdjustmentOpen/High/Low/Close/Volume`` which are used instead of the raw bar.
  5-character codes ending in "0" ("72030") are the 4-character listing code plus a check digit
  and map to "7203".
* ``canonical``: a parquet/CSV already in (or close to) the canonical schema, e.g. an older
  export with Int64 Volume. Same reader as ``jquants``.
* ``auto``: CSV files without a ``Code`` column -> yfinance; with ``Adjustment*`` /
  ``TurnoverValue`` columns -> jquants; else canonical.

Writing merges by (Date, Code) into the day-partitioned store (:mod:`atft_core.data.store`):
rows of the store the source does not contain are never removed unless ``--replace`` is given
(then the removed rows are counted and shown). Dates: tz-aware timestamps are converted to
Asia/Tokyo before the date is taken; naive timestamps must be exactly midnight. Adjusted sources
(J-Quants ``Adjustment*`` columns, yfinance ``Adj Close``) are stored with ``AdjustedThrough`` =
their last day so a split fetched later re-adjusts them at read; other prices are taken as final.

Ingest coerces dtypes and refuses what it cannot parse (the message names the file, the column
and an offending value); it does NOT judge business rules (bad ticks, OHLC consistency, holidays:
that is :mod:`atft_core.validation`). Two normalisations are made and counted in the summary:
rows with no price at all (null Close: J-Quants no-trade days, yfinance holiday rows) are
dropped, and purely numeric Sector33Code values shorter than 4 characters are zero-padded
("50" -> "0050", a leading zero lost by a spreadsheet/integer round trip).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl

from atft_core.data.schema import CANONICAL_COLUMNS, KEY_COLUMNS, canonical_code, complete_optional
from atft_core.data.store import ADJUSTED_THROUGH, WriteResult, write_days

Format = Literal["yfinance", "jquants", "canonical", "auto"]
FORMATS = ("yfinance", "jquants", "canonical", "auto")
_PRICE = ("Open", "High", "Low", "Close")
_FLOAT_COLUMNS = (*_PRICE, "Volume", "TurnoverValue", "AdjustmentFactor")
_JQ_ADJUSTED = {
    "AdjustmentOpen": "Open", "AdjustmentHigh": "High", "AdjustmentLow": "Low",
    "AdjustmentClose": "Close", "AdjustmentVolume": "Volume",
}
_NULLS = ["", "null", "NULL", "NaN", "nan", "None", "-"]


class IngestError(ValueError):
    """Input that cannot be converted; the message names the file and the column."""


@dataclass(frozen=True)
class IngestSummary:
    format: str
    files: int
    rows: int
    codes: int
    first_date: dt.date
    last_date: dt.date
    dropped_no_price: int
    duplicate_keys: int
    sector_codes_padded: int
    written: tuple[str, ...]
    write: WriteResult | None = None
    replace: bool = False

    def lines(self) -> list[str]:
        out = [
            f"format: {self.format} ({self.files} file(s))",
            f"rows: {self.rows:,}  codes: {self.codes:,}  dates: {self.first_date} .. {self.last_date}",
            f"dropped rows without a price: {self.dropped_no_price:,}",
            f"duplicate (Date, Code) keys: {self.duplicate_keys:,}",
            f"Sector33Code values zero-padded: {self.sector_codes_padded:,}",
            f"written: {len(self.written)} day partition(s)",
        ]
        w = self.write
        if w is not None:
            out.append(f"stored rows replaced by the source: {w.rows_replaced:,}; "
                       f"kept (not in the source): {w.rows_kept:,}; unchanged days: {w.unchanged_days:,}")
            if self.replace:
                out.append(f"--replace removed {w.rows_removed:,} stored row(s) not in the source"
                           + (f", e.g. {', '.join(w.removed_examples)}" if w.removed_examples else ""))
        return out


# --------------------------------------------------------------------------- coercion helpers
def _first_bad(df: pl.DataFrame, col: str, parsed: pl.Series) -> str:
    bad = df.filter(parsed.is_null() & df[col].is_not_null())
    return repr(bad[col][0]) if bad.height else "?"


TOKYO = "Asia/Tokyo"


def _coerce_date(df: pl.DataFrame, col: str, where: str) -> pl.DataFrame:
    """Dates of the Tokyo session. A tz-aware timestamp is converted to Asia/Tokyo before its
    date is taken (Tokyo midnight stored in UTC is the previous day's 15:00); a naive timestamp
    must be exactly midnight (anything else is ambiguous and refused)."""
    s = df[col]
    if s.dtype == pl.Date:
        return df
    if s.dtype == pl.String and s.str.contains(r"[T ]\d{2}:\d{2}").fill_null(False).any():
        s = _parse_datetime_strings(s, col, where)
    if isinstance(s.dtype, pl.Datetime):
        return df.with_columns(_datetime_to_session_date(s, col, where).alias(col))
    if s.dtype.is_integer():  # 20190104
        s = s.cast(pl.String)
    if s.dtype != pl.String:
        raise IngestError(f"{where}: column {col!r} has dtype {s.dtype}, expected a date")
    head = s.str.strip_chars()
    parsed = head.str.to_date("%Y-%m-%d", strict=False)
    alt = head.str.to_date("%Y%m%d", strict=False)
    parsed = parsed.fill_null(alt)
    if (parsed.is_null() & s.is_not_null()).any():
        raise IngestError(f"{where}: column {col!r} has unparsable date {_first_bad(df, col, parsed)}")
    if parsed.null_count():
        raise IngestError(f"{where}: column {col!r} has {parsed.null_count()} empty value(s)")
    return df.with_columns(parsed.alias(col))


def _parse_datetime_strings(s: pl.Series, col: str, where: str) -> pl.Series:
    text = s.str.strip_chars()
    has_offset = text.str.contains(r"(Z|[+-]\d{2}:?\d{2})$").fill_null(False)
    if has_offset.any() and not has_offset.all():
        raise IngestError(f"{where}: column {col!r} mixes timestamps with and without a UTC offset")
    try:
        if has_offset.any():
            return text.str.to_datetime(time_zone="UTC", strict=True)
        return text.str.to_datetime(strict=True)
    except pl.exceptions.PolarsError:
        raise IngestError(f"{where}: column {col!r} has an unparsable timestamp, e.g. {text[0]!r}") from None


def _datetime_to_session_date(s: pl.Series, col: str, where: str) -> pl.Series:
    if s.dtype.time_zone is not None:
        return s.dt.convert_time_zone(TOKYO).dt.date()
    not_midnight = s.is_not_null() & (s.dt.truncate("1d") != s)
    if not_midnight.any():
        raise IngestError(
            f"{where}: column {col!r} has naive timestamps that are not midnight, e.g. "
            f"{s.filter(not_midnight)[0]}; store dates, or timestamps with a time zone")
    return s.dt.date()


def _coerce_float(df: pl.DataFrame, col: str, where: str) -> pl.DataFrame:
    s = df[col]
    if s.dtype == pl.Float64:
        return df
    if s.dtype.is_numeric():
        return df.with_columns(pl.col(col).cast(pl.Float64))
    if s.dtype == pl.String:
        parsed = s.str.strip_chars().str.replace_all(",", "").cast(pl.Float64, strict=False)
        nullish = s.is_null() | s.str.strip_chars().is_in(_NULLS)
        if (parsed.is_null() & ~nullish).any():
            bad = df.filter(parsed.is_null() & ~nullish)[col][0]
            raise IngestError(f"{where}: column {col!r} has non-numeric value {bad!r}")
        return df.with_columns(parsed.alias(col))
    if s.dtype == pl.Null:
        return df.with_columns(pl.col(col).cast(pl.Float64))
    raise IngestError(f"{where}: column {col!r} has dtype {s.dtype}, expected a number")


def _normalise_code(df: pl.DataFrame, where: str) -> pl.DataFrame:
    s = df["Code"]
    if s.dtype.is_integer():
        s = s.cast(pl.String)
    elif s.dtype != pl.String:
        raise IngestError(f"{where}: column 'Code' has dtype {s.dtype}, expected a string")
    s = s.str.strip_chars()
    if s.null_count() or (s.str.len_chars() == 0).any():
        raise IngestError(f"{where}: column 'Code' has empty value(s)")
    s = pl.select(canonical_code(pl.lit(s))).to_series()  # one rule for every source
    return df.with_columns(s.alias("Code"))


def _normalise_sector(df: pl.DataFrame, where: str) -> tuple[pl.DataFrame, int]:
    if "Sector33Code" not in df.columns:
        return df, 0
    s = df["Sector33Code"]
    if s.dtype.is_integer():
        s = s.cast(pl.String)
    elif s.dtype == pl.Null:
        s = s.cast(pl.String)
    elif s.dtype != pl.String:
        raise IngestError(f"{where}: column 'Sector33Code' has dtype {s.dtype}, expected a string")
    s = s.str.strip_chars()
    short = s.str.contains(r"^\d{1,3}$").fill_null(False)
    padded = pl.select(pl.when(short).then(s.str.zfill(4)).otherwise(s)).to_series()
    return df.with_columns(padded.alias("Sector33Code")), int(short.sum())


def _require(df: pl.DataFrame, cols, where: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise IngestError(f"{where}: missing column(s) {', '.join(missing)}; has {df.columns}")


def _read_any(path: Path) -> pl.DataFrame:
    try:
        if path.suffix.lower() == ".parquet":
            return pl.read_parquet(path)
        # everything as text first: coercion then names the bad value instead of polars guessing
        return pl.read_csv(path, infer_schema=False, null_values=_NULLS)
    except Exception as err:
        raise IngestError(f"{path}: cannot read file: {err}") from None


# --------------------------------------------------------------------------- readers
def _yfinance_code(path: Path) -> str:
    name = path.name[: -len(".csv")]
    for suffix in (".T", ".JP", ".TYO"):  # Yahoo / vendor exchange suffixes
        if name.upper().endswith(suffix.upper()):
            name = name[: -len(suffix)]
            break
    if not name:
        raise IngestError(f"{path}: cannot derive a security code from the file name")
    return name


def read_yfinance_csv(path: Path) -> tuple[pl.DataFrame, int]:
    """One yfinance CSV -> canonical rows (+ number of price-less rows dropped)."""
    df = _read_any(path)
    where = str(path)
    _require(df, ("Date", *_PRICE, "Volume"), where)
    df = _coerce_date(df, "Date", where)
    for c in (*_PRICE, "Volume", *(["Adj Close"] if "Adj Close" in df.columns else [])):
        df = _coerce_float(df, c, where)
    n0 = df.height
    df = df.filter(pl.col("Close").is_not_null())
    dropped = n0 - df.height
    turnover = pl.col("Close") * pl.col("Volume")
    if "Adj Close" in df.columns:
        ratio = pl.col("Adj Close") / pl.col("Close")
        adjusted = [(pl.col(c) * ratio).alias(c) for c in ("Open", "High", "Low")]
        df = df.with_columns(turnover.alias("TurnoverValue"), *adjusted,
                             pl.col("Adj Close").alias("Close"))
    else:
        df = df.with_columns(turnover.alias("TurnoverValue"))
    df = df.with_columns(pl.lit(_yfinance_code(path)).alias("Code"))
    # Adj Close is adjusted as of the export's last day: later splits are applied at read
    through = df["Date"].max() if "Adj Close" in df.columns else None
    return _with_through(complete_optional(df), through), dropped


def read_table(path: Path) -> tuple[pl.DataFrame, int, int]:
    """One J-Quants / canonical file -> canonical rows, price-less rows dropped, sectors padded."""
    df = _read_any(path)
    where = str(path)
    _require(df, ("Date", "Code"), where)
    # prefer J-Quants' split-adjusted bar when present
    adjusted = {src: dst for src, dst in _JQ_ADJUSTED.items() if src in df.columns}
    stored_through = df[ADJUSTED_THROUGH] if ADJUSTED_THROUGH in df.columns else None
    if adjusted:
        df = df.drop([dst for dst in adjusted.values() if dst in df.columns])
        df = df.rename(adjusted)
    _require(df, (*_PRICE, "Volume"), where)
    df = _coerce_date(df, "Date", where)
    df = _normalise_code(df, where)
    for c in _FLOAT_COLUMNS:
        if c in df.columns:
            df = _coerce_float(df, c, where)
    df, padded = _normalise_sector(df, where)
    through = df["Date"].max() if adjusted else None  # the export is adjusted as of its last day
    if stored_through is not None:  # a store partition read back: keep its own marker
        df = df.with_columns(_coerce_date(pl.DataFrame({"d": stored_through}), "d", where)["d"]
                             .alias(ADJUSTED_THROUGH))
    n0 = df.height
    df = df.filter(pl.col("Close").is_not_null())
    out = complete_optional(df)
    if stored_through is not None:
        return out.with_columns(df[ADJUSTED_THROUGH]), n0 - df.height, padded
    return _with_through(out, through), n0 - df.height, padded


def _with_through(df: pl.DataFrame, through) -> pl.DataFrame:
    """Add AdjustedThrough (see atft_core.data.store): the day the prices are adjusted as of,
    or null for prices taken as final."""
    return df.with_columns(pl.lit(through, dtype=pl.Date).alias(ADJUSTED_THROUGH))


# --------------------------------------------------------------------------- detection + driver
def source_files(src: Path, fmt: str) -> list[Path]:
    if not src.exists():
        raise IngestError(f"ingest source not found: {src}")
    if src.is_file():
        return [src]
    pats = ("*.csv",) if fmt == "yfinance" else ("*.parquet", "*.csv")
    files = sorted({f for p in pats for f in src.rglob(p) if not f.name.startswith((".", "_"))})
    if not files:
        raise IngestError(f"ingest source {src} has no {' or '.join(pats)} files")
    return files


def detect_format(files: list[Path]) -> str:
    """yfinance (no Code column, CSV), jquants (Adjustment*/TurnoverValue) or canonical."""
    first = files[0]
    if first.suffix.lower() == ".parquet":
        cols = pl.read_parquet_schema(first).names()
    else:
        cols = pl.read_csv(first, n_rows=0, infer_schema=False).columns
    if "Code" not in cols:
        if "Date" in cols and "Close" in cols:
            return "yfinance"
        raise IngestError(f"{first}: cannot detect the format from columns {cols}")
    if any(c in cols for c in (*_JQ_ADJUSTED, "TurnoverValue")):
        return "jquants"
    return "canonical"


def load_source(src: str | Path, fmt: Format = "auto") -> tuple[pl.DataFrame, dict]:
    """Read a source into one canonical DataFrame sorted by (Date, Code) + counters."""
    if fmt not in FORMATS:
        raise IngestError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    src = Path(src)
    files = source_files(src, fmt)
    if fmt == "auto":
        fmt = detect_format(files)
    frames, dropped, padded = [], 0, 0
    for f in files:
        if fmt == "yfinance":
            df, d = read_yfinance_csv(f)
        else:
            df, d, p = read_table(f)
            padded += p
        frames.append(df)
        dropped += d
    df = pl.concat(frames, how="vertical").select(*CANONICAL_COLUMNS, ADJUSTED_THROUGH)
    df = df.sort(list(KEY_COLUMNS))
    if df.height == 0:
        raise IngestError(f"{src}: no rows with a price")
    info = {"format": fmt, "files": len(files), "dropped_no_price": dropped, "sector_codes_padded": padded}
    return df, info


def ingest(src: str | Path, out: str | Path, fmt: Format = "auto", *, replace: bool = False) -> IngestSummary:
    """Convert ``src`` and merge it into the store ``out`` by (Date, Code).

    Stored rows the source does not contain are kept; ``replace=True`` makes the source the whole
    of every day it covers and reports the stored rows that removed. A duplicate (Date, Code) in
    the source is refused (which row would win is undefined).
    """
    df, info = load_source(src, fmt)
    dups = df.height - df.select(pl.struct(*KEY_COLUMNS).n_unique()).item()
    if dups:
        first = df.filter(pl.struct(*KEY_COLUMNS).is_duplicated()).row(0, named=True)
        raise IngestError(f"{src}: {dups} duplicate (Date, Code) row(s), e.g. "
                          f"({first['Date']}, {first['Code']}); which one is right is undefined")
    result = write_days(df, out, replace=replace)
    return IngestSummary(
        format=info["format"], files=info["files"], rows=df.height,
        codes=df["Code"].n_unique(), first_date=df["Date"].min(), last_date=df["Date"].max(),
        dropped_no_price=info["dropped_no_price"], duplicate_keys=dups,
        sector_codes_padded=info["sector_codes_padded"], written=result.written,
        write=result, replace=replace,
    )
