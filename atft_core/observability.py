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
  ``rate()``. Task failures over time are counted with ``changes()`` of
  ``atft_task_last_failure_timestamp_seconds``, and Airflow's own StatsD counters
  (``airflow_ti_failures_total``) are real monotonic counters.
* **Never fail the caller.** Any error (gateway down, bad URL, unwritable dir) is logged as a
  warning. A failed push falls back to the textfile; the gateway is then skipped for
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

import base64
import datetime as dt
import fcntl
import json
import logging
import math
import os
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import basic_auth_handler, default_handler, pushadd_to_gateway
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from atft_core.atomic import atomic_write_text
from atft_core.config import MetricsConfig

log = logging.getLogger(__name__)

TOKYO = ZoneInfo("Asia/Tokyo")
ENV_URL = "ATFT_PUSHGATEWAY_URL"
ENV_AIRFLOW_CONN = "AIRFLOW_CONN_ATFT_PUSHGATEWAY"
ENV_CTX_DAG = "AIRFLOW_CTX_DAG_ID"
ENV_CTX_TASK = "AIRFLOW_CTX_TASK_ID"

# Low-cardinality label values (a typo must not create a new series).
STAGES = ("validate", "features", "train", "evaluate", "gate", "publish", "retrain")
DECISIONS = ("promote", "reject", "force")
SUCCESS_STATES = ("success",)
FAILURE_STATES = ("failed", "up_for_retry", "upstream_failed")


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
    # Airflow task results (listener) --------------------------------------------------------
    _g("atft_task_success", "1 if the task's last try succeeded, else 0."),
    _g("atft_task_last_success_timestamp_seconds", "When the task last succeeded."),
    _g("atft_task_last_failure_timestamp_seconds", "When the task last failed (or retried)."),
)
METRICS: dict[str, MetricSpec] = {s.name: s for s in _SPECS}


@dataclass(frozen=True)
class Delivery:
    """Where one push went. ``kind`` 'pushgateway' | 'textfile' | 'dropped' (error logged)."""

    kind: Literal["pushgateway", "textfile", "dropped"]
    where: str
    error: str | None = None

    def __str__(self) -> str:
        return self.where


@dataclass(frozen=True)
class Gateway:
    """A resolved Pushgateway: URL (scheme://host:port[/prefix]), optional basic auth, source."""

    url: str
    username: str | None = None
    password: str | None = None
    source: str = "config"


# --------------------------------------------------------------------------- gateway resolution
def parse_airflow_connection(value: str) -> Gateway:
    """Parse an Airflow connection (URI or JSON form) into a :class:`Gateway`.

    ``http://host:9091``, ``https://u:p@host``, ``http://host:9091/https`` (Airflow puts the HTTP
    scheme in ``schema``), ``{"conn_type": "http", "host": "h", "port": 9091, "schema": "https"}``.
    """
    value = value.strip()
    if not value:
        raise ValueError(f"{ENV_AIRFLOW_CONN} is empty")
    if value.startswith("{"):
        try:
            d = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"{ENV_AIRFLOW_CONN}: invalid JSON: {err}") from None
        conn_type, host, port = d.get("conn_type") or "http", d.get("host"), d.get("port")
        schema, login, password = d.get("schema"), d.get("login"), d.get("password")
    else:
        u = urllib.parse.urlsplit(value)
        conn_type, host, port = u.scheme, u.hostname, u.port
        schema = urllib.parse.unquote(u.path.lstrip("/")) or None
        login = urllib.parse.unquote(u.username) if u.username else None
        password = urllib.parse.unquote(u.password) if u.password else None
    if not host:
        raise ValueError(f"{ENV_AIRFLOW_CONN}: no host in the connection")
    if "://" in host:  # host already carries the scheme
        base = host.rstrip("/")
    else:
        scheme = schema if schema in ("http", "https") else ("https" if conn_type == "https" else "http")
        base = f"{scheme}://{host}"
    if port:
        base = f"{base}:{int(port)}"
    return Gateway(base, login, password, source=ENV_AIRFLOW_CONN)


def resolve_gateway(cfg: MetricsConfig, environ: Mapping[str, str] | None = None) -> Gateway | None:
    """Config, then ``ATFT_PUSHGATEWAY_URL``, then the Airflow connection; None -> textfile."""
    env = os.environ if environ is None else environ
    if cfg.pushgateway_url:
        return Gateway(cfg.pushgateway_url.rstrip("/"), source="config")
    if env.get(ENV_URL, "").strip():
        return Gateway(env[ENV_URL].strip().rstrip("/"), source=ENV_URL)
    if env.get(ENV_AIRFLOW_CONN, "").strip():
        return parse_airflow_connection(env[ENV_AIRFLOW_CONN])
    return None


