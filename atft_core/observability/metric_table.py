"""The metric table: every Prometheus metric atft emits, declared once (name, type, help, labels).

HELP/TYPE never disagree between pushes (the Pushgateway rejects a push whose HELP differs from
a metric already held in another group) and dashboards/alerts are cross-checked against it.
:func:`build_families` turns ``(name, labels, value)`` triples into families, refusing anything
undeclared; :func:`render` gives the text exposition.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

# Low-cardinality label values (a typo must not create a new series).
STAGES = ("validate", "features", "train", "evaluate", "gate", "publish", "retrain")
DECISIONS = ("promote", "reject", "force")
SUCCESS_STATES = ("success",)
FAILURE_STATES = ("failed", "up_for_retry", "upstream_failed")
# tries of the task itself that failed (upstream_failed: the task never ran, not its failure)
COUNTED_FAILURE_STATES = ("failed", "up_for_retry")
TASK_FAILURES = "atft_task_failures_total"


@dataclass(frozen=True)
class MetricSpec:
    """One metric: Prometheus name (base units, ``_total`` for counters), type, help, labels."""

    name: str
    kind: Literal["gauge", "counter"]
    help: str
    labels: tuple[str, ...] = ()


def _g(name: str, help_: str, *labels: str) -> MetricSpec:
    return MetricSpec(name, "gauge", help_, labels)


_SPECS = (
    # data validation (GX) ------------------------------------------------------------------
    _g("atft_data_validation_success", "1 if the latest data validation passed, else 0."),
    _g("atft_data_rows", "Rows (stock-days) in the validated quotes window."),
    _g("atft_data_codes", "Distinct stock codes on the latest trading day of the data."),
    _g("atft_data_latest_trading_day_timestamp_seconds",
       "Latest trading day in the data, as 00:00 Asia/Tokyo of that day (Unix seconds)."),
    _g("atft_data_bad_ticks", "Rows flagged as bad ticks by validation in the window."),
    _g("atft_data_failed_expectations", "Great Expectations expectations that failed."),
    # features -------------------------------------------------------------------------------
    _g("atft_features_rows", "Rows (stock-days) in the built feature table."),
    _g("atft_features_columns", "Feature columns in the built feature table."),
    # training (pushed every epoch) -----------------------------------------------------------
    _g("atft_train_epoch", "Global epoch number (1-based) of the running training."),
    _g("atft_train_phase", "Index (0-based) of the running training phase."),
    _g("atft_train_samples_per_second", "Training throughput in stock-day samples per second."),
    _g("atft_train_loss", "Mean training loss of the last epoch."),
    _g("atft_val_loss", "Mean validation loss of the last epoch."),
    _g("atft_val_rank_ic", "Validation RankIC (mean daily Spearman) of the last epoch.", "horizon"),
    _g("atft_train_learning_rate", "Optimizer learning rate at the end of the last epoch."),
    _g("atft_train_grad_norm", "Mean gradient L2 norm before clipping (healthy below ~10)."),
    _g("atft_train_val_gap_ratio",
       "(train metric - val metric) / |train metric|; overfitting above ~0.2."),
    MetricSpec("atft_train_nan_steps_total", "counter",
               "Optimizer steps skipped for non-finite loss/grad in the current run."),
    _g("atft_train_last_epoch_timestamp_seconds", "When the last epoch finished (Unix seconds)."),
    _g("atft_train_data_wait_ratio",
       "Share of the last epoch's step time spent waiting for data (0..1; compute is the rest)."),
    _g("atft_gpu_utilization_ratio", "GPU utilization during the last epoch (0..1)."),
    _g("atft_gpu_memory_bytes", "Peak GPU memory allocated during the last epoch."),
    # any stage ------------------------------------------------------------------------------
    _g("atft_stage_success", "1 if the stage's last run succeeded, else 0.", "stage"),
    _g("atft_stage_duration_seconds", "Wall time of the stage's last run.", "stage"),
    _g("atft_stage_last_success_timestamp_seconds", "When the stage last succeeded.", "stage"),
    # promotion gate -------------------------------------------------------------------------
    _g("atft_gate_decision", "1 for the gate's latest decision, 0 for the others.", "decision"),
    _g("atft_candidate_rank_ic", "Candidate RankIC on the gate's holdout window.", "horizon"),
    _g("atft_champion_rank_ic", "Champion RankIC on the gate's holdout window.", "horizon"),
    _g("atft_candidate_sharpe", "Candidate 1-day long-short Sharpe on the holdout (annualised)."),
    _g("atft_champion_sharpe", "Champion 1-day long-short Sharpe on the holdout (annualised)."),
    _g("atft_gate_min_rank_ic", "Gate threshold on RankIC@1d (config gate.min_rank_ic)."),
    _g("atft_gate_min_sharpe", "Gate threshold on Sharpe@1d (config gate.min_sharpe)."),
    _g("atft_gate_rejections_consecutive", "Gate rejections in a row since the last promotion."),
    _g("atft_gate_last_promotion_timestamp_seconds", "When the gate last promoted a model."),
    # publish --------------------------------------------------------------------------------
    _g("atft_publish_success", "1 if the last publish succeeded, else 0."),
    _g("atft_publish_bytes", "Bytes written by the last successful publish."),
    _g("atft_publish_last_success_timestamp_seconds", "When a model version was last published."),
    # whole retrain --------------------------------------------------------------------------
    _g("atft_retrain_last_success_timestamp_seconds",
       "When the nightly retrain last ran to completion (candidate trained, evaluated, gated)."),
    _g("atft_retrain_stale_after_timestamp_seconds",
       "Deadline after which the retrain is stale (N JPX trading days without success)."),
    # serving: daily signals, live metrics, drift (atft_core.serving) ---------------------------
    _g("atft_live_rank_ic", "Live RankIC of the published signals once labels matured "
       "(window: 1d = latest day, 20d/60d = rolling mean, cum = all days).", "horizon", "window", "role"),
    _g("atft_live_long_short_return", "Live top/bottom-20% long-short return of the signals "
       "(1d: latest day, 20d/60d: rolling daily mean, cum: summed).", "horizon", "window", "role"),
    _g("atft_live_rank_icir", "Live RankIC mean / std over the window.", "horizon", "window", "role"),
    _g("atft_live_hit_rate", "Live share of stock-days on the right side of the day's mean.",
       "horizon", "window", "role"),
    _g("atft_live_signal_age_sessions",
       "JPX sessions between the newest champion signal and the latest session (0 = current; a count, not a time unit)."),
    _g("atft_signal_last_published_timestamp_seconds", "When a champion signal was last published."),
    _g("atft_signal_day_timestamp_seconds",
       "Trading day of the newest champion signal, as 00:00 Asia/Tokyo (Unix seconds)."),
    _g("atft_signal_next_due_timestamp_seconds",
       "08:30 Asia/Tokyo of the session after the next one: when the next signal is overdue."),
    _g("atft_feature_psi", "PSI of the day's feature vs the champion's training window.", "feature"),
    _g("atft_prediction_psi", "PSI of the day's predictions vs the champion's validation window.",
       "horizon"),
    # Airflow task results (listener) --------------------------------------------------------
    _g("atft_task_success", "1 if the task's last try succeeded, else 0."),
    _g("atft_task_last_success_timestamp_seconds", "When the task last succeeded."),
    _g("atft_task_last_failure_timestamp_seconds", "When the task last failed (or retried)."),
    # grouping key {job, dag_id, task_id} gives atft_task_failures_total{dag_id,task_id}
    MetricSpec(TASK_FAILURES, "counter",
               "Failed (or retried) tries of the Airflow task, counted by the listener."),
)
METRICS: dict[str, MetricSpec] = {s.name: s for s in _SPECS}


def _check_finite_or_nan(name: str, value: float) -> float:
    v = float(value)
    if math.isinf(v):
        raise ValueError(f"{name}: value {value} is infinite")
    return v  # NaN is legal in the exposition and marks "not computable"


def build_families(samples: Iterable[tuple[str, Mapping[str, str], float]],
                   extra_labels: Mapping[str, str] | None = None) -> list[Metric]:
    """Turn ``(name, labels, value)`` triples into metric families using :data:`METRICS`.

    Raises ValueError for an undeclared metric or labels that differ from its declaration.
    """
    extra = dict(extra_labels or {})
    fams: dict[str, Metric] = {}
    for name, labels, value in samples:
        spec = METRICS.get(name)
        if spec is None:
            raise ValueError(f"metric {name!r} is not declared in atft_core.observability.METRICS")
        if tuple(sorted(labels)) != tuple(sorted(spec.labels)):
            raise ValueError(f"metric {name}: labels {sorted(labels)} != declared {list(spec.labels)}")
        names = [*spec.labels, *extra]
        if name not in fams:
            cls = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
            fams[name] = cls(name, spec.help, labels=names)
        fam = fams[name]
        fam.add_metric([str(labels[k]) for k in spec.labels] + list(extra.values()),
                       _check_finite_or_nan(name, value))
    return list(fams.values())


class _StaticCollector:
    """Collector over a fixed list of families (one per push: no shared state)."""

    def __init__(self, families: list[Metric]):
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def _registry(families: list[Metric]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_StaticCollector(families))
    return reg


def render(families: list[Metric]) -> str:
    """Prometheus text exposition of the families (what the textfile holds)."""
    return generate_latest(_registry(families)).decode()


def _horizon(h: int | str) -> str:
    s = str(h).removesuffix("d")
    if not s.isdigit() or int(s) < 1:
        raise ValueError(f"horizon {h!r} is not a positive number of days")
    return f"{int(s)}d"


def _per_horizon(name: str, values: Mapping[int | str, float]) -> list[tuple[str, dict, float]]:
    if not values:
        raise ValueError(f"{name}: empty per-horizon mapping")
    return [(name, {"horizon": _horizon(h)}, v) for h, v in values.items()]
