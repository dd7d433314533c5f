"""J-Quants V2 feed against a local V2-protocol server (tests/jquants_server.py, 127.0.0.1)."""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from jquants_server import API_KEY, Market, serve

from atft_core import calendar
from atft_core.cli import main
from atft_core.data import jquants
from atft_core.data.jquants import JQuantsFeed, fetch_range
from atft_core.data.store import read_quotes, stored_days

pytest_plugins = ["s3_server"]

DAYS = calendar.trading_days(dt.date(2024, 1, 4), dt.date(2024, 3, 29))
CODES = [f"{1300 + j}0" for j in range(120)] + ["130A0", "25935"]  # alphanumeric + preferred


@pytest.fixture
def server():
    with serve(Market(codes=list(CODES), days=list(DAYS)), page_size=50) as srv:
        yield srv


@pytest.fixture
def env(monkeypatch, server):
    monkeypatch.setenv("JQUANTS_API_URL", server.url)
    monkeypatch.setenv("JQUANTS_API_KEY", API_KEY)
    monkeypatch.setenv("HOME", str(Path(os.environ.get("TMPDIR", "/tmp"))))  # no ~/.jquants-api toml


def _feed(**kw) -> JQuantsFeed:
    return JQuantsFeed(API_KEY, backoff_s=0.01, **kw)


def test_pagination_mapping_and_master(env, server):
    day = DAYS[3]
    got = _feed().fetch_day(day)
    bars = [r for r in server.requests if r.startswith("/v2/equities/bars/daily")]
    assert bars == [f"/v2/equities/bars/daily?date={day}",
                    f"/v2/equities/bars/daily?date={day}&pagination_key=1",
                    f"/v2/equities/bars/daily?date={day}&pagination_key=2"]
    assert got.height == len(CODES)
    # canonical code: the check digit "0" dropped, other 5-character codes kept
    assert {"1300", "1419", "130A", "25935"} <= set(got["Code"])
    assert "13000" not in set(got["Code"])
    row = got.filter(pl.col("Code") == "1305").row(0, named=True)
    c = server.market.raw_close("13050", day)
    assert (row["Close"], row["Open"], row["Volume"], row["TurnoverValue"]) == (c, c - 1, 10_500.0, c * 10_500.0)
    assert row["Sector33Code"] == "0050" and row["MarketCode"] == "0111"
    assert row["AdjustedThrough"] == day and row["AdjustmentFactor"] == 1.0
    # every request carried the key in the x-api-key header only
    assert all(h.get("x-api-key") == API_KEY for h in server.headers_seen)
    assert not any(API_KEY in r for r in server.requests)


def test_429_then_success_retries_once(env, server):
    server.fail_next = [429]
    feed = _feed()
    got = feed.fetch_day(DAYS[0])
    assert got.height == len(CODES) and feed.session.retries == 1


def test_500_storm_ends_at_the_deadline_and_writes_nothing(env, server, tmp_path, capsys):
    server.always = 500
    t0 = time.monotonic()
    rc = main(["fetch", "jquants", "--start", str(DAYS[0]), "--end", str(DAYS[1]),
               "--out", str(tmp_path / "store"), "--deadline", "1.5", "--no-progress"])
    took = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("atft fetch: /markets/calendar: no good answer within the 1.5 s deadline")
    assert "last: HTTP 500" in err and err.count("\n") == 1
    assert 1.4 < took < 6.0
    assert not (tmp_path / "store").exists()
    assert len(server.requests) >= 2  # it did retry (backoff 0.5 s, 1 s, ...) inside the deadline


def test_trickling_body_ends_at_the_deadline(env, server):
    server.trickle_s = 0.05  # every byte arrives in time for a per-read timeout, never in total
    t0 = time.monotonic()
    with pytest.raises(jquants.DeadlineExceeded, match="body did not arrive within the 1 s deadline"):
        JQuantsFeed(API_KEY, deadline_s=1.0).trading_days(DAYS[0], DAYS[5])
    assert time.monotonic() - t0 < 3.0


