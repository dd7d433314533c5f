"""JPX trading-day timetable (plugins/jpx_timetable.py): intervals, holidays, catchup, manual runs.

Reference days are the TSE's published closures (weekends, Golden Week, year-end Dec 31 - Jan 3,
national holidays); the "latest closed session" reference for catchup=False is computed straight
from exchange_calendars' XTKS sessions, independently of atft_core.calendar.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tt_mod(tmp_path_factory):
    """The plugin module, imported with a throw-away AIRFLOW_HOME and the repo's plugins on sys.path."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
        mp.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        mp.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
        mp.setenv("AIRFLOW__CORE__PLUGINS_FOLDER", str(REPO / "plugins"))
        mp.syspath_prepend(str(REPO / "plugins"))
        import jpx_timetable

        yield jpx_timetable


@pytest.fixture(scope="module")
def tt(tt_mod):
    return tt_mod.JPXTradingDayTimetable()


def jst(y, m, d, hh=0, mm=0):
    import pendulum

    return pendulum.datetime(y, m, d, hh, mm, tz="Asia/Tokyo")


def restriction(earliest, latest=None, catchup=True):
    from airflow.timetables.base import TimeRestriction

    return TimeRestriction(earliest=earliest, latest=latest, catchup=catchup)


def next_after(tt, day: dt.date, **kw):
    """The run scheduled after the run for trading day ``day`` (catchup on, start long ago)."""
    info = tt.next_dagrun_info(last_automated_data_interval=tt.interval_for(day),
                               restriction=restriction(jst(2000, 1, 4), **kw))
    return info


def test_interval_is_previous_close_to_this_close_in_tokyo(tt):
    iv = tt.interval_for(dt.date(2024, 5, 8))  # Wednesday
    assert iv.start == jst(2024, 5, 7, 18) and iv.end == jst(2024, 5, 8, 18)
    assert iv.end.hour == 9 and iv.end.tzinfo is not None  # 18:00 JST == 09:00 UTC
    assert tt.trading_day_of(iv.end) == dt.date(2024, 5, 8)


def test_next_run_after_friday_is_monday_and_covers_the_weekend(tt):
    info = next_after(tt, dt.date(2024, 5, 10))  # Friday
    assert tt.trading_day_of(info.data_interval.end) == dt.date(2024, 5, 13)  # Monday
    assert info.data_interval.start == jst(2024, 5, 10, 18)
    assert info.run_after == info.data_interval.end == jst(2024, 5, 13, 18)


@pytest.mark.parametrize(
    ("last_day", "next_day", "why"),
    [
        (dt.date(2024, 5, 2), dt.date(2024, 5, 7), "Golden Week 2024: May 3-6 closed"),
        (dt.date(2023, 5, 2), dt.date(2023, 5, 8), "Golden Week 2023: May 3-7 closed"),
        (dt.date(2024, 12, 30), dt.date(2025, 1, 6), "year-end: Dec 31 - Jan 3 + weekend"),
        (dt.date(2023, 12, 29), dt.date(2024, 1, 4), "year-end: Dec 30 - Jan 3"),
        (dt.date(2024, 2, 9), dt.date(2024, 2, 13), "Feb 12 2024: substitute holiday"),
        (dt.date(2024, 7, 12), dt.date(2024, 7, 16), "Jul 15 2024: Marine Day"),
        (dt.date(2024, 9, 20), dt.date(2024, 9, 24), "Sep 23 2024: substitute Autumnal Equinox"),
    ],
)
def test_closures_skip_to_next_trading_day(tt, last_day, next_day, why):
    info = next_after(tt, last_day)
    assert tt.trading_day_of(info.data_interval.end) == next_day, why
    # the whole closure belongs to the first session after it
    assert info.data_interval.start == tt.close_time(last_day)


def test_consecutive_runs_tile_time_without_gaps_or_non_trading_days(tt):
    import exchange_calendars as xcals

    sessions = {d.date() for d in xcals.get_calendar("XTKS").sessions_in_range("2024-01-01", "2024-12-31")}
    info = tt.next_dagrun_info(last_automated_data_interval=None,
                               restriction=restriction(jst(2024, 1, 1)))
    days = []
    while info.data_interval.end < jst(2025, 1, 1):
        days.append(tt.trading_day_of(info.data_interval.end))
        nxt = tt.next_dagrun_info(last_automated_data_interval=info.data_interval,
                                  restriction=restriction(jst(2024, 1, 1)))
        assert nxt.data_interval.start == info.data_interval.end  # contiguous
        info = nxt
    assert days == sorted(sessions)  # exactly one run per 2024 session, none on closures
    assert len(days) == 245


