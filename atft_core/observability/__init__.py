"""Prometheus metrics for every stage: one metric table, Pushgateway push, textfile fallback.

Every metric the project emits is declared once in :data:`METRICS` (name, type, help, labels), so
HELP/TYPE never disagree between pushes (the Pushgateway rejects a push whose HELP differs from a
metric already held in another group) and the dashboards/alerts can be cross-checked against it.

Public API (stable; the DAG tasks, the trainer and the Airflow listener call it)::

    pusher = MetricsPusher(cfg.metrics, job=None, dag_id=None, task_id=None)
    pusher.data_validation(success, rows, latest_trading_day, bad_ticks,
                           codes=None, failed_expectations=None, seconds=None) -> Delivery
    pusher.features(rows, seconds, columns=None) -> Delivery
    pusher.train_epoch(epoch, phase, samples_per_second, val_rank_ic, grad_norm, val_gap_ratio,
                       nan_steps_total, train_loss=None, val_loss=None, learning_rate=None,
                       gpu_util=None, gpu_mem_bytes=None) -> Delivery      # call once per epoch
    pusher.stage(stage, success, seconds) -> Delivery                  # any stage's end
    pusher.gate(decision, candidate_rank_ic, champion_rank_ic, candidate_sharpe,
                champion_sharpe, min_rank_ic, min_sharpe, consecutive_rejections=None) -> Delivery
    pusher.publish(success, bytes, seconds) -> Delivery
    pusher.retrain_success(data_day=None) -> Delivery                  # end of a good nightly run
    pusher.task_result(dag_id, task_id, state) -> Delivery             # Airflow listener
    pusher.task_failure(dag_id, task_id) -> Delivery                   # atft_task_failures_total + 1
    record_task_failure(cfg.metrics, dag_id, task_id) -> Delivery       # the same, one call

Modules: :mod:`.metric_table` (the declared metrics), :mod:`.gateway` (where to push; HTTP with a
total deadline), :mod:`.textfile` (node-exporter fallback), :mod:`.pusher` (:class:`MetricsPusher`).
This package re-exports them, so ``from atft_core.observability import ...`` keeps working.

``Delivery.where`` is the Pushgateway URL or the textfile path the metrics went to.

Decisions (SPEC 9 leaves these open):

* **Where to push.** ``cfg.metrics.pushgateway_url`` if set, else env ``ATFT_PUSHGATEWAY_URL``, else
  the Airflow connection ``atft_pushgateway`` read from env ``AIRFLOW_CONN_ATFT_PUSHGATEWAY``
  (URI ``http://user:pass@host:9091`` or Airflow's JSON form; Airflow itself is never imported),
  else no gateway: the textfile ``{textfile_dir}/atft__{job}__{dag_id}__{task_id}.prom``.
  An explicit config wins over the environment (SPEC 12: no env var silently overriding config).
* **Grouping key** is ``{job, dag_id, task_id}``. ``dag_id``/``task_id`` default to the Airflow task
  context (env ``AIRFLOW_CTX_DAG_ID`` / ``AIRFLOW_CTX_TASK_ID``, set by Airflow in task processes)
  and then to ``"adhoc"`` / the stage name, so CLI runs of different stages do not overwrite one
  another's metrics.
* **pushadd, never push.** ``pushadd`` replaces only the metric names of this push inside the group,
  so a failed run (which does not send ``..._last_success_timestamp_seconds``) leaves the last
  success in place. Every call builds a fresh ``CollectorRegistry`` holding only that call's
  families: nothing leaks between tasks or calls. (One exception, inside one pusher: series with a
  ``stage`` label of other stages already sent to the same group are re-sent, because pushadd
  replaces the whole family and a task reporting two stages would otherwise keep only the last.)
* **Counters from short-lived processes.** A ``_total`` pushed here (``atft_train_nan_steps_total``)
  is the count *within the current run*: it grows epoch by epoch and restarts at 0 with the next
  run. Alerts therefore compare its value (``> 0``: the latest run had NaN steps) instead of
  ``rate()``. Task failures are counted by ``atft_task_failures_total`` (one group per task, read
  back and incremented by the listener, so it grows across runs), and Airflow's own StatsD
  counters (``airflow_ti_failures_total``) are real monotonic counters.
* **Never fail the caller, never hang it.** ``push_timeout_seconds`` is the total deadline of a
  request (connect to last byte; a trickling gateway is cut off). Any error (gateway down, bad
  URL, unwritable dir, deadline) is logged as one warning line. A failed push falls back to the textfile; the gateway is then skipped for
  ``retry_after_seconds`` so a blackholed gateway cannot add a timeout to every training epoch.
  Wrong *arguments* (an unknown stage or decision, a missing horizon) are programming errors and
  raise ``ValueError`` at the call site.
* **Textfile** follows node-exporter's textfile-collector format, merges like ``pushadd`` (families
  of this push replace the same names in the file, others stay), carries ``dag_id``/``task_id`` as
  labels (``job`` would clash with the scrape job) and is written atomically (temp, fsync, rename)
  under an ``flock``.
* **Retrain staleness** needs the JPX calendar, which PromQL does not have. ``retrain_success``
  therefore also pushes ``atft_retrain_stale_after_timestamp_seconds``: 00:00 Asia/Tokyo after the
  ``stale_after_trading_days``-th XTKS session following the data day, so "no successful retrain
  for more than 2 trading days" is ``time() > that`` in the alert, exact across Golden Week and the
  year-end closure.
"""

from __future__ import annotations

from atft_core.observability.gateway import (
    ENV_AIRFLOW_CONN,
    ENV_URL,
    DeadlineExceeded,
    Gateway,
    parse_airflow_connection,
    request_with_deadline,
    resolve_gateway,
)
from atft_core.observability.metric_table import (
    DECISIONS,
    FAILURE_STATES,
    METRICS,
    STAGES,
    SUCCESS_STATES,
    TASK_FAILURES,
    MetricSpec,
    build_families,
    render,
)
from atft_core.observability.pusher import (
    ENV_CTX_DAG,
    ENV_CTX_TASK,
    TOKYO,
    Delivery,
    MetricsPusher,
    record_task_failure,
    stale_deadline,
)
from atft_core.observability.textfile import read_textfile_value, write_textfile

__all__ = [
    "DECISIONS", "ENV_AIRFLOW_CONN", "ENV_CTX_DAG", "ENV_CTX_TASK", "ENV_URL", "FAILURE_STATES",
    "METRICS", "STAGES", "SUCCESS_STATES", "TASK_FAILURES", "TOKYO", "DeadlineExceeded",
    "Delivery", "Gateway", "MetricSpec", "MetricsPusher", "build_families",
    "parse_airflow_connection", "read_textfile_value", "record_task_failure", "render",
    "request_with_deadline", "resolve_gateway", "stale_deadline", "write_textfile",
]
