"""Year-partitioned parquet store: round trip, window pushdown, atomicity, clear errors."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from atft_core.data import store as store_mod
from atft_core.data.schema import CANONICAL_COLUMNS, SchemaError
from atft_core.data.store import StoreError, read_quotes, scan_store, store_files, write_store


def _quotes(dates: list[dt.date], codes=("1301", "7203", "9984"), scale: float = 1.0) -> pl.DataFrame:
    rows = []
    for i, d in enumerate(dates):
        for j, c in enumerate(codes):
            p = scale * (100.0 + i + 10 * j)
            rows.append({"Date": d, "Code": c, "Open": p, "High": p + 1, "Low": p - 1, "Close": p + 0.5,
                         "Volume": float(1000 * (j + 1)), "TurnoverValue": (p + 0.5) * 1000 * (j + 1),
                         "AdjustmentFactor": 1.0, "Sector33Code": "3050"})
    return pl.DataFrame(rows).with_columns(pl.col("Date").cast(pl.Date)).select(CANONICAL_COLUMNS)


DATES = [dt.date(2018, 12, 26), dt.date(2018, 12, 27), dt.date(2018, 12, 28),
         dt.date(2019, 1, 4), dt.date(2019, 1, 7), dt.date(2020, 1, 6)]


def test_round_trip_equal_and_partitioned(tmp_path):
    df = _quotes(DATES)
    files = write_store(df.reverse(), tmp_path / "s")  # unsorted input is sorted on write
    assert [f.relative_to(tmp_path / "s").as_posix() for f in files] == [
        "year=2018/part-0.parquet", "year=2019/part-0.parquet", "year=2020/part-0.parquet"]
    back = read_quotes(tmp_path / "s")
    assert back.equals(df.sort("Date", "Code"))
    assert back.schema == df.schema
    # zstd compression on disk
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(files[0]).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"


def test_window_filter_and_year_pruning(tmp_path):
    df = _quotes(DATES)
    root = tmp_path / "s"
    write_store(df, root)
    got = read_quotes(root, "2018-12-27", dt.date(2019, 1, 4))
    exp = df.filter(pl.col("Date").is_between(dt.date(2018, 12, 27), dt.date(2019, 1, 4)))
    assert got.equals(exp)
    assert [f.parent.name for f in store_files(root, dt.date(2019, 1, 1), dt.date(2019, 12, 31))] == ["year=2019"]
    # pruned partitions are never opened: corrupting 2018 does not affect a 2019 window
    (root / "year=2018" / "part-0.parquet").write_bytes(b"garbage")
    assert read_quotes(root, "2019-01-01", "2019-12-31").height == 6
    with pytest.raises(StoreError, match="year=2018"):
        read_quotes(root)
    # the date predicate reaches the parquet scan (row-group statistics pushdown)
    plan = scan_store(root, start="2019-01-05").explain()
    assert "SELECTION" in plan and "2019-01-05" in plan.split("SELECTION", 1)[1]
    assert scan_store(root, "2021-01-01").collect().height == 0


def test_single_file_and_int_volume_widened(tmp_path):
    df = _quotes(DATES[:2]).drop("TurnoverValue", "AdjustmentFactor", "Sector33Code")
    f = tmp_path / "one.parquet"
    df.with_columns(pl.col("Volume").cast(pl.Int64)).write_parquet(f)
    got = read_quotes(f)
    assert got.columns == list(CANONICAL_COLUMNS)
    assert got["Volume"].dtype == pl.Float64
    assert got["TurnoverValue"].to_list() == (df["Close"] * df["Volume"]).to_list()
    assert got["AdjustmentFactor"].to_list() == [1.0] * df.height


def test_rewrite_year_is_idempotent_and_replaces_only_that_year(tmp_path):
    root = tmp_path / "s"
    df = _quotes(DATES)
    write_store(df, root)
    write_store(df, root)
    assert read_quotes(root).equals(df)
    new2019 = _quotes([d for d in DATES if d.year == 2019], scale=2.0)
    write_store(new2019, root)
    back = read_quotes(root)
    assert back.filter(pl.col("Date").dt.year() == 2019).equals(new2019)
    assert back.filter(pl.col("Date").dt.year() != 2019).equals(df.filter(pl.col("Date").dt.year() != 2019))
    assert sorted(p.name for p in root.rglob("*")) == sorted(
        ["year=2018", "year=2019", "year=2020"] + ["part-0.parquet"] * 3)


def _fail_on_second_file(monkeypatch):
    real = store_mod._write_file
    calls = {"n": 0}

    def flaky(df, path):
        calls["n"] += 1
        if calls["n"] == 2:
            path.write_bytes(b"half a file")  # a partial temp file exists when the crash hits
            raise OSError("disk full (simulated)")
        real(df, path)

    monkeypatch.setattr(store_mod, "_write_file", flaky)


def test_failed_write_leaves_nothing_in_new_store(tmp_path, monkeypatch):
    _fail_on_second_file(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        write_store(_quotes(DATES), tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_failed_write_leaves_existing_store_untouched(tmp_path, monkeypatch):
    root = tmp_path / "s"
    write_store(_quotes(DATES[:3]), root)  # only 2018
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    _fail_on_second_file(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        write_store(_quotes(DATES, scale=3.0), root)  # 2018 (rewrite) + 2019 + 2020
    after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in root.iterdir()) == ["year=2018"]


def test_truncated_parquet_names_the_file(tmp_path):
    root = tmp_path / "s"
    files = write_store(_quotes(DATES), root)
    blob = files[1].read_bytes()
    files[1].write_bytes(blob[: len(blob) // 2])
    with pytest.raises(StoreError, match=r"unreadable parquet file .*year=2019/part-0\.parquet"):
        scan_store(root)


def test_corrupt_data_pages_name_the_file(tmp_path):
    root = tmp_path / "s"
    files = write_store(_quotes(DATES * 1), root)
    blob = bytearray(files[0].read_bytes())
    # footer intact, data pages overwritten: only decoding fails
    for i in range(4, min(len(blob) // 2, 400)):
        blob[i] = 0xFF
    files[0].write_bytes(bytes(blob))
    with pytest.raises(StoreError, match=r"year=2018/part-0\.parquet"):
        read_quotes(root)


def test_clear_errors_missing_empty_wrong_dtype(tmp_path):
    with pytest.raises(StoreError, match="not found"):
        scan_store(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="empty"):
        scan_store(tmp_path / "empty")
    bad = _quotes(DATES[:2]).with_columns(pl.col("Date").cast(pl.String))
    bad.write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(SchemaError, match=r"bad\.parquet.*Date is String"):
        scan_store(tmp_path / "bad.parquet")
    with pytest.raises(SchemaError, match="missing column.*Close"):
        write_store(_quotes(DATES[:2]).drop("Close"), tmp_path / "w")
    with pytest.raises(SchemaError, match="Code is Int64"):
        write_store(_quotes(DATES[:2]).with_columns(pl.col("Code").cast(pl.Int64)), tmp_path / "w")
    assert not (tmp_path / "w").exists()
    with pytest.raises(StoreError, match="empty table"):
        write_store(_quotes(DATES[:2]).clear(), tmp_path / "w")
    with pytest.raises(ValueError, match="after end"):
        scan_store(tmp_path / "bad.parquet", "2019-02-01", "2019-01-01")
