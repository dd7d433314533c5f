"""Ridge baseline on the candidate's own panel rows, and its run-directory artifact (issue 13).

Decisions:
* **Rows.** Exactly the stock-days the trainer learns from: ``panel.x[s, t]`` (today's robust-z
  features, no lookback window) for the train dates, one regression per horizon over the rows
  where ``panel.mask[s, t, h]`` (target known, stock-day in the cross-section).
* **Target.** ``panel.y``: the per-day normalised target the deep model is trained on (rank-gauss
  by default), so both see the same label.
* **Fit.** Closed form ``(X'X + alpha P) b = X'y`` with an unpenalised intercept (P = I with a 0
  for the intercept), float64. alpha from ``cfg.gate.ridge_alphas`` maximising the mean daily
  RankIC@1d on the VALIDATION dates (``atft_core.evaluate.daily_metrics``); the coefficients
  are those fitted on the train dates only (no refit on val), so nothing after the train window
  reaches the weights and the val choice stays honest.
* **Artifact.** ``model.safetensors`` (``coef`` (F, H), ``intercept`` (H,), metadata: family,
  feature names, horizons, alpha, config hash, epoch 0, value = val RankIC@1d) + ``config.yaml``
  + ``metrics.json`` agreeing with it, so the registry's runcheck accepts it (CONTRACTS.md).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from atft_core.atomic import atomic_write_text
from atft_core.config import Config

RIDGE_FAMILY = "ridge"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class RidgeModel:
    """Per-horizon linear scores ``x @ coef + intercept``. Shapes: coef (F, H), intercept (H,)."""

    coef: np.ndarray
    intercept: np.ndarray
    feature_names: tuple[str, ...]
    horizons: tuple[int, ...]
    alpha: float
    val_rank_ic_1d: float | None
    n_train_rows: int

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N, F) -> (N, H) float64."""
        return np.asarray(x, dtype=np.float64) @ self.coef + self.intercept


