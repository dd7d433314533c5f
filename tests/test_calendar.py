"""JPX trading days against known TSE closures (exchange_calendars XTKS)."""

import datetime as dt

import pytest

from atft_core import calendar as cal


def test_golden_week_2024():
    days = cal.trading_days("2024-04-26", "2024-05-08")
    assert [d.isoformat() for d in days] == [
        "2024-04-26", "2024-04-30", "2024-05-01", "2024-05-02", "2024-05-07", "2024-05-08"]


def test_year_end_closure():
    assert cal.next_trading_day("2024-12-30") == dt.date(2025, 1, 6)
    for d in ("2024-12-31", "2025-01-01", "2025-01-02", "2025-01-03"):
        assert not cal.is_trading_day(d)
    assert cal.previous_trading_day("2025-01-03") == dt.date(2024, 12, 30)


def test_weekend_and_national_holiday():
    assert cal.next_trading_day("2024-07-12") == dt.date(2024, 7, 16)  # Fri -> Marine Day Mon 15th
    assert not cal.is_trading_day("2024-07-15")
    assert cal.latest_expected_trading_day("2024-07-15") == dt.date(2024, 7, 12)
    assert cal.latest_expected_trading_day("2024-07-16") == dt.date(2024, 7, 16)


def test_arithmetic_roundtrip():
    d = dt.date(2019, 3, 1)
    assert cal.add_trading_days(cal.add_trading_days(d, 37), -37) == d
    days = cal.trading_days_from(d, 10)
    assert len(days) == 10 and days[0] == d and cal.add_trading_days(d, 9) == days[-1]
    assert all(a < b for a, b in zip(days, days[1:]))
    with pytest.raises(ValueError, match="not an XTKS trading day"):
        cal.add_trading_days("2019-03-02", 1)
    with pytest.raises(ValueError, match="outside the XTKS calendar"):
        cal.is_trading_day("1990-01-04")


def test_roughly_245_sessions_a_year():
    n = len(cal.trading_days("2019-01-01", "2019-12-31"))
    assert 240 <= n <= 247
