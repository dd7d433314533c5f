"""Optuna HPO over the same training loop (TPE sampler, MedianPruner on the per-epoch
``early_stopping.monitor``, default ``val/rank_ic_5d``).

The study lives in ``cfg.hpo.storage`` (SQLite by default, any SQLAlchemy URL in production) and
is created with ``load_if_exists=True``, so any number of processes (Airflow mapped tasks) can
share it. Each trial is ask-and-tell: ``run_trial`` asks one trial, trains it in its own run dir
with phases shortened by ``hpo.epochs_scale`` (no holdout evaluation: HPO must not see the gate's
window), reports every epoch for pruning and tells the result.

Workers on several machines share the study through an RDB storage (SQLite file in tests,
Postgres in compose) opened by :func:`make_storage` with Optuna's trial heartbeat: every running
trial beats every ``hpo.heartbeat_s``; before asking for a trial each worker fails trials silent
for ``hpo.grace_s`` (:func:`optuna.storages.fail_stale_trials`) and
:class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` (``RetryFailedTrialCallback``'s
current name) re-queues them as WAITING with the same parameters, so a killed worker's trial is
run again by another (at most ``hpo.max_retry`` times). Optuna 5.0's JournalStorage has no
heartbeat, so the storage must be an RDB URL. :func:`run_worker` is one worker's loop until the
study holds ``n_trials`` finished trials.

The best trial becomes a config: :func:`best_trial_overrides` (dotted overrides the trial trained
with, stored on the trial) and :func:`write_best_overrides` -> ``best_params.yaml``; a config with
``hpo.use_best_from: that file`` resolves (:func:`resolve_config`) to the config with those
overrides and ``hpo.applied_trial: "study#number"``, which the run's config.yaml and so its
registry manifest carry.

Decisions: an Airflow retry of a mapped task (same ``trial_index``) returns the finished trial
instead of training another; samplers of parallel tasks are seeded with the trial index so they do
not propose identical random start-up points; a retried trial trains from scratch in its own run
dir (its number is new; ``retried_from`` names the original).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from atft_core.config import Config, ConfigError, apply_overrides

log = logging.getLogger("atft.hpo")


def _ensure_sqlite_dir(storage: str) -> None:
    prefix = "sqlite:///"
    if storage.startswith(prefix) and storage != prefix + ":memory:":
        Path(storage[len(prefix):]).parent.mkdir(parents=True, exist_ok=True)


def _sampler_pruner(cfg: Config, salt: int = 0):
    import optuna

    sampler = optuna.samplers.TPESampler(seed=cfg.train.seed * 100_003 + salt,
                                         n_startup_trials=max(cfg.hpo.pruner_startup_trials, 1))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=cfg.hpo.pruner_startup_trials,
                                         n_warmup_steps=cfg.hpo.pruner_warmup_epochs)
    return sampler, pruner


def make_storage(cfg: Config, url: str | None = None):
    """The study storage for workers that share it: ``optuna.storages.RDBStorage`` on ``url``
    (default ``hpo.storage``) with the trial heartbeat and the retry of stale trials."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    url = url or cfg.hpo.storage
    if "://" not in url:
        raise ConfigError(f"hpo.storage {url!r} is not a database URL (sqlite:///FILE, postgresql://...)")
    _ensure_sqlite_dir(url)
    h = cfg.hpo
    # SQLite: concurrent writers wait for the file lock instead of failing at once
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    with warnings.catch_warnings():  # heartbeat + retry are "experimental" since Optuna 2.8/2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine, heartbeat_interval=h.heartbeat_s, grace_period=h.grace_s,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=h.max_retry))


def create_study(cfg: Config, study_name: str | None = None, storage: str | None = None, salt: int = 0):
    """Create (or load) the study; returns an ``optuna.Study`` (direction maximize)."""
    import optuna

    sampler, pruner = _sampler_pruner(cfg, salt)
    return optuna.create_study(storage=make_storage(cfg, storage), study_name=study_name or cfg.hpo.study_name,
                               direction="maximize", sampler=sampler, pruner=pruner,
                               load_if_exists=True)


