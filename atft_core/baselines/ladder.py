"""The baseline ladder: ridge + two classic factors, scored like the candidate (issue 13).

``run_ladder(panel, train, val, holdout, cfg)`` fits the ridge on exactly the train dates' rows
(alpha on the val dates, see :mod:`atft_core.baselines.ridge`) and evaluates, on the holdout
dates' usable stock-days (the rows of the candidate's predictions frame), with
``atft_core.evaluate.evaluate_predictions``:

* ``ridge``: the fitted ridge, one score per horizon;
* ``reversal_1d``: ``-ret_1d`` (yesterday's loser wins), the same score for every horizon;
* ``low_vol_20d``: ``-vol_20d`` (low volatility wins), the same score for every horizon.

The factor columns are the panel's robust-z features: a per-day monotone transform of the raw
factor (up to the clip), so the day's ranks -- and RankIC -- are the raw factor's. A factor whose
column the feature set lacks is left out with a note (``Ladder.notes``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from atft_core.baselines.ridge import RidgeModel, fit_ridge, panel_frame, predict_panel, rows_of
from atft_core.config import Config

FACTORS: dict[str, tuple[str, float]] = {  # name -> (feature column, sign)
    "reversal_1d": ("ret_1d", -1.0),
    "low_vol_20d": ("vol_20d", -1.0),
}


@dataclass
class Ladder:
    """Fitted ridge, holdout evaluations per baseline and the best baseline by mean RankIC@1d."""

    ridge: RidgeModel
    evaluations: dict[str, dict[str, Any]]
    frames: dict[str, pl.DataFrame] = field(repr=False)
    notes: list[str]

    @property
    def best(self) -> str:
        key = lambda n: _ric(self.evaluations[n])  # noqa: E731
        return max(self.evaluations, key=key)

    def summary(self) -> dict[str, Any]:
        """JSON-able: per baseline the headline numbers, plus ``best`` and the ridge's alpha."""
        keys = ("rank_ic_1d", "rank_ic_5d", "rank_ic_tstat_1d", "sharpe_1d", "jpx_sharpe", "n_days")
        return {"baselines": {n: {k: e.get(k) for k in keys} for n, e in self.evaluations.items()},
                "best": self.best, "ridge_alpha": self.ridge.alpha,
                "ridge_val_rank_ic_1d": self.ridge.val_rank_ic_1d,
                "ridge_train_rows": self.ridge.n_train_rows, "notes": list(self.notes)}


def _ric(e: dict[str, Any]) -> float:
    v = e.get("rank_ic_1d")
    return float(v) if v is not None else -np.inf


def factor_frame(panel, dates: Sequence[dt.date], column: str, sign: float) -> pl.DataFrame:
    """``pred_{h}d = sign * feature`` for every horizon over the usable stock-days of ``dates``."""
    j = list(panel.feature_names).index(column)
    s_idx, tt, _ = rows_of(panel, dates)
    score = sign * panel.x.numpy()[s_idx, tt, j].astype(np.float64)
    return panel_frame(panel, dates, np.repeat(score[:, None], len(panel.horizons), axis=1))


def run_ladder(panel, train: Sequence[dt.date], val: Sequence[dt.date],
               holdout: Sequence[dt.date], cfg: Config) -> Ladder:
    """Fit on ``train`` (alpha on ``val``), evaluate every baseline on ``holdout``."""
    from atft_core.evaluate import evaluate_predictions

    horizons = tuple(panel.horizons)
    ridge = fit_ridge(panel, train, val, cfg.gate.ridge_alphas)
    frames = {"ridge": predict_panel(ridge, panel, holdout)}
    notes = []
    for name, (col, sign) in FACTORS.items():
        if col not in panel.feature_names:
            notes.append(f"{name}: feature {col} not in this feature set; left out")
            continue
        frames[name] = factor_frame(panel, holdout, col, sign)
    evals = {n: evaluate_predictions(f, horizons) for n, f in frames.items()}
    return Ladder(ridge=ridge, evaluations=evals, frames=frames, notes=notes)


def candidate_ladder(frame: pl.DataFrame, cfg: Config, ridge_dir=None) -> dict[str, Any]:
    """The nightly ladder for a candidate trained by ``train_run(cfg, frame)``: the SAME panel and
    ``make_splits`` windows as the trainer (train rows fit, val picks alpha) and the holdout that
    ``evaluate_run_dir(..., window="holdout")`` scores. With ``ridge_dir`` the fitted ridge is
    also written there as a publishable run directory (family "ridge").

    Returns JSON-able ``{"evaluations": {name: evaluate_predictions dict}, "summary": ...,
    "ridge_run_dir": str | None, "window": {...}}``."""
    from atft_core.baselines.ridge import write_ridge_run
    from atft_core.dataset import make_splits
    from atft_core.train.api import as_panel

    panel = as_panel(frame, cfg)
    splits = make_splits(list(panel.dates), cfg)
    lad = run_ladder(panel, splits.train, splits.val, splits.holdout, cfg)
    if ridge_dir is not None:
        ridge_eval = {k: v for k, v in lad.evaluations["ridge"].items() if k != "daily"}
        write_ridge_run(lad.ridge, cfg, ridge_dir, extra_metrics={"holdout": ridge_eval})
    return {"evaluations": lad.evaluations, "summary": lad.summary(),
            "ridge_run_dir": str(ridge_dir) if ridge_dir is not None else None,
            "window": {"train": [str(splits.train[0]), str(splits.train[-1])],
                       "holdout": [str(splits.holdout[0]), str(splits.holdout[-1])]}}
