"""Airflow-side glue shared by the atft DAGs: Airflow context -> the plain ``ctx`` dict that
:class:`atft_core.pipeline.RunContext` is built from (once per task)::

    {"dag_id", "run_id", "run_type", "data_interval_start", "data_interval_end" (ISO, UTC),
     "as_of" (YYYY-MM-DD: the JPX trading day of data_interval_end in Asia/Tokyo),
     "params": {...}, "try_number", "conf": {...trigger conf...}, "param_names": [...],
     "endpoints": {...resolved with Airflow's hooks...}}

Decisions:
* A run without a data interval takes the JPX interval of the day its triggering asset events
  name (an asset-triggered retrain after atft_ingest committed day D), else (Airflow 3 manual
  runs may have no logical date) the JPX interval of its ``run_after`` (see ``jpx_timetable``):
  a fixed property of the run, never "now", so a retry or re-run resolves to the same paths.
* Connections go through Airflow's own hooks (``BaseHook.get_connection``, the Amazon
  provider's ``AwsBaseHook``), so a connection in the metadata DB, an ``AIRFLOW_CONN_*`` variable
  or a secrets backend all work. A missing connection is not an error (textfile metrics,
  boto3's own chain); a failing lookup is logged and treated as missing.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Mapping
from typing import Any

import pendulum

log = logging.getLogger(__name__)

TOKYO = pendulum.timezone("Asia/Tokyo")
PUSHGATEWAY_CONN_ID = "atft_pushgateway"
AWS_CONN_ID = "aws_default"


def _iso(x: dt.datetime) -> str:
    return pendulum.instance(x).in_timezone("UTC").isoformat()


def airflow_endpoints(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Endpoints from Airflow connections, through Airflow's hooks (call inside a task)."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(PUSHGATEWAY_CONN_ID)
        out["pushgateway_conn_uri"] = conn.get_uri()
    except Exception as err:  # noqa: BLE001 -- AirflowNotFoundException or a lookup failure
        log.debug("no %s connection (%s): metrics use ATFT_PUSHGATEWAY_URL or the textfile",
                  PUSHGATEWAY_CONN_ID, err)
    try:
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
        from airflow.sdk import BaseHook

        BaseHook.get_connection(AWS_CONN_ID)  # absent -> boto3's own chain, without the hook's warning
        wrapper = AwsBaseHook(aws_conn_id=AWS_CONN_ID, client_type="s3").conn_config
        if wrapper.endpoint_url:
            out["s3_endpoint_url"] = wrapper.endpoint_url
        if wrapper.aws_access_key_id and wrapper.aws_secret_access_key and not env.get("AWS_ACCESS_KEY_ID"):
            # boto3's credential chain is what the registry uses: give it the connection's key
            # pair in this task process only (never written to ctx, XCom or a record)
            os.environ["AWS_ACCESS_KEY_ID"] = wrapper.aws_access_key_id
            os.environ["AWS_SECRET_ACCESS_KEY"] = wrapper.aws_secret_access_key
            if wrapper.aws_session_token:
                os.environ["AWS_SESSION_TOKEN"] = wrapper.aws_session_token
            out["aws_credentials"] = AWS_CONN_ID
        if wrapper.region_name and not (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")):
            os.environ["AWS_DEFAULT_REGION"] = wrapper.region_name
    except Exception as err:  # noqa: BLE001
        log.debug("no usable %s connection (%s): boto3's own chain decides", AWS_CONN_ID, err)
    return out


def task_ctx(context: Mapping[str, Any], *, endpoints: bool = True) -> dict[str, Any]:
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
    dag = context.get("dag")
    ctx = {
        "dag_id": dag_run.dag_id,
        "run_id": dag_run.run_id,
        # "scheduled" / "asset_triggered" / "manual" / "backfill" (DagRunType's value)
        "run_type": str(getattr(getattr(dag_run, "run_type", None), "value", None) or
                        getattr(dag_run, "run_type", None) or ""),
        "data_interval_start": _iso(start if start is not None else end),
        "data_interval_end": _iso(end),
        "as_of": pendulum.instance(end).in_timezone(TOKYO).date().isoformat(),
        "params": {k: params[k] for k in params},
        "try_number": int(context["ti"].try_number),
        "conf": dict(getattr(dag_run, "conf", None) or {}),
        "param_names": sorted(dag.params.keys()) if dag is not None else None,
    }
    if endpoints:
        ctx["endpoints"] = airflow_endpoints()
    return ctx


def asset_event_day(context: Mapping[str, Any]) -> dt.date | None:
    """An asset-triggered run has no data interval: it is for the latest trading day named by
    its triggering events (``extra["day"]``, set by atft_ingest's commit), not for whatever
    session had closed when the event arrived (17:35 JST is still "yesterday" at an 18:00 cutoff)."""
    events = context.get("triggering_asset_events") or {}
    days = [ev.extra["day"] for evs in events.values() for ev in evs
            if isinstance(getattr(ev, "extra", None), Mapping) and ev.extra.get("day")]
    return max(dt.date.fromisoformat(str(d)) for d in days) if days else None