@pytest.mark.parametrize(
    ("run_after", "day"),
    [
        (jst(2024, 5, 11, 10), dt.date(2024, 5, 10)),  # Saturday -> Friday's session
        (jst(2024, 5, 14, 10), dt.date(2024, 5, 13)),  # Tuesday morning -> Monday
        (jst(2024, 5, 14, 17, 59), dt.date(2024, 5, 13)),
        (jst(2024, 5, 14, 18, 0), dt.date(2024, 5, 14)),  # at the close time: that day
        (jst(2024, 5, 5, 12), dt.date(2024, 5, 2)),  # inside Golden Week
        (jst(2025, 1, 2, 12), dt.date(2024, 12, 30)),  # inside the year-end closure
    ],
)
def test_manual_run_gets_latest_closed_session(tt, run_after, day):
    iv = tt.infer_manual_data_interval(run_after=run_after)
    assert tt.trading_day_of(iv.end) == day
    assert iv == tt.interval_for(day)


def test_first_run_with_catchup_starts_at_start_date(tt):
    first = tt.next_dagrun_info(last_automated_data_interval=None,
                                restriction=restriction(jst(2024, 5, 1)))
    assert tt.trading_day_of(first.data_interval.end) == dt.date(2024, 5, 1)
    # a start_date inside Golden Week: the first session after it
    first = tt.next_dagrun_info(last_automated_data_interval=None,
                                restriction=restriction(jst(2024, 5, 3)))
    assert tt.trading_day_of(first.data_interval.end) == dt.date(2024, 5, 7)
    # start_date after the close time: that day's session is excluded
    first = tt.next_dagrun_info(last_automated_data_interval=None,
                                restriction=restriction(jst(2024, 5, 7, 18, 1)))
    assert tt.trading_day_of(first.data_interval.end) == dt.date(2024, 5, 8)


def test_no_start_date_and_end_date_stop_scheduling(tt):
    assert tt.next_dagrun_info(last_automated_data_interval=None,
                               restriction=restriction(None)) is None
    info = tt.next_dagrun_info(last_automated_data_interval=tt.interval_for(dt.date(2024, 5, 10)),
                               restriction=restriction(jst(2024, 1, 4), latest=jst(2024, 5, 13, 17)))
    assert info is None  # Monday's close is after end_date
    info = tt.next_dagrun_info(last_automated_data_interval=tt.interval_for(dt.date(2024, 5, 10)),
                               restriction=restriction(jst(2024, 1, 4), latest=jst(2024, 5, 13, 18)))
    assert tt.trading_day_of(info.data_interval.end) == dt.date(2024, 5, 13)


def _latest_closed_session_reference(at_hour=18):
    """Independent reference: the newest XTKS session whose 18:00 JST is not in the future."""
    import exchange_calendars as xcals
    import pendulum

    now = pendulum.now("Asia/Tokyo")
    sessions = [d.date() for d in xcals.get_calendar("XTKS").sessions_in_range(
        now.subtract(days=30).date().isoformat(), now.date().isoformat())]
    return max(d for d in sessions
               if pendulum.datetime(d.year, d.month, d.day, at_hour, tz="Asia/Tokyo") <= now)


def test_catchup_false_skips_the_backlog_to_the_latest_closed_session(tt):
    expected = _latest_closed_session_reference()
    # first run ever, start_date long ago
    first = tt.next_dagrun_info(last_automated_data_interval=None,
                                restriction=restriction(jst(2024, 1, 4), catchup=False))
    # previous run months ago: no back-fill either
    later = tt.next_dagrun_info(last_automated_data_interval=tt.interval_for(dt.date(2024, 5, 10)),
                                restriction=restriction(jst(2024, 1, 4), catchup=False))
    if _latest_closed_session_reference() != expected:  # crossed 18:00 JST mid-test: redo
        expected = _latest_closed_session_reference()
    assert tt.trading_day_of(first.data_interval.end) == expected
    assert tt.trading_day_of(later.data_interval.end) == expected
    # catchup=True instead resumes right after the previous run
    resumed = next_after(tt, dt.date(2024, 5, 10))
    assert tt.trading_day_of(resumed.data_interval.end) == dt.date(2024, 5, 13)


def test_catchup_false_never_goes_back_before_the_last_run_or_start_date(tt):
    import pendulum

    soon = pendulum.now("Asia/Tokyo").add(days=20)
    info = tt.next_dagrun_info(last_automated_data_interval=None,
                               restriction=restriction(soon, catchup=False))
    assert info.data_interval.end >= soon  # a future start_date wins over "latest closed"
    assert info.run_after == info.data_interval.end