def rows_of(panel, dates: Sequence[dt.date]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Usable stock-days of ``dates`` ordered by date then stock: (stock idx, time idx, date pos)."""
    t = panel.date_index(list(dates))
    d_idx, s_idx = np.nonzero(panel.usable[:, t].numpy().T)  # row-major over (D, S): date-major
    return s_idx, t[d_idx], d_idx


def _design(panel, dates: Sequence[dt.date]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Usable stock-days of ``dates``: X (N, F) float64, y (N, H), mask (N, H)."""
    s_idx, tt, _ = rows_of(panel, dates)
    x = panel.x.numpy()[s_idx, tt].astype(np.float64)
    y = panel.y.numpy()[s_idx, tt].astype(np.float64)
    m = panel.mask.numpy()[s_idx, tt]
    return x, y, m


def solve_ridge_path(x: np.ndarray, y: np.ndarray, mask: np.ndarray,
                     alphas: Sequence[float]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Closed-form ridge per horizon over its masked rows for each alpha; intercept not
    penalised. The Gram matrices are formed once per horizon and reused for every alpha.

    Shapes: x (N, F), y (N, H), mask (N, H) -> per alpha (coef (F, H), intercept (H,))."""
    n, f = x.shape
    xa = np.concatenate([x, np.ones((n, 1))], axis=1)  # (N, F+1)
    out = [(np.zeros((f, y.shape[1])), np.zeros(y.shape[1])) for _ in alphas]
    for j in range(y.shape[1]):
        m = mask[:, j]
        if m.sum() <= f + 1:
            raise ValueError(f"ridge: only {int(m.sum())} labelled training rows for horizon "
                             f"index {j}; need more than {f + 1}")
        xm = xa[m]
        gram, xty = xm.T @ xm, xm.T @ y[m, j]
        for k, alpha in enumerate(alphas):
            pen = alpha * np.eye(f + 1)
            pen[f, f] = 0.0
            b = np.linalg.solve(gram + pen, xty)
            out[k][0][:, j], out[k][1][j] = b[:f], b[f]
    return out


def solve_ridge(x: np.ndarray, y: np.ndarray, mask: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`solve_ridge_path` for one alpha."""
    return solve_ridge_path(x, y, mask, [alpha])[0]


def panel_frame(panel, dates: Sequence[dt.date], pred: np.ndarray,
                horizons: Sequence[int] | None = None) -> pl.DataFrame:
    """Date, Code, ``pred_{h}d``, ``y_{h}d`` (raw, null where masked) over the usable stock-days
    of ``dates`` in :func:`rows_of` order -- the rows the model's predictions frame holds.
    ``pred`` (N, H) is aligned with those rows."""
    horizons = tuple(horizons or panel.horizons)
    s_idx, tt, d_idx = rows_of(panel, dates)
    if pred.shape != (len(s_idx), len(horizons)):
        raise ValueError(f"pred has shape {pred.shape}, expected ({len(s_idx)}, {len(horizons)})")
    yr = panel.y_raw.numpy()[s_idx, tt].astype(np.float64)
    msk = panel.mask.numpy()[s_idx, tt]
    cols: dict[str, Any] = {
        "Date": pl.Series("Date", np.asarray(list(dates), dtype="datetime64[D]")[d_idx]).cast(pl.Date),
        "Code": pl.Series("Code", panel.codes[s_idx].astype(str), dtype=pl.String),
    }
    for j, h in enumerate(horizons):
        cols[f"pred_{h}d"] = pl.Series(np.asarray(pred[:, j], dtype=np.float64))
    hj = {h: j for j, h in enumerate(panel.horizons)}
    for h in horizons:
        j = hj[h]
        cols[f"y_{h}d"] = pl.Series(np.where(msk[:, j], yr[:, j], np.nan), nan_to_null=True)
    return pl.DataFrame(cols)


def predict_panel(model: RidgeModel, panel, dates: Sequence[dt.date]) -> pl.DataFrame:
    """Ridge predictions frame over the usable stock-days of ``dates`` (with realised y)."""
    _check_features(model.feature_names, panel.feature_names)
    s_idx, tt, _ = rows_of(panel, dates)
    return panel_frame(panel, dates, model.predict(panel.x.numpy()[s_idx, tt]), model.horizons)


def _check_features(want: Sequence[str], have: Sequence[str]) -> None:
    if tuple(want) != tuple(have):
        raise ValueError(f"ridge was fitted on features {list(want)[:4]}... ({len(want)}), the "
                         f"panel has {list(have)[:4]}... ({len(have)}): not the same feature set")


def fit_ridge(panel, train_dates: Sequence[dt.date], val_dates: Sequence[dt.date],
              alphas: Sequence[float]) -> RidgeModel:
    """Ridge fitted on ``train_dates`` rows, alpha chosen by mean daily RankIC@1d on ``val_dates``."""
    from atft_core.evaluate import daily_metrics

    if not train_dates or not val_dates:
        raise ValueError("ridge needs train and val dates")
    x, y, m = _design(panel, train_dates)
    h0 = tuple(panel.horizons)[0]
    best: tuple[float, float, np.ndarray, np.ndarray] | None = None
    for alpha, (coef, icpt) in zip(alphas, solve_ridge_path(x, y, m, [float(a) for a in alphas])):
        cand = RidgeModel(coef, icpt, tuple(panel.feature_names), tuple(panel.horizons),
                          float(alpha), None, int(m[:, 0].sum()))
        daily = daily_metrics(predict_panel(cand, panel, val_dates), (h0,))
        score = daily[f"rank_ic_{h0}d"].drop_nulls().mean()
        score = float(score) if score is not None else -math.inf
        if best is None or score > best[0]:
            best = (score, float(alpha), coef, icpt)
    assert best is not None
    return RidgeModel(best[2], best[3], tuple(panel.feature_names), tuple(panel.horizons),
                      best[1], best[0] if math.isfinite(best[0]) else None, int(m[:, 0].sum()))


# --------------------------------------------------------------------------- artifact
def write_ridge_run(model: RidgeModel, cfg: Config, run_dir: str | Path,
                    extra_metrics: dict[str, Any] | None = None) -> Path:
    """Ridge run directory the registry accepts (see the module doc). Refuses a non-empty dir."""
    import torch
    from safetensors.torch import save as st_save

    from atft_core.atomic import atomic_write_bytes

    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ValueError(f"ridge run directory {run_dir} is not empty; refusing to overwrite")
    run_dir.mkdir(parents=True, exist_ok=True)
    sha = cfg.sha256()
    value = model.val_rank_ic_1d if model.val_rank_ic_1d is not None else 0.0
    meta = {"family": RIDGE_FAMILY, "feature_names": list(model.feature_names),
            "horizons": list(model.horizons), "alpha": model.alpha, "config_sha256": sha,
            "epoch": 0, "value": value, "n_train_rows": model.n_train_rows}
    blob = st_save({"coef": torch.from_numpy(np.ascontiguousarray(model.coef)),
                    "intercept": torch.from_numpy(np.ascontiguousarray(model.intercept))},
                   metadata={k: json.dumps(v) for k, v in sorted(meta.items())})
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    atomic_write_bytes(run_dir / WEIGHTS_FILE, blob)
    metrics = {"family": RIDGE_FAMILY, "config_sha256": sha, "best": {"epoch": 0, "value": value},
               "alpha": model.alpha, "val_rank_ic_1d": model.val_rank_ic_1d} | (extra_metrics or {})
    from atft_core.jsonsafe import json_safe

    atomic_write_text(run_dir / "metrics.json", json.dumps(json_safe(metrics), indent=2,
                                                           sort_keys=True))
    return run_dir


def read_ridge(path: str | Path) -> RidgeModel:
    """RidgeModel from a ridge ``model.safetensors`` (or the run dir holding it)."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    with safe_open(str(path), framework="np") as f:
        raw = f.metadata() or {}
        coef, icpt = f.get_tensor("coef"), f.get_tensor("intercept")
    meta = {k: json.loads(v) for k, v in raw.items()}
    if meta.get("family") != RIDGE_FAMILY:
        raise ValueError(f"{path} is not a ridge artifact (family {meta.get('family')!r})")
    return RidgeModel(coef.astype(np.float64), icpt.astype(np.float64),
                      tuple(meta["feature_names"]), tuple(int(h) for h in meta["horizons"]),
                      float(meta["alpha"]), meta.get("value"), int(meta.get("n_train_rows", 0)))
