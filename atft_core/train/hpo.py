"""Optuna HPO over the same training loop (TPE sampler, MedianPruner on the per-epoch
``early_stopping.monitor``, default ``val/rank_ic_5d``).

The study lives in ``cfg.hpo.storage`` (SQLite by default, any SQLAlchemy URL in production) and
is created with ``load_if_exists=True``, so any number of processes (Airflow mapped tasks) can
share it. Each trial is ask-and-tell: ``run_trial`` asks one trial, trains it in its own run dir
with phases shortened by ``hpo.epochs_scale`` (no holdout evaluation: HPO must not see the gate's
window), reports every epoch for pruning and tells the result.

Decisions: an Airflow retry of a mapped task (same ``trial_index``) returns the finished trial
instead of training another; samplers of parallel tasks are seeded with the trial index so they do
not propose identical random start-up points.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from atft_core.config import Config, apply_overrides

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


def create_study(cfg: Config, study_name: str | None = None, storage: str | None = None, salt: int = 0):
    """Create (or load) the study; returns an ``optuna.Study`` (direction maximize)."""
    import optuna

    storage = storage or cfg.hpo.storage
    _ensure_sqlite_dir(storage)
    sampler, pruner = _sampler_pruner(cfg, salt)
    return optuna.create_study(storage=storage, study_name=study_name or cfg.hpo.study_name,
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
            "run_dir": t.user_attrs.get("run_dir"), "trial_index": t.user_attrs.get("trial_index")}


def run_trial(cfg: Config, data: Any, study_name: str | None = None, storage: str | None = None,
              trial_index: int | None = None, run_root: str | Path | None = None) -> dict[str, Any]:
    """Ask one trial, train it with the shared loop, tell Optuna. Usable from a mapped task.

    Args:
        data: features frame or Panel (the same for every trial).
        trial_index: an idempotency key (Airflow map index): if a finished trial carries it, its
            result is returned without training again.
        run_root: trial run dirs go to ``{run_root}/hpo/{study}/trial_{number:04d}``.
    Returns {number, state, value, params, run_dir, trial_index}.
    """
    import optuna
    from optuna.trial import TrialState

    from atft_core.train.api import as_panel, train_run

    study = create_study(cfg, study_name, storage, salt=(trial_index or 0) + 1)
    if trial_index is not None and (done := _finished(study, trial_index)) is not None:
        log.info("trial_index %s already finished as trial %d", trial_index, done.number)
        return _summary_of(done)
    trial = study.ask()
    tcfg = trial_config(cfg, suggest(trial, cfg))
    run_dir = Path(run_root or cfg.run_root) / "hpo" / study.study_name / f"trial_{trial.number:04d}"
    trial.set_user_attr("run_dir", str(run_dir))
    if trial_index is not None:
        trial.set_user_attr("trial_index", trial_index)

    def prune_hook(epoch: int, value: float) -> None:
        if math.isfinite(value):
            trial.report(value, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} ({value:.4g})")

    try:
        panel = as_panel(data, tcfg)
        res = train_run(tcfg, panel, run_dir, resume=False, epochs_scale=cfg.hpo.epochs_scale,
                        prune_hook=prune_hook, evaluate_holdout=False, write_report=False)
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
