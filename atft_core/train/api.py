"""Training and evaluation entry points used by the CLI, the Airflow tasks and HPO.

``train_run(cfg, features_or_panel, run_dir)`` is the whole candidate run: panel -> splits ->
loaders -> model -> :class:`~atft_core.train.loop.Trainer` -> best weights evaluated on val and
holdout with :func:`atft_core.evaluate.evaluate_predictions` -> ``metrics.json`` + report.

Decisions (SPEC is silent):
* "Best" is global over all phases on ``early_stopping.monitor`` (default ``val/rank_ic_5d``). The
  blocks that were on at that epoch are stored in the safetensors metadata and re-applied by
  :func:`load_model`, so a best epoch from phase 1 is served without the graph it never used.
* :func:`evaluate_run_dir` builds the panel with the *run's* config (its features/lookback/graph)
  but takes the window from ``split_cfg`` (the current pipeline config), so a candidate and a
  champion are scored on the same dates.
* A run dir holds one run (:func:`prepare_run_dir`). Resuming needs a checkpoint that verifies
  and was written with the same config; both are checked before anything is written. A fresh
  start (``resume=False``, or nothing to resume) into a dir that holds an earlier run's files
  moves that dir aside to ``{name}.prev-{UTC time}`` (never deleted, never mixed: the keep-last-2
  rule and a later resume only ever see this run's checkpoints); a dir holding files atft did not
  write is refused. The config hash is recorded in config.yaml, metrics.json, every checkpoint
  and the safetensors metadata, so a publish can check they agree.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from atft_core.config import Blocks, Config, config_from_yaml_text
from atft_core.jsonsafe import json_safe
from atft_core.train.checkpoint import (
    CheckpointError,
    CheckpointScan,
    atomic_write_text,
    load_weights,
    scan_checkpoints,
)
from atft_core.train.ddp import DistContext
from atft_core.train.loop import EpochHook, FitResult, Trainer, resolve_device
from atft_core.train.predict import Predictions, predict_loader, quick_metrics

log = logging.getLogger("atft.train")


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train_run`.

    Fields:
        run_dir, weights_path (best weights, safetensors), metrics_path (metrics.json).
        best_value: best ``early_stopping.monitor`` value; best: {phase, epoch, blocks, val...}.
        best_metrics: full evaluation of the best weights on the val window.
        holdout_metrics: full evaluation of the best weights on the holdout window.
        history: per-epoch records (as in metrics.jsonl).
        nan_steps, nan_restores: NaN guard counters; resumed_from: checkpoint path or None.
        skipped_checkpoints: newer checkpoints that failed verification on resume ({file, reason}).
        moved_aside: where an earlier run found in ``run_dir`` was moved (fresh start), or None.
    """

    run_dir: Path
    weights_path: Path
    metrics_path: Path
    best_value: float
    best: dict[str, Any]
    best_metrics: dict[str, Any]
    holdout_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    nan_steps: int
    nan_restores: int
    global_step: int
    resumed_from: str | None
    train_seconds: float
    skipped_checkpoints: tuple[dict[str, str], ...] = ()
    moved_aside: str | None = None


# --------------------------------------------------------------------------- data
def load_features(cfg: Config):
    """cfg.data -> features frame: the synthetic market, or a parquet source in [start, end]."""
    from atft_core.features import build_features

    if cfg.data.source is None:
        from atft_core.data.synthetic import generate_market

        quotes = generate_market(cfg.data.synthetic, tuple(cfg.horizons)).quotes
    else:
        from atft_core.data.store import scan_store

        quotes = scan_store(cfg.data.source, start=cfg.data.start, end=cfg.data.end)
    return build_features(quotes, cfg)


def as_panel(data: Any, cfg: Config):
    """A Panel as is, or a features frame (pl.DataFrame) built into one with ``cfg``."""
    from atft_core.dataset import Panel, build_panel

    if isinstance(data, Panel):
        if tuple(data.horizons) != tuple(cfg.horizons):
            raise ValueError(f"panel horizons {data.horizons} != config horizons {cfg.horizons}")
        return data
    return build_panel(data, cfg)


