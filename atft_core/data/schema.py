"""The canonical raw daily-quotes table (SPEC 3.1), J-Quants naming. One row per (Date, Code)."""

from __future__ import annotations

import polars as pl

KEY_COLUMNS = ("Date", "Code")
PRICE_COLUMNS = ("Open", "High", "Low", "Close")

REQUIRED_SCHEMA: dict[str, pl.DataType] = {
    "Date": pl.Date(),
    "Code": pl.String(),
    "Open": pl.Float64(),
    "High": pl.Float64(),
    "Low": pl.Float64(),
    "Close": pl.Float64(),
    "Volume": pl.Float64(),
}
OPTIONAL_SCHEMA: dict[str, pl.DataType] = {
    "TurnoverValue": pl.Float64(),
    "AdjustmentFactor": pl.Float64(),
    "Sector33Code": pl.String(),
}
CANONICAL_SCHEMA: dict[str, pl.DataType] = {**REQUIRED_SCHEMA, **OPTIONAL_SCHEMA}
CANONICAL_COLUMNS: tuple[str, ...] = tuple(CANONICAL_SCHEMA)


class SchemaError(ValueError):
    """The raw table does not have the canonical schema; the message names the columns."""


def check_schema(schema: pl.Schema | dict[str, pl.DataType]) -> None:
    """Raise SchemaError naming every missing column and every column of the wrong dtype."""
    schema = dict(schema)
    missing = [c for c in REQUIRED_SCHEMA if c not in schema]
    wrong = [
        f"{c} is {schema[c]} (expected {t})"
        for c, t in CANONICAL_SCHEMA.items()
        if c in schema and schema[c] != t
    ]
    problems = []
    if missing:
        problems.append(f"missing column(s): {', '.join(missing)}")
    if wrong:
        problems.append("wrong dtype: " + "; ".join(wrong))
    if problems:
        raise SchemaError("raw quotes schema: " + " | ".join(problems))


def complete_optional(df: pl.LazyFrame | pl.DataFrame):
    """Add absent optional columns: TurnoverValue = Close*Volume, AdjustmentFactor = 1.0,
    Sector33Code = null; return with columns in canonical order."""
    names = df.collect_schema().names() if isinstance(df, pl.LazyFrame) else df.columns
    add = []
    if "TurnoverValue" not in names:
        add.append((pl.col("Close") * pl.col("Volume")).alias("TurnoverValue"))
    if "AdjustmentFactor" not in names:
        add.append(pl.lit(1.0, dtype=pl.Float64).alias("AdjustmentFactor"))
    if "Sector33Code" not in names:
        add.append(pl.lit(None, dtype=pl.String).alias("Sector33Code"))
    if add:
        df = df.with_columns(add)
    return df.select(CANONICAL_COLUMNS)


def canonical_code(code: pl.Expr) -> pl.Expr:
    """The canonical Code (one rule for every source): the 4-character listing code.

    J-Quants (and JPX files) use 5 characters, the listing code plus a trailing "0" check digit
    ("72030" -> "7203", new alphanumeric "130A0" -> "130A"); Yahoo-style names lose their
    exchange suffix in the yfinance reader. Any other code (5 characters not ending in "0",
    e.g. preferred shares) is kept as it is, so two securities never collapse onto one code.
    """
    code = code.str.strip_chars()
    return pl.when((code.str.len_chars() == 5) & code.str.ends_with("0")).then(
        code.str.slice(0, 4)).otherwise(code)
