"""JPX trading days (exchange_calendars ``XTKS``), loaded lazily and cached.

Dates are ``datetime.date``; sessions are in Asia/Tokyo. ``exchange_calendars`` knows the TSE's
holidays (Golden Week, year-end Dec 31 - Jan 3, national holidays) for the years it covers.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np

CALENDAR_NAME = "XTKS"
TZ = "Asia/Tokyo"
ZONE = ZoneInfo(TZ)


@lru_cache(maxsize=1)
def _calendar():
    import exchange_calendars as xcals  # lazy: ~0.5 s import

    # start early enough for 2000s backtests; the end is the library default (~1 year ahead)
    return xcals.get_calendar(CALENDAR_NAME, start="2000-01-04")


@lru_cache(maxsize=1)
def _sessions() -> np.ndarray:
    """All XTKS sessions the calendar knows, as numpy datetime64[D] (sorted)."""
    return _calendar().sessions.values.astype("datetime64[D]")


def _d64(d: dt.date | str) -> np.datetime64:
    return np.datetime64(d if isinstance(d, str) else d.isoformat(), "D")


def _to_date(x: np.datetime64) -> dt.date:
    return dt.date.fromisoformat(str(x))


def bounds() -> tuple[dt.date, dt.date]:
    s = _sessions()
    return _to_date(s[0]), _to_date(s[-1])


def _check(d: np.datetime64) -> None:
    s = _sessions()
    if d < s[0] - 7 or d > s[-1] + 7:
        raise ValueError(f"date {d} is outside the XTKS calendar's range {s[0]}..{s[-1]}")


def is_trading_day(d: dt.date | str) -> bool:
    x = _d64(d)
    _check(x)
    s = _sessions()
    i = np.searchsorted(s, x)
    return bool(i < len(s) and s[i] == x)


def trading_days(start: dt.date | str, end: dt.date | str) -> list[dt.date]:
    """XTKS sessions in [start, end] inclusive."""
    a, b = _d64(start), _d64(end)
    _check(a)
    _check(b)
    s = _sessions()
    return [_to_date(x) for x in s[np.searchsorted(s, a): np.searchsorted(s, b, side="right")]]


def trading_days_from(start: dt.date | str, n: int) -> list[dt.date]:
    """The first ``n`` sessions on or after ``start``."""
    a = _d64(start)
    _check(a)
    s = _sessions()
    i = np.searchsorted(s, a)
    if i + n > len(s):
        raise ValueError(f"calendar has only {len(s) - i} sessions from {start}; asked for {n}")
    return [_to_date(x) for x in s[i: i + n]]


def previous_trading_day(d: dt.date | str, inclusive: bool = True) -> dt.date:
    """Latest session <= d (or < d when not inclusive)."""
    x = _d64(d)
    _check(x)
    s = _sessions()
    i = np.searchsorted(s, x, side="right" if inclusive else "left") - 1
    if i < 0:
        raise ValueError(f"no XTKS session before {d}")
    return _to_date(s[i])


def next_trading_day(d: dt.date | str, inclusive: bool = False) -> dt.date:
    """Earliest session > d (or >= d when inclusive)."""
    x = _d64(d)
    _check(x)
    s = _sessions()
    i = np.searchsorted(s, x, side="left" if inclusive else "right")
    if i >= len(s):
        raise ValueError(f"no XTKS session after {d} in the calendar")
    return _to_date(s[i])


def latest_expected_trading_day(as_of: dt.date | str) -> dt.date:
    """The latest session whose daily bar must exist when judged on ``as_of`` (end of day).

    Decision: a bar for day D is expected from D itself (the nightly run is after the close), so
    this is the latest session <= as_of.
    """
    return previous_trading_day(as_of, inclusive=True)


def add_trading_days(d: dt.date | str, n: int) -> dt.date:
    """Move n sessions from d (d must be a session); negative n goes back."""
    x = _d64(d)
    _check(x)
    s = _sessions()
    i = np.searchsorted(s, x)
    if i >= len(s) or s[i] != x:
        raise ValueError(f"{d} is not an XTKS trading day")
    j = i + n
    if not 0 <= j < len(s):
        raise ValueError(f"{n} sessions from {d} is outside the calendar")
    return _to_date(s[j])
