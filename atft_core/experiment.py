"""Real-data protocol (issue 13): the ladder, the model over seeds and a shuffled-label control,
all scored by ``evaluate_predictions`` on the same evaluation stock-days.

Windows (trading days of the data, decisions the issue leaves open):
* ``train | gap | val`` all end on or before ``train_end``: val = the last ``split.val_days``
  labelled days <= train_end, gap = ``purge_days + embargo_days`` before it (as ``make_splits``).
* eval = every labelled day in ``[eval_start, data_end]`` (labelled: its longest label is known).
* Any distance between train_end and eval_start is accepted as long as at least ``purge_days``
  trading days lie strictly between the last val day and the first eval day, so no training or
  validation label reaches an evaluated day. (The old script rebuilt the split with val at the
  end of the whole data and refused every train_end earlier than eval_start - gap.)
* Model selection (best epoch, ridge alpha) uses only val; the eval window is read once at the end.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from atft_core.config import Config
from atft_core.dataset import Panel, Splits

log = logging.getLogger("atft.experiment")

LEAKAGE_RANK_IC_1D = 0.10  # a daily RankIC above this on real equities is look-ahead, not skill


def experiment_splits(dates: Sequence[dt.date], train_end: dt.date, eval_start: dt.date,
                      cfg: Config) -> Splits:
    """Explicit-window splits (module doc). ValueError naming the problem when impossible."""
    days = sorted(set(dates))
    lag = 1 + max(cfg.horizons)
    if train_end >= eval_start:
        raise ValueError(f"--train-end {train_end} must be before --eval-start {eval_start}")
    labelled, unlabelled = days[: len(days) - lag], days[len(days) - lag:]
    pre = [d for d in labelled if d <= train_end]
    holdout = [d for d in labelled if d >= eval_start]
    if not holdout:
        raise ValueError(f"no labelled day on or after --eval-start {eval_start} (the last {lag} "
                         f"days of the data have no label yet)")
    gap = cfg.purge_days + cfg.split.embargo_days
    val_n = cfg.split.val_days
    n_train = len(pre) - val_n - gap
    if n_train < 20:
        raise ValueError(f"only {len(pre)} labelled days up to --train-end {train_end}: need "
                         f">= 20 train + gap {gap} + val {val_n}")
    val, train = pre[len(pre) - val_n:], pre[:n_train]
    if cfg.split.train_days is not None:
        train = train[-cfg.split.train_days:]
    between = sum(1 for d in days if val[-1] < d < holdout[0])
    if between < cfg.purge_days:
        raise ValueError(f"only {between} trading days between train end {val[-1]} and eval start "
                         f"{holdout[0]}; need >= purge_days {cfg.purge_days} so no training label "
                         f"overlaps an evaluated day")
    return Splits(train=train, val=val, holdout=holdout, unlabelled=unlabelled, gap_days=gap)


def shuffled_panel(panel: Panel, seed: int) -> Panel:
    """Targets permuted across each day's usable stocks (features and graph inputs unchanged)."""
    g = np.random.default_rng(seed)
    y, y_raw, mask = panel.y.clone(), panel.y_raw.clone(), panel.mask.clone()
    usable = panel.usable.numpy()
    for t in range(usable.shape[1]):
        idx = np.flatnonzero(usable[:, t])
        if len(idx) < 2:
            continue
        src, dst = torch.from_numpy(g.permutation(idx)), torch.from_numpy(idx)
        y[dst, t], y_raw[dst, t], mask[dst, t] = panel.y[src, t], panel.y_raw[src, t], panel.mask[src, t]
    # graphs depend on returns only, so sharing the built-graph cache is correct
    return dataclasses.replace(panel, y=y, y_raw=y_raw, mask=mask)


def train_and_predict(cfg: Config, train_panel: Panel, eval_panel: Panel, splits: Splits,
                      run_dir: Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Trainer on ``train_panel`` (train/val of ``splits``) -> best weights -> holdout predictions
    on ``eval_panel`` (the real targets)."""
    from atft_core.atomic import atomic_write_text
    from atft_core.dataset import DayBatchLoader
    from atft_core.train.api import build_model, load_model, predict_window
    from atft_core.train.loop import Trainer, seed_everything

    t0 = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    seed_everything(cfg.train.seed)
    train = DayBatchLoader(train_panel, splits.train, cfg, shuffle=True, seed=cfg.train.seed)
    val = DayBatchLoader(train_panel, splits.val, cfg, shuffle=False)
    model = build_model(cfg, len(train_panel.feature_names))
    fit = Trainer(cfg, model, train, val, run_dir).fit(resume=False)
    train_s = time.perf_counter() - t0
    best, _, _ = load_model(fit.weights_path, cfg)
    t1 = time.perf_counter()
    preds = predict_window(best, eval_panel, cfg, splits.holdout, "cpu").frame()
    info = {
        "train_s": train_s, "predict_s": time.perf_counter() - t1, "best_value": fit.best_value,
        "best": fit.best, "global_step": fit.global_step, "nan_steps": fit.nan_steps,
        "history": [{k: r.get(k) for k in ("phase", "epoch", "train/loss", "val/rank_ic_1d",
                                           "val/rank_ic_5d", "train_time_s", "samples_per_s")}
                    for r in fit.history],
    }
    return preds, info


def rank_ensemble(frames: Sequence[pl.DataFrame], horizons: Sequence[int]) -> pl.DataFrame:
    """Mean over models of each day's cross-sectional rank (in [0, 1]) of ``pred_{h}d``; the
    frames must hold the same (Date, Code) rows."""
    keys = frames[0].select("Date", "Code", *(f"y_{h}d" for h in horizons))
    out = keys
    for i, f in enumerate(frames):
        r = f.select("Date", "Code", *((pl.col(f"pred_{h}d").rank("average").over("Date")
                                         / pl.len().over("Date")).alias(f"r{i}_{h}") for h in horizons))
        out = out.join(r, on=["Date", "Code"], how="left")
    n = len(frames)
    return out.select("Date", "Code", *(
        (pl.sum_horizontal(f"r{i}_{h}" for i in range(n)) / n).alias(f"pred_{h}d") for h in horizons),
        *(f"y_{h}d" for h in horizons))


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if not len(v):
        return None, None
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None)
