"""
# atft_hpo — weekly hyper-parameter search (Optuna) for ATFT-GAT-FAN

Saturday 03:00 Asia/Tokyo (JST; the GPU is idle over the weekend). Unpausing it mid-week
schedules the coming Saturday, never a run for a past one (`TokyoCronTimetable`). One Optuna study per run, named
after the run's last trading day, shared by `n_trials` **mapped** trial tasks
(`run_trial.expand(trial_index=...)`) on the `gpu` queue / pool; the pool bounds how many run at
once. Each trial asks the shared study for parameters and reports its validation RankIC back.

```
create_study -> plan_trials -> run_trial[0..n-1] (gpu, mapped) -> summarise
```

* **create_study** checks, validates and featurises the data window once, then creates (or
  reopens, on retry) the study; trials read that one feature file.
* A retried trial re-runs only its own index; the study's storage keeps finished trials.
* **summarise** writes all trials' results and the best trial as `best_params.yaml` plus the
  `{run_root}/hpo/latest/{config identity}.yaml` copy that the next `atft_retrain` of the same
  config trains with (`hpo.use_best_from: latest` in the default config; never promotes:
  promotion is the retrain DAG's gate).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task
from atft_airflow_utils import task_ctx
from jpx_timetable import TokyoCronTimetable

from atft_core.config import CONFIG_DIR

OWNER = "atft-mlops"
SCHEDULE = TokyoCronTimetable("0 3 * * 6", timezone="Asia/Tokyo")  # Saturday 03:00 JST
CONFIG_NAMES = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


@dag(
    dag_id="atft_hpo",
    schedule=SCHEDULE,
    start_date=pendulum.datetime(2024, 1, 6, tz="Asia/Tokyo"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=36),
    default_args={"owner": OWNER, "retries": 1, "retry_delay": timedelta(minutes=10)},
    params={
        "config": Param("default", type="string", enum=CONFIG_NAMES, title="Config",
                        description="YAML in include/configs"),
        "n_trials": Param(8, type="integer", minimum=1, maximum=64, title="Trials",
                          description="mapped trial tasks sharing one study"),
        "data_source": Param(None, type=["null", "string"], minLength=1, maxLength=1024,
                             title="Data source", description="parquet of quotes; null = config"),
        "overrides": Param([], type=["array", "null"], maxItems=32,
                           items={"type": "string", "pattern": r"^[a-z_][a-z0-9_.]*=.*$"},
                           title="Config overrides", description='dotted, e.g. "hpo.epochs_scale=0.5"'),
    },
    tags=["atft", "hpo", "optuna"],
    doc_md=__doc__,
)
def atft_hpo():
    @task
    def create_study(**context) -> dict:
        """Fresh-data check, validation and features once; then create the shared Optuna study."""
        from atft_core import pipeline

        return pipeline.hpo_create_study(task_ctx(context))

    @task
    def plan_trials(study: dict, **context) -> list[int]:
        """Trial indices 0..n_trials-1 to map over (n_trials is a bounded Param)."""
        return list(range(int(context["params"]["n_trials"])))

    @task(queue="gpu", pool="gpu", execution_timeout=timedelta(hours=4))
    def run_trial(study: dict, trial_index: int, **context) -> dict:
        """One Optuna trial of the shared study (mapped); reports val RankIC to the study."""
        from atft_core import pipeline

        return pipeline.hpo_run_trial(task_ctx(context), study, trial_index)

    @task
    def summarise(study: dict, trials: list, **context) -> dict:
        """Best parameters and every trial's result, written next to the run's work dir."""
        from atft_core import pipeline

        return pipeline.hpo_summarise(task_ctx(context), study, list(trials))

    study = create_study()
    # a mapped task does not take its docstring as doc_md by itself
    run_trial = run_trial.override(doc_md=run_trial.function.__doc__)
    trials = run_trial.partial(study=study).expand(trial_index=plan_trials(study))
    summarise(study, trials)


atft_hpo()
