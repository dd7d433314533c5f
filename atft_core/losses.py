"""Training losses, computed per day (cross-section) and averaged over the batch's days (SPEC 5).

``total = w.mse * point + w.rankic * RankIC + w.cs_ic * CS-IC + w.sharpe * Sharpe`` where every
term is a horizon-weighted average (``LossConfig.horizon_weights``, normalised to sum to 1 over
the model's horizons).

Decisions recorded here:
* Everything is fp32: ``pred`` is cast to float32 and autocast is switched off inside, so bf16
  training never computes ranks, correlations or a Sharpe ratio in bf16.
* Targets are ``batch.y`` (the per-day normalised target) with ``batch.mask``; masked rows are
  ignored, never treated as 0. Days with fewer than 2 valid stocks for a horizon are skipped.
* RankIC uses a pairwise-sigmoid soft rank of the per-day standardised prediction
  (``rank_i = 1 + sum_{j != i} sigmoid((p_i - p_j) / T)``; standardising makes ``T`` a fraction of
  the day's prediction std, independent of the prediction scale). As T -> 0 it becomes the exact
  average rank, so the loss becomes 1 - exact Spearman. O(N^2) memory per day (N <= ~4000 fine).
* Sharpe uses the normalised target y (not y_raw): raw returns of different horizons differ in
  scale and have fat tails; on the normalised target the portfolio return is a bounded, ranking-
  focused signal. It needs >= 2 days with a defined return; otherwise it contributes 0 and is
  reported as NaN.
* A term whose weight is 0 is not computed (it would only cost time) and is absent from
  ``components``.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from atft_core.config import LossConfig, LossWeights

EPS = 1e-8


class _BatchLike(Protocol):
    y: Tensor
    mask: Tensor
    day_ptr: Tensor


# --------------------------------------------------------------------------- ranks
def exact_rank(v: Tensor) -> Tensor:
    """Average ranks 1..n (ties share their mean rank, like ``scipy.stats.rankdata``). (n,) -> (n,)"""
    n = v.shape[0]
    sorted_v, order = torch.sort(v)
    ordinal = torch.empty(n, dtype=torch.float64, device=v.device)
    ordinal[order] = torch.arange(1, n + 1, dtype=torch.float64, device=v.device)
    # group equal values: ranks of a tie group are replaced by the group's mean ordinal rank
    new_group = torch.ones(n, dtype=torch.bool, device=v.device)
    new_group[1:] = sorted_v[1:] != sorted_v[:-1]
    group_sorted = torch.cumsum(new_group.long(), 0) - 1  # (n,) group id in sorted order
    group = torch.empty_like(group_sorted)
    group[order] = group_sorted
    n_groups = int(group_sorted[-1]) + 1 if n else 0
    sums = torch.zeros(n_groups, dtype=torch.float64, device=v.device).index_add_(0, group, ordinal)
    counts = torch.zeros(n_groups, dtype=torch.float64, device=v.device).index_add_(
        0, group, torch.ones_like(ordinal))
    return (sums / counts)[group].to(v.dtype)


def soft_rank(v: Tensor, temperature: float) -> Tensor:
    """Differentiable rank ``1 + sum_{j != i} sigmoid((v_i - v_j) / T)``. (n,) -> (n,)

    Ties get the average rank (sigmoid(0) = 1/2), so T -> 0 gives :func:`exact_rank`.
    """
    diff = (v.unsqueeze(1) - v.unsqueeze(0)) / temperature  # (n, n)
    return 0.5 + torch.sigmoid(diff).sum(dim=1)  # the diagonal contributes sigmoid(0) = 1/2


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    a = a - a.mean()
    b = b - b.mean()
    return (a * b).sum() / (a.norm() * b.norm() + EPS)


def _standardise(v: Tensor) -> Tensor:
    return (v - v.mean()) / (v.std(correction=0) + EPS)


def soft_spearman(pred: Tensor, target: Tensor, temperature: float) -> Tensor:
    """Pearson(soft_rank(standardised pred), exact_rank(target)). (n,), (n,) -> ()"""
    return _pearson(soft_rank(_standardise(pred), temperature), exact_rank(target))


# --------------------------------------------------------------------------- per-day terms
def _horizon_weights(cfg: LossConfig, horizons: tuple[int, ...]) -> list[float]:
    missing = [h for h in horizons if h not in cfg.horizon_weights]
    if missing:
        raise ValueError(f"loss.horizon_weights has no weight for horizons {missing}")
    w = [float(cfg.horizon_weights[h]) for h in horizons]
    total = sum(w)
    if total <= 0:
        raise ValueError("loss.horizon_weights must have a positive sum over the model's horizons")
    return [x / total for x in w]


def _point(pred: Tensor, y: Tensor, cfg: LossConfig) -> Tensor:
    if cfg.point == "huber":
        return F.huber_loss(pred, y, delta=cfg.huber_delta)
    return F.mse_loss(pred, y)


def _sharpe(daily_returns: list[Tensor]) -> Tensor:
    """-mean/std of the daily long-short returns (needs >= 2 days)."""
    r = torch.stack(daily_returns)  # (D,)
    return -r.mean() / (r.std(correction=1) + EPS)


def compute_loss(
    pred: Tensor,
    batch: _BatchLike,
    weights: LossWeights,
    cfg: LossConfig,
    horizons: tuple[int, ...],
) -> tuple[Tensor, dict[str, float]]:
    """Weighted multi-horizon loss of one day batch.

    Args:
        pred: model output.
        batch: a :class:`~atft_core.batch.DayBatch` (uses ``y``, ``mask``, ``day_ptr``).
        weights: term weights (mse, rankic, cs_ic, sharpe).
        cfg: loss settings (point loss kind, horizon weights, soft-rank temperature).
        horizons: the horizons of ``pred``'s columns.

    Shapes:
        pred: (N, H); batch.y, batch.mask: (N, H); batch.day_ptr: (K+1,)

    Returns:
        ``(total, components)``: ``total`` is a differentiable fp32 scalar; ``components`` maps
        ``point``, ``rankic``, ``cs_ic``, ``sharpe`` (the unweighted terms that were computed),
        their per-horizon values ``point_1d`` ..., and ``total`` to floats.
    """
    n_h = len(horizons)
    if pred.ndim != 2 or pred.shape[1] != n_h:
        raise ValueError(f"pred must be (N, {n_h}), got {tuple(pred.shape)}")
    if batch.y.shape != pred.shape or batch.mask.shape != pred.shape:
        raise ValueError(f"batch.y/mask {tuple(batch.y.shape)} do not match pred {tuple(pred.shape)}")
    hw = _horizon_weights(cfg, horizons)
    active = {k: float(getattr(weights, k)) for k in ("mse", "rankic", "cs_ic", "sharpe")}
    active = {k: v for k, v in active.items() if v > 0}
    name = {"mse": "point", "rankic": "rankic", "cs_ic": "cs_ic", "sharpe": "sharpe"}

    with torch.autocast(device_type=pred.device.type, enabled=False):
        p_all = pred.float()
        y_all = batch.y.float()
        mask = batch.mask.bool()
        ptr = batch.day_ptr.tolist()
        terms: dict[str, list[Tensor]] = {k: [] for k in active}  # per horizon
        for j in range(n_h):
            per_day: dict[str, list[Tensor]] = {k: [] for k in active}
            for k in range(len(ptr) - 1):
                m = mask[ptr[k]:ptr[k + 1], j]
                if int(m.sum()) < 2:
                    continue
                p = p_all[ptr[k]:ptr[k + 1], j][m]  # (n_valid,)
                y = y_all[ptr[k]:ptr[k + 1], j][m]  # (n_valid,)
                if "mse" in active:
                    per_day["mse"].append(_point(p, y, cfg))
                if "rankic" in active:
                    per_day["rankic"].append(1.0 - soft_spearman(p, y, cfg.softrank_temperature))
                if "cs_ic" in active:
                    per_day["cs_ic"].append(1.0 - _pearson(p, y))
                if "sharpe" in active:
                    w = p - p.mean()
                    w = w / (w.abs().sum() + EPS)
                    per_day["sharpe"].append((w * y).sum())
            for key in active:
                days = per_day[key]
                if key == "sharpe":
                    val = _sharpe(days) if len(days) >= 2 else None
                else:
                    val = torch.stack(days).mean() if days else None
                terms[key].append(val if val is not None else p_all.new_tensor(math.nan))
        total = p_all.sum() * 0.0  # keeps the graph connected even if no term is defined
        components: dict[str, float] = {}
        for key, per_h in terms.items():
            finite = [(hw[j], t) for j, t in enumerate(per_h) if torch.isfinite(t)]
            wsum = sum(w for w, _ in finite)
            value = sum(w * t for w, t in finite) / wsum if finite else None
            for j, t in enumerate(per_h):
                components[f"{name[key]}_{horizons[j]}d"] = float(t.detach())
            components[name[key]] = float(value.detach()) if value is not None else math.nan
            if value is not None:
                total = total + active[key] * value
        components["total"] = float(total.detach())
    return total, components