def test_401_fails_at_once_and_never_shows_the_key(env, server, tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setenv("JQUANTS_API_KEY", "wrong-key-SECRET-1")
    caplog.set_level(logging.DEBUG)
    rc = main(["fetch", "jquants", "--start", str(DAYS[0]), "--end", str(DAYS[0]),
               "--out", str(tmp_path / "store"), "--no-progress"])
    out = capsys.readouterr()
    assert rc == 1
    assert out.err == "atft fetch: /markets/calendar: the API key was refused (HTTP 401)\n"
    assert len(server.requests) == 1  # no retry of a refused key
    assert not (tmp_path / "store").exists()
    for text in (out.out, out.err, caplog.text):
        assert "SECRET" not in text


def test_missing_field_and_malformed_json_are_named(env, server):
    server.drop_field = "AdjC"
    with pytest.raises(jquants.SchemaChanged, match=r"/equities/bars/daily: field\(s\) AdjC missing"):
        _feed().fetch_day(DAYS[0])
    server.drop_field = None
    server.malformed = True
    with pytest.raises(jquants.SchemaChanged, match="malformed JSON"):
        _feed().fetch_day(DAYS[0])


def test_no_key_is_a_clear_usage_error(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("JQUANTS_API_KEY", raising=False)
    with pytest.raises(jquants.MissingKey, match="jquants_default.*JQUANTS_API_KEY"):
        jquants.resolve_api_key()
    assert main(["fetch", "jquants", "--start", "2024-01-04", "--end", "2024-01-05",
                 "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.startswith("atft fetch: no J-Quants API key")
    assert jquants.resolve_api_key("explicit") == "explicit"


def test_calendar_disagreeing_with_xtks_is_refused(env, server, monkeypatch):
    real = server.answer

    def holiday_on_day_2(path, query, key):
        status, body, delay = real(path, query, key)
        if path == "/v2/markets/calendar":
            body = body.replace(f'"Date": "{DAYS[2]}", "HolDiv": "1"'.encode(),
                                f'"Date": "{DAYS[2]}", "HolDiv": "0"'.encode())
        return status, body, delay

    monkeypatch.setattr(server, "answer", holiday_on_day_2)
    with pytest.raises(jquants.JQuantsError, match=rf"disagrees with XTKS.*XTKS only \[datetime.date\({DAYS[2].year}"):
        _feed().trading_days(DAYS[0], DAYS[5])


def test_resumable_and_idempotent_byte_identical(env, server, tmp_path):
    store = tmp_path / "store"
    first = fetch_range(_feed(), DAYS[0], DAYS[4], str(store), progress=False)
    assert (first.days, first.fetched, first.rows) == (5, 5, 5 * len(CODES))
    before = {p: p.read_bytes() for p in store.rglob("*.parquet")}
    n = len(server.requests)
    again = fetch_range(_feed(), DAYS[0], DAYS[4], str(store), progress=False)
    assert (again.fetched, again.skipped) == (0, 5)
    assert len(server.requests) == n + 1  # only the calendar was asked
    refetch = fetch_range(_feed(), DAYS[0], DAYS[4], str(store), refetch=True, progress=False)
    assert refetch.fetched == 5
    assert {p: p.read_bytes() for p in store.rglob("*.parquet")} == before


def _nightly(server, store: Path, days: list[dt.date]) -> None:
    for day in days:  # what the nightly feed sees: each day once, on that day
        server.market.published_through = day
        fetch_range(_feed(), day, day, str(store), progress=False)


@pytest.mark.slow  # two GX validations
def test_split_between_two_nightly_fetches_is_continuous(env, server, tmp_path):
    from atft_core import features
    from atft_core.config import load_config

    split_day = DAYS[40]
    server.market.splits[("13070", split_day)] = 0.5  # 2:1 split
    server.market.splits[("13080", split_day)] = 1 / 3  # 3:1: -67 % raw, a "bad tick" if unadjusted
    store = tmp_path / "store"
    _nightly(server, store, DAYS[:40])  # history fetched before the split
    before = read_quotes(store, codes=["1307"])
    _nightly(server, store, DAYS[40:45])  # the split day and after
    got = read_quotes(store, codes=["1307"])
    close = dict(zip(got["Date"], got["Close"]))
    # reference: the adjusted close J-Quants serves after the split (AdjC), for every day
    server.market.published_through = DAYS[44]
    ref = {d: r["AdjC"] for d in DAYS[:45] for r in server.market.bars(d) if r["Code"] == "13070"}
    assert all(math.isclose(close[d], ref[d], rel_tol=1e-12) for d in DAYS[:45])
    jump = close[split_day] / close[DAYS[39]] - 1
    assert abs(jump) < 0.02, jump  # raw bars would jump -50 %
    assert math.isclose(close[DAYS[39]], before["Close"][-1] * 0.5)
    vol = dict(zip(got["Date"], got["Volume"]))
    assert vol[DAYS[39]] == 2 * 10_700.0  # volume adjusted the other way
    # a window ending before the split is point in time: no factor from the future
    assert read_quotes(store, end=DAYS[39], codes=["1307"]).equals(before)
    # features of the split stock show no -50 % return on the split day
    cfg = load_config("test")
    feats = features.build_features(read_quotes(store), cfg).filter(pl.col("Code") == "1307")
    ret = dict(zip(feats["Date"], feats["ret_1d_raw"]))
    assert abs(ret[split_day]) < 0.02
    assert feats["ret_1d_raw"].drop_nulls().abs().max() < 0.05
    # validation judges what the pipeline reads (adjusted): no bad tick; the raw files would have one
    from atft_core.validation import validate_quotes

    adjusted = validate_quotes(read_quotes(store), cfg.validation, start=DAYS[0], end=DAYS[44])
    assert adjusted.bad_ticks.height == 0
    raw = validate_quotes(str(store), cfg.validation, start=DAYS[0], end=DAYS[44])
    assert raw.bad_ticks.select("Date", "Code").rows() == [(split_day, "1308")]
    # `atft validate STORE` judges the same adjusted view as the pipeline (it read the raw files)
    import json

    from atft_core.cli import main as atft

    out = tmp_path / "v.json"
    atft(["validate", str(store), "--start", str(DAYS[0]), "--end", str(DAYS[44]), "--as-of",
          str(DAYS[44]), "--docs", str(tmp_path / "docs"), "--json", str(out)])
    assert json.loads(out.read_text())["bad_ticks_count"] == 0
    # re-running the split day (refetch) cannot apply the factor twice
    fetch_range(_feed(), split_day, split_day, str(store), refetch=True, progress=False)
    assert read_quotes(store, codes=["1307"]).equals(got)


def _cli_fetch(server, store: Path, start: dt.date, end: dt.date) -> subprocess.Popen:
    env = dict(os.environ, JQUANTS_API_URL=server.url, JQUANTS_API_KEY=API_KEY)
    return subprocess.Popen(
        [sys.executable, "-m", "atft_core.cli", "fetch", "jquants", "--start", str(start),
         "--end", str(end), "--out", str(store), "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_mid_day_leaves_the_day_whole_or_absent(server, tmp_path):
    store = tmp_path / "store"
    proc = _cli_fetch(server, store, DAYS[0], DAYS[1])
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    done = {p: p.read_bytes() for p in store.rglob("*.parquet")}
    server.page_delay = 30.0  # page 2 of every day stalls: the kill lands mid-day
    proc = _cli_fetch(server, store, DAYS[0], DAYS[3])
    try:
        deadline = time.monotonic() + 30
        while not any(f"date={DAYS[2]}&pagination_key=1" in r for r in server.requests):
            assert time.monotonic() < deadline and proc.poll() is None, "fetch never reached page 2"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert stored_days(store) == DAYS[:2]  # the interrupted day is absent, the others intact
    assert {p: p.read_bytes() for p in store.rglob("*.parquet")} == done
    assert read_quotes(store).height == 2 * len(CODES)
    server.page_delay = 0.0
    proc = _cli_fetch(server, store, DAYS[0], DAYS[3])  # resume: exactly the missing days
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "fetched: 2  skipped (complete): 2" in out
    assert stored_days(store) == DAYS[:4]


@pytest.mark.integration
def test_same_reader_and_writer_on_s3(env, server, tmp_path, s3_bucket, s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    uri = f"s3://{s3_bucket}/quotes"
    fetch_range(_feed(), DAYS[0], DAYS[2], uri, progress=False)
    fetch_range(_feed(), DAYS[0], DAYS[2], str(tmp_path / "local"), progress=False)
    assert stored_days(uri) == DAYS[:3]
    assert read_quotes(uri).equals(read_quotes(tmp_path / "local"))
    assert read_quotes(uri, DAYS[1], DAYS[1]).height == len(CODES)
    again = fetch_range(_feed(), DAYS[0], DAYS[3], uri, progress=False)
    assert (again.fetched, again.skipped) == (1, 3)
