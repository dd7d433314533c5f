"""
# atft_score — the champion's daily signal, the shadow's, live metrics and drift

Runs for every Tokyo Stock Exchange session D (timetable `JPXTradingDayTimetable`, 19:00
Asia/Tokyo), after D's bar has landed:

```
wait_for_data -> score_champion -> update_shadow -> score_shadow -> monitor
```

* **wait_for_data** pokes (reschedule mode) until D's quotes are in the store, like
  `atft_retrain`'s first task (same function).
* **score_champion** resolves the `champion` alias through the registry's verified load (a file
  that fails its sha256 fails the task: nothing is published), scores D's cross-section for every
  horizon and publishes `{registry}/signals/{D}/{run_id}.parquet` + manifest, create-only (a re-run
  of D with the same model and data is a no-op; other bytes are refused). Pushes feature and
  prediction PSI against the training window and the signal's freshness gauges.
* **update_shadow** publishes the newest gate-rejected candidate and points the `shadow` alias at it;
  **score_shadow** scores it into `signals/{D}/shadow/` (never served).
* **monitor** joins past signals with the labels known by D and pushes live RankIC / long-short.

Why the JPX timetable and not the quotes Asset: the signal of D is due by 08:30 JST of the next
session (the ATFTSignalMissing alert), which is a wall-clock deadline on trading days -- the
timetable gives that anchor and retries within it, and the sensor gives "after the data lands"
without depending on which ingest DAG writes the store. 19:00 leaves the retrain (18:00) time to
finish a short night; a later champion promotion scores from the next session on.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pendulum
from airflow.sdk import Param, PokeReturnValue, dag, task
from atft_airflow_utils import task_ctx
from jpx_timetable import JPXTradingDayTimetable

log = logging.getLogger(__name__)

PARAMS = {
    "config": Param("default", type="string", pattern=r"^[A-Za-z0-9_.-]+$", minLength=1,
                    maxLength=64, title="Config", description="YAML in include/configs"),
    "data_source": Param(None, type=["null", "string"], minLength=1, maxLength=1024,
                         title="Data source", description="parquet of quotes; null = config"),
    "data_end": Param(None, type=["null", "string"], format="date",
                      title="Day to score", description="YYYY-MM-DD; null = the run's day"),
}


@dag(
    dag_id="atft_score",
    schedule=JPXTradingDayTimetable(at="19:00"),
    start_date=pendulum.datetime(2024, 1, 4, tz="Asia/Tokyo"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=13),
    default_args={"owner": "atft-mlops", "retries": 2, "retry_delay": timedelta(minutes=5)},
    params=PARAMS,
    tags=["atft", "serving", "jpx"],
    doc_md=__doc__,
)
def atft_score():
    @task.sensor(poke_interval=15 * 60, timeout=12 * 3600, mode="reschedule")
    def wait_for_data(**context) -> PokeReturnValue:
        """D's quotes in the store (the retrain's freshness check)."""
        from atft_core import pipeline

        try:
            return PokeReturnValue(is_done=True, xcom_value=pipeline.check_fresh_data(task_ctx(context)))
        except pipeline.DataNotFresh as err:
            log.info("not fresh yet: %s", err)
            return PokeReturnValue(is_done=False)

    @task
    def score_champion(fresh: dict, **context) -> dict:
        """Verified champion -> D's signal (published create-only), drift and freshness gauges."""
        from airflow.sdk.exceptions import AirflowFailException

        from atft_core.serving import tasks

        try:
            return tasks.score(task_ctx(context), fresh, role="champion")
        except tasks.NoChampionError as err:  # a retry cannot create a champion: fail at once
            raise AirflowFailException(str(err)) from None

    @task
    def update_shadow(**context) -> dict:
        """Newest gate-rejected candidate -> published, alias `shadow`."""
        from atft_core.serving import tasks

        return tasks.update_shadow(task_ctx(context))

    @task
    def score_shadow(fresh: dict, **context) -> dict:
        """The shadow's signal of D under signals/{D}/shadow/ (never served)."""
        from atft_core.serving import tasks

        return tasks.score(task_ctx(context), fresh, role="shadow")

    @task
    def monitor(fresh: dict, **context) -> dict:
        """Live metrics of past signals whose labels matured; atft_live_* gauges."""
        from atft_core.serving import tasks

        return tasks.monitor(task_ctx(context), fresh)

    fresh = wait_for_data()
    champion = score_champion(fresh)
    shadow = score_shadow(fresh)
    champion >> update_shadow() >> shadow >> monitor(fresh)


atft_score()
