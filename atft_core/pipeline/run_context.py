"""One run's identity, built once per task: Airflow run id, trading day, typed config, paths,
endpoints. Every task function starts with ``rc = RunContext.build(ctx)`` and takes every path,
id and endpoint from ``rc`` -- nothing else derives them.

``ctx`` is the plain dict the DAG builds from the Airflow context (``plugins/atft_airflow_utils``)::

    {"dag_id", "run_id", "data_interval_start", "data_interval_end", "as_of" (YYYY-MM-DD, Tokyo),
     "params": {...the run's Params...}, "try_number",
     "conf": {...the trigger conf as given...},           # optional: unknown keys are refused
     "param_names": [...the DAG's declared Params...],    # optional, with "conf"
     "endpoints": {...}}                                  # optional: resolved by Airflow hooks

Decisions (the issue asked for these; SPEC is silent):
* **Identity** of a run's model = :func:`atft_core.config.model_identity_hash` (data window,
  features, model, train, ...; not endpoints, roots or gate thresholds). A retry after an
  endpoint change resumes; a manual run with another config never touches the scheduled one's
  files.
* **Paths are keyed by the run**: ``{work_root}/{dag_id}/{day}/{airflow run id}.{identity[:8]}``
  (the day first, for humans). Two runs of one trading day -- a scheduled run and a manual
  ``test``-config run -- share nothing. The training run id is
  ``{day:%Y%m%d}-{identity[:8]}-{sha256(airflow run id)[:6]}``.
* **Endpoints**: inside Airflow the DAG resolves connections with Airflow's own hooks and puts
  the result in ``ctx["endpoints"]``; outside Airflow (CLI, tests) the environment is read
  (``ATFT_REGISTRY``, ``ATFT_PUSHGATEWAY_URL``; ``AIRFLOW_CONN_*`` URIs by the registry and
  observability modules themselves). ``ATFT_REGISTRY`` / ``ATFT_PUSHGATEWAY_URL`` win in both.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from atft_core import calendar
from atft_core.config import (
    Config,
    ConfigError,
    apply_overrides,
    load_config,
    model_config,
    model_identity_hash,
)
from atft_core.train import hpo  # light: yaml + config (optuna is imported inside its functions)

# Airflow Param name -> dotted config key (the UI form maps onto the one typed config).
PARAM_TO_CONFIG: dict[str, str] = {
    "lr": "train.optimizer.lr",
    "hidden_size": "model.hidden_size",
    "seed": "train.seed",
    "nproc": "train.nproc",
    "min_rank_ic": "gate.min_rank_ic",
    "min_sharpe": "gate.min_sharpe",
    "data_source": "data.source",
    "data_start": "data.start",
    "data_end": "data.end",
}
LOSS_WEIGHT_PARAMS = ("mse", "rankic", "cs_ic", "sharpe")
# DAGs that search hyper-parameters: they run the base config (never a previous search's winner,
# so their work dirs and the key of the result they publish do not move when they publish it)
SEARCH_DAG_IDS = ("atft_hpo",)


class RunConfError(ConfigError):
    """The run's conf/Params cannot become a typed config; the message names the key."""


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in s)


def config_from_params(params: Mapping[str, Any]) -> Config:
    """The named YAML + the Params mapped onto dotted keys + the ``overrides`` list (no endpoints)."""
    cfg = load_config(params.get("config") or "default")
    overrides: dict[str, Any] = {}
    for name, key in PARAM_TO_CONFIG.items():
        if params.get(name) not in (None, ""):
            overrides[key] = params[name]
    n_phases = len(cfg.train.phases)
    if params.get("epochs") not in (None, ""):
        for i in range(n_phases):
            overrides[f"train.phases.{i}.epochs"] = params["epochs"]
    epochs = params.get("epochs_per_phase")
    if epochs not in (None, "", []):
        epochs = [epochs] * n_phases if isinstance(epochs, int) else list(epochs)
        if len(epochs) != n_phases:
            names = ", ".join(p.name for p in cfg.train.phases)
            raise RunConfError(f"epochs_per_phase has {len(epochs)} values; the config has "
                               f"{n_phases} phases ({names})")
        for i, e in enumerate(epochs):
            overrides[f"train.phases.{i}.epochs"] = e
    weights = params.get("loss_weights") or {}
    unknown = sorted(set(weights) - set(LOSS_WEIGHT_PARAMS))
    if unknown:
        raise RunConfError(f"loss_weights: unknown component(s) {unknown}; known: {list(LOSS_WEIGHT_PARAMS)}")
    for i in range(n_phases):
        for w in LOSS_WEIGHT_PARAMS:
            if weights.get(w) is not None:
                # a UI loss weight scales that component in every phase that uses it
                base = getattr(cfg.train.phases[i].weights, w)
                overrides[f"train.phases.{i}.weights.{w}"] = base * float(weights[w])
    cfg = apply_overrides(cfg, overrides) if overrides else cfg
    extra = params.get("overrides") or []
    return apply_overrides(cfg, list(extra)) if extra else cfg