# --------------------------------------------------------------------------- families
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


# --------------------------------------------------------------------------- textfile
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _safe(part: str) -> str:
    return _SAFE.sub("_", part) or "_"


def _family_key(fam: Metric) -> str:
    # the parser names a counter family without "_total"; the builder strips it too
    return fam.name


def write_textfile(path: Path, families: list[Metric]) -> None:
    """Merge ``families`` into the textfile at ``path`` with pushadd semantics, atomically.

    Families in ``families`` replace families of the same name in the file; the rest stay.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        new = {_family_key(f): f for f in families}
        kept: list[Metric] = []
        if path.exists():
            try:
                kept = [f for f in text_string_to_metric_families(path.read_text())
                        if _family_key(f) not in new]
            except (ValueError, OSError) as err:  # a corrupt file is replaced, not merged
                log.warning("metrics textfile %s unreadable (%s); rewriting it", path, err)
        text = render(sorted([*kept, *new.values()], key=_family_key))
        atomic_write_text(path, text, mode=0o644)  # node-exporter usually runs as another user


def read_textfile_value(path: Path, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """The value of sample ``name`` (matching ``labels``) in a textfile, or None."""
    if not path.exists():
        return None
    for fam in text_string_to_metric_families(path.read_text()):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                return float(s.value)
    return None


# --------------------------------------------------------------------------- the pusher
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


def _horizon(h: int | str) -> str:
    s = str(h).removesuffix("d")
    if not s.isdigit() or int(s) < 1:
        raise ValueError(f"horizon {h!r} is not a positive number of days")
    return f"{int(s)}d"


def _per_horizon(name: str, values: Mapping[int | str, float]) -> list[tuple[str, dict, float]]:
    if not values:
        raise ValueError(f"{name}: empty per-horizon mapping")
    return [(name, {"horizon": _horizon(h)}, v) for h, v in values.items()]


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

    def _handler(self):
        gw = self.gateway
        if gw is not None and gw.username:
            def handler(url, method, timeout, headers, data):
                return basic_auth_handler(url, method, timeout, headers, data,
                                          gw.username, gw.password or "")
            return handler
        return default_handler

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
                                   handler=self._handler())
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

    def previous_value(self, stage: str, name: str) -> float | None:
        """Last value of an unlabelled metric in this pusher's group (gateway, then textfile)."""
        group = self.grouping(stage)
        gw = self.gateway
        if gw is not None and self.clock() >= self._gateway_down_until:
            try:
                req = urllib.request.Request(f"{gw.url}/api/v1/metrics")
                if gw.username:
                    tok = base64.b64encode(f"{gw.username}:{gw.password or ''}".encode()).decode()
                    req.add_header("Authorization", f"Basic {tok}")
                with urllib.request.urlopen(req, timeout=self.cfg.push_timeout_seconds) as r:
                    data = json.load(r)["data"]
                want = {"job": self.job, **group}
                for g in data:
                    if {k: g["labels"].get(k) for k in want} == want and name in g:
                        return float(g[name]["metrics"][0]["value"])
                return None
            except Exception as err:  # noqa: BLE001
                log.warning("metrics: reading %s from %s failed (%s)", name, gw.url, err)
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
                    gpu_util: float | None = None, gpu_mem_bytes: float | None = None) -> Delivery:
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
                        ("atft_gpu_memory_bytes", gpu_mem_bytes)):
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

    def task_result(self, dag_id: str, task_id: str, state: str) -> Delivery:
        """An Airflow task instance finished (listener). Pushed into that task's own group.

        ``success`` -> success 1 + last-success timestamp; ``failed``/``up_for_retry``/
        ``upstream_failed`` -> success 0 + last-failure timestamp; any other state (skipped,
        removed, ...) is not recorded and returns ``Delivery("dropped", "", error=...)``.
        """
        state = str(state).lower().rsplit(".", 1)[-1]  # accepts TaskInstanceState.SUCCESS too
        if state in SUCCESS_STATES:
            s = [("atft_task_success", {}, 1.0),
                 ("atft_task_last_success_timestamp_seconds", {}, self.clock())]
        elif state in FAILURE_STATES:
            s = [("atft_task_success", {}, 0.0),
                 ("atft_task_last_failure_timestamp_seconds", {}, self.clock())]
        else:
            return Delivery("dropped", "", error=f"state {state!r} is not recorded")
        return self.push("retrain", s, dag_id=dag_id, task_id=task_id)
