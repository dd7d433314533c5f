"""Airflow listener: every atft task's success or failure becomes a Prometheus sample.

Hooks ``on_task_instance_success`` / ``on_task_instance_failed`` (Airflow 3 listener spec; they run
in the task's worker process, or in the API server when a state is set by hand) push
``MetricsPusher.task_result(dag_id, task_id, state)`` through :mod:`atft_core.observability`
(Pushgateway when ``ATFT_PUSHGATEWAY_URL`` is set, else the textfile fallback).

Decisions: only DAGs whose id starts with ``atft_`` are reported; a listener error is logged and
swallowed -- metrics must never fail (or retry) a task; the config is the run's ``config`` Param
(default ``default``) with the same environment endpoints the tasks use.
"""

from __future__ import annotations

import logging
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
        from atft_core.observability import MetricsPusher
        from atft_core.pipeline import task_config

        cfg = task_config({"params": _params_of(task_instance), "dag_id": dag_id})
        pusher = MetricsPusher(cfg.metrics, job=cfg.metrics.job, dag_id=dag_id, task_id=task_id)
        pusher.task_result(dag_id, task_id, state)
        return True
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
