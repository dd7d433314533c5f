"""
# atft_ingest — the nightly J-Quants feed into the quotes store

Runs after every Tokyo Stock Exchange session at **17:30 Asia/Tokyo** (`JPXTradingDayTimetable`),
before `atft_retrain` (18:00). The run for trading day **D**:

```
fetch (J-Quants V2, all pages) -> validate (GX suite, D with 60 days of history) -> commit D -> Asset event
```

* **fetch** stages D's bars in the run's work dir; the API key comes from the Airflow connection
  `jquants_default` (password), else `JQUANTS_API_KEY`; `JQUANTS_API_URL` points elsewhere
  (tests, mirrors). 429/5xx are retried inside one total deadline; a refused key fails at once.
* **validate** judges D as it will read after the commit (split-adjusted); failure stops the
  run and nothing is written to the store.
* **commit** writes D's one partition atomically and emits the `atft_quotes_store` Asset event
  (`extra.day` = D), which schedules `atft_retrain`.

**Backfill** = an Airflow backfill of this DAG over a date range (`airflow backfill create
--dag-id atft_ingest --from-date ... --to-date ...`): one run per trading day, each idempotent
(a re-run of a committed day rewrites nothing when J-Quants answers the same).
For a long history `atft fetch jquants --start --end --out STORE` is faster (no per-day runs).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task
from atft_airflow_utils import task_ctx
from atft_assets import QUOTES_STORE
from jpx_timetable import JPXTradingDayTimetable

PARAMS = {
    "config": Param("default", type="string", pattern=r"^[A-Za-z0-9_.-]+$", minLength=1, maxLength=64,
                    title="Config", description="YAML in include/configs whose data.source is the store"),
    "data_source": Param(None, type=["null", "string"], minLength=1, maxLength=1024,
                         title="Quotes store", description="folder or s3://bucket/prefix; null = config"),
}


@dag(
    dag_id="atft_ingest",
    schedule=JPXTradingDayTimetable(at="17:30"),
    start_date=pendulum.datetime(2024, 1, 4, tz="Asia/Tokyo"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=6),
    default_args={
        "owner": "atft-mlops",
        "retries": 3,
        "retry_delay": timedelta(minutes=10),  # a late feed: try again later, then fail loudly
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=40),
    },
    params=PARAMS,
    tags=["atft", "ingest", "jpx", "jquants"],
    doc_md=__doc__,
)
def atft_ingest():
    @task(execution_timeout=timedelta(minutes=30))
    def fetch(**context) -> dict:
        """J-Quants V2 bars of day D (every page) + the master as of D -> staging."""
        from atft_core import ingest_pipeline
        from atft_core.data.jquants import AIRFLOW_CONN_ID, resolve_api_key

        key = resolve_api_key(airflow_conn_id=AIRFLOW_CONN_ID)
        return ingest_pipeline.fetch_day(task_ctx(context), key)

    @task
    def validate(fetched: dict, **context) -> dict:
        """GX suite on D (split-adjusted, with history); bad data fails at once, no retries."""
        from airflow.sdk.exceptions import AirflowFailException

        from atft_core import ingest_pipeline
        from atft_core.validation import DataValidationError

        try:
            return ingest_pipeline.validate_day(task_ctx(context), fetched)
        except DataValidationError as err:
            raise AirflowFailException(str(err)) from err

    @task(outlets=[QUOTES_STORE])
    def commit(fetched: dict, validated: dict, **context) -> dict:
        """Day D's partition into the store (atomic), then the store's Asset event."""
        from atft_core import ingest_pipeline

        out = ingest_pipeline.commit_day(task_ctx(context), fetched)
        context["outlet_events"][QUOTES_STORE].extra = {"day": out["day"], "rows": out["rows"]}
        return out

    fetched = fetch()
    commit(fetched, validate(fetched))


atft_ingest()
