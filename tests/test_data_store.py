"""Day-partitioned parquet store: round trip, window pushdown, merge, atomicity, clear errors."""

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
        f"date={d}/part-0.parquet" for d in DATES]
    back = read_quotes(tmp_path / "s")
    assert back.equals(df.sort("Date", "Code"))
    assert back.schema == df.schema
    # zstd compression on disk
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(files[0]).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"


def test_window_filter_and_day_pruning(tmp_path):
    df = _quotes(DATES)
    root = tmp_path / "s"
    write_store(df, root)
    got = read_quotes(root, "2018-12-27", dt.date(2019, 1, 4))
    exp = df.filter(pl.col("Date").is_between(dt.date(2018, 12, 27), dt.date(2019, 1, 4)))
    assert got.equals(exp)
    assert [f.parent.name for f in store_files(root, dt.date(2019, 1, 1), dt.date(2019, 12, 31))] == [
        "date=2019-01-04", "date=2019-01-07"]
    # pruned partitions are never opened: corrupting 2018 does not affect a 2019 window
    (root / "date=2018-12-27" / "part-0.parquet").write_bytes(b"garbage")
    assert read_quotes(root, "2019-01-01", "2019-12-31").height == 6
    with pytest.raises(StoreError, match="date=2018-12-27"):
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


def test_rewrite_is_idempotent_byte_identical_and_merges_by_key(tmp_path):
    root = tmp_path / "s"
    df = _quotes(DATES)
    write_store(df, root)
    before = {p: p.read_bytes() for p in root.rglob("*.parquet")}
    assert write_store(df, root) == []  # nothing changed: nothing rewritten
    assert {p: p.read_bytes() for p in root.rglob("*.parquet")} == before
    assert read_quotes(root).equals(df)
    # one code of 2019 re-stated: that code's rows change, every other row stays
    new9984 = _quotes([d for d in DATES if d.year == 2019], codes=("9984",), scale=2.0)
    files = write_store(new9984, root)
    assert sorted(f.parent.name for f in files) == ["date=2019-01-04", "date=2019-01-07"]
    back = read_quotes(root)
    assert back.height == df.height
    assert back.filter(pl.col("Code") == "9984", pl.col("Date").dt.year() == 2019).equals(new9984)
    assert back.filter(pl.col("Code") != "9984").equals(df.filter(pl.col("Code") != "9984"))
    assert {p: p.read_bytes() for p in root.rglob("*.parquet") if "2019" not in str(p)} == {
        p: b for p, b in before.items() if "2019" not in str(p)}
    # replace=True: the input is the whole day, removed rows are reported
    res = store_mod.write_days(new9984, root, replace=True)
    assert (res.rows_removed, res.rows_replaced) == (4, 2)
    assert read_quotes(root, "2019-01-01", "2019-12-31")["Code"].to_list() == ["9984", "9984"]


def test_duplicate_keys_and_legacy_year_store_refused(tmp_path):
    df = _quotes(DATES[:2])
    with pytest.raises(StoreError, match="duplicate"):
        write_store(pl.concat([df, df.head(1)]), tmp_path / "s")
    legacy = tmp_path / "legacy" / "year=2018"
    legacy.mkdir(parents=True)
    df.write_parquet(legacy / "part-0.parquet")
    assert read_quotes(tmp_path / "legacy").equals(df)  # still readable
    with pytest.raises(StoreError, match="legacy year-partitioned store.*atft ingest"):
        write_store(df, tmp_path / "legacy")


def _fail_on_second_day(monkeypatch):
    real = store_mod.atomic_write_bytes
    calls = {"n": 0}

    def flaky(path, blob, mode=None):
        calls["n"] += 1
        if calls["n"] == 2:
            def half(fh):
                fh.write(blob[: len(blob) // 2])  # a partial temp file exists when the crash hits
                raise OSError("disk full (simulated)")
            return real(path, half, mode=mode)
        return real(path, blob, mode=mode)

    monkeypatch.setattr(store_mod, "atomic_write_bytes", flaky)


def test_failed_write_leaves_every_day_whole_or_absent(tmp_path, monkeypatch):
    root = tmp_path / "s"
    write_store(_quotes(DATES[:3]), root)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    _fail_on_second_day(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        write_store(_quotes(DATES, scale=3.0), root)  # day 1 rewritten, day 2 fails
    after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    # day 1 is whole (new), day 2 untouched (old), later days never started, no temp files left
    assert set(after) == set(before)
    first = root / f"date={DATES[0]}" / "part-0.parquet"
    assert after[first] != before[first]
    assert {p: b for p, b in after.items() if p != first} == {p: b for p, b in before.items() if p != first}
    assert read_quotes(root, DATES[0], DATES[0])["Close"].to_list() == _quotes(DATES[:1], scale=3.0)["Close"].to_list()


def test_truncated_parquet_names_the_file(tmp_path):
    root = tmp_path / "s"
    files = write_store(_quotes(DATES), root)
    blob = files[1].read_bytes()
    files[1].write_bytes(blob[: len(blob) // 2])
    with pytest.raises(StoreError, match=r"unreadable parquet file .*date=2018-12-27/part-0\.parquet"):
        scan_store(root)


def test_corrupt_data_pages_name_the_file(tmp_path):
    root = tmp_path / "s"
    files = write_store(_quotes(DATES * 1), root)
    blob = bytearray(files[0].read_bytes())
    # footer intact, data pages overwritten: only decoding fails
    for i in range(4, min(len(blob) // 2, 400)):
        blob[i] = 0xFF
    files[0].write_bytes(bytes(blob))
    with pytest.raises(StoreError, match=r"date=2018-12-26/part-0\.parquet"):
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


@pytest.mark.integration
@pytest.mark.parametrize("call", ["list", "read", "write"])
def test_s3_store_calls_end_at_one_total_deadline(call, monkeypatch):
    """A hung S3 endpoint (accepts, never answers): botocore alone would wait 30 s per read x 3
    attempts; every store call ends at the store's total deadline with one StoreError line."""
    import time

    from s3_proxy import SilentServer

    srv = SilentServer()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", srv.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        backend = store_mod._Backend("s3://bucket/quotes", deadline_s=1.5)
        day = dt.date(2024, 1, 4)
        act = {"list": backend.days, "read": lambda: backend.read_bytes(day),
               "write": lambda: backend.write_bytes(day, b"x")}[call]
        t0 = time.monotonic()
        with pytest.raises(StoreError) as err:
            act()
        elapsed = time.monotonic() - t0
    finally:
        srv.close()
    assert 1.4 <= elapsed < 4.0
    msg = str(err.value)
    assert "\n" not in msg and "1.5 s deadline" in msg and "s3://bucket/quotes" in msg