def test_beyond_the_calendar_schedules_nothing_and_says_why(tt_mod, tt, caplog):
    from atft_core import calendar

    last = calendar.bounds()[1]
    with caplog.at_level(logging.ERROR, logger=tt_mod.__name__):
        info = tt.next_dagrun_info(last_automated_data_interval=tt.interval_for(last),
                                   restriction=restriction(jst(2024, 1, 4)))
    assert info is None
    assert "cannot schedule" in caplog.text and "XTKS" in caplog.text


def test_configurable_time_serialize_roundtrip_and_summary(tt_mod):
    T = tt_mod.JPXTradingDayTimetable
    t = T(at="17:30")
    assert t.close_time(dt.date(2024, 5, 8)) == jst(2024, 5, 8, 17, 30)
    data = t.serialize()
    assert data == {"at": "17:30"}
    back = T.deserialize(data)
    assert back == t and back.serialize() == data and back != T()
    assert T.deserialize({}) == T()  # default 18:00
    assert t.summary == "JPX trading days 17:30 JST"
    assert "XTKS" in t.description and "Asia/Tokyo" in t.description
    for bad in ("25:00", "18", "6pm", "18:60"):
        with pytest.raises(ValueError, match="HH:MM"):
            T(at=bad)


def test_plugin_registers_the_timetable(tt_mod):
    assert tt_mod.JPXTradingDayTimetable in tt_mod.JPXTimetablePlugin.timetables
    assert "jpx_timetable" in sys.modules


# --------------------------------------------------------------------------- atft_hpo (fault 17)
@pytest.fixture(scope="module")
def hpo_timetable(tt_mod):
    """atft_hpo's timetable as the scheduler and the UI see it (after serialization)."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    bag = DagBag(dag_folder=str(REPO / "dags" / "atft_hpo.py"))
    assert bag.import_errors == {}
    dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(bag.dags["atft_hpo"]))
    return dag.timetable


def _frozen_now(monkeypatch, when):
    import airflow.timetables.trigger as trigger

    monkeypatch.setattr(trigger, "utcnow", lambda: when.in_timezone("UTC"))


def test_hpo_schedule_shows_its_timezone(hpo_timetable):
    """Fault 17: the UI showed "0 3 * * 6" with no timezone."""
    assert hpo_timetable.summary == "0 3 * * 6 JST"
    assert hpo_timetable.description == "At 03:00, only on Saturday (Asia/Tokyo, JST)"
    assert type(hpo_timetable).__name__ == "TokyoCronTimetable"


def test_hpo_unpaused_midweek_waits_for_saturday(hpo_timetable, monkeypatch):
    """Fault 17: unpaused on a Wednesday, the first run was last Saturday's (in the past)."""
    from airflow.timetables.base import DataInterval

    start = jst(2024, 1, 6)  # the DAG's start_date
    _frozen_now(monkeypatch, jst(2026, 12, 2, 10))  # Wednesday 10:00 JST
    first = hpo_timetable.next_dagrun_info(last_automated_data_interval=None,
                                           restriction=restriction(start, catchup=False))
    assert first.run_after == jst(2026, 12, 5, 3)  # the coming Saturday 03:00 JST
    weeks_ago = DataInterval(jst(2026, 11, 7, 3), jst(2026, 11, 7, 3))  # paused for weeks
    again = hpo_timetable.next_dagrun_info(last_automated_data_interval=weeks_ago,
                                           restriction=restriction(start, catchup=False))
    assert again.run_after == jst(2026, 12, 5, 3)
    # a scheduler back 30 minutes late still runs that Saturday's run (within the grace)
    _frozen_now(monkeypatch, jst(2026, 12, 5, 3, 30))
    late = hpo_timetable.next_dagrun_info(
        last_automated_data_interval=DataInterval(jst(2026, 11, 28, 3), jst(2026, 11, 28, 3)),
        restriction=restriction(start, catchup=False))
    assert late.run_after == jst(2026, 12, 5, 3)
    # catchup=True keeps Airflow's behaviour: the week after the last run
    caught = hpo_timetable.next_dagrun_info(last_automated_data_interval=weeks_ago,
                                            restriction=restriction(start, catchup=True))
    assert caught.run_after == jst(2026, 11, 14, 3)


def test_tokyo_cron_timetable_is_registered_and_round_trips(tt_mod):
    T = tt_mod.TokyoCronTimetable
    assert T in tt_mod.JPXTimetablePlugin.timetables
    t = T("30 18 * * 1-5")
    back = T.deserialize(t.serialize())
    assert type(back) is T and back.serialize() == t.serialize() and back.summary == "30 18 * * 1-5 JST"
