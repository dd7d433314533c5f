"""The pools the atft DAGs need, and a check that makes a missing one visible.

A task whose pool does not exist is never queued: the scheduler logs one WARNING ("Tasks using
non-existent pool 'gpu' will not be scheduled") and the task sits in "scheduled" forever. The
pools are defined once, in ``include/airflow/pools.json`` (``airflow pools import`` format; the
demo and docker-compose import it), and this listener checks them when a run starts.

Decision: the check runs in the **scheduler** (``on_dag_run_running``), the only component that
may read the pool table -- Airflow 3 task code has no metadata-DB access and the Task SDK has no
pool API, so a first *task* cannot see pools. A missing pool gives one ERROR line in the
scheduler log and the same line as the DAG run's note (shown on the run in the UI)::

    atft: pool 'gpu' does not exist: atft_retrain.train will wait in 'scheduled' forever. Create it:
    airflow pools import include/airflow/pools.json  (or: airflow pools set gpu 1 "GPU worker slots")
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

log = logging.getLogger(__name__)

DEFAULT_POOL = "default_pool"
DAG_PREFIX = "atft_"


def pools_file() -> Path:
    """``include/airflow/pools.json`` next to ``include/configs`` (wherever atft_core is installed)."""
    from atft_core.config import CONFIG_DIR

    return CONFIG_DIR.parent / "airflow" / "pools.json"


def shipped_pools(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """The pool definitions this repository ships (``airflow pools import`` format)."""
    return json.loads((path or pools_file()).read_text())


def pools_used(tasks: Iterable[Any]) -> dict[str, list[str]]:
    """pool name -> task ids using it (the default pool always exists and is left out)."""
    out: dict[str, list[str]] = {}
    for t in tasks:
        pool = getattr(t, "pool", None) or DEFAULT_POOL
        if pool != DEFAULT_POOL:
            out.setdefault(pool, []).append(t.task_id)
    return out


def missing_pool_messages(dag_id: str, used: Mapping[str, list[str]], existing: Iterable[str]) -> list[str]:
    """One clear line per pool that ``dag_id`` uses but the Airflow does not have."""
    have = set(existing)
    lines = []
    for pool, task_ids in sorted(used.items()):
        if pool in have:
            continue
        tasks = ", ".join(f"{dag_id}.{t}" for t in sorted(task_ids))
        spec = shipped_pools().get(pool)
        how = (f'airflow pools import include/airflow/pools.json  (or: airflow pools set {pool} '
               f'{spec["slots"]} "{spec["description"]}")') if spec else f"airflow pools set {pool} 1 ..."
        lines.append(f"atft: pool '{pool}' does not exist: {tasks} will wait in 'scheduled' forever. "
                     f"Create it: {how}")
    return lines


def check_run_pools(dag_run: Any) -> list[str]:
    """Scheduler side: the missing-pool lines for this run's DAG; logged and set as the run's note."""
    from airflow.models.pool import Pool
    from sqlalchemy import select
    from sqlalchemy.orm import object_session

    session = object_session(dag_run)
    dag = getattr(dag_run, "dag", None)
    if dag is None or session is None:
        return []
    existing = session.scalars(select(Pool.pool)).all()
    lines = missing_pool_messages(dag_run.dag_id, pools_used(dag.tasks), existing)
    for line in lines:
        log.error(line)
    if lines:
        dag_run.note = "\n".join(lines)[:1000]
    return lines


@hookimpl
def on_dag_run_running(dag_run, msg) -> None:
    try:
        if str(dag_run.dag_id).startswith(DAG_PREFIX):
            check_run_pools(dag_run)
    except Exception:  # a check must never break the scheduler loop
        log.warning("atft pool check failed for %s", getattr(dag_run, "run_id", "?"), exc_info=True)


class AtftPoolsPlugin(AirflowPlugin):
    name = "atft_pools"
    listeners = [sys.modules[__name__]]
