"""
# atft_rollback — move the champion back (manual)

Trigger with config: leave **to_run_id** empty to move the `champion` alias back one step (to
the champion before the current one), or give a published run id to make it champion. A
**reason** is required; it, the actor and this DAG run's id go into the registry's append-only
alias history (`aliases/history/`), the audit record of every alias move.

Decision: **no automatic retries**. "Back one step" is not idempotent: a retry after a move that
succeeded (but whose task then failed) would step back twice. Re-trigger by hand after checking
the history.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task
from atft_airflow_utils import task_ctx

OWNER = "atft-mlops"


@dag(
    dag_id="atft_rollback",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 4, tz="Asia/Tokyo"),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": OWNER, "retries": 0, "execution_timeout": timedelta(minutes=30)},
    params={
        "to_run_id": Param(None, type=["null", "string"], pattern=r"^[A-Za-z0-9._-]+$",
                           maxLength=200, title="Target run id",
                           description="published run to make champion; null = one step back"),
        "reason": Param(type="string", minLength=3, maxLength=500, title="Reason",
                        description="why the champion is rolled back (audit record)"),
        "actor": Param(None, type=["null", "string"], maxLength=100, title="Actor",
                       description="who asked for the rollback (audit record)"),
    },
    tags=["atft", "registry", "rollback"],
    doc_md=__doc__,
)
def atft_rollback():
    @task
    def rollback(**context) -> dict:
        """Move the champion alias (compare-and-swap) and append the audit record."""
        from atft_core import pipeline

        params = context["params"]
        reason = params["reason"] + (f" (actor: {params['actor']})" if params.get("actor") else "")
        return pipeline.rollback(task_ctx(context), params.get("to_run_id"), reason)

    rollback()


atft_rollback()
