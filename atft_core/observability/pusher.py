"""MetricsPusher: the typed per-stage methods, Pushgateway delivery and the textfile fallback.

See :mod:`atft_core.observability` for the decisions (grouping key, pushadd, fallback, backoff).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from prometheus_client.exposition import pushadd_to_gateway

from atft_core.config import MetricsConfig
from atft_core.observability.gateway import deadline_handler, get_json, resolve_gateway
from atft_core.observability.metric_table import (
    COUNTED_FAILURE_STATES,
    DECISIONS,
    FAILURE_STATES,
    METRICS,
    STAGES,
    SUCCESS_STATES,
    TASK_FAILURES,
    _horizon,
    _per_horizon,
    _registry,
    build_families,
)
from atft_core.observability.textfile import _safe, read_textfile_value, write_textfile

log = logging.getLogger("atft_core.observability")

TOKYO = ZoneInfo("Asia/Tokyo")
ENV_CTX_DAG = "AIRFLOW_CTX_DAG_ID"
ENV_CTX_TASK = "AIRFLOW_CTX_TASK_ID"


@dataclass(frozen=True)
class Delivery:
    """Where one push went. ``kind`` 'pushgateway' | 'textfile' | 'dropped' (error logged)."""

    kind: Literal["pushgateway", "textfile", "dropped"]
    where: str
    error: str | None = None

    def __str__(self) -> str:
        return self.where




def stale_deadline(data_day: dt.date, trading_days: int) -> float:
    """00:00 Asia/Tokyo after the ``trading_days``-th XTKS session following ``data_day``."""
    from atft_core import calendar as xtks

    day = xtks.previous_trading_day(data_day, inclusive=True)
    last_allowed = xtks.add_trading_days(day, trading_days)
    midnight = dt.datetime.combine(last_allowed + dt.timedelta(days=1), dt.time(0), tzinfo=TOKYO)
    return midnight.timestamp()


def _day_timestamp(day: dt.date | str) -> float:
    d = dt.date.fromisoformat(day) if isinstance(day, str) else day
    return dt.datetime.combine(d, dt.time(0), tzinfo=TOKYO).timestamp()


class MetricsPusher:
    """Push one stage's metrics to the Pushgateway (or the textfile fallback). See module doc.

    Args:
        cfg: ``Config.metrics``.
        job: Pushgateway ``job`` (default ``cfg.job``).
        dag_id, task_id: grouping key; default the Airflow task context, then ``"adhoc"`` / stage.
        environ: environment to read (tests); default ``os.environ``.
        clock: Unix-seconds clock (tests); default ``time.time``.
    """

    def __init__(self, cfg: MetricsConfig, job: str | None = None, dag_id: str | None = None,
                 task_id: str | None = None, *, environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.time):
        env = os.environ if environ is None else environ
        self.cfg = cfg
        self.job = job or cfg.job
        self.dag_id = dag_id or env.get(ENV_CTX_DAG) or "adhoc"
        self.task_id = task_id or env.get(ENV_CTX_TASK) or None  # None -> the stage name
        self.clock = clock
        self._gateway_down_until = 0.0
        self._stage_series: dict[tuple, dict[tuple, tuple]] = {}
        try:
            self.gateway = resolve_gateway(cfg, env)
        except ValueError as err:
            log.warning("metrics: ignoring the Pushgateway setting (%s); using the textfile", err)
            self.gateway = None

    # ---------------------------------------------------------------- plumbing
    def grouping(self, stage: str, dag_id: str | None = None, task_id: str | None = None) -> dict:
        return {"dag_id": dag_id or self.dag_id, "task_id": task_id or self.task_id or stage}

    def textfile_path(self, grouping: Mapping[str, str]) -> Path:
        name = f"atft__{_safe(self.job)}__{_safe(grouping['dag_id'])}__{_safe(grouping['task_id'])}.prom"
        return Path(self.cfg.textfile_dir) / name

    def _with_other_stages(self, group: Mapping[str, str], samples: list) -> list:
        """Re-send this group's ``stage``-labelled series of *other* stages.

        pushadd replaces a whole metric family in the group, so a task that reports two stages
        (``stage("train")`` then ``stage("evaluate")``) would otherwise keep only the last one.
        """
        key = tuple(sorted(group.items()))
        sent = self._stage_series.setdefault(key, {})
        new = {(n, tuple(sorted(lab.items()))): (n, lab, v) for n, lab, v in samples
               if "stage" in METRICS[n].labels}
        names = {n for n, _ in new}
        older = [v for k, v in sent.items() if k[0] in names and k not in new]
        sent.update(new)
        return older + samples

    def push(self, stage: str, samples: list[tuple[str, Mapping[str, str], float]], *,
             dag_id: str | None = None, task_id: str | None = None) -> Delivery:
        """Validate and deliver ``samples``; never raises for delivery problems."""
        build_families(samples)  # programming errors raise here, before any I/O
        group = self.grouping(stage, dag_id, task_id)
        samples = self._with_other_stages(group, samples)
        families = build_families(samples)
        gw = self.gateway
        if gw is not None and self.clock() >= self._gateway_down_until:
            try:
                pushadd_to_gateway(gw.url, job=self.job, registry=_registry(families),
                                   grouping_key=group, timeout=self.cfg.push_timeout_seconds,
                                   handler=deadline_handler(gw, self.cfg.push_timeout_seconds))
                return Delivery("pushgateway", gw.url)
            except Exception as err:  # noqa: BLE001 -- metrics must never fail the task
                self._gateway_down_until = self.clock() + self.cfg.retry_after_seconds
                log.warning("metrics: push to %s failed (%s); falling back to the textfile",
                            gw.url, err)
        path = self.textfile_path(group)
        try:
            write_textfile(path, build_families(samples, extra_labels=group))
            return Delivery("textfile", str(path))
        except Exception as err:  # noqa: BLE001
            log.warning("metrics: textfile %s not written (%s); metrics dropped", path, err)
            return Delivery("dropped", str(path), error=str(err))

    def previous_value(self, stage: str, name: str, dag_id: str | None = None,
                       task_id: str | None = None) -> float | None:
        """Last value of an unlabelled metric in this pusher's group (gateway, then textfile)."""
        group = self.grouping(stage, dag_id, task_id)
        gw = self.gateway
        if gw is not None and self.clock() >= self._gateway_down_until:
            try:
                data = get_json(gw, "/api/v1/metrics", self.cfg.push_timeout_seconds)["data"]
                want = {"job": self.job, **group}
                for g in data:
                    if {k: g["labels"].get(k) for k in want} == want and name in g:
                        return float(g[name]["metrics"][0]["value"])
                return None
            except Exception as err:  # noqa: BLE001
                # the push that follows would hit the same gateway: skip it for retry_after too
                self._gateway_down_until = self.clock() + self.cfg.retry_after_seconds
                log.warning("metrics: reading %s from %s failed (%s); using the textfile",
                            name, gw.url, err)
        try:
            return read_textfile_value(self.textfile_path(group), name)
        except Exception as err:  # noqa: BLE001
            log.warning("metrics: reading %s from the textfile failed (%s)", name, err)
            return None

    def _stage_samples(self, stage: str, success: bool, seconds: float | None) -> list:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; known: {STAGES}")
        out = [("atft_stage_success", {"stage": stage}, 1.0 if success else 0.0)]
        if seconds is not None:
            out.append(("atft_stage_duration_seconds", {"stage": stage}, float(seconds)))
        if success:  # only on success: a failure keeps the last success timestamp
            out.append(("atft_stage_last_success_timestamp_seconds", {"stage": stage}, self.clock()))
        return out

    # ---------------------------------------------------------------- typed stage methods
    def stage(self, stage: str, success: bool, seconds: float | None = None) -> Delivery:
        """End of any stage (``STAGES``): success flag, duration, last-success timestamp."""
        return self.push(stage, self._stage_samples(stage, success, seconds))

    def data_validation(self, success: bool, rows: int, latest_trading_day: dt.date | str | None,
                        bad_ticks: int, codes: int | None = None,
                        failed_expectations: int | None = None,
                        seconds: float | None = None) -> Delivery:
        s: list = [("atft_data_validation_success", {}, 1.0 if success else 0.0),
                   ("atft_data_rows", {}, rows), ("atft_data_bad_ticks", {}, bad_ticks)]
        if latest_trading_day is not None:
            s.append(("atft_data_latest_trading_day_timestamp_seconds", {},
                      _day_timestamp(latest_trading_day)))
        if codes is not None:
            s.append(("atft_data_codes", {}, codes))
        if failed_expectations is not None:
            s.append(("atft_data_failed_expectations", {}, failed_expectations))
        return self.push("validate", s + self._stage_samples("validate", success, seconds))

    def features(self, rows: int, seconds: float, columns: int | None = None) -> Delivery:
        s: list = [("atft_features_rows", {}, rows)]
        if columns is not None:
            s.append(("atft_features_columns", {}, columns))
        return self.push("features", s + self._stage_samples("features", True, seconds))

    def train_epoch(self, epoch: int, phase: int, samples_per_second: float,
                    val_rank_ic: Mapping[int | str, float], grad_norm: float,
                    val_gap_ratio: float, nan_steps_total: int, train_loss: float | None = None,
                    val_loss: float | None = None, learning_rate: float | None = None,
                    gpu_util: float | None = None, gpu_mem_bytes: float | None = None,
                    data_wait_ratio: float | None = None) -> Delivery:
        """Once per epoch. ``epoch`` is global and 1-based, ``phase`` the 0-based phase index,
        ``nan_steps_total`` the skipped steps so far in this run, ``gpu_util`` in 0..1."""
        if epoch < 0 or phase < 0 or nan_steps_total < 0:
            raise ValueError("epoch, phase and nan_steps_total must be >= 0")
        s: list = [("atft_train_epoch", {}, epoch), ("atft_train_phase", {}, phase),
                   ("atft_train_samples_per_second", {}, samples_per_second),
                   ("atft_train_grad_norm", {}, grad_norm),
                   ("atft_train_val_gap_ratio", {}, val_gap_ratio),
                   ("atft_train_nan_steps_total", {}, nan_steps_total),
                   ("atft_train_last_epoch_timestamp_seconds", {}, self.clock()),
                   *_per_horizon("atft_val_rank_ic", val_rank_ic)]
        for name, v in (("atft_train_loss", train_loss), ("atft_val_loss", val_loss),
                        ("atft_train_learning_rate", learning_rate),
                        ("atft_gpu_utilization_ratio", gpu_util),
                        ("atft_gpu_memory_bytes", gpu_mem_bytes),
                        ("atft_train_data_wait_ratio", data_wait_ratio)):
            if v is not None:
                s.append((name, {}, v))
        return self.push("train", s)

    def gate(self, decision: str, candidate_rank_ic: Mapping[int | str, float],
             champion_rank_ic: Mapping[int | str, float] | None, candidate_sharpe: float,
             champion_sharpe: float | None, min_rank_ic: float, min_sharpe: float,
             consecutive_rejections: int | None = None) -> Delivery:
        """The gate's decision (``DECISIONS``) and both models' holdout numbers.

        ``consecutive_rejections`` (rejections in a row including this one) is read back from
        the gateway/textfile and incremented when not given; a promotion resets it to 0.
        """
        if decision not in DECISIONS:
            raise ValueError(f"unknown gate decision {decision!r}; known: {DECISIONS}")
        if consecutive_rejections is None:
            if decision == "reject":
                prev = self.previous_value("gate", "atft_gate_rejections_consecutive")
                consecutive_rejections = int(prev or 0) + 1
            else:
                consecutive_rejections = 0
        s: list = [("atft_gate_decision", {"decision": d}, 1.0 if d == decision else 0.0)
                   for d in DECISIONS]
        s += _per_horizon("atft_candidate_rank_ic", candidate_rank_ic)
        s += [("atft_candidate_sharpe", {}, candidate_sharpe),
              ("atft_gate_min_rank_ic", {}, min_rank_ic), ("atft_gate_min_sharpe", {}, min_sharpe),
              ("atft_gate_rejections_consecutive", {}, consecutive_rejections)]
        if champion_rank_ic:
            s += _per_horizon("atft_champion_rank_ic", champion_rank_ic)
        if champion_sharpe is not None:
            s.append(("atft_champion_sharpe", {}, champion_sharpe))
        if decision != "reject":
            s.append(("atft_gate_last_promotion_timestamp_seconds", {}, self.clock()))
        return self.push("gate", s + self._stage_samples("gate", True, None))

    def publish(self, success: bool, bytes: int, seconds: float) -> Delivery:  # noqa: A002
        s: list = [("atft_publish_success", {}, 1.0 if success else 0.0)]
        if success:
            s += [("atft_publish_bytes", {}, bytes),
                  ("atft_publish_last_success_timestamp_seconds", {}, self.clock())]
        return self.push("publish", s + self._stage_samples("publish", success, seconds))

    def retrain_success(self, data_day: dt.date | str | None = None) -> Delivery:
        """The nightly run completed. ``data_day`` = the trading day of its data (default: the
        latest XTKS session on or before today in Tokyo)."""
        now = self.clock()
        if data_day is None:
            data_day = dt.datetime.fromtimestamp(now, TOKYO).date()
        elif isinstance(data_day, str):
            data_day = dt.date.fromisoformat(data_day)
        s: list = [("atft_retrain_last_success_timestamp_seconds", {}, now)]
        try:
            deadline = stale_deadline(data_day, self.cfg.stale_after_trading_days)
        except ValueError as err:  # outside the calendar: calendar days, weekends counted
            log.warning("metrics: XTKS calendar cannot date the stale deadline (%s)", err)
            deadline = _day_timestamp(data_day) + 86400 * (self.cfg.stale_after_trading_days + 3)
        s.append(("atft_retrain_stale_after_timestamp_seconds", {}, deadline))
        return self.push("retrain", s)

    # ---------------------------------------------------------------- serving (atft_score)
    def signal_published(self, day: dt.date | str) -> Delivery:
        """The champion's signal of trading day ``day`` was published: when, which day, and when
        the next one is overdue -- 08:30 JST of the session after the next (the signal of the
        next session D+1 must be there before the market of D+2 opens; XTKS calendar)."""
        from atft_core import calendar as xtks

        d = dt.date.fromisoformat(day) if isinstance(day, str) else day
        due = dt.datetime.combine(xtks.add_trading_days(d, 2), dt.time(8, 30), tzinfo=TOKYO)
        return self.push("score", [
            ("atft_signal_last_published_timestamp_seconds", {}, self.clock()),
            ("atft_signal_day_timestamp_seconds", {}, _day_timestamp(d)),
            ("atft_signal_next_due_timestamp_seconds", {}, due.timestamp()),
        ])

    def drift(self, feature_psi: Mapping[str, float], prediction_psi: Mapping[int | str, float]) -> Delivery:
        """PSI of the day's features (by name) and predictions (by horizon) vs the training window."""
        s: list = [("atft_feature_psi", {"feature": str(k)}, v) for k, v in feature_psi.items()]
        if prediction_psi:
            s += _per_horizon("atft_prediction_psi", prediction_psi)
        return self.push("score", s)

    def live_metrics(self, rows: list[Mapping], signal_age_sessions: float) -> Delivery:
        """Live performance rows (``atft_core.serving.monitor.rolling``: role, horizon, window,
        rank_ic, ls_return, icir, hit_rate, ls_cum on "cum") and the champion signal's age."""
        s: list = [("atft_live_signal_age_sessions", {}, signal_age_sessions)]
        for r in rows:
            lab = {"horizon": _horizon(r["horizon"]), "window": str(r["window"]), "role": str(r["role"])}
            s.append(("atft_live_rank_ic", lab, r["rank_ic"]))
            s.append(("atft_live_long_short_return", lab,
                      r["ls_cum"] if r["window"] == "cum" else r["ls_return"]))
            if r["window"] not in ("1d", "cum"):
                s.append(("atft_live_rank_icir", lab, r["icir"]))
                s.append(("atft_live_hit_rate", lab, r["hit_rate"]))
        return self.push("monitor", s)

    def task_result(self, dag_id: str, task_id: str, state: str) -> Delivery:
        """An Airflow task instance finished (listener). Pushed into that task's own group.

        ``success`` -> success 1 + last-success timestamp; ``failed``/``up_for_retry``/
        ``upstream_failed`` -> success 0 + last-failure timestamp, and ``failed``/``up_for_retry``
        also add one to ``atft_task_failures_total`` (see :meth:`task_failure`); any other state
        (skipped, removed, ...) is not recorded and returns ``Delivery("dropped", "", error=...)``.
        """
        state = str(state).lower().rsplit(".", 1)[-1]  # accepts TaskInstanceState.SUCCESS too
        if state in SUCCESS_STATES:
            s = [("atft_task_success", {}, 1.0),
                 ("atft_task_last_success_timestamp_seconds", {}, self.clock())]
        elif state in FAILURE_STATES:
            s = [("atft_task_success", {}, 0.0),
                 ("atft_task_last_failure_timestamp_seconds", {}, self.clock())]
            if state in COUNTED_FAILURE_STATES:
                s.append((TASK_FAILURES, {}, self._next_failure_count(dag_id, task_id)))
        else:
            return Delivery("dropped", "", error=f"state {state!r} is not recorded")
        return self.push("retrain", s, dag_id=dag_id, task_id=task_id)

    def task_failure(self, dag_id: str, task_id: str) -> Delivery:
        """Count one failed try of ``dag_id.task_id``: ``atft_task_failures_total`` + 1.

        The count lives in the task's own group (Pushgateway or textfile) and is read back and
        incremented, so it grows across runs like a counter (a Pushgateway restart without
        persistence resets it, which ``increase()`` treats as a counter reset)."""
        return self.task_result(dag_id, task_id, "failed")

    def _next_failure_count(self, dag_id: str, task_id: str) -> float:
        prev = self.previous_value("retrain", TASK_FAILURES, dag_id=dag_id, task_id=task_id)
        return float(prev or 0.0) + 1.0


def record_task_failure(cfg: MetricsConfig, dag_id: str, task_id: str, *,
                        environ: Mapping[str, str] | None = None) -> Delivery:
    """One failed Airflow task try -> ``atft_task_failures_total{dag_id,task_id}`` + 1 (plus
    ``atft_task_success`` 0 and the last-failure timestamp). Never raises for delivery problems;
    the listener plugin calls this (or ``MetricsPusher.task_result(dag, task, "failed")``)."""
    return MetricsPusher(cfg, environ=environ).task_failure(dag_id, task_id)