def suggest(trial, cfg: Config) -> dict[str, Any]:
    """Trial parameters -> dotted config overrides (lr, hidden size, dropout, loss weights)."""
    h = cfg.hpo
    lr = trial.suggest_float("lr", h.lr_min, h.lr_max, log=True)
    hidden = trial.suggest_categorical("hidden_size", list(h.hidden_sizes))
    dropout = trial.suggest_float("dropout", 0.0, h.dropout_max)
    scales = {k: trial.suggest_float(f"{k}_scale", 0.0, h.loss_scale_max) for k in ("rankic", "cs_ic", "sharpe")}
    phases = []
    for p in cfg.train.phases:
        w = p.weights.model_dump()
        for k, s in scales.items():
            w[k] = w[k] * s
        phases.append(p.model_dump(mode="json") | {"weights": w})
    return {"train.optimizer.lr": lr, "model.hidden_size": int(hidden), "model.dropout": dropout,
            "train.phases": phases}


def trial_config(cfg: Config, overrides: dict[str, Any]) -> Config:
    return apply_overrides(cfg, overrides)


def _finished(study, trial_index: int):
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if t.user_attrs.get("trial_index") == trial_index:
            return t
    return None


def _summary_of(t) -> dict[str, Any]:
    return {"number": t.number, "state": t.state.name, "value": t.value, "params": dict(t.params),
            "run_dir": t.user_attrs.get("run_dir"), "trial_index": t.user_attrs.get("trial_index"),
            "retried_from": t.system_attrs.get("failed_trial")}


def _fail_stale(study) -> None:
    """Fail the trials whose worker stopped beating; the storage's callback re-queues them."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


class _Heartbeat:
    """Records the trial's heartbeat every ``hpo.heartbeat_s`` while it trains (a thread: the
    training loop never has to remember it); a dead process stops beating, which is the point."""

    def __init__(self, storage, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"optuna-heartbeat-{trial_id}", daemon=True)

    def _run(self) -> None:
        interval = self.storage.get_heartbeat_interval()
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as err:  # noqa: BLE001 - a storage hiccup must not kill the trial
                log.warning("heartbeat of trial id %d not recorded: %s", self.trial_id, err)
            if self.stop.wait(interval):
                return

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def run_trial(cfg: Config, data: Any, study_name: str | None = None, storage: str | None = None,
              trial_index: int | None = None, run_root: str | Path | None = None) -> dict[str, Any]:
    """Ask one trial, train it with the shared loop, tell Optuna. Usable from a mapped task.

    Args:
        data: features frame or Panel (the same for every trial).
        trial_index: an idempotency key (Airflow map index): if a finished trial carries it, its
            result is returned without training again.
        run_root: trial run dirs go to ``{run_root}/hpo/{study}/trial_{number:04d}``.
    Returns {number, state, value, params, run_dir, trial_index, retried_from}.
    """
    from atft_core.graph_store import store_dir

    study = create_study(cfg, study_name, storage, salt=(trial_index or 0) + 1)
    if trial_index is not None and (done := _finished(study, trial_index)) is not None:
        log.info("trial_index %s already finished as trial %d", trial_index, done.number)
        return _summary_of(done)
    _fail_stale(study)  # a dead worker's trial -> FAIL -> re-queued (WAITING)
    with warnings.catch_warnings():  # ask-and-tell beats through _Heartbeat, not Study.optimize
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        trial = study.ask()  # a re-queued trial first, with its original parameters
    overrides = suggest(trial, cfg)
    tcfg = trial_config(cfg, overrides)
    run_dir = Path(run_root or cfg.run_root) / "hpo" / study.study_name / f"trial_{trial.number:04d}"
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("overrides", overrides)
    if trial_index is not None:
        trial.set_user_attr("trial_index", trial_index)
    if (orig := study._storage.get_trial(trial._trial_id).system_attrs.get("failed_trial")) is not None:
        log.info("trial %d retries trial %d (its worker stopped beating)", trial.number, orig)
    with _Heartbeat(study._storage, trial._trial_id):
        return _train_and_tell(study, trial, tcfg, data, run_dir, cfg.hpo.epochs_scale, store_dir(cfg))


def _train_and_tell(study, trial, tcfg: Config, data: Any, run_dir: Path, epochs_scale: float,
                    graph_store: Path | None = None) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    from atft_core.train.api import as_panel, train_run

    def prune_hook(epoch: int, value: float) -> None:
        if math.isfinite(value):
            trial.report(value, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} ({value:.4g})")

    try:
        panel = as_panel(data, tcfg)
        res = train_run(tcfg, panel, run_dir, resume=False, epochs_scale=epochs_scale,
                        prune_hook=prune_hook, evaluate_holdout=False, write_report=False,
                        graph_store=graph_store)  # trials on other workers share the day graphs
    except optuna.TrialPruned:
        frozen = study.tell(trial, state=TrialState.PRUNED)
        return _summary_of(frozen)
    except Exception:
        study.tell(trial, state=TrialState.FAIL)
        raise
    value = res.best_value if math.isfinite(res.best_value) else None
    frozen = study.tell(trial, value, state=TrialState.COMPLETE if value is not None else TrialState.FAIL)
    return _summary_of(frozen)


def summarise(study_name: str, storage: str) -> dict[str, Any]:
    """Counts by state, the best trial and every trial's params/value (JSON-able)."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    done = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    best = max(done, key=lambda t: t.value) if done else None
    return {"study_name": study_name, "n_trials": len(trials), "states": counts,
            "best": _summary_of(best) if best else None,
            "trials": [_summary_of(t) for t in trials]}


