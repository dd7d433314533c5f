"""JPX trading-day timetable: one DAG run per Tokyo Stock Exchange (XTKS) session, after the close.

Semantics (decided here; SPEC 10 only says "JPX trading-day timetable at e.g. 18:00 Asia/Tokyo"):

* A run **for trading day D** has the data interval
  ``[previous trading day at HH:MM JST, D at HH:MM JST)`` and may start at ``D HH:MM JST``
  (``run_after`` = interval end). Default ``HH:MM`` is ``18:00``: the close is 15:30 and vendors
  publish the daily bar in the evening, so D's bar is expected by then.
  Consequences: Monday's run covers Friday 18:00 -> Monday 18:00 (the weekend belongs to it);
  the first session after Golden Week or the year-end closure (Dec 31 - Jan 3) covers the whole
  closure; no run is ever created for a non-trading day.
* The trading day of a run is ``data_interval_end`` read in Asia/Tokyo (tasks call it ``as_of``).
  Paths keyed by it make every task idempotent for its interval.
* **Range**: D is scheduled iff ``start_date <= D HH:MM JST`` (and ``<= end_date`` when set),
  so ``start_date=2024-05-07`` makes May 7 the first run even though its interval starts at the
  previous close (May 2, before Golden Week).
* **catchup=False** (the retrain DAG): the next run is the latest session whose close time has
  passed (it runs at once), never one before the last scheduled run; nothing in between is
  back-filled. **catchup=True**: every session from ``start_date`` on, in order.
* **Manual runs** (UI trigger, ``airflow dags test``) at ``run_after`` get the interval of the
  latest session whose close time is ``<= run_after``: a trigger on Saturday retrains on Friday's
  data; a trigger on Tuesday 10:00 JST on Monday's.
* Days come from :mod:`atft_core.calendar` (exchange_calendars ``XTKS``), imported on first use
  and cached there, so registering the plugin costs no calendar load. Asking for a date beyond
  the calendar's range (about a year ahead of the installed exchange_calendars) logs an error
  and schedules nothing rather than guessing holidays; upgrade exchange_calendars to extend it.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import TYPE_CHECKING, Any

import pendulum
from airflow.plugins_manager import AirflowPlugin
from airflow.timetables.base import DagRunInfo, DataInterval, Timetable
from airflow.timetables.trigger import CronTriggerTimetable

if TYPE_CHECKING:
    from airflow.timetables.base import TimeRestriction
    from pendulum import DateTime

log = logging.getLogger(__name__)

TOKYO = pendulum.timezone("Asia/Tokyo")
_AT_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def _cal():
    """atft_core.calendar, imported lazily (exchange_calendars loads on first date query)."""
    from atft_core import calendar

    return calendar


class JPXTradingDayTimetable(Timetable):
    """Run once per XTKS trading day at ``at`` (``"HH:MM"``, Asia/Tokyo); see module docstring.

    Args:
        at: wall-clock time in Asia/Tokyo when a session's data is complete (default "18:00").
    """

    periodic = True
    can_be_scheduled = True

    def __init__(self, at: str = "18:00") -> None:
        m = _AT_RE.match(at)
        if m is None:
            raise ValueError(f"JPXTradingDayTimetable: at={at!r} is not a 24h 'HH:MM' time")
        self.at = at
        self._time = dt.time(int(m.group(1)), int(m.group(2)))
        self.description = f"after each JPX (XTKS) trading day at {at} Asia/Tokyo"

    # ------------------------------------------------------------------ session <-> instants
    def close_time(self, day: dt.date) -> DateTime:
        """``day`` at ``at`` in Asia/Tokyo, as a UTC instant (a run's interval end)."""
        t = self._time
        return pendulum.datetime(day.year, day.month, day.day, t.hour, t.minute, tz=TOKYO).in_timezone("UTC")

    def interval_for(self, day: dt.date) -> DataInterval:
        """Data interval of the run for trading day ``day``: [previous session close, day close)."""
        prev = _cal().previous_trading_day(day, inclusive=False)
        return DataInterval(start=self.close_time(prev), end=self.close_time(day))

    def trading_day_of(self, interval_end: dt.datetime) -> dt.date:
        """The trading day a run is for: its interval end's date in Asia/Tokyo."""
        return pendulum.instance(interval_end).in_timezone(TOKYO).date()

    def latest_day_closed_by(self, when: dt.datetime) -> dt.date:
        """Latest trading day D with ``close_time(D) <= when``."""
        local = pendulum.instance(when).in_timezone(TOKYO)
        day = local.date()
        if local.time() < self._time:
            day -= dt.timedelta(days=1)
        return _cal().previous_trading_day(day, inclusive=True)

    def first_day_closing_from(self, when: dt.datetime) -> dt.date:
        """Earliest trading day D with ``close_time(D) >= when``."""
        local = pendulum.instance(when).in_timezone(TOKYO)
        day = local.date()
        if local.time() > self._time:
            day += dt.timedelta(days=1)
        return _cal().next_trading_day(day, inclusive=True)

    # ------------------------------------------------------------------ Timetable protocol
    def infer_manual_data_interval(self, *, run_after: DateTime) -> DataInterval:
        return self.interval_for(self.latest_day_closed_by(run_after))

    def next_dagrun_info(
        self,
        *,
        last_automated_data_interval: DataInterval | None,
        restriction: TimeRestriction,
    ) -> DagRunInfo | None:
        try:
            day = self._next_day(last_automated_data_interval, restriction)
            if day is None:
                return None
            if restriction.latest is not None and self.close_time(day) > restriction.latest:
                return None  # past the DAG's end_date
            interval = self.interval_for(day)
        except ValueError as err:  # beyond the XTKS calendar: schedule nothing, say why
            log.error("JPXTradingDayTimetable cannot schedule: %s", err)
            return None
        return DagRunInfo.interval(start=interval.start, end=interval.end)

    def _next_day(
        self, last: DataInterval | None, restriction: TimeRestriction
    ) -> dt.date | None:
        cal = _cal()
        candidates: list[dt.date] = []
        if last is not None:
            candidates.append(cal.next_trading_day(self.trading_day_of(last.end), inclusive=False))
        elif restriction.earliest is None:
            return None  # no start_date: never scheduled
        if restriction.earliest is not None:
            candidates.append(self.first_day_closing_from(restriction.earliest))
        if not restriction.catchup:
            # skip to the latest session already closed: it runs now, the backlog is dropped
            candidates.append(self.latest_day_closed_by(pendulum.now("UTC")))
        return max(candidates)

    # ------------------------------------------------------------------ (de)serialisation, UI
    def serialize(self) -> dict[str, Any]:
        return {"at": self.at}

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> JPXTradingDayTimetable:
        return cls(at=data.get("at", "18:00"))

    @property
    def summary(self) -> str:
        return f"JPX trading days {self.at} JST"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JPXTradingDayTimetable) and other.at == self.at

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.at))

    def __repr__(self) -> str:
        return f"JPXTradingDayTimetable(at={self.at!r})"


