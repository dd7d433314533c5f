"""Airflow-side glue shared by the atft DAGs: Airflow context -> the plain ``ctx`` dict.

``atft_core`` never imports Airflow, so every task turns its Airflow context into ``ctx``::

    {"dag_id", "run_id", "data_interval_start", "data_interval_end" (ISO, UTC),
     "as_of" (YYYY-MM-DD: the JPX trading day of data_interval_end in Asia/Tokyo),
     "params": {...}, "try_number"}

Decision: a run without a data interval takes the JPX interval of the day its triggering asset
events name (an asset-triggered retrain after atft_ingest committed day D), else (Airflow 3 manual
runs may have no logical date) the JPX interval of its ``run_after`` (see ``jpx_timetable``): a fixed property of the run, never
"now", so a retry or re-run of the same DAG run resolves to the same paths.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import pendulum

TOKYO = pendulum.timezone("Asia/Tokyo")


def _iso(x: dt.datetime) -> str:
    return pendulum.instance(x).in_timezone("UTC").isoformat()


def task_ctx(context: Mapping[str, Any]) -> dict[str, Any]:
    """Build the JSON-able ``ctx`` for an ``atft_core.pipeline`` call from an Airflow context."""
    dag_run = context["dag_run"]
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if end is None:
        from jpx_timetable import JPXTradingDayTimetable

        day = asset_event_day(context)
        interval = (JPXTradingDayTimetable().interval_for(day) if day is not None else
                    JPXTradingDayTimetable().infer_manual_data_interval(
                        run_after=pendulum.instance(dag_run.run_after)))
        start, end = interval.start, interval.end
    params = context.get("params") or {}
    return {
        "dag_id": dag_run.dag_id,
        "run_id": dag_run.run_id,
        "data_interval_start": _iso(start if start is not None else end),
        "data_interval_end": _iso(end),
        "as_of": pendulum.instance(end).in_timezone(TOKYO).date().isoformat(),
        "params": {k: params[k] for k in params},
        "try_number": int(context["ti"].try_number),
    }


def asset_event_day(context: Mapping[str, Any]) -> dt.date | None:
    """An asset-triggered run has no data interval: it is for the latest trading day named by
    its triggering events (``extra["day"]``, set by atft_ingest's commit), not for whatever
    session had closed when the event arrived (17:35 JST is still "yesterday" at an 18:00 cutoff)."""
    events = context.get("triggering_asset_events") or {}
    days = [ev.extra["day"] for evs in events.values() for ev in evs
            if isinstance(getattr(ev, "extra", None), Mapping) and ev.extra.get("day")]
    return max(dt.date.fromisoformat(str(d)) for d in days) if days else None


def retrain_summary(
    trained: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    decision: Mapping[str, Any],
    published: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The run's summary for ``pipeline.report_metrics`` (published is None when skipped)."""
    promoted = decision.get("decision") == "promote" and published is not None
    return {
        "run_id": trained["run_id"],
        "run_dir": trained["run_dir"],
        "report": f"{trained['run_dir']}/report.md",
        "decision": decision.get("decision"),
        "forced": bool(decision.get("forced", False)),
        "reasons": list(decision.get("reasons", [])),
        "holdout": dict(evaluation.get("candidate") or {}),
        "champion_holdout": dict(evaluation.get("champion") or {}),
        "previous_champion_run_id": evaluation.get("champion_run_id"),
        "champion_run_id": trained["run_id"] if promoted else evaluation.get("champion_run_id"),
        "published_uri": published.get("uri") if published else None,
    }