# --------------------------------------------------------------------------- workers
FINISHED = ("COMPLETE", "PRUNED")


def _counts(study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def run_worker(cfg: Config, data: Any, study_name: str | None = None, storage: str | None = None,
               n_trials: int | None = None, run_root: str | Path | None = None,
               timeout_s: float = 24 * 3600.0) -> list[dict[str, Any]]:
    """One of any number of workers (processes, machines) filling one study up to ``n_trials``
    finished (COMPLETE or PRUNED) trials: it runs a re-queued trial when there is one, a new one
    while finished + running < n_trials, and otherwise waits (one heartbeat interval at a time)
    for the other workers' trials to finish or go stale. Two workers may both start the last
    trial (as with Optuna's MaxTrialsCallback); none is lost. Returns this worker's trials.

    Raises TimeoutError after ``timeout_s`` of waiting on others' trials."""
    n_trials = n_trials or cfg.hpo.n_trials
    study = create_study(cfg, study_name, storage)
    mine: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while True:
        _fail_stale(study)
        c = _counts(study)
        finished = sum(c.get(k, 0) for k in FINISHED)
        if finished >= n_trials:
            return mine
        if c.get("WAITING", 0) or finished + c.get("RUNNING", 0) < n_trials:
            mine.append(run_trial(cfg, data, study_name=study.study_name, storage=storage, run_root=run_root))
            log.info("worker: trial %d %s (%d/%d finished)", mine[-1]["number"], mine[-1]["state"],
                     finished + (mine[-1]["state"] in FINISHED), n_trials)
            continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"study {study.study_name}: {c.get('RUNNING', 0)} trials of other workers "
                               f"still running after {timeout_s:.0f} s")
        time.sleep(cfg.hpo.heartbeat_s)


# --------------------------------------------------------------------------- best trial -> config
def best_trial_overrides(storage: str, study: str) -> dict[str, Any]:
    """The best COMPLETE trial as {study, trial, value, params, overrides, retried_from}:
    ``overrides`` are the dotted config overrides it trained with (stored on the trial).

    Raises LookupError when the study has no completed trial."""
    import optuna

    s = optuna.load_study(study_name=study, storage=storage)
    done = [t for t in s.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None]
    if not done:
        raise LookupError(f"study {study!r} has no completed trial")
    best = max(done, key=lambda t: (t.value, -t.number))
    overrides = best.user_attrs.get("overrides")
    if overrides is None:
        raise LookupError(f"study {study!r}: trial {best.number} carries no overrides (made by an older atft)")
    return {"study": study, "trial": best.number, "value": float(best.value), "params": dict(best.params),
            "overrides": dict(overrides), "retried_from": best.system_attrs.get("failed_trial")}