def with_endpoints(cfg: Config, endpoints: Mapping[str, Any],
                   environ: Mapping[str, str] | None = None) -> Config:
    """Deployment settings on top of ``cfg``: ``ATFT_REGISTRY`` / ``ATFT_PUSHGATEWAY_URL`` /
    ``ATFT_QUOTES_STORE`` (a configured data source lives there) from the environment, then what
    Airflow's hooks resolved (the S3 endpoint of ``aws_default``)."""
    env = os.environ if environ is None else environ
    overrides: dict[str, Any] = {}
    if env.get("ATFT_REGISTRY"):
        overrides["registry.uri"] = env["ATFT_REGISTRY"]
    if env.get("ATFT_PUSHGATEWAY_URL"):
        overrides["metrics.pushgateway_url"] = env["ATFT_PUSHGATEWAY_URL"]
    if env.get("ATFT_QUOTES_STORE") and cfg.data.source is not None:
        overrides["data.source"] = env["ATFT_QUOTES_STORE"]  # where the store lives (deployment)
    s3 = endpoints.get("s3_endpoint_url")
    if s3 and not (cfg.registry.endpoint_url or env.get("AWS_ENDPOINT_URL_S3")
                   or env.get("AWS_ENDPOINT_URL")):
        overrides["registry.endpoint_url"] = s3
    return apply_overrides(cfg, overrides) if overrides else cfg


def check_conf_keys(conf: Mapping[str, Any] | None, param_names: list[str] | tuple[str, ...] | None) -> None:
    """Refuse trigger-conf keys that are not Params of the DAG (Airflow keeps and ignores them)."""
    if not conf or param_names is None:
        return
    unknown = sorted(set(conf) - set(param_names))
    if unknown:
        raise RunConfError(f"unknown conf key(s) {unknown}: not a Param of this DAG; known: "
                           f"{sorted(param_names)} (config keys go in 'overrides', e.g. "
                           f'"graph.k=20")')