class TokyoCronTimetable(CronTriggerTimetable):
    """A cron schedule read in Asia/Tokyo whose UI summary says so, and whose first run after
    creation or unpause is never one from the past.

    Airflow's ``CronTriggerTimetable`` with ``catchup=False`` starts the *latest past* cron time
    at once ("0 3 * * 6" unpaused on a Wednesday runs last Saturday's run now) and shows the bare
    expression with no timezone. Here, with catchup off, a past cron time is only run if it is
    within Airflow's own ``run_immediately`` grace (10 % of the period, at least 5 minutes: a
    scheduler back at 03:30 still runs the 03:00 run); otherwise the next run is the next cron
    time. ``catchup=True`` is unchanged.
    """

    def __init__(self, cron: str, *, timezone: Any = "Asia/Tokyo", **kwargs: Any) -> None:
        super().__init__(cron, timezone=timezone, **kwargs)
        base = self.description or cron
        self.description = f"{base} ({self._tz_label()})"

    def _tz_label(self) -> str:
        name = getattr(self._timezone, "name", str(self._timezone))
        abbr = pendulum.now(self._timezone).format("zz")
        return f"{name}, {abbr}" if abbr and abbr != name else name

    @property
    def summary(self) -> str:
        abbr = pendulum.now(self._timezone).format("zz") or getattr(self._timezone, "name", "")
        return f"{self._expression} {abbr}"

    def next_dagrun_info(
        self,
        *,
        last_automated_data_interval: DataInterval | None,
        restriction: TimeRestriction,
    ) -> DagRunInfo | None:
        if restriction.catchup:
            return super().next_dagrun_info(last_automated_data_interval=last_automated_data_interval,
                                            restriction=restriction)
        candidates = [self._calc_first_run()]  # latest past time within the grace, else the next
        if last_automated_data_interval is not None:
            candidates.append(self._get_next(last_automated_data_interval.end))
        if restriction.earliest is not None:
            candidates.append(self._align_to_next(restriction.earliest))
        nxt = max(candidates)
        if restriction.latest is not None and restriction.latest < nxt:
            return None
        return DagRunInfo.interval(pendulum.instance(nxt - self._interval), pendulum.instance(nxt))


class JPXTimetablePlugin(AirflowPlugin):
    name = "jpx_timetable"
    timetables = [JPXTradingDayTimetable, TokyoCronTimetable]
