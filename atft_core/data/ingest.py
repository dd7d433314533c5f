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

from atft_core.data.schema import CANONICAL_COLUMNS, KEY_COLUMNS, complete_optional
from atft_core.data.store import write_store

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

    def lines(self) -> list[str]:
        return [
            f"format: {self.format} ({self.files} file(s))",
            f"rows: {self.rows:,}  codes: {self.codes:,}  dates: {self.first_date} .. {self.last_date}",
            f"dropped rows without a price: {self.dropped_no_price:,}",
            f"duplicate (Date, Code) keys: {self.duplicate_keys:,}",
            f"Sector33Code values zero-padded: {self.sector_codes_padded:,}",
            f"written: {len(self.written)} year file(s)",
        ]


# --------------------------------------------------------------------------- coercion helpers
def _first_bad(df: pl.DataFrame, col: str, parsed: pl.Series) -> str:
    bad = df.filter(parsed.is_null() & df[col].is_not_null())
    return repr(bad[col][0]) if bad.height else "?"


def _coerce_date(df: pl.DataFrame, col: str, where: str) -> pl.DataFrame:
    s = df[col]
    if s.dtype == pl.Date:
        return df
    if isinstance(s.dtype, pl.Datetime):
        return df.with_columns(pl.col(col).dt.date())
    if s.dtype.is_integer():  # 20190104
        s = s.cast(pl.String)
    if s.dtype != pl.String:
        raise IngestError(f"{where}: column {col!r} has dtype {s.dtype}, expected a date")
    head = s.str.strip_chars().str.slice(0, 10)  # '2019-01-04 00:00:00+09:00' -> date part
    parsed = head.str.to_date("%Y-%m-%d", strict=False)
    alt = head.str.to_date("%Y%m%d", strict=False)
    parsed = parsed.fill_null(alt)
    if (parsed.is_null() & s.is_not_null()).any():
        raise IngestError(f"{where}: column {col!r} has unparsable date {_first_bad(df, col, parsed)}")
    if parsed.null_count():
        raise IngestError(f"{where}: column {col!r} has {parsed.null_count()} empty value(s)")
    return df.with_columns(parsed.alias(col))


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
    # J-Quants 5-char code = 4-char listing code + '0'
    s = pl.select(
        pl.when((s.str.len_chars() == 5) & s.str.ends_with("0")).then(s.str.slice(0, 4)).otherwise(s)
    ).to_series()
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
    return complete_optional(df), dropped


def read_table(path: Path) -> tuple[pl.DataFrame, int, int]:
    """One J-Quants / canonical file -> canonical rows, price-less rows dropped, sectors padded."""
    df = _read_any(path)
    where = str(path)
    _require(df, ("Date", "Code"), where)
    # prefer J-Quants' split-adjusted bar when present
    adjusted = {src: dst for src, dst in _JQ_ADJUSTED.items() if src in df.columns}
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
    n0 = df.height
    df = df.filter(pl.col("Close").is_not_null())
    return complete_optional(df), n0 - df.height, padded


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
    df = pl.concat(frames, how="vertical").select(CANONICAL_COLUMNS).sort(list(KEY_COLUMNS))
    if df.height == 0:
        raise IngestError(f"{src}: no rows with a price")
    info = {"format": fmt, "files": len(files), "dropped_no_price": dropped, "sector_codes_padded": padded}
    return df, info


def ingest(src: str | Path, out: str | Path, fmt: Format = "auto") -> IngestSummary:
    """Convert ``src`` and write it into the store ``out`` (years in the source are replaced)."""
    df, info = load_source(src, fmt)
    written = write_store(df, out)
    dups = df.height - df.select(pl.struct(*KEY_COLUMNS).n_unique()).item()
    return IngestSummary(
        format=info["format"], files=info["files"], rows=df.height,
        codes=df["Code"].n_unique(), first_date=df["Date"].min(), last_date=df["Date"].max(),
        dropped_no_price=info["dropped_no_price"], duplicate_keys=dups,
        sector_codes_padded=info["sector_codes_padded"], written=tuple(str(p) for p in written),
    )