@dataclass(frozen=True)
class RunContext:
    """See the module docstring. Build with :meth:`build`; every field is fixed for the run."""

    dag_id: str
    run_id: str
    as_of: dt.date
    config: Config
    params: Mapping[str, Any] = field(default_factory=dict)
    data_interval_start: str | None = None
    data_interval_end: str | None = None
    try_number: int = 1
    endpoints: Mapping[str, Any] = field(default_factory=dict)
    run_type: str = ""  # Airflow's DagRunType value; "" outside Airflow
    # the config before hpo.use_best_from is applied (None: the same as ``config``): what an HPO
    # run searches around and keys its ``latest`` result by (hpo.latest_best_path)
    base: Config | None = None

    @classmethod
    def build(cls, ctx: Mapping[str, Any] | RunContext, environ: Mapping[str, str] | None = None) -> RunContext:
        """From the task's ``ctx`` dict; raises :class:`RunConfError` / ``ConfigError`` naming the key."""
        if isinstance(ctx, RunContext):
            return ctx
        params = dict(ctx.get("params") or {})
        check_conf_keys(ctx.get("conf"), ctx.get("param_names"))
        endpoints = dict(ctx.get("endpoints") or {})
        dag_id = str(ctx.get("dag_id") or "adhoc")
        try:
            base = with_endpoints(config_from_params(params), endpoints, environ)
            # hpo.use_best_from -> the best trial's overrides + applied_trial (not for a search)
            cfg = base if dag_id in SEARCH_DAG_IDS else hpo.resolve_config(base)
        except ConfigError as err:  # already names the key; keep one exception family
            raise RunConfError(str(err)) from None
        as_of = ctx.get("as_of") or dt.datetime.now(calendar.ZONE).date().isoformat()  # Tokyo day
        return cls(dag_id=dag_id, run_id=str(ctx.get("run_id") or "adhoc"),
                   as_of=dt.date.fromisoformat(str(as_of)), config=cfg, params=params,
                   data_interval_start=ctx.get("data_interval_start"),
                   data_interval_end=ctx.get("data_interval_end"),
                   try_number=int(ctx.get("try_number") or 1), endpoints=endpoints,
                   run_type=str(ctx.get("run_type") or ""), base=base)

    # ------------------------------------------------------------------ identity
    @cached_property
    def identity(self) -> str:
        """:func:`model_identity_hash` of the run's config (what changes the model)."""
        return model_identity_hash(self.config)

    @property
    def base_config(self) -> Config:
        """:attr:`config` before ``hpo.use_best_from`` is applied (see ``base``)."""
        return self.base if self.base is not None else self.config

    @cached_property
    def training_config(self) -> Config:
        """The config the trainer gets and saves (deployment settings at their defaults)."""
        return model_config(self.config)

    @cached_property
    def data_end(self) -> dt.date:
        """Last day of the data window: ``data.end`` if set, else the run's day (as trading days)."""
        return calendar.latest_expected_trading_day(self.config.data.end or self.as_of.isoformat())

    @property
    def run_key(self) -> str:
        """``{airflow run id}.{identity[:8]}``, safe as one path component."""
        return f"{_safe(self.run_id)[:100]}.{self.identity[:8]}"

    @property
    def work_dir(self) -> Path:
        """This run's intermediates: ``{work_root}/{dag_id}/{day}/{run_key}`` (not created)."""
        return Path(self.config.work_root) / _safe(self.dag_id) / str(self.data_end) / self.run_key

    @property
    def day_marker(self) -> Path:
        """``{work_root}/{dag_id}/{day}/retrained.{identity16}.json``: written when a run of this
        trading day and model identity completed, read by :func:`~.tasks.day_already_retrained`."""
        return self.work_dir.parent / f"retrained.{self.identity[:16]}.json"

    def ensure_work_dir(self) -> Path:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return self.work_dir

    @property
    def training_run_id(self) -> str:
        airflow_run = hashlib.sha256(self.run_id.encode()).hexdigest()[:6]
        return f"{self.data_end:%Y%m%d}-{self.identity[:8]}-{airflow_run}"

    @property
    def run_dir(self) -> Path:
        return Path(self.config.run_root) / self.training_run_id

    # ------------------------------------------------------------------ endpoints
    def pusher(self, task_id: str):
        """A MetricsPusher for this run's task, with the Pushgateway connection Airflow resolved."""
        from atft_core.observability import ENV_AIRFLOW_CONN, MetricsPusher

        environ = None
        if self.endpoints.get("pushgateway_conn_uri"):
            environ = dict(os.environ) | {ENV_AIRFLOW_CONN: self.endpoints["pushgateway_conn_uri"]}
        return MetricsPusher(self.config.metrics, job=self.config.metrics.job, dag_id=self.dag_id,
                             task_id=task_id, environ=environ)

    def record(self) -> dict[str, Any]:
        """JSON record of the run's identity (no secrets: endpoints are named, not copied)."""
        return {"dag_id": self.dag_id, "run_id": self.run_id, "as_of": str(self.as_of),
                "data_end": str(self.data_end), "identity": self.identity,
                "config_sha256": self.config.sha256(), "training_run_id": self.training_run_id,
                "work_dir": str(self.work_dir), "run_dir": str(self.run_dir),
                "params": dict(self.params), "try_number": self.try_number,
                "endpoints": {"registry": self.config.registry.uri,
                              "registry_endpoint_url": self.config.registry.endpoint_url,
                              "pushgateway": "config/env" if self.config.metrics.pushgateway_url
                              else ("airflow connection" if self.endpoints.get("pushgateway_conn_uri")
                                    else "textfile")}}


def metrics_config_for(params: Mapping[str, Any], endpoints: Mapping[str, Any] | None = None):
    """Metrics settings for reporting a task result, even when the run's conf is invalid
    (the listener must report exactly those failures): the full config if it builds, else the
    named YAML's, else the default's."""
    endpoints = endpoints or {}
    for attempt in (lambda: config_from_params(params),
                    lambda: load_config(params.get("config") or "default", params.get("overrides") or ()),
                    lambda: load_config(params.get("config") or "default"),
                    lambda: load_config("default"),
                    Config):
        try:
            return with_endpoints(attempt(), endpoints).metrics
        except (ConfigError, ValueError, TypeError):
            continue
    raise AssertionError("unreachable: the class defaults always build")
