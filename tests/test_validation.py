"""Quotes validation (GX 1.x): a bad-input corpus, bad-tick flagging vs a reference loop, CLI."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest

from atft_core import calendar as cal
from atft_core.cli import main
from atft_core.config import ValidationConfig
from atft_core.validation import (
    DataValidationError,
    UnreadableInputError,
    ensure_valid,
    validate_quotes,
)

CFG = ValidationConfig()


def make_quotes(n_codes: int = 20, n_days: int = 30, start: str = "2019-10-15", seed: int = 0) -> pl.DataFrame:
    """Realistic OHLCV on real XTKS sessions: GBM closes, Open near the previous close,
    High/Low bracketing Open and Close, integer-valued float volumes; sorted by (Date, Code)."""
    rng = np.random.default_rng(seed)
    days = cal.trading_days_from(start, n_days)
    codes = [str(1301 + 7 * i) for i in range(n_codes)]
    logret = rng.standard_t(4, size=(n_days, n_codes)) * 0.01  # (T, N) fat tails, |r| << 0.5
    close = 1000.0 * np.exp(np.cumsum(logret, axis=0))  # (T, N)
    prev = np.vstack([close[:1], close[:-1]])
    open_ = prev * (1 + rng.normal(0, 0.003, size=close.shape))
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.005, size=close.shape)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.005, size=close.shape)))
    vol = rng.integers(1_000, 1_000_000, size=close.shape).astype(float)
    return pl.DataFrame({
        "Date": np.repeat(np.array(days, dtype="datetime64[D]"), n_codes),
        "Code": codes * n_days,
        "Open": open_.ravel(), "High": high.ravel(), "Low": low.ravel(), "Close": close.ravel(),
        "Volume": vol.ravel(),
    }).with_columns(pl.col("Date").cast(pl.Date))


@pytest.fixture(scope="module")
def clean() -> pl.DataFrame:
    return make_quotes()


def last_day(df: pl.DataFrame) -> dt.date:
    return df["Date"].max()


def reference_bad_ticks(df: pl.DataFrame, limit: float) -> dict[tuple[dt.date, str], float]:
    """Slow obvious loop: per code in date order, |close/prev_close - 1| > limit -> return."""
    out = {}
    by_code: dict[str, list[tuple[dt.date, float]]] = {}
    for row in df.iter_rows(named=True):
        by_code.setdefault(row["Code"], []).append((row["Date"], row["Close"]))
    for code, rows in by_code.items():
        rows.sort()
        for (_, c0), (d1, c1) in zip(rows, rows[1:]):
            if abs(c1 / c0 - 1) > limit:
                out[(d1, code)] = c1 / c0 - 1
    return out


def rejected(source, cfg=CFG, as_of=None):
    """ensure_valid must raise (nothing downstream runs) with the readable report as message."""
    with pytest.raises(DataValidationError) as err:
        ensure_valid(source, cfg, as_of=as_of)
    report = err.value.report
    assert not report.success and str(err.value) == report.to_text()
    assert report.failed and all(c.name in str(err.value) for c in report.failed)
    return report


def statuses(report) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


@pytest.mark.slow  # several GX runs
def test_clean_frame_passes(clean):
    rep = validate_quotes(clean, CFG, as_of=last_day(clean))
    assert rep.success, rep.to_text()
    assert set(statuses(rep).values()) == {"pass"}, rep.to_text()
    assert rep.rows == clean.height and rep.codes == 20
    assert rep.latest_expected_day == last_day(clean) and rep.bad_ticks.height == 0
    # every suite expectation ran (freshness included because as_of was given)
    assert {"fresh", "not_in_future", "trading_day", "unique_keys", "daily_return_bounded"} <= set(statuses(rep))
    assert ensure_valid(clean, CFG, as_of=last_day(clean)).success


def test_missing_column_is_fatal_and_named(clean):
    rep = rejected(clean.drop("High"), CFG, as_of=last_day(clean))
    st = statuses(rep)
    assert st["column_High"] == "fail" and [c.name for c in rep.failed] == ["column_High"]
    assert st["high_ge_low"] == "skipped" and st["open_close_in_range"] == "skipped"
    assert st["daily_return_bounded"] == "pass"  # checks not needing High still run
    assert "High is missing" in rep.to_text()


@pytest.mark.slow  # several GX runs
def test_wrong_dtype_is_fatal_castable_is_warning(clean):
    bad = clean.with_columns(pl.col("Close").cast(pl.String))
    rep = rejected(bad, CFG)
    assert not rep.success and rep.check("dtype_Close").status == "fail"
    assert "Close is String (expected Float64)" in rep.to_text()
    assert rep.check("daily_return_bounded").status == "skipped"
    # an integer Volume (the real J-Quants/yfinance dump) is castable: warning only
    ok = clean.with_columns(pl.col("Volume").cast(pl.Int64))
    rep2 = validate_quotes(ok, CFG)
    assert rep2.success and rep2.check("float64_Volume").status == "warn"
    assert rep2.check("dtype_Volume").status == "pass"
    # a Code stored as an integer is not castable (leading zeros / 5-char codes would be lost)
    rep3 = rejected(clean.with_columns(pl.col("Code").cast(pl.Int64)), CFG)
    assert not rep3.success and rep3.check("dtype_Code").status == "fail"


def test_optional_columns_checked_when_present(clean):
    opt = clean.with_columns(
        pl.lit(1.0).alias("AdjustmentFactor"),
        (pl.col("Close") * pl.col("Volume")).alias("TurnoverValue"),
        pl.lit(3700).cast(pl.Int64).alias("Sector33Code"),  # must be a string code
    ).with_row_index().with_columns(
        pl.when(pl.col("index") == 4).then(0.0).otherwise(pl.col("AdjustmentFactor")).alias("AdjustmentFactor")
    ).drop("index")
    rep = rejected(opt, CFG)
    st = statuses(rep)
    assert not rep.success
    assert st["dtype_Sector33Code"] == "fail" and "Sector33Code is Int64 (expected String)" in rep.to_text()
    assert st["adjustment_factor_positive"] == "fail" and rep.check("adjustment_factor_positive").unexpected_count == 1
    assert st["turnover_nonnegative"] == "pass" and st["dtype_TurnoverValue"] == "pass"
    # absent optional columns are not checked at all
    assert "dtype_Sector33Code" not in statuses(validate_quotes(clean, CFG))


def test_duplicate_keys(clean):
    dup = pl.concat([clean, clean.slice(5, 1)]).sort("Date", "Code")
    rep = rejected(dup, CFG)
    c = rep.check("unique_keys")
    assert not rep.success and c.status == "fail" and c.unexpected_count == 2
    assert c.examples[0]["Code"] == clean["Code"][5]
    assert c.examples[0]["Date"] == clean["Date"][5].isoformat()


def test_nonpositive_prices(clean):
    bad = clean.with_row_index().with_columns(
        pl.when(pl.col("index") == 3).then(0.0).otherwise(pl.col("Close")).alias("Close"),
        pl.when(pl.col("index") == 7).then(-1.0).otherwise(pl.col("Low")).alias("Low"),
    ).drop("index")
    rep = rejected(bad, CFG)
    assert not rep.success
    assert rep.check("positive_Close").unexpected_count == 1
    assert rep.check("positive_Low").unexpected_count == 1
    assert rep.check("positive_Close").examples[0]["Code"] == clean["Code"][3]


def test_high_below_low(clean):
    bad = clean.with_row_index().with_columns(
        pl.when(pl.col("index") == 11).then(pl.col("Low") * 0.9).otherwise(pl.col("High")).alias("High")
    ).drop("index")
    rep = rejected(bad, CFG)
    c = rep.check("high_ge_low")
    assert not rep.success and c.status == "fail" and c.unexpected_count == 1
    assert c.examples[0]["Code"] == clean["Code"][11]


@pytest.mark.slow  # several GX runs
def test_stale_file_missing_latest_day(clean):
    last = last_day(clean)
    as_of = cal.add_trading_days(last, 3)
    rep = rejected(clean, CFG, as_of=as_of)
    c = rep.check("fresh")
    assert not rep.success and c.status == "fail" and c.observed == 3
    assert str(as_of) in c.detail and str(last) in c.detail
    # as_of=None: freshness is not part of the run; require_fresh=False drops it too
    assert "fresh" not in statuses(validate_quotes(clean, CFG, as_of=None))
    rep2 = validate_quotes(clean, CFG.model_copy(update={"require_fresh": False}), as_of=as_of)
    assert rep2.success and "fresh" not in statuses(rep2)
    # rows after the latest expected day are fatal (as_of before the last date)
    early = cal.add_trading_days(last, -2)
    rep3 = rejected(clean, CFG, as_of=early)
    assert rep3.check("not_in_future").unexpected_count == 2 * 20
    # a backfill validates its window only: end=as_of drops the later days first
    rep4 = validate_quotes(clean, CFG, as_of=early, start=clean["Date"].min(), end=early.isoformat())
    assert rep4.success and rep4.rows == clean.height - 2 * 20 and rep4.last_date == early


def test_holiday_date_is_fatal(clean):
    holiday = dt.date(2019, 11, 4)  # substitute holiday for Culture Day (Monday)
    assert not cal.is_trading_day(holiday) and clean["Date"].min() < holiday < last_day(clean)
    extra = clean.filter(pl.col("Date") == cal.previous_trading_day(holiday)).with_columns(
        pl.lit(holiday).alias("Date"))
    rep = rejected(pl.concat([clean, extra]).sort("Date", "Code"), CFG)
    c = rep.check("trading_day")
    assert not rep.success and c.status == "fail" and c.unexpected_count == 20
    assert "2019-11-04 (20 rows)" in c.detail
    assert "trading_day" in rep.to_text() and "2019-11-04" in rep.to_text()


def test_empty_and_truncated_files(clean, tmp_path, capsys):
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    with pytest.raises(UnreadableInputError, match=r"empty\.parquet.*empty file"):
        validate_quotes(empty, CFG)
    zero_rows = tmp_path / "zero_rows.parquet"
    clean.head(0).write_parquet(zero_rows)
    rep = rejected(zero_rows, CFG)
    assert not rep.success and rep.check("row_count").status == "fail"
    assert "the file is empty" in rep.to_text()
    good = tmp_path / "good.parquet"
    clean.write_parquet(good)
    blob = good.read_bytes()
    trunc = tmp_path / "truncated.parquet"
    trunc.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UnreadableInputError, match=r"truncated\.parquet"):
        ensure_valid(trunc, CFG)
    assert main(["validate", str(trunc), "--config", "test", "--docs", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "truncated.parquet" in err and "Traceback" not in err


@pytest.mark.slow  # several GX runs
def test_bad_ticks_isolated_flagged_widespread_fatal(clean):
    # one 100x price error (a unit slip) on one code-day: two bad returns (in and out)
    code, day = clean["Code"][3], clean["Date"].unique().sort()[10]
    hit = (pl.col("Code") == code) & (pl.col("Date") == day)
    one = clean.with_columns([pl.when(hit).then(pl.col(c) * 100).otherwise(pl.col(c)).alias(c)
                              for c in ("Open", "High", "Low", "Close")])
    rep = rejected(one, CFG)
    ref = reference_bad_ticks(one, CFG.max_abs_daily_return)
    assert len(ref) == 2
    got = {(r["Date"], r["Code"]): r["return"] for r in rep.bad_ticks.iter_rows(named=True)}
    assert got.keys() == ref.keys()
    assert all(math.isclose(got[k], ref[k], rel_tol=1e-12) for k in ref)
    assert got[min(ref)] > 50 and -1 < got[max(ref)] < -0.9  # the 100x jump in and out
    # 2 of 580 returns = 0.34% > default 0.1%: fatal; with a 1% allowance it is flagged only
    assert not rep.success and rep.check("daily_return_bounded").status == "fail"
    loose = CFG.model_copy(update={"max_bad_tick_fraction": 0.01})
    rep2 = validate_quotes(one, loose)
    c = rep2.check("daily_return_bounded")
    assert rep2.success and c.status == "warn" and c.unexpected_count == 2
    assert "flagged for masking, not fatal" in rep2.to_text()
    # widespread: every 3rd code doubles on one day -> far above 1%
    many = clean.with_columns(
        pl.when((pl.col("Date") == day) & (pl.col("Code").cast(pl.Int64) % 3 == 0))
        .then(pl.col("Close") * 2).otherwise(pl.col("Close")).alias("Close"))
    rep3 = rejected(many, loose)
    assert not rep3.success and rep3.check("daily_return_bounded").status == "fail"
    assert set(zip(rep3.bad_ticks["Date"], rep3.bad_ticks["Code"])) == set(reference_bad_ticks(many, 0.5))


@pytest.mark.slow  # several GX runs
def test_coverage_latest_day_fatal_history_warning(clean):
    days = clean["Date"].unique().sort()
    codes = clean["Code"].unique().sort()[:8]  # 8/20 = 0.4 coverage
    thin_mid = clean.filter((pl.col("Date") != days[5]) | pl.col("Code").is_in(codes.implode()))
    rep = validate_quotes(thin_mid, CFG)
    assert rep.success and rep.check("daily_coverage").status == "warn"
    assert rep.check("daily_coverage").unexpected_count == 8
    assert f"{days[5]} (8 codes, 0.40)" in rep.check("daily_coverage").detail
    thin_last = clean.filter((pl.col("Date") != days[-1]) | pl.col("Code").is_in(codes.implode()))
    rep2 = rejected(thin_last, CFG)
    assert not rep2.success and rep2.check("latest_day_coverage").status == "fail"
    # a whole missing session is a warning that names the day
    gap = clean.filter(pl.col("Date") != days[7])
    rep3 = validate_quotes(gap, CFG)
    assert rep3.success and rep3.check("no_missing_sessions").status == "warn"
    assert str(days[7]) in rep3.check("no_missing_sessions").detail


@pytest.mark.slow  # several GX runs
def test_ohlc_range_few_warn_many_fatal(clean):
    few = clean.with_row_index().with_columns(
        pl.when(pl.col("index") == 2).then(pl.col("High") * 1.01).otherwise(pl.col("Close")).alias("Close")
    ).drop("index")
    # 1 of 600 rows = 0.17% > 0.1% default -> fatal; allowance 1% -> warning
    assert validate_quotes(few, CFG).check("open_close_in_range").status == "fail"
    loose = CFG.model_copy(update={"max_ohlc_violation_fraction": 0.01})
    rep = validate_quotes(few, loose)
    assert rep.success and rep.check("open_close_in_range").status == "warn"
    # float noise below the tolerance is not a violation
    noise = clean.with_columns(pl.col("High").alias("Close"))
    noise = noise.with_columns((pl.col("Close") * (1 + 1e-12)).alias("Close"))
    assert validate_quotes(noise, CFG).check("open_close_in_range").status == "pass"


@pytest.mark.slow
def test_cli_store_csv_and_data_docs(clean, tmp_path, capsys):
    store = tmp_path / "store"
    for (year,), part in clean.group_by(pl.col("Date").dt.year()):
        (store / f"year={year}").mkdir(parents=True)
        part.write_parquet(store / f"year={year}" / "part-0.parquet")
    docs = tmp_path / "docs"
    as_of = last_day(clean).isoformat()
    assert main(["validate", str(store), "--as-of", as_of, "--docs", str(docs), "--config", "test"]) == 0
    out = capsys.readouterr().out
    assert "quotes validation PASSED" in out and f"{clean.height:,} rows" in out
    index = docs / "index.html"
    assert index.exists() and "atft_quotes" in index.read_text()
    csv = tmp_path / "quotes.csv"
    bad = pl.concat([clean, clean.slice(0, 1)])
    bad.write_csv(csv)
    js = tmp_path / "report.json"
    # overrides follow PATH (argparse cannot take positionals after the options)
    rc = main(["validate", str(csv), "validation.min_rows=10", "--as-of", as_of, "--docs", str(docs),
               "--json", str(js), "--config", "test"])
    assert rc == 1
    out = capsys.readouterr().out
    assert "FATAL unique_keys: 2 rows" in out
    import json

    d = json.loads(js.read_text())
    assert d["success"] is False and d["rows"] == clean.height + 1
    assert {c["name"]: c["status"] for c in d["checks"]}["unique_keys"] == "fail"
    assert (docs / "index.html").exists()
    assert (docs / ".atft-data-docs").exists()  # marked as ours, so a rerun may replace it
    assert oct(docs.stat().st_mode & 0o777) == "0o755"  # served site: readable
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp sites left


def test_suite_file_is_consistent_with_python():
    """include/gx/atft_quotes.json: unique check names, known severities, every $PARAMETER
    supplied by suite_parameters, and every expectation builds as a GX 1.x expectation."""
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    from atft_core.validation.derive import derive
    from atft_core.validation.suite import load_suite_spec, resolved_expectations, suite_parameters

    spec = load_suite_spec()
    names = [e["meta"]["check"] for e in spec["expectations"]]
    assert len(names) == len(set(names))
    assert {e["meta"]["severity"] for e in spec["expectations"]} == {"fatal", "warning"}
    df = make_quotes(n_codes=5, n_days=3).with_columns(pl.lit("0050").alias("Sector33Code"),
                                                       pl.lit(1.0).alias("AdjustmentFactor"),
                                                       pl.lit(1.0).alias("TurnoverValue"))
    d = derive(df, CFG, last_day(df))
    exps = resolved_expectations(suite_parameters(CFG, d), True, True, d.frame.columns)
    assert [e["meta"]["check"] for e in exps] == names  # everything applies to a full frame
    assert "$PARAMETER" not in repr(exps)
    for e in exps:
        ExpectationConfiguration(**e).to_domain_obj()  # raises on unknown type / bad kwargs
    bounded = next(e for e in exps if e["meta"]["check"] == "daily_return_bounded")
    assert bounded["kwargs"]["max_value"] == CFG.max_abs_daily_return
    assert bounded["kwargs"]["mostly"] == pytest.approx(1 - CFG.max_bad_tick_fraction)


# --------------------------------------------------------------------------- issue 12, fault 1
def _tree(root):
    return sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() else b"")
                  for p in root.rglob("*"))


def test_docs_into_a_foreign_folder_is_refused_and_nothing_is_touched(clean, tmp_path, capsys,
                                                                        monkeypatch):
    """`--docs DIR` used to move DIR aside and delete it; `--docs .` wiped the working dir."""
    data = tmp_path / "quotes.parquet"
    clean.write_parquet(data)
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    (work / "src" / "keep.py").write_text("print('mine')\n")
    (work / "notes.md").write_text("# notes\n")
    before = _tree(work)
    monkeypatch.chdir(work)
    as_of = last_day(clean).isoformat()
    for docs in (".", str(work), "src"):
        rc = main(["validate", str(data), "--as-of", as_of, "--docs", docs, "--config", "test"])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("atft validate: Data Docs folder") and "not empty" in err
        assert err.count("\n") == 1
    assert _tree(work) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quotes.parquet", "work"]


def test_docs_folder_ownership_rules(tmp_path):
    from atft_core.validation.runner import DOCS_MARKER, DocsDirError, check_docs_dir

    check_docs_dir(tmp_path / "new")  # absent: fine
    (tmp_path / "empty").mkdir()
    check_docs_dir(tmp_path / "empty")
    ours = tmp_path / "ours"
    (ours / "static").mkdir(parents=True)
    (ours / "index.html").write_text("<html>")
    check_docs_dir(ours)  # a GX site written before the marker existed
    (ours / "extra.txt").write_text("x")
    with pytest.raises(DocsDirError, match="extra.txt"):
        check_docs_dir(ours)
    (ours / DOCS_MARKER).write_text("")
    check_docs_dir(ours)  # marked as ours: replaced as a whole
    (tmp_path / "file").write_text("x")
    with pytest.raises(DocsDirError, match="not a directory"):
        check_docs_dir(tmp_path / "file")