def with_graph_store(panel, graph_store: str | Path | None):
    """``panel`` reading and adding its day graphs in this folder (atft_core.graph_store); the
    same in-memory cache. None: the panel as is."""
    if graph_store is None:
        return panel
    from atft_core.graph_store import GraphStore

    return dataclasses.replace(panel, graph_store=GraphStore(graph_store))


def build_model(cfg: Config, n_features: int) -> torch.nn.Module:
    from atft_core.model import ATFTGATFAN

    torch.manual_seed(cfg.train.seed)  # initial weights are part of the seeded run
    return ATFTGATFAN(cfg.model, n_features, tuple(cfg.horizons))


def _loaders(panel, splits, cfg: Config):
    from atft_core.dataset import DayBatchLoader

    if not splits.train or not splits.val:
        raise ValueError(f"empty split: train {len(splits.train)} days, val {len(splits.val)} days")
    train = DayBatchLoader(panel, splits.train, cfg, shuffle=True, seed=cfg.train.seed)
    val = DayBatchLoader(panel, splits.val, cfg, shuffle=False)
    return train, val


# --------------------------------------------------------------------------- evaluation
def evaluate_frame(preds: Predictions) -> dict[str, Any]:
    """The contract metrics of a predictions window (atft_core.evaluate.evaluate_predictions)."""
    from atft_core.evaluate import evaluate_predictions

    return evaluate_predictions(preds.frame(), tuple(preds.horizons))


