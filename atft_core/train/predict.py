"""Run a model over a DayBatchLoader: predictions frame (CONTRACTS) and fast per-day metrics.

The frame has Date, Code, ``pred_{h}d`` and ``y_{h}d`` (raw executable returns, null where
masked). :func:`quick_metrics` computes the trainer's per-epoch validation metrics (daily
Spearman/Pearson IC, long-short top/bottom-20% Sharpe) without building a frame; the full
evaluation is :func:`atft_core.evaluate.evaluate_predictions`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from atft_core.batch import DayBatch
from atft_core.evaluate import SHARPE_ANNUALISATION
from atft_core.ranks import average_ranks


@dataclass(frozen=True)
class Predictions:
    """Concatenated outputs over a window.

    Shapes: pred, y_raw (N, H) float32 (y_raw NaN where masked); mask (N, H) bool;
    day_ptr (D+1,) int64; dates D dates; codes (N,) str.
    """

    pred: np.ndarray
    y_raw: np.ndarray
    mask: np.ndarray
    day_ptr: np.ndarray
    dates: list
    codes: np.ndarray
    horizons: tuple[int, ...]
    loss: float  # mean per-batch loss (NaN when no loss_fn)

    def frame(self):
        """pl.DataFrame: Date, Code, pred_{h}d..., y_{h}d... (null where masked)."""
        import polars as pl

        counts = np.diff(self.day_ptr)
        dates = np.repeat(np.asarray(self.dates, dtype="datetime64[D]"), counts)
        cols: dict[str, object] = {"Date": dates, "Code": self.codes.astype(str)}
        for j, h in enumerate(self.horizons):
            cols[f"pred_{h}d"] = self.pred[:, j].astype(np.float64)
        for j, h in enumerate(self.horizons):
            y = np.where(self.mask[:, j], self.y_raw[:, j], np.nan).astype(np.float64)
            cols[f"y_{h}d"] = y
        df = pl.DataFrame(cols).with_columns(pl.col("Date").cast(pl.Date))
        return df.with_columns([pl.col(f"y_{h}d").fill_nan(None) for h in self.horizons])


def autocast_ctx(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_loader(
    model: torch.nn.Module,
    batches: Iterable[DayBatch],
    horizons: tuple[int, ...],
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    loss_fn: Callable[[torch.Tensor, DayBatch], torch.Tensor] | None = None,
) -> Predictions:
    """Predict every batch (model in eval mode; restored afterwards). Outputs stay on device
    until the end, one host copy per batch (no per-sample work)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    preds, ys, masks, ptrs, dates, codes, losses = [], [], [], [0], [], [], []
    try:
        for batch in batches:
            b = batch.to(device, non_blocking=device.type == "cuda")
            with autocast_ctx(device, precision):
                out = model(b.x, b.edge_index, b.edge_attr)  # (N, H)
            out = out.float()
            if loss_fn is not None:
                losses.append(loss_fn(out, b).detach())
            preds.append(out.cpu())
            ys.append(batch.y_raw)
            masks.append(batch.mask)
            ptrs.extend((batch.day_ptr[1:] + ptrs[-1]).tolist())
            dates.extend(batch.dates)
            codes.append(np.asarray(batch.codes))
    finally:
        model.train(was_training)
    if not preds:
        raise ValueError("predict_loader: the loader yielded no batches (empty window?)")
    loss = float(torch.stack(losses).mean()) if losses else float("nan")
    return Predictions(
        pred=torch.cat(preds).numpy(), y_raw=torch.cat(ys).float().numpy(),
        mask=torch.cat(masks).bool().numpy(), day_ptr=np.asarray(ptrs, dtype=np.int64),
        dates=dates, codes=np.concatenate(codes), horizons=tuple(horizons), loss=loss,
    )


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / den if den > 0 else float("nan")


def quick_metrics(p: Predictions, quantile: float = 0.2) -> dict[str, float]:
    """Daily-mean RankIC / IC per horizon and the annualised top/bottom-quantile long-short
    Sharpe per horizon. Days with < 5 valid stocks or a constant prediction are skipped."""
    out: dict[str, float] = {}
    for j, h in enumerate(p.horizons):
        ric, ic, ls = [], [], []
        for d in range(len(p.day_ptr) - 1):
            lo, hi = p.day_ptr[d], p.day_ptr[d + 1]
            m = p.mask[lo:hi, j] & np.isfinite(p.y_raw[lo:hi, j]) & np.isfinite(p.pred[lo:hi, j])
            if m.sum() < 5:
                continue
            x = p.pred[lo:hi, j][m].astype(np.float64)
            y = p.y_raw[lo:hi, j][m].astype(np.float64)
            if x.std() == 0:
                continue
            ric.append(_corr(average_ranks(x), average_ranks(y)))
            ic.append(_corr(x, y))
            n_q = max(1, int(len(x) * quantile))
            order = np.argsort(x, kind="stable")
            ls.append(y[order[-n_q:]].mean() - y[order[:n_q]].mean())
        out[f"rank_ic_{h}d"] = float(np.nanmean(ric)) if ric else float("nan")
        out[f"ic_{h}d"] = float(np.nanmean(ic)) if ic else float("nan")
        r = np.asarray(ls)
        sd = r.std(ddof=1) if len(r) > 1 else 0.0
        out[f"sharpe_{h}d"] = float(r.mean() / sd * SHARPE_ANNUALISATION) if sd > 0 else float("nan")
    return out
