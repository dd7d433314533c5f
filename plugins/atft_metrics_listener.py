"""Airflow listener: every atft task's success or failure becomes a Prometheus sample.

Hooks ``on_task_instance_success`` / ``on_task_instance_failed`` (Airflow 3 listener spec; they run
in the task's worker process, or in the API server when a state is set by hand) push
``MetricsPusher.task_result(dag_id, task_id, state)`` through :mod:`atft_core.observability`
(Pushgateway when ``ATFT_PUSHGATEWAY_URL`` is set, else the textfile fallback).

A failure also increments ``atft_task_failures_total`` (per dag_id/task_id group).

Decisions: only DAGs whose id starts with ``atft_`` are reported; a listener error is logged and
swallowed -- metrics must never fail (or retry) a task. The metrics settings come from the run's
Params through :func:`atft_core.pipeline.metrics_config_for`, which falls back to the named and
then the default config when the conf itself is what made the task fail (an invalid conf is
exactly the failure that must still be counted); endpoints as the tasks resolve them.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

log = logging.getLogger(__name__)

DAG_PREFIX = "atft_"


def _params_of(task_instance: Any) -> dict[str, Any]:
    try:
        params = task_instance.get_template_context().get("params") or {}
        return {k: params[k] for k in params}
    except Exception:  # API-server TaskInstance has no runtime context: use the defaults
        return {}


def report_task_result(task_instance: Any, state: str) -> bool:
    """Push one task result; True when pushed, False when skipped or failed (never raises)."""
    try:
        dag_id, task_id = str(task_instance.dag_id), str(task_instance.task_id)
        if not dag_id.startswith(DAG_PREFIX):
            return False
        from atft_airflow_utils import airflow_endpoints

        from atft_core.observability import ENV_AIRFLOW_CONN, MetricsPusher
        from atft_core.pipeline import metrics_config_for

        endpoints = airflow_endpoints()
        metrics = metrics_config_for(_params_of(task_instance), endpoints)
        environ = None
        if endpoints.get("pushgateway_conn_uri"):
            environ = dict(os.environ) | {ENV_AIRFLOW_CONN: endpoints["pushgateway_conn_uri"]}
        pusher = MetricsPusher(metrics, job=metrics.job, dag_id=dag_id, task_id=task_id, environ=environ)
        delivery = pusher.task_result(dag_id, task_id, state)
        return delivery.kind != "dropped"
    except Exception:
        log.warning("atft metrics listener: could not report %s for %s", state,
                    getattr(task_instance, "task_id", "?"), exc_info=True)
        return False


@hookimpl
def on_task_instance_success(previous_state, task_instance) -> None:
    report_task_result(task_instance, "success")


@hookimpl
def on_task_instance_failed(previous_state, task_instance, error) -> None:
    report_task_result(task_instance, "failed")


class AtftMetricsListenerPlugin(AirflowPlugin):
    name = "atft_metrics_listener"
    listeners = [sys.modules[__name__]]
