"""
# atft_retrain — nightly ATFT-GAT-FAN retrain on JPX trading days

Runs after every Tokyo Stock Exchange session (timetable `JPXTradingDayTimetable`, 18:00
Asia/Tokyo). The run for trading day **D** has the data interval
`[previous trading day 18:00 JST, D 18:00 JST)`; `as_of` = D. Weekends, Golden Week and the
year-end closure (Dec 31 - Jan 3) get no run; the next session's run covers them.

```
validate_conf -> not_done_today -> check_fresh_data -> validate -> features -> train (gpu) -> evaluate -> gate -+-> publish ------+-> metrics
                                                                                                                +-> skip_publish -+
```

* **validate_conf** turns the whole conf (Params + dotted overrides) into the typed config
  before any work; an unknown key or a bad value fails the run at once, **without retries**.

* **not_done_today** ends an automatic run early (every later task skipped) when a run of the
  same trading day and model identity already completed: the quotes-store Asset (atft_ingest's
  commit, ~17:35 JST) and the 18:00 timetable both trigger on a normal day, and
  `max_active_runs=1` queues the second behind the first. A failed run leaves no record, so the
  next trigger retrains; manual runs always run.
* **check_fresh_data** waits (reschedule mode) until the bar of day D has landed.
* **validate** runs the Great Expectations suite; bad data fails the run, nothing downstream runs.
* **train** runs on the `gpu` queue / `gpu` pool (create it: `airflow pools import
  include/airflow/pools.json`); a retry resumes the run's own checkpoint. With `nproc` N > 1
  (Param or `train.nproc`) it launches N torch.distributed ranks on that worker (NCCL, one GPU
  each; gloo on CPU); rank 0 writes the checkpoints, resumable with any N.
* **evaluate** scores the candidate and the current champion with one function on the *same*
  holdout window (`evaluation.json`); XComs carry paths and ids, not copies of the records.
* **gate** promotes only above the RankIC / Sharpe thresholds and not worse than the champion
  (`force` overrides it, recorded as forced).
* **metrics** runs after publish or skip and pushes the run's summary to Prometheus.

Every task writes under `var/work/atft_retrain/{trading day}/{DAG run id}.{model identity}`:
keyed by the run, never "now" -- a retry redoes exactly its own run, and a manual run of the same
day (another config) shares nothing with the scheduled one. `catchup` is off and
`max_active_runs=1`: a late night never stacks retrains on the GPU.

**Manual runs** (Trigger DAG w/ config): the form's Params are typed and bounded; an invalid
value is refused before any task runs, an unknown key by `validate_conf`. Empty fields keep the
config's values.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import AssetOrTimeSchedule, Param, PokeReturnValue, TriggerRule, dag, task
from atft_airflow_utils import task_ctx
from atft_assets import QUOTES_STORE
from jpx_timetable import JPXTradingDayTimetable

from atft_core.config import CONFIG_DIR

log = logging.getLogger(__name__)

OWNER = "atft-mlops"
# The one place the schedule is set: after every JPX trading day at 18:00 Asia/Tokyo, OR when
# atft_ingest commits a day of the quotes store (see atft_assets).
SCHEDULE = AssetOrTimeSchedule(timetable=JPXTradingDayTimetable(at="18:00"), assets=[QUOTES_STORE])
CONFIG_NAMES = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
LOSS_WEIGHT = {"type": ["null", "number"], "minimum": 0.0, "maximum": 10.0}
RUN, TRAINING, DATA, GATE, ADVANCED = ("Run", "Training (empty = the config's value)",
                                      "Data window", "Promotion gate", "Advanced")

PARAMS = {
    # ---------------------------------------------------------------- run
    "config": Param("default", type="string", enum=CONFIG_NAMES, title="Config",
                    description="YAML in include/configs", section=RUN),
    "actor": Param(None, type=["null", "string"], maxLength=100, title="Actor",
                   description="who triggered this run (audit record)", section=RUN),
    "force": Param(False, type=["boolean", "null"], title="Force promotion",
                   description="promote even if the gate rejects (recorded as forced)", section=RUN),
    # ---------------------------------------------------------------- training
    "epochs": Param(None, type=["null", "integer"], minimum=0, maximum=1000,
                    title="Epochs (every phase)", description="the same number of epochs in each phase",
                    section=TRAINING),
    "epochs_per_phase": Param(
        None, type=["null", "array"], items={"type": "integer", "minimum": 0, "maximum": 1000},
        minItems=1, maxItems=8, title="Epochs per phase",
        description="one integer per line, one line per phase (baseline, graph, frequency, finetune)",
        section=TRAINING),
    "lr": Param(None, type=["null", "number"], exclusiveMinimum=0.0, maximum=1.0,
                title="Learning rate", description="train.optimizer.lr", section=TRAINING),
    "hidden_size": Param(None, type=["null", "integer"], minimum=8, maximum=2048,
                         title="Hidden size", description="model.hidden_size", section=TRAINING),
    "seed": Param(None, type=["null", "integer"], minimum=0, maximum=2**31 - 1,
                  title="Seed", description="train.seed", section=TRAINING),
    "nproc": Param(None, type=["null", "integer"], minimum=1, maximum=8, title="Processes (DDP)",
                   description="train.nproc: torch.distributed ranks on the train worker, one GPU "
                   "each (NCCL; gloo on CPU); the run resumes with any count", section=TRAINING),
    "loss_weights": Param(
        None, type=["null", "object"], additionalProperties=False,
        properties={w: LOSS_WEIGHT for w in ("mse", "rankic", "cs_ic", "sharpe")},
        title="Loss weight scales",
        description='e.g. {"rankic": 2.0}: multiplies that loss component in every phase',
        section=TRAINING),
    # ---------------------------------------------------------------- data
    "data_source": Param(None, type=["null", "string"], minLength=1, maxLength=1024,
                         title="Data source", description="parquet of quotes; empty = the config's "
                         "(synthetic market when none)", section=DATA),
    "data_start": Param(None, type=["null", "string"], format="date", title="Window start",
                        description="first day of the data window; empty = the config's", section=DATA),
    "data_end": Param(None, type=["null", "string"], format="date", title="Window end",
                      description="last day of the data window; empty = the run's trading day",
                      section=DATA),
    # ---------------------------------------------------------------- gate
    "min_rank_ic": Param(None, type=["null", "number"], minimum=-1.0, maximum=1.0,
                         title="Min RankIC@1d", description="gate.min_rank_ic", section=GATE),
    "min_sharpe": Param(None, type=["null", "number"], minimum=-20.0, maximum=20.0,
                        title="Min Sharpe@1d", description="gate.min_sharpe", section=GATE),
    # ---------------------------------------------------------------- advanced
    "overrides": Param([], type=["array", "null"], maxItems=32,
                       items={"type": "string", "pattern": r"^[a-z_][a-z0-9_.]*=.*$"},
                       title="Config overrides", description='one dotted key=value per line, e.g. '
                       '"graph.k=20"', section=ADVANCED),
}


@dag(
    dag_id="atft_retrain",
    schedule=SCHEDULE,
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
    @task(retries=0)
    def validate_conf(**context) -> dict:
        """The whole conf -> typed config before any work; a bad or unknown key fails the run at
        once (no retries: retrying cannot fix a conf)."""
        from airflow.sdk.exceptions import AirflowFailException

        from atft_core import pipeline

        try:
            return pipeline.validate_conf(task_ctx(context))
        except pipeline.RunConfError as err:
            raise AirflowFailException(f"atft_retrain: {err}") from None

    @task.short_circuit
    def not_done_today(conf_ok: dict, **context) -> dict | bool:
        """Skip the rest when this trading day's retrain already completed with the same model
        (the Asset event and the 18:00 timetable both trigger on a normal day); manual runs never skip."""
        from atft_core import pipeline

        done = pipeline.day_already_retrained(task_ctx(context))
        if done:
            log.info("day already retrained by %s (%s): skipping", done.get("run_id"), done.get("decision"))
            return False
        return conf_ok

    @task.sensor(poke_interval=15 * 60, timeout=6 * 3600, mode="reschedule")
    def check_fresh_data(conf_ok: dict, **context) -> PokeReturnValue:
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
        """Candidate and current champion on the same holdout window (one scoring function)."""
        from atft_core import pipeline

        return pipeline.evaluate_holdout(task_ctx(context), trained)

    @task.branch
    def gate(evaluation: dict, **context) -> str:
        """Promotion decision (pushed as XCom `decision`); follows publish or skip_publish."""
        from atft_core import pipeline

        decision = pipeline.gate(task_ctx(context), evaluation)
        context["ti"].xcom_push(key="decision", value=decision)
        log.info("gate: %s; reasons: %s", decision["decision"], decision.get("reasons"))
        # publish the candidate, or the ladder's ridge when the candidate lost (gate fallback)
        what = decision.get("publish", "candidate" if decision["decision"] == "promote" else None)
        return "publish" if what else "skip_publish"

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

        return pipeline.report_metrics(task_ctx(context), trained, evaluation, decision, published)

    skip_publish = EmptyOperator(
        task_id="skip_publish",
        doc_md="The gate rejected the candidate: the champion stays; see the gate's decision XCom.",
    )

    trained = train(features(validate(check_fresh_data(not_done_today(validate_conf())))))
    evaluation = evaluate(trained)
    decided = gate(evaluation)
    decision = decided["decision"]
    published = publish(trained, decision)
    decided >> [published, skip_publish]
    [published, skip_publish] >> metrics(trained, evaluation, decision, published)


atft_retrain()
