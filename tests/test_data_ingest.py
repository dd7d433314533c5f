"""Ingest of yfinance CSV directories, J-Quants exports and canonical parquet: exact values."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from atft_core.cli import main
from atft_core.data.ingest import IngestError, detect_format, ingest, load_source
from atft_core.data.schema import CANONICAL_SCHEMA
from atft_core.data.store import read_quotes

D1, D2, D3 = dt.date(2019, 1, 4), dt.date(2019, 1, 7), dt.date(2019, 1, 8)


def _yf_dir(tmp_path):
    d = tmp_path / "yf"
    d.mkdir()
    (d / "7203.T.csv").write_text(
        "Date,Open,High,Low,Close,Adj Close,Volume\n"
        "2019-01-04,100,110,90,105,84,1000\n"          # ratio 0.8
        "2019-01-07,null,null,null,null,null,null\n"    # holiday-style empty row: dropped
        "2019-01-08,106,108,104,107,107,2500\n"         # ratio 1
    )
    (d / "6758.csv").write_text(  # no Adj Close: unadjusted, timestamps with tz suffix
        "Date,Open,High,Low,Close,Volume\n"
        "2019-01-04 00:00:00+09:00,50,55,49,52,300\n"
        "2019-01-07 00:00:00+09:00,52,53,51,51.5,0\n"
    )
    return d


def test_yfinance_dir_exact_values(tmp_path):
    src = _yf_dir(tmp_path)
    assert detect_format(sorted(src.glob("*.csv"))) == "yfinance"
    summary = ingest(src, tmp_path / "store")
    assert (summary.format, summary.files, summary.rows, summary.codes) == ("yfinance", 2, 4, 2)
    assert (summary.first_date, summary.last_date, summary.dropped_no_price) == (D1, D3, 1)
    got = read_quotes(tmp_path / "store")
    assert got.schema == pl.Schema(CANONICAL_SCHEMA)
    exp = pl.DataFrame({
        "Date": [D1, D1, D2, D3],
        "Code": ["6758", "7203", "6758", "7203"],
        "Open": [50.0, 80.0, 52.0, 106.0],
        "High": [55.0, 88.0, 53.0, 108.0],
        "Low": [49.0, 72.0, 51.0, 104.0],
        "Close": [52.0, 84.0, 51.5, 107.0],
        "Volume": [300.0, 1000.0, 0.0, 2500.0],
        "TurnoverValue": [52.0 * 300, 105.0 * 1000, 0.0, 107.0 * 2500],
        "AdjustmentFactor": [1.0] * 4,
        "Sector33Code": [None] * 4,
    }, schema=CANONICAL_SCHEMA)
    assert got.equals(exp)


def test_yfinance_unparsable_value_names_file_and_column(tmp_path):
    src = _yf_dir(tmp_path)
    (src / "9984.T.csv").write_text("Date,Open,High,Low,Close,Volume\n2019-01-04,1,abc,1,1,10\n")
    with pytest.raises(IngestError, match=r"9984\.T\.csv.*'High'.*'abc'"):
        load_source(src, "yfinance")
    (src / "9984.T.csv").write_text("Date,Open,High,Low,Close,Volume\n04/01/2019,1,1,1,1,10\n")
    with pytest.raises(IngestError, match=r"9984\.T\.csv.*'Date'.*unparsable date '04/01/2019'"):
        load_source(src, "yfinance")
    (src / "9984.T.csv").write_text("Date,Open,High,Close,Volume\n2019-01-04,1,1,1,10\n")
    with pytest.raises(IngestError, match=r"9984\.T\.csv.*missing column\(s\) Low"):
        load_source(src, "yfinance")


def _jquants_frame() -> pl.DataFrame:
    return pl.DataFrame({
        "Date": ["2019-01-04", "2019-01-04", "2019-01-07", "2019-01-07"],
        "Code": ["72030", "67580", "72030", "67580"],
        "Open": [200.0, 5000.0, 210.0, None],
        "High": [220.0, 5100.0, 215.0, None],
        "Low": [190.0, 4900.0, 205.0, None],
        "Close": [210.0, 5050.0, 212.0, None],   # 6758 did not trade on 01-07: no price
        "Volume": [1000.0, 10.0, 2000.0, 0.0],
        "TurnoverValue": [210000.0, 50500.0, 424000.0, 0.0],
        "AdjustmentFactor": [1.0, 1.0, 0.5, 1.0],
        "AdjustmentOpen": [100.0, 5000.0, 210.0, None],
        "AdjustmentHigh": [110.0, 5100.0, 215.0, None],
        "AdjustmentLow": [95.0, 4900.0, 205.0, None],
        "AdjustmentClose": [105.0, 5050.0, 212.0, None],
        "AdjustmentVolume": [2000.0, 10.0, 2000.0, 0.0],
    })


JQ_EXPECTED = pl.DataFrame({
    "Date": [D1, D1, D2],
    "Code": ["6758", "7203", "7203"],
    "Open": [5000.0, 100.0, 210.0],
    "High": [5100.0, 110.0, 215.0],
    "Low": [4900.0, 95.0, 205.0],
    "Close": [5050.0, 105.0, 212.0],
    "Volume": [10.0, 2000.0, 2000.0],
    "TurnoverValue": [50500.0, 210000.0, 424000.0],
    "AdjustmentFactor": [1.0, 1.0, 0.5],
    "Sector33Code": [None, None, None],
}, schema=CANONICAL_SCHEMA)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_jquants_export_prefers_adjusted_columns(tmp_path, kind):
    src = tmp_path / f"daily_quotes.{kind}"
    df = _jquants_frame()
    if kind == "csv":
        df.write_csv(src)
    else:  # parquet with compact YYYYMMDD dates and integer codes
        df.with_columns(pl.col("Date").str.replace_all("-", ""), pl.col("Code").cast(pl.Int64)).write_parquet(src)
    summary = ingest(src, tmp_path / "store", "auto")
    assert summary.format == "jquants"
    assert (summary.rows, summary.codes, summary.dropped_no_price) == (3, 2, 1)
    assert read_quotes(tmp_path / "store").equals(JQ_EXPECTED)


def test_jquants_directory_of_daily_files_and_bad_date(tmp_path):
    d = tmp_path / "landing"
    d.mkdir()
    df = _jquants_frame()
    df.filter(pl.col("Date") == "2019-01-04").write_parquet(d / "20190104.parquet")
    df.filter(pl.col("Date") == "2019-01-07").write_parquet(d / "20190107.parquet")
    got, info = load_source(d, "jquants")
    assert info["files"] == 2
    assert got.drop("AdjustedThrough").equals(JQ_EXPECTED)
    # each daily export is adjusted as of its own day: later splits are applied at read
    assert got["AdjustedThrough"].to_list() == [D1, D1, D2]
    df.with_columns(pl.lit("2019-13-45").alias("Date")).write_parquet(d / "20190108.parquet")
    with pytest.raises(IngestError, match=r"20190108\.parquet.*'Date'.*'2019-13-45'"):
        load_source(d, "jquants")


def test_canonical_parquet_int_volume_and_sector_padding(tmp_path):
    src = tmp_path / "canon.parquet"
    pl.DataFrame({
        "Date": [D1, D1], "Code": ["1301", "1332"],
        "Open": [1.0, 2.0], "High": [1.5, 2.5], "Low": [0.5, 1.5], "Close": [1.2, 2.2],
        "Volume": [100, 200], "Sector33Code": ["50", None],
    }).write_parquet(src)
    summary = ingest(src, tmp_path / "store")
    assert (summary.format, summary.sector_codes_padded) == ("canonical", 1)
    got = read_quotes(tmp_path / "store")
    assert got["Volume"].to_list() == [100.0, 200.0]
    assert got["Sector33Code"].to_list() == ["0050", None]
    assert got["TurnoverValue"].to_list() == [1.2 * 100, 2.2 * 200]


def test_cli_ingest_summary_and_error(tmp_path, capsys):
    src = _yf_dir(tmp_path)
    assert main(["ingest", str(src), "--out", str(tmp_path / "store"), "--format", "yfinance"]) == 0
    out = capsys.readouterr().out
    assert "rows: 4  codes: 2  dates: 2019-01-04 .. 2019-01-08" in out
    assert main(["ingest", str(tmp_path / "missing"), "--out", str(tmp_path / "s2")]) == 2  # input error
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "s2").exists()


# --------------------------------------------------------------------------- issue 10 / 12 fault 7
def _store_of(n_codes: int, days: list[dt.date]) -> pl.DataFrame:
    rows = [{"Date": d, "Code": f"{1000 + j}", "Open": 100.0 + j, "High": 101.0 + j, "Low": 99.0 + j,
             "Close": 100.5 + j, "Volume": 10.0} for d in days for j in range(n_codes)]
    return pl.DataFrame(rows).with_columns(pl.col("Date").cast(pl.Date))


def test_one_stock_ingest_keeps_the_other_199_stocks(tmp_path, capsys):
    days = [dt.date(2019, 1, 4), dt.date(2019, 1, 7), dt.date(2019, 1, 8)]
    full = _store_of(200, days)
    full.write_parquet(tmp_path / "full.parquet")
    assert main(["ingest", str(tmp_path / "full.parquet"), "--out", str(tmp_path / "store")]) == 0
    one = full.filter(pl.col("Code") == "1007").with_columns(pl.col("Close") * 2)
    src = tmp_path / "one.csv"
    one.write_csv(src)
    capsys.readouterr()
    assert main(["ingest", str(src), "--out", str(tmp_path / "store"), "--format", "canonical"]) == 0
    out = capsys.readouterr().out
    assert "replaced by the source: 3; kept (not in the source): 597" in out
    got = read_quotes(tmp_path / "store")
    assert got.filter(pl.col("Date").dt.year() == 2019)["Code"].n_unique() == 200
    assert got.height == 600
    assert got.filter(pl.col("Code") == "1007")["Close"].to_list() == [215.0] * 3  # (100.5 + 7) * 2
    # --replace: the source becomes the whole of each day, and it says what that removed
    assert main(["ingest", str(src), "--out", str(tmp_path / "store"), "--format", "canonical",
                 "--replace"]) == 0
    out = capsys.readouterr().out
    assert "--replace removed 597 stored row(s) not in the source, e.g. 2019-01-04 1000" in out
    assert read_quotes(tmp_path / "store").height == 3


def test_tz_aware_tokyo_midnight_keeps_its_date(tmp_path):
    tokyo_midnight = pl.Series("Date", [dt.datetime(2019, 1, 4), dt.datetime(2019, 1, 7)]).dt.replace_time_zone(
        "Asia/Tokyo").dt.convert_time_zone("UTC")  # stored as 2019-01-03 15:00 UTC, 2019-01-06 15:00 UTC
    df = pl.DataFrame({"Date": tokyo_midnight, "Code": ["7203", "7203"], "Open": [1.0, 2.0],
                       "High": [1.0, 2.0], "Low": [1.0, 2.0], "Close": [1.0, 2.0], "Volume": [5.0, 5.0]})
    df.write_parquet(tmp_path / "utc.parquet")
    got, _ = load_source(tmp_path / "utc.parquet", "canonical")
    assert got["Date"].to_list() == [dt.date(2019, 1, 4), dt.date(2019, 1, 7)]
    # the same instants as ISO strings with an offset
    df.with_columns(pl.col("Date").dt.strftime("%Y-%m-%dT%H:%M:%S%z")).write_csv(tmp_path / "utc.csv")
    got, _ = load_source(tmp_path / "utc.csv", "canonical")
    assert got["Date"].to_list() == [dt.date(2019, 1, 4), dt.date(2019, 1, 7)]
    # naive timestamps: midnight is a date; anything else is refused, naming the value
    naive = df.with_columns(pl.col("Date").dt.replace_time_zone(None))  # 15:00 naive
    naive.write_parquet(tmp_path / "naive.parquet")
    with pytest.raises(IngestError, match=r"naive timestamps that are not midnight, e\.g\. 2019-01-03 15:00"):
        load_source(tmp_path / "naive.parquet", "canonical")
    df.with_columns(pl.Series("Date", [dt.datetime(2019, 1, 4), dt.datetime(2019, 1, 7)])).write_parquet(
        tmp_path / "midnight.parquet")
    got, _ = load_source(tmp_path / "midnight.parquet", "canonical")
    assert got["Date"].to_list() == [dt.date(2019, 1, 4), dt.date(2019, 1, 7)]


def test_duplicate_keys_in_source_are_refused(tmp_path, capsys):
    df = _store_of(2, [dt.date(2019, 1, 4)])
    pl.concat([df, df.head(1)]).write_parquet(tmp_path / "dup.parquet")
    assert main(["ingest", str(tmp_path / "dup.parquet"), "--out", str(tmp_path / "s")]) == 2
    assert "duplicate (Date, Code) row(s), e.g. (2019-01-04, 1000)" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
