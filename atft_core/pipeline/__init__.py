"""The DAG tasks' functions (``tasks``, ``maintenance``) over one :class:`RunContext` per task.

``from atft_core import pipeline; pipeline.train_candidate(ctx, ...)`` -- see the modules.
Nothing here imports Airflow.
"""

from atft_core.pipeline.maintenance import hpo_create_study, hpo_run_trial, hpo_summarise, rollback
from atft_core.pipeline.run_context import (
    LOSS_WEIGHT_PARAMS,
    PARAM_TO_CONFIG,
    RunConfError,
    RunContext,
    _safe,  # noqa: F401 -- atft_core.ingest_pipeline names its work dirs with it
    check_conf_keys,
    config_from_params,
    metrics_config_for,
)
from atft_core.pipeline.tasks import (
    DataNotFresh,
    build_features,
    check_fresh_data,
    day_already_retrained,
    epoch_metrics_hook,
    evaluate_holdout,
    gate,
    publish,
    report_metrics,
    retrain_summary,
    score_on_holdout,
    train_candidate,
    validate_conf,
    validate_data,
)


def task_config(ctx):
    """The typed config of a task's run (``RunContext.build(ctx).config``)."""
    return RunContext.build(ctx).config


def work_dir(ctx, cfg=None):
    """The run's work dir, created (``RunContext.build(ctx).ensure_work_dir()``; ``cfg`` is
    accepted for the older call form and ignored: the context decides)."""
    return RunContext.build(ctx).ensure_work_dir()


__all__ = [
    "LOSS_WEIGHT_PARAMS", "PARAM_TO_CONFIG", "DataNotFresh", "RunConfError", "RunContext",
    "build_features", "check_conf_keys", "check_fresh_data", "day_already_retrained", "config_from_params",
    "epoch_metrics_hook", "evaluate_holdout", "gate", "hpo_create_study", "hpo_run_trial",
    "hpo_summarise", "metrics_config_for", "publish", "report_metrics", "retrain_summary",
    "rollback", "score_on_holdout", "task_config", "train_candidate", "validate_conf",
    "validate_data", "work_dir",
]