def best_params_path(cfg: Config, study: str) -> Path:
    """Where the study's best config goes: ``{run_root}/hpo/{study}/best_params.yaml``."""
    return Path(cfg.run_root) / "hpo" / study / "best_params.yaml"


LATEST = "latest"


def latest_best_path(cfg: Config) -> Path:
    """Where the newest HPO result for this BASE config lives (what ``hpo.use_best_from: latest``
    reads): ``{run_root}/hpo/latest/{identity16}.yaml``, keyed by the model identity of the config
    before any best trial is applied. Why keyed: every config file inherits ``default.yaml``, so a
    single pointer would hand one config's HPO winner to another (or to a manual run with its own
    lr); this way only a retrain whose config equals the HPO run's picks the winner up."""
    from atft_core.config import model_identity_hash

    if cfg.hpo.applied_trial:
        raise ValueError("latest_best_path needs the base config (before hpo.resolve_config)")
    return Path(cfg.run_root) / "hpo" / "latest" / f"{model_identity_hash(cfg)[:16]}.yaml"


def publish_best(cfg: Config, storage: str, study: str) -> dict[str, Any]:
    """The HPO DAG's last step: the study's best trial as ``best_params.yaml`` in its study dir
    and as the ``latest`` pointer (:func:`latest_best_path` of ``cfg``, the HPO run's base config)
    that the next retrain of that config picks up (both atomic; the pointer is a copy,
    not a link, so an S3-synced run root carries it too). Returns the paths and the trial, or
    ``{"best": None}`` when no trial completed (the pointer is then left as it was)."""
    from atft_core.atomic import atomic_write_text

    try:
        path = write_best_overrides(storage, study, best_params_path(cfg, study))
    except LookupError as err:
        log.warning("hpo: %s; the latest best config is unchanged", err)
        return {"best": None, "reason": str(err)}
    text = path.read_text()
    latest = atomic_write_text(latest_best_path(cfg), text)
    best = yaml.safe_load(text)
    return {"best": f"{study}#{best['trial']}", "value": best["value"], "best_params": str(path),
            "latest": str(latest)}


def write_best_overrides(storage: str, study: str, path: str | Path) -> Path:
    """:func:`best_trial_overrides` as YAML at ``path`` (atomically); point
    ``hpo.use_best_from`` at it to retrain with the winner."""
    from atft_core.atomic import atomic_write_text

    best = best_trial_overrides(storage, study)
    head = f"# best trial of Optuna study {study!r}: use with hpo.use_best_from={path}\n"
    return atomic_write_text(path, head + yaml.safe_dump(best, sort_keys=False))


def resolve_config(cfg: Config) -> Config:
    """``cfg`` with ``hpo.use_best_from``'s overrides applied and ``hpo.applied_trial`` naming
    the trial ("study#number"); ``cfg`` itself when the field is unset."""
    src = cfg.hpo.use_best_from
    if not src:
        return cfg
    path = latest_best_path(cfg) if src == LATEST else Path(src)
    if src == LATEST and not path.is_file():
        log.info("hpo.use_best_from=latest: no HPO result at %s yet; training the config as given", path)
        return cfg
    try:
        best = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"hpo.use_best_from: cannot read {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"hpo.use_best_from: {path} is not YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(best, dict) or not isinstance(best.get("overrides"), dict) or "trial" not in best:
        raise ConfigError(f"hpo.use_best_from: {path} is not a best_params.yaml (needs trial and overrides)")
    bad = sorted(k for k in best["overrides"] if not str(k).startswith(("train.", "model.", "loss.")))
    if bad:
        raise ConfigError(f"hpo.use_best_from: {path} overrides keys outside train/model/loss: {bad}")
    return apply_overrides(cfg, {**best["overrides"], "hpo.applied_trial": f"{best.get('study')}#{best['trial']}"})
