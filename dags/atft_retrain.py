"""
# atft_retrain — nightly ATFT-GAT-FAN retrain on JPX trading days

Runs after every Tokyo Stock Exchange session (timetable `JPXTradingDayTimetable`, 18:00
Asia/Tokyo). The run for trading day **D** has the data interval
`[previous trading day 18:00 JST, D 18:00 JST)`; `as_of` = D. Weekends, Golden Week and the
year-end closure (Dec 31 - Jan 3) get no run; the next session's run covers them.

```
check_fresh_data -> validate -> features -> train (gpu) -> evaluate -> gate -+-> publish ------+-> metrics
                                                                              +-> skip_publish -+
```

* **check_fresh_data** waits (reschedule mode) until the bar of day D has landed.
* **validate** runs the Great Expectations suite; bad data fails the run, nothing downstream runs.
* **train** runs on the `gpu` queue / `gpu` pool; a retry resumes the run's own checkpoint.
* **evaluate** scores the candidate and the current champion on the *same* holdout window.
* **gate** promotes only above the RankIC / Sharpe thresholds and not worse than the champion
  (`force` overrides it, recorded as forced).
* **metrics** runs after publish or skip and pushes the run's summary to Prometheus.

Every task writes under paths keyed by the run's trading day (its data interval), never "now",
so re-running or retrying a task redoes exactly its own interval. `catchup` is off and
`max_active_runs=1`: a late night never stacks retrains on the GPU.

**Manual runs** (Trigger DAG w/ config): the form's Params are typed and bounded; an invalid
value is refused before any task runs. Empty (null) fields keep the config's values.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import AssetOrTimeSchedule, Param, PokeReturnValue, TriggerRule, dag, task
from atft_airflow_utils import retrain_summary, task_ctx
from atft_assets import QUOTES_STORE
from jpx_timetable import JPXTradingDayTimetable

log = logging.getLogger(__name__)

OWNER = "atft-mlops"
CONFIG_NAME = {"type": "string", "pattern": r"^[A-Za-z0-9_.-]+$", "minLength": 1, "maxLength": 64}
LOSS_WEIGHT = {"type": ["null", "number"], "minimum": 0.0, "maximum": 10.0}

PARAMS = {
    "config": Param("default", **CONFIG_NAME, title="Config",
                    description="YAML in include/configs (default, demo, test, ...)"),
    "epochs_per_phase": Param(
        None, type=["null", "integer", "array"], minimum=0, maximum=1000,
        items={"type": "integer", "minimum": 0, "maximum": 1000}, minItems=1, maxItems=8,
        title="Epochs per phase",
        description="one integer for every phase, or a list with one per phase "
                    "(baseline, graph, frequency, finetune); null = config"),
    "lr": Param(None, type=["null", "number"], exclusiveMinimum=0.0, maximum=1.0,
                title="Learning rate", description="train.optimizer.lr; null = config"),
    "hidden_size": Param(None, type=["null", "integer"], minimum=8, maximum=2048,
                         title="Hidden size", description="model.hidden_size; null = config"),
    "loss_weights": Param(
        None, type=["null", "object"], additionalProperties=False,
        properties={w: LOSS_WEIGHT for w in ("mse", "rankic", "cs_ic", "sharpe")},
        title="Loss weight scales",
        description='e.g. {"rankic": 2.0}: multiplies that loss component in every phase'),
    "seed": Param(None, type=["null", "integer"], minimum=0, maximum=2**31 - 1,
                  title="Seed", description="train.seed; null = config"),
    "min_rank_ic": Param(None, type=["null", "number"], minimum=-1.0, maximum=1.0,
                         title="Gate: min RankIC@1d", description="gate.min_rank_ic; null = config"),
    "min_sharpe": Param(None, type=["null", "number"], minimum=-20.0, maximum=20.0,
                        title="Gate: min Sharpe@1d", description="gate.min_sharpe; null = config"),
    "data_source": Param(None, type=["null", "string"], minLength=1, maxLength=1024,
                         title="Data source", description="parquet of quotes; null = config"),
    "data_start": Param(None, type=["null", "string"], format="date",
                        title="Data window start", description="YYYY-MM-DD; null = config"),
    "data_end": Param(None, type=["null", "string"], format="date",
                      title="Data window end", description="YYYY-MM-DD; null = the run's day"),
    "overrides": Param([], type="array", maxItems=32,
                       items={"type": "string", "pattern": r"^[a-z_][a-z0-9_.]*=.*$"},
                       title="Config overrides", description='dotted, e.g. "graph.k=20"'),
    "force": Param(False, type="boolean", title="Force promotion",
                   description="promote even if the gate rejects (recorded as forced)"),
    "actor": Param(None, type=["null", "string"], maxLength=100,
                   title="Actor", description="who triggered this run (audit)"),
}


@dag(
    dag_id="atft_retrain",
    # the JPX timetable OR a committed day of the quotes store (atft_ingest), see atft_assets
    schedule=AssetOrTimeSchedule(timetable=JPXTradingDayTimetable(at="18:00"), assets=[QUOTES_STORE]),
    start_date=pendulum.datetime(2024, 1, 4, tz="Asia/Tokyo"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=12),
    default_args={
        "owner": OWNER,
        "retries": 2,
        "retry_delay": timedelta(minutes=5),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
    },
    params=PARAMS,
    tags=["atft", "retrain", "jpx"],
    doc_md=__doc__,
)
def atft_retrain():
    @task.sensor(poke_interval=15 * 60, timeout=6 * 3600, mode="reschedule")
    def check_fresh_data(**context) -> PokeReturnValue:
        """Wait until the latest expected trading day's quotes are in the data store."""
        from atft_core import pipeline

        try:
            return PokeReturnValue(is_done=True, xcom_value=pipeline.check_fresh_data(task_ctx(context)))
        except pipeline.DataNotFresh as err:
            log.info("not fresh yet, poking again later: %s", err)
            return PokeReturnValue(is_done=False)

    @task
    def validate(fresh: dict, **context) -> dict:
        """Great Expectations suite over the interval's quotes; failure stops the run.

        Bad data fails at once, without retries (retrying cannot fix it): the readable report
        is the task's error, the GX Data Docs are in the run's work dir.
        """
        from airflow.sdk.exceptions import AirflowFailException

        from atft_core import pipeline
        from atft_core.validation import DataValidationError

        try:
            return pipeline.validate_data(task_ctx(context), fresh)
        except DataValidationError as err:
            raise AirflowFailException(str(err)) from err

    @task
    def features(validated: dict, **context) -> dict:
        """Point-in-time features and executable targets (polars), written atomically."""
        from atft_core import pipeline

        return pipeline.build_features(task_ctx(context), validated)

    @task(queue="gpu", pool="gpu", execution_timeout=timedelta(hours=6))
    def train(feats: dict, **context) -> dict:
        """Phased bf16 trainer on the GPU worker; a retry resumes this run's own checkpoint."""
        from atft_core import pipeline

        return pipeline.train_candidate(task_ctx(context), feats)

    @task
    def evaluate(trained: dict, **context) -> dict:
        """Candidate and current champion on the same holdout window."""
        from atft_core import pipeline

        return pipeline.evaluate_holdout(task_ctx(context), trained)

    @task.branch
    def gate(evaluation: dict, **context) -> str:
        """Promotion decision (pushed as XCom `decision`); follows publish or skip_publish."""
        from atft_core import pipeline

        decision = pipeline.gate(task_ctx(context), evaluation)
        context["ti"].xcom_push(key="decision", value=decision)
        log.info("gate: %s; reasons: %s", decision["decision"], decision.get("reasons"))
        return "publish" if decision["decision"] == "promote" else "skip_publish"

    @task
    def publish(trained: dict, decision: dict, **context) -> dict:
        """Immutable checksummed model version in the registry; champion alias moves by CAS."""
        from atft_core import pipeline

        return pipeline.publish(task_ctx(context), trained, decision)

    @task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def metrics(trained: dict, evaluation: dict, decision: dict, published: dict | None,
                **context) -> dict:
        """Run summary and the retrain-success timestamp to Prometheus (after publish or skip)."""
        from atft_core import pipeline

        return pipeline.report_metrics(task_ctx(context),
                                       retrain_summary(trained, evaluation, decision, published))

    skip_publish = EmptyOperator(
        task_id="skip_publish",
        doc_md="The gate rejected the candidate: the champion stays; see the gate's decision XCom.",
    )

    trained = train(features(validate(check_fresh_data())))
    evaluation = evaluate(trained)
    decided = gate(evaluation)
    decision = decided["decision"]
    published = publish(trained, decision)
    decided >> [published, skip_publish]
    [published, skip_publish] >> metrics(trained, evaluation, decision, published)


atft_retrain()