def load_model(weights: str | Path, cfg: Config | None = None) -> tuple[torch.nn.Module, Config, dict]:
    """Model from ``model.safetensors`` (a file, or a run dir holding it + config.yaml).

    The blocks active at the best epoch (safetensors metadata) are switched on. Returns
    (model in eval mode on CPU, config, metadata)."""
    path = Path(weights)
    if path.is_dir():
        if cfg is None:
            cfg_file = path / "config.yaml"
            if not cfg_file.exists():
                raise FileNotFoundError(f"{cfg_file} missing: pass the config explicitly")
            cfg = config_from_yaml_text(cfg_file.read_text())
        path = path / "model.safetensors"
    if cfg is None:
        raise ValueError("a weights file needs its config (cfg=...) or a run dir with config.yaml")
    state, meta = load_weights(path)
    from atft_core.features import feature_columns

    model = build_model(cfg, len(feature_columns(cfg)))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatch: other features / hidden size
        raise ValueError(f"{path} does not match the config's model: {str(err)[:300]}") from None
    if missing or unexpected:
        raise ValueError(f"{path} does not match the config's model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    if "blocks" in meta:
        model.set_blocks(Blocks(**meta["blocks"]))
    model.eval()
    return model, cfg, meta


def window_dates(panel, cfg: Config, window: str) -> list[dt.date]:
    """'holdout' | 'val' | 'train' | 'START:END' (inclusive ISO dates) -> panel dates."""
    from atft_core.dataset import make_splits

    if ":" in window:
        a, b = window.split(":", 1)
        try:
            start, end = dt.date.fromisoformat(a), dt.date.fromisoformat(b)
        except ValueError:
            raise ValueError(f"window {window!r} is not START:END with ISO dates") from None
        out = [d for d in panel.dates if start <= d <= end]
        if not out:
            raise ValueError(f"window {window}: no panel dates inside")
        return out
    splits = make_splits(list(panel.dates), cfg)
    if window not in ("holdout", "val", "train"):
        raise ValueError(f"window must be holdout, val, train or START:END, got {window!r}")
    return list(getattr(splits, window))


def predict_window(model: torch.nn.Module, panel, model_cfg: Config, dates: Sequence[dt.date],
                   device: str | torch.device = "cpu") -> Predictions:
    from atft_core.dataset import DayBatchLoader
    from atft_core.heap import retain_freed_memory

    retain_freed_memory()  # scoring too: 1.8x per 4,000-stock forward at hidden 256 (atft_core.heap)
    loader = DayBatchLoader(panel, dates, model_cfg, shuffle=False)
    if len(loader) == 0:
        raise ValueError("window has no usable days")
    precision = model_cfg.train.precision
    return predict_loader(model.to(device), loader, tuple(model_cfg.horizons), device, precision)


def evaluate_checkpoint(weights: str | Path, data: Any, window: str = "holdout",
                        cfg: Config | None = None, split_cfg: Config | None = None,
                        predictions_path: str | Path | None = None,
                        graph_store: str | Path | None = None) -> dict[str, Any]:
    """Evaluate saved weights on a window of ``data`` (features frame or Panel).

    Args:
        weights: run dir (model.safetensors + config.yaml) or a safetensors file (needs ``cfg``).
        window: 'holdout' | 'val' | 'START:END'; splits use ``split_cfg`` (default: the run's).
        predictions_path: optional parquet path for the predictions frame.
        graph_store: as for :func:`train_run` (the window's day graphs read, not rebuilt).
    Returns the evaluate_predictions dict plus ``window`` {start, end, n_days}."""
    model, model_cfg, meta = load_model(weights, cfg)
    panel = with_graph_store(as_panel(data, model_cfg), graph_store)
    dates = window_dates(panel, split_cfg or model_cfg, window)
    device = resolve_device(model_cfg.train.device)
    preds = predict_window(model, panel, model_cfg, dates, device)
    if predictions_path is not None:
        preds.frame().write_parquet(predictions_path)
    out = evaluate_frame(preds)
    out["window"] = {"name": window, "start": str(dates[0]), "end": str(dates[-1]), "n_days": len(dates)}
    out["weights_meta"] = {k: meta[k] for k in ("phase", "epoch", "blocks") if k in meta}
    return out


def evaluate_run_dir(run_dir: str | Path, data: Any, window: str = "holdout",
                     split_cfg: Config | None = None, graph_store: str | Path | None = None) -> dict[str, Any]:
    """:func:`evaluate_checkpoint` of a run dir (the pipeline's candidate/champion scoring)."""
    return evaluate_checkpoint(run_dir, data, window=window, split_cfg=split_cfg, graph_store=graph_store)


# --------------------------------------------------------------------------- run dir
# What train_run writes into a run dir (report.py adds *.png); anything else is not ours.
RUN_DIR_FILES = frozenset({"config.yaml", "metrics.json", "metrics.jsonl", "model.safetensors",
                           "report.md", "checkpoints", "tensorboard", "drift_reference.json"})


class RunDirError(ValueError):
    """The run dir cannot be used for this run (foreign files, unusable checkpoints)."""


def _is_run_file(name: str) -> bool:
    return name in RUN_DIR_FILES or name.endswith(".png") or (name.startswith(".") and name.endswith(".tmp"))


def _move_aside(run_dir: Path) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    for i in range(1000):
        dest = run_dir.with_name(f"{run_dir.name}.prev-{stamp}" + (f"-{i}" if i else ""))
        if not dest.exists():
            os.rename(run_dir, dest)  # same parent: atomic, nothing copied or deleted
            return dest
    raise RunDirError(f"cannot find a free name to move {run_dir} aside")


def prepare_run_dir(cfg: Config, run_dir: Path, resume: bool) -> tuple[CheckpointScan, Path | None]:
    """Check ``run_dir`` before anything is written (SPEC: a run dir holds exactly one run).

    Returns (the resume point -- empty for a fresh start, the dir the earlier run was moved to).
    Raises :class:`CheckpointError` (checkpoints exist but none verifies, or the newest valid one
    was written with another config) or :class:`RunDirError` (files atft did not write).
    """
    scan = scan_checkpoints(run_dir / "checkpoints") if resume else CheckpointScan(None, ())
    if scan.newest_valid is not None:
        if scan.config_sha256 != cfg.sha256():
            raise CheckpointError(
                f"{scan.newest_valid} was written with a different config (sha256 "
                f"{str(scan.config_sha256)[:12]} vs {cfg.sha256()[:12]}); resume with the same "
                "config, or pass --no-resume / another run dir (nothing was written)")
        return scan, None
    if not run_dir.exists():
        return scan, None
    if not run_dir.is_dir():
        raise RunDirError(f"run dir {run_dir} is a file, not a directory")
    entries = sorted(p.name for p in run_dir.iterdir())
    if not entries:
        return scan, None
    foreign = [n for n in entries if not _is_run_file(n)]
    if foreign:
        raise RunDirError(f"run dir {run_dir} holds files atft did not write ({', '.join(foreign[:5])}); "
                          "pick an empty or new --run-dir (nothing was moved or deleted)")
    dest = _move_aside(run_dir)
    log.warning("fresh start: the earlier run in %s was moved aside to %s", run_dir, dest)
    return scan, dest


# --------------------------------------------------------------------------- drift reference
DRIFT_REFERENCE_MAX_DAYS = 250  # training days sampled (evenly) for the feature deciles


def write_drift_reference(run_dir: Path, panel, train_dates: Sequence[dt.date],
                          val_preds: Predictions) -> Path:
    """``drift_reference.json``: deciles of each feature over the training window's usable
    stock-days (as the model saw them) and of the predictions on the val window, fixed now so
    serving can compute PSI against them (atft_core.serving.drift); published with the run."""
    import numpy as np

    from atft_core.serving.drift import REFERENCE_FILE, training_reference

    t = panel.date_index(list(train_dates))
    if len(t) > DRIFT_REFERENCE_MAX_DAYS:
        t = t[np.linspace(0, len(t) - 1, DRIFT_REFERENCE_MAX_DAYS).round().astype(int)]
    tt = torch.from_numpy(t)
    usable = panel.usable[:, tt].numpy()
    x = panel.x[:, tt, :].numpy()[usable]
    preds = {f"pred_{h}d": val_preds.pred[:, j] for j, h in enumerate(val_preds.horizons)}
    window = {"train_start": str(train_dates[0]), "train_end": str(train_dates[-1]),
              "train_days_sampled": int(len(t)), "stock_days": int(x.shape[0]),
              "prediction_window": "val", "val_start": str(val_preds.dates[0]),
              "val_end": str(val_preds.dates[-1])}
    payload = training_reference(x, tuple(panel.feature_names), preds, window)
    return atomic_write_text(run_dir / REFERENCE_FILE, json.dumps(payload, sort_keys=True))


# --------------------------------------------------------------------------- train
def train_run(
    cfg: Config,
    data: Any,
    run_dir: str | Path,
    resume: bool = True,
    on_epoch_end: EpochHook | None = None,
    *,
    epochs_scale: float = 1.0,
    prune_hook: Callable[[int, float], None] | None = None,
    evaluate_holdout: bool = True,
    write_report: bool = True,
    dist: DistContext | None = None,
    graph_store: str | Path | None = None,
) -> TrainResult | None:
    """Train a candidate in ``run_dir`` (resuming its last checkpoint when ``resume``).

    Args:
        cfg: the full config (saved as run_dir/config.yaml).
        data: features frame (``build_features`` output) or a built Panel.
        resume: continue from the newest checkpoint that verifies (written with this same
            config); False, or nothing to resume: a fresh start (:func:`prepare_run_dir`).
        on_epoch_end: called with every epoch's record (keys as in metrics.jsonl).
        epochs_scale, prune_hook: HPO (shorter phases; Optuna pruning).
        evaluate_holdout: score the best weights on the holdout window (HPO skips it).
        dist: a torch.distributed rank (:mod:`atft_core.train.ddp`); ranks other than 0 train
            and return None, rank 0 writes and evaluates.
        graph_store: a folder of day graphs shared by processes and runs
            (:class:`atft_core.graph_store.GraphStore`; callers pass ``store_dir(cfg)``, the
            deployment's); None: graphs live in this process only.
    Outputs in run_dir: model.safetensors, config.yaml, metrics.jsonl, metrics.json, report.md,
    *.png, checkpoints/.
    Raises (nothing written yet): ValueError (data too short for the splits), CheckpointError
    (no checkpoint verifies, or another config's), RunDirError (files atft did not write).
    """
    from atft_core.dataset import make_splits
    from atft_core.heap import retain_freed_memory

    retain_freed_memory()  # steps reuse their freed activations instead of re-faulting them (2.1x at hidden 256)
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    panel = with_graph_store(as_panel(data, cfg), graph_store)
    splits = make_splits(list(panel.dates), cfg)
    train_loader, val_loader = _loaders(panel, splits, cfg)
    is_main = dist is None or dist.is_main
    if is_main:
        # every check (data, splits, run dir, resume point and its config) before the first write
        scan, moved_aside = prepare_run_dir(cfg, run_dir, resume)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    if dist is not None:
        dist.barrier()  # the other ranks look for a resume point only once rank 0 prepared the dir
    model = build_model(cfg, len(panel.feature_names))
    trainer = Trainer(cfg, model, train_loader, val_loader, run_dir, on_epoch_end=on_epoch_end,
                      epochs_scale=epochs_scale, prune_hook=prune_hook, dist=dist)
    fit: FitResult = trainer.fit(resume=resume)
    if not is_main:
        return None
    train_seconds = time.perf_counter() - t0
    if panel.graph_store is not None:
        panel.graph_store.prune()

    best_model, _, _ = load_model(run_dir, cfg)
    device = trainer.device
    val_preds = predict_window(best_model, panel, cfg, splits.val, device)
    best_metrics = evaluate_frame(val_preds)
    holdout: dict[str, Any] = {}
    hold_preds = None
    if evaluate_holdout and splits.holdout:
        hold_preds = predict_window(best_model, panel, cfg, splits.holdout, device)
        holdout = evaluate_frame(hold_preds)
    summary = {
        "run_dir": str(run_dir),
        "config_sha256": cfg.sha256(),
        "monitor": cfg.train.early_stopping.monitor,
        "best_value": fit.best_value,
        "best": fit.best,
        "val": best_metrics,
        "holdout": holdout,
        "splits": {k: {"start": str(v[0]), "end": str(v[-1]), "n_days": len(v)} if v else None
                   for k, v in (("train", splits.train), ("val", splits.val), ("holdout", splits.holdout))},
        "nan_steps": fit.nan_steps,
        "nan_restores": fit.nan_restores,
        "epochs": len(fit.history),
        "global_step": fit.global_step,
        "samples_per_s_mean": (sum(r["stock_days"] for r in fit.history)
                               / max(sum(r["train_time_s"] for r in fit.history), 1e-9)),
        "resumed_from": fit.resumed_from,
        "skipped_checkpoints": scan.describe(),
        "moved_aside": str(moved_aside) if moved_aside else None,
        "compile_failed": trainer.state.compile_failed,
        "graph_store": None if panel.graph_store is None else {
            "root": str(panel.graph_store.root), **panel.graph_store.stats},
    }
    metrics_path = atomic_write_text(run_dir / "metrics.json",
                                     json.dumps(json_safe(summary), indent=2, sort_keys=False))
    from atft_core.train.tensorboard import write_hparams

    # hparams with the final numbers: the holdout when evaluated (HPO trials: the best val)
    write_hparams(run_dir, cfg, holdout or best_metrics)
    write_drift_reference(run_dir, panel, splits.train, val_preds)
    if write_report:
        from atft_core.train.report import write_report as _write_report

        _write_report(run_dir, fit.history, best_metrics, holdout, fit.best, cfg)
    return TrainResult(
        run_dir=run_dir, weights_path=fit.weights_path, metrics_path=metrics_path,
        best_value=fit.best_value, best=fit.best, best_metrics=best_metrics, holdout_metrics=holdout,
        history=fit.history, nan_steps=fit.nan_steps, nan_restores=fit.nan_restores,
        global_step=fit.global_step, resumed_from=fit.resumed_from, train_seconds=train_seconds,
        skipped_checkpoints=tuple(scan.describe()), moved_aside=str(moved_aside) if moved_aside else None,
    )


__all__ = [
    "TrainResult", "train_run", "prepare_run_dir", "RunDirError", "evaluate_checkpoint", "evaluate_run_dir", "load_model",
    "load_features", "as_panel", "build_model", "window_dates", "predict_window", "quick_metrics",
]
