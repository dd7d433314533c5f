"""Read a quotes source for validation exactly as it is (no coercion), or fail naming the file.

Validation must see the raw dtypes (an integer Volume, a string Date) to judge them, so this reader
never casts. Accepted sources: a polars DataFrame, a parquet file, a hive-partitioned parquet
store directory (``year=2019/...parquet``; partition columns not in the canonical schema are
dropped), or a CSV file with the canonical column names (Code is read as a string; Date is
parsed when every value is ISO ``YYYY-MM-DD``, otherwise it stays a string and fails the dtype
check).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from atft_core.data.schema import CANONICAL_COLUMNS


class DataValidationError(Exception):
    """Raw quotes failed validation; ``str(err)`` is the readable report, ``err.report`` the data."""

    def __init__(self, report, message: str | None = None) -> None:
        self.report = report
        super().__init__(message if message is not None else report.to_text())


class UnreadableInputError(DataValidationError):
    """The source cannot be read at all (missing, empty, truncated or corrupt); names the file."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(None, f"cannot read quotes from {path}: {reason}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".strip()


def _read_csv(path: Path) -> pl.DataFrame:
    df = pl.read_csv(path, schema_overrides={"Code": pl.String, "Sector33Code": pl.String},
                     infer_schema_length=10_000)
    if "Date" in df.columns and df.schema["Date"] == pl.String:
        parsed = df["Date"].str.to_date("%Y-%m-%d", strict=False)
        if parsed.null_count() == df["Date"].null_count():  # every non-null value parsed
            df = df.with_columns(parsed.alias("Date"))
    return df


def _read_store_dir(path: Path) -> pl.DataFrame:
    # hidden names are writers' temp files (atft_core.data.store writes .part-0.parquet.tmp-*)
    files = sorted(f for f in path.rglob("*.parquet")
                   if not any(part.startswith(".") for part in f.relative_to(path).parts))
    if not files:
        raise UnreadableInputError(path, "directory contains no *.parquet files")
    for f in files:  # name the bad file: a scan over the directory would not
        if f.stat().st_size == 0:
            raise UnreadableInputError(f, "empty file (0 bytes)")
        try:
            pl.read_parquet_schema(f)
        except Exception as err:  # polars raises ComputeError / OSError variants
            raise UnreadableInputError(f, f"not a readable parquet file ({_first_line(err)})") from None
    try:
        df = pl.scan_parquet(files, hive_partitioning=True).collect()
    except Exception as err:
        raise UnreadableInputError(path, f"cannot read the parquet store ({_first_line(err)})") from None
    keep = [c for c in df.columns if c in CANONICAL_COLUMNS]
    return df.select(keep) if keep else df


def read_quotes(source: str | Path | pl.DataFrame) -> tuple[pl.DataFrame, str]:
    """Return ``(frame, label)``; raise :class:`UnreadableInputError` naming the file on failure."""
    if isinstance(source, pl.DataFrame):
        return source, "<DataFrame>"
    if isinstance(source, pl.LazyFrame):
        return source.collect(), "<LazyFrame>"
    path = Path(source)
    if not path.exists():
        raise UnreadableInputError(path, "no such file or directory")
    if path.is_dir():
        return _read_store_dir(path), str(path)
    if path.stat().st_size == 0:
        raise UnreadableInputError(path, "empty file (0 bytes)")
    try:
        if path.suffix.lower() in (".csv", ".txt"):
            return _read_csv(path), str(path)
        return pl.read_parquet(path), str(path)
    except UnreadableInputError:
        raise
    except Exception as err:
        kind = "CSV" if path.suffix.lower() in (".csv", ".txt") else "parquet"
        raise UnreadableInputError(
            path, f"not a readable {kind} file, truncated or corrupt? ({_first_line(err)})"
        ) from None
