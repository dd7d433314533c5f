"""J-Quants API V2 daily feed: the official ``jquants-api-client`` ``ClientV2``, bounded.

What the package does here: x-api-key auth headers, the endpoint paths and query parameters,
``pagination_key`` paging (``/equities/bars/daily``, ``/equities/master``, ``/markets/calendar``)
and the records -> DataFrame step (``get_eq_bars_daily``, ``get_eq_master``, ``get_mkt_calendar``).

What it cannot do, checked in jquants-api-client 2.8.0 (``jquantsapi/client_v2.py``), and the
smallest wrapper added for it:
* Base URL: a class constant ``JQUANTS_API_BASE`` with no environment override -> we set it on
  the instance from ``JQUANTS_API_URL`` (default the official V2 base URL).
* Retries / deadline: its session mounts urllib3 ``Retry(total=3)`` on ``https://`` only
  (none for ``http://``), without backoff, and ``timeout=30`` is per socket read, so a trickling
  or 500-storming server holds a fetch for unbounded time -> :class:`DeadlineSession`, a
  ``requests.Session`` given to the client as its session: 429 / 5xx / connection errors are
  retried with exponential backoff (``Retry-After`` honoured) until ONE total deadline per
  trading day (bars, every page, and the master) or per calendar query; the body is read one
  socket read at a time with the deadline checked between reads, so a trickling server cannot
  hold it; 401/403 end at once ("the API key was refused"). The package's own retry adapter is
  never mounted (our session replaces the one it would build).
* Errors: an HTTP error message of the package is replaced by ours, which never contains the key
  (the key is only ever in the ``x-api-key`` header; URLs and messages are key-free).
* Schema: a missing field (``AdjC``, ``S33``, ...) or unparsable JSON is an error naming it.

Canonical mapping (issue 10 item 3; the same rule as ``atft ingest``): the canonical Code is the
4-character listing code: J-Quants' 5-character code whose last character is the check digit "0"
("72030" -> "7203", "130A0" -> "130A"); any other code is kept as it is. The store keeps the RAW
bar (O, H, L, C, Vo) with ``AdjustedThrough = Date`` and the day's ``AdjustmentFactor``; the
store's reader applies later split factors (:mod:`atft_core.data.store`), so a split that appears
on a later night re-adjusts the history without rewriting it. ``TurnoverValue`` = ``Va``;
``Sector33Code`` = ``S33`` and ``MarketCode`` = ``Mkt`` from ``/equities/master?date=D`` (the
master as of that day).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import time
from dataclasses import dataclass

import polars as pl
import requests

from atft_core.data.schema import canonical_code

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.jquants.com/v2"
AIRFLOW_CONN_ID = "jquants_default"
BARS_FIELDS = ("Date", "Code", "O", "H", "L", "C", "Vo", "Va", "AdjFactor", "AdjC")
MASTER_FIELDS = ("Code", "S33", "Mkt")
CALENDAR_FIELDS = ("Date", "HolDiv")
TRADING_HOLDIVS = {"1", "2"}  # 1 = business day, 2 = half-day session; 0/3 = closed
RETRY_STATUSES = {429, 500, 502, 503, 504}


class JQuantsError(RuntimeError):
    """The feed failed; the message says why in one line and never contains the API key."""


class KeyRefused(JQuantsError):
    pass


class MissingKey(JQuantsError):
    pass


class DeadlineExceeded(JQuantsError):
    pass


class SchemaChanged(JQuantsError):
    pass


# --------------------------------------------------------------------------- configuration
def resolve_api_key(api_key: str | None = None, *, airflow_conn_id: str | None = None) -> str:
    """``api_key`` if given, else the Airflow connection's password (inside a task), else
    ``JQUANTS_API_KEY``. The Airflow import happens only when a connection id is asked for."""
    if api_key:
        return api_key
    if airflow_conn_id:
        try:
            from airflow.sdk import BaseHook

            key = BaseHook.get_connection(airflow_conn_id).password
            if key:
                return key
        except Exception as err:  # not defined: fall back to the environment, say so
            log.info("Airflow connection %s not usable (%s); trying JQUANTS_API_KEY",
                     airflow_conn_id, type(err).__name__)
    key = os.environ.get("JQUANTS_API_KEY", "")
    if not key:
        raise MissingKey("no J-Quants API key: set the Airflow connection "
                           f"{AIRFLOW_CONN_ID!r} (password) or JQUANTS_API_KEY")
    return key


def base_url() -> str:
    return (os.environ.get("JQUANTS_API_URL") or DEFAULT_BASE_URL).rstrip("/")


# --------------------------------------------------------------------------- bounded transport
class DeadlineSession(requests.Session):
    """Every request made through this session shares one total deadline (``start()`` resets
    it). Retries 429/5xx/connection errors with exponential backoff inside the deadline."""

    def __init__(self, deadline_s: float = 120.0, backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                 read_timeout_s: float = 30.0, sleep=time.sleep) -> None:
        super().__init__()
        self.deadline_s, self.backoff_s, self.max_backoff_s = deadline_s, backoff_s, max_backoff_s
        self.read_timeout_s = read_timeout_s
        self._sleep = sleep
        self._until = time.monotonic() + deadline_s
        self.what = "request"
        self.retries = 0

    def start(self, what: str) -> None:
        self._until = time.monotonic() + self.deadline_s
        self.what = what

    def _left(self) -> float:
        return self._until - time.monotonic()

    def _read_body(self, resp) -> bytes:
        # read1: at most one socket read per call, so a server trickling bytes meets the deadline
        # check between reads (iter_content(n) would wait for n bytes, however slowly they come)
        body = []
        while chunk := resp.raw.read1(65_536, decode_content=True):
            body.append(chunk)
            if self._left() <= 0:
                resp.close()
                raise DeadlineExceeded(f"{self.what}: the response body did not arrive within "
                                       f"the {self.deadline_s:g} s deadline")
        return b"".join(body)

    def request(self, method, url, **kwargs):  # type: ignore[override]
        kwargs.pop("timeout", None)
        kwargs["stream"] = True
        attempt, last = 0, "no answer"
        while True:
            left = self._left()
            if left <= 0:
                raise DeadlineExceeded(f"{self.what}: no good answer within the {self.deadline_s:g} s "
                                       f"deadline ({attempt} attempt(s); last: {last})")
            try:
                resp = super().request(method, url, timeout=(min(5.0, left), min(self.read_timeout_s, left)),
                                       **kwargs)
                resp._content, resp._content_consumed = self._read_body(resp), True
            except requests.RequestException as err:
                status, last = None, type(err).__name__
            else:
                status = resp.status_code
                if status in (401, 403):
                    raise KeyRefused(f"{self.what}: the API key was refused (HTTP {status})")
                if status not in RETRY_STATUSES:
                    return resp
                last = f"HTTP {status}"
            attempt += 1
            self.retries += 1
            wait = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
            if status == 429 and resp.headers.get("Retry-After", "").isdigit():
                wait = min(float(resp.headers["Retry-After"]), self.max_backoff_s)
            wait = min(wait, max(self._left(), 0.0))
            log.info("%s: %s, retry %d in %.2f s", self.what, last, attempt, wait)
            self._sleep(wait)


# --------------------------------------------------------------------------- client
class JQuantsFeed:
    """Daily bars for one trading day as canonical store rows (see module docstring)."""

    def __init__(self, api_key: str, *, url: str | None = None, deadline_s: float = 120.0,
                 backoff_s: float = 0.5) -> None:
        from jquantsapi import ClientV2

        self.session = DeadlineSession(deadline_s=deadline_s, backoff_s=backoff_s)
        self.client = ClientV2(api_key=api_key)
        self.client.JQUANTS_API_BASE = (url or base_url()).rstrip("/")
        self.client._session = self.session  # the package's _request_session() returns it

    def _call(self, what: str, fn, *args, new_deadline: bool = True, **kwargs):
        if new_deadline:
            self.session.start(what)
        self.session.what = what
        try:
            return fn(*args, **kwargs)
        except JQuantsError:
            raise
        except requests.HTTPError as err:  # the package's _raise_for_status (4xx other than 401/403)
            code = err.response.status_code if err.response is not None else "?"
            raise JQuantsError(f"{what}: HTTP {code}") from None
        except (json.JSONDecodeError, requests.JSONDecodeError, ValueError) as err:
            raise SchemaChanged(f"{what}: malformed JSON in the response ({type(err).__name__})") from None
        except KeyError as err:  # pandas: "['S33'] not in index" when the package selects columns
            names = re.findall(r"'([^']+)'", str(err.args[0] if err.args else err)) or [str(err)]
            raise SchemaChanged(f"{what}: field(s) {', '.join(names)} missing from the response "
                                "(J-Quants schema change?)") from None

    def trading_days(self, start: dt.date, end: dt.date) -> list[dt.date]:
        """``/markets/calendar`` business days in [start, end], cross-checked with XTKS."""
        from atft_core import calendar

        df = self._call("/markets/calendar", self.client.get_mkt_calendar,
                        from_yyyymmdd=start.isoformat(), to_yyyymmdd=end.isoformat())
        _require(df, CALENDAR_FIELDS, "/markets/calendar")
        days = sorted(d.date() for d, h in zip(df["Date"], df["HolDiv"].astype(str))
                      if h in TRADING_HOLDIVS)
        xtks = calendar.trading_days(start, end)
        if days != xtks:
            only_jq = sorted(set(days) - set(xtks))[:5]
            only_x = sorted(set(xtks) - set(days))[:5]
            raise JQuantsError(f"/markets/calendar disagrees with XTKS (exchange_calendars) for "
                               f"{start}..{end}: J-Quants only {only_jq}, XTKS only {only_x}")
        return days

    def fetch_day(self, day: dt.date) -> pl.DataFrame:
        """All bars of ``day`` (every page) joined with the master as of ``day``."""
        bars = self._call(f"/equities/bars/daily date={day}", self.client.get_eq_bars_daily,
                          date_yyyymmdd=day.isoformat())
        if bars.empty:
            raise JQuantsError(f"/equities/bars/daily date={day}: no bars (not published yet?)")
        _require(bars, BARS_FIELDS, "/equities/bars/daily")
        master = self._call(f"/equities/master date={day}", self.client.get_eq_master,
                            date=day.isoformat(), new_deadline=False)  # one deadline per day
        _require(master, MASTER_FIELDS, "/equities/master")
        return to_canonical(bars, master, day)


def _require(df, fields: tuple[str, ...], endpoint: str) -> None:
    missing = [f for f in fields if f not in df.columns]
    if missing:
        raise SchemaChanged(f"{endpoint}: field(s) {', '.join(missing)} missing from the response "
                            "(J-Quants schema change?)")


def to_canonical(bars, master, day: dt.date) -> pl.DataFrame:
    """pandas bars + master (package output) -> canonical store rows for ``day``."""
    b = pl.from_pandas(bars[list(BARS_FIELDS)].astype({"Code": str}))
    m = pl.from_pandas(master[list(MASTER_FIELDS)].astype(str)).with_columns(
        canonical_code(pl.col("Code")).alias("Code"))
    nums = {"O": "Open", "H": "High", "L": "Low", "C": "Close", "Vo": "Volume",
            "Va": "TurnoverValue", "AdjFactor": "AdjustmentFactor"}
    try:
        b = b.with_columns([pl.col(k).cast(pl.Float64, strict=True).alias(v) for k, v in nums.items()])
    except pl.exceptions.PolarsError as err:
        raise SchemaChanged(f"/equities/bars/daily: non-numeric price/volume field ({_first(err)})") from None
    dates = b["Date"].cast(pl.Date)
    if dates.null_count() or (dates != day).any():
        raise SchemaChanged(f"/equities/bars/daily date={day}: field Date missing or not {day}")
    out = (
        b.with_columns(dates.alias("Date"), canonical_code(pl.col("Code")).alias("Code"))
        .filter(pl.col("Close").is_not_null())  # no trade that day: J-Quants sends null prices
        .join(m.rename({"S33": "Sector33Code", "Mkt": "MarketCode"}).unique("Code"),
              on="Code", how="left")
        .with_columns(pl.col("Date").alias("AdjustedThrough"),
                      pl.col("AdjustmentFactor").fill_null(1.0))
        .select("Date", "Code", *nums.values(), "Sector33Code", "MarketCode", "AdjustedThrough")
        .sort("Code")
    )
    dup = out.filter(pl.col("Code").is_duplicated())
    if dup.height:
        raise SchemaChanged(f"/equities/bars/daily date={day}: code {dup['Code'][0]} appears twice")
    return out


def _first(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


# --------------------------------------------------------------------------- fetch driver
@dataclass(frozen=True)
class FetchSummary:
    days: int
    fetched: int
    skipped: int
    rows: int
    seconds: float
    retries: int

    def lines(self) -> list[str]:
        rate = self.rows / self.seconds if self.seconds > 0 else float("nan")
        return [f"trading days: {self.days}  fetched: {self.fetched}  skipped (complete): {self.skipped}",
                f"rows: {self.rows:,}  in {self.seconds:.2f} s  ({rate:,.0f} rows/s)  retries: {self.retries}"]


def fetch_range(feed: JQuantsFeed, start: dt.date, end: dt.date, out: str, *,
                refetch: bool = False, progress: bool = True) -> FetchSummary:
    """One request series per trading day into the store ``out``; complete days are skipped.

    A day is written only after all its pages arrived, as one atomic object, so an interrupted
    fetch leaves the day whole or absent, and the next run fetches exactly the missing days.
    "Complete" means the day's partition exists: a day first filled by a partial ``atft ingest``
    counts as complete too (``refetch=True`` replaces it with the feed's whole day).
    """
    from tqdm.auto import tqdm

    from atft_core.data.store import stored_days, write_day

    t0 = time.perf_counter()
    days = feed.trading_days(start, end)
    have = set() if refetch else set(stored_days(out))
    todo = [d for d in days if d not in have]
    rows = 0
    for day in tqdm(todo, desc="J-Quants days", unit="day", disable=not progress):
        frame = feed.fetch_day(day)
        write_day(frame, out, day)
        rows += frame.height
    return FetchSummary(days=len(days), fetched=len(todo), skipped=len(days) - len(todo),
                        rows=rows, seconds=time.perf_counter() - t0, retries=feed.session.retries)


def fetch_one_day(feed: JQuantsFeed, day: dt.date) -> pl.DataFrame:
    """The DAG's fetch step: ``day`` must be an XTKS / J-Quants trading day."""
    if day not in feed.trading_days(day, day):
        raise JQuantsError(f"{day} is not a trading day")
    return feed.fetch_day(day)
