"""Training losses, computed per day (cross-section) and averaged over the batch's days (SPEC 5).

``total = w.mse * point + w.rankic * RankIC + w.cs_ic * CS-IC + w.sharpe * Sharpe`` where every
term is a horizon-weighted average (``LossConfig.horizon_weights``, normalised to sum to 1 over
the model's horizons).

Decisions recorded here:
* Everything is fp32: ``pred`` is cast to float32 and autocast is switched off inside, so bf16
  training never computes ranks, correlations or a Sharpe ratio in bf16.
* Targets are ``batch.y`` (the per-day normalised target) with ``batch.mask``; masked rows are
  ignored, never treated as 0. Days with fewer than 2 valid stocks for a horizon are skipped.
* Vectorised: the (N, H) rows are scattered once into a padded (H, K, n_max) block (horizon x
  day x stock, ``valid`` marks real entries) and every term is a masked reduction over the last
  axis, for all horizons and days at once. No Python loop over days or horizons, no ``if`` on a
  tensor value; the only host sync is one ``tolist()`` of all logged components at the end (the
  padding width comes from ``day_ptr`` on the host, see :attr:`DayBatch.day_ptr_host`).
* RankIC uses a pairwise-sigmoid soft rank of the per-day standardised prediction
  (``rank_i = 1 + sum_{j != i} sigmoid((p_i - p_j) / T)``; standardising makes ``T`` a fraction of
  the day's prediction std, independent of the prediction scale). As T -> 0 it becomes the exact
  average rank, so the loss becomes 1 - exact Spearman. It is a custom autograd function that
  works in row chunks and recomputes the sigmoids in backward: O(N * chunk) memory per day block
  instead of the dense O(N^2) matrix (and its saved copies) of the autograd version.
* Sharpe uses the normalised target y (not y_raw): raw returns of different horizons differ in
  scale and have fat tails; on the normalised target the portfolio return is a bounded, ranking-
  focused signal. It needs >= 2 days with a defined return; otherwise it contributes 0 and is
  reported as NaN (gradient accumulation therefore never splits a batch's loss into micro-batch
  losses: see :mod:`atft_core.train.grad_accum`).
* A term whose weight is 0 is not computed (it would only cost time) and is absent from
  ``components``.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from atft_core.config import LossConfig, LossWeights

EPS = 1e-8
SOFTRANK_CHUNK_ELEMENTS = 1 << 21  # pairwise block per soft-rank chunk: 2M elements = 8 MB fp32


class _BatchLike(Protocol):
    y: Tensor
    mask: Tensor
    day_ptr: Tensor


# --------------------------------------------------------------------------- ranks
def exact_rank_rows(v: Tensor, valid: Tensor) -> Tensor:
    """Average ranks 1..n among each row's valid entries (ties share their mean rank, like
    ``scipy.stats.rankdata``); invalid entries get 0. (B, N), (B, N) bool -> (B, N)"""
    big = torch.finfo(v.dtype).max
    vv = torch.where(valid, v, big)  # invalid entries sort last and never tie a real value
    s = vv.sort(dim=-1).values.contiguous()
    left = torch.searchsorted(s, vv.contiguous(), right=False)  # values strictly below
    right = torch.searchsorted(s, vv.contiguous(), right=True)  # values <= v
    rank = (left + right + 1).to(v.dtype) / 2  # mean of the 1-based positions left+1 .. right
    return torch.where(valid, rank, torch.zeros_like(rank))


def exact_rank(v: Tensor) -> Tensor:
    """Average ranks 1..n (ties share their mean rank, like ``scipy.stats.rankdata``). (n,) -> (n,)"""
    return exact_rank_rows(v.unsqueeze(0), torch.ones_like(v, dtype=torch.bool).unsqueeze(0))[0]


class _ChunkedSoftRank(torch.autograd.Function):
    """rank_i = 1/2 + sum_j valid_j sigmoid((v_i - v_j) / T) per row, in chunks of rows i.

    Backward with s'_ij = sigmoid'(d_ij) (symmetric): dL/dv_k = (g_k sum_j s'_kj - sum_i g_i s'_ik) / T.
    Nothing of size N x N is kept: the sigmoids are recomputed chunk by chunk. Invalid entries are
    moved to +BIG (after the 1/T scaling): sigmoid(v_i - BIG) = 0 and sigmoid' = 0 there, so the
    inner loop needs no mask at all (invalid rows i are zeroed on output / by g = 0).
    """

    BIG = 1e30

    @staticmethod
    def forward(ctx, v: Tensor, valid: Tensor, temperature: float) -> Tensor:  # type: ignore[override]
        vs = torch.where(valid, v / temperature, _ChunkedSoftRank.BIG)
        ctx.save_for_backward(vs, valid)
        ctx.temperature = temperature
        rank = torch.empty_like(v)
        for i0, i1 in _chunks(v):
            d = vs[:, i0:i1, None] - vs[:, None, :]  # (B, c, N)
            rank[:, i0:i1] = torch.sigmoid_(d).sum(-1)
        rank += 0.5  # 1 + sum_{j != i} = 1/2 + sum_j (the diagonal's sigmoid(0) = 1/2 is in the sum)
        return torch.where(valid, rank, torch.zeros_like(rank))  # invalid entries: no rank, no gradient

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):  # type: ignore[override]
        vs, valid = ctx.saved_tensors
        g = torch.where(valid, g, torch.zeros_like(g))
        grad = torch.zeros_like(vs)
        for i0, i1 in _chunks(vs):
            s = torch.sigmoid_(vs[:, i0:i1, None] - vs[:, None, :])  # (B, c, N)
            ds = s * s
            torch.sub(s, ds, out=ds)  # sigmoid' = s (1 - s)
            grad[:, i0:i1] += g[:, i0:i1] * ds.sum(-1)
            grad -= torch.bmm(g[:, None, i0:i1], ds)[:, 0]
        return grad / ctx.temperature, None, None


def _chunks(v: Tensor) -> list[tuple[int, int]]:
    b, n = v.shape
    c = max(1, SOFTRANK_CHUNK_ELEMENTS // max(1, b * n))
    return [(i, min(i + c, n)) for i in range(0, n, c)]


def soft_rank_rows(v: Tensor, valid: Tensor, temperature: float) -> Tensor:
    """Differentiable rank among each row's valid entries. (B, N), (B, N) bool -> (B, N)

    Ties get the average rank (sigmoid(0) = 1/2), so T -> 0 gives :func:`exact_rank_rows`.
    Memory O(N * chunk), see :class:`_ChunkedSoftRank`.
    """
    return _ChunkedSoftRank.apply(v, valid, float(temperature))


def soft_rank(v: Tensor, temperature: float) -> Tensor:
    """Differentiable rank ``1 + sum_{j != i} sigmoid((v_i - v_j) / T)``. (n,) -> (n,)"""
    return soft_rank_rows(v.unsqueeze(0), torch.ones_like(v, dtype=torch.bool).unsqueeze(0), temperature)[0]


# --------------------------------------------------------------------------- masked row statistics
def _mean(x: Tensor, w: Tensor, n: Tensor) -> Tensor:
    return (x * w).sum(-1) / n.clamp(min=1)


def _pearson_rows(a: Tensor, b: Tensor, w: Tensor, n: Tensor) -> Tensor:
    """Pearson correlation of a and b over each row's valid entries (weights w in {0, 1})."""
    a = (a - _mean(a, w, n)[..., None]) * w
    b = (b - _mean(b, w, n)[..., None]) * w
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + EPS)


def _standardise_rows(v: Tensor, w: Tensor, n: Tensor) -> Tensor:
    c = (v - _mean(v, w, n)[..., None]) * w
    var = (c * c).sum(-1) / n.clamp(min=1)
    # a constant (or empty, padded) row has c == 0: any finite std gives 0, and sqrt(0) would
    # put an infinite derivative (0 * inf = NaN) into the backward pass
    std = torch.where(var > 0, var, 1.0).sqrt()
    return c / (std[..., None] + EPS)


def soft_spearman(pred: Tensor, target: Tensor, temperature: float) -> Tensor:
    """Pearson(soft_rank(standardised pred), exact_rank(target)). (n,), (n,) -> ()"""
    valid = torch.ones(1, pred.shape[0], dtype=torch.bool, device=pred.device)
    w = valid.to(pred.dtype)
    n = w.sum(-1)
    ranks = soft_rank_rows(_standardise_rows(pred.unsqueeze(0), w, n), valid, temperature)
    return _pearson_rows(ranks, exact_rank_rows(target.unsqueeze(0), valid).to(pred.dtype), w, n)[0]


# --------------------------------------------------------------------------- padding
def _horizon_weights(cfg: LossConfig, horizons: tuple[int, ...]) -> list[float]:
    missing = [h for h in horizons if h not in cfg.horizon_weights]
    if missing:
        raise ValueError(f"loss.horizon_weights has no weight for horizons {missing}")
    w = [float(cfg.horizon_weights[h]) for h in horizons]
    total = sum(w)
    if total <= 0:
        raise ValueError("loss.horizon_weights must have a positive sum over the model's horizons")
    return [x / total for x in w]


def _host_day_ptr(batch: _BatchLike, n_rows: int) -> Tensor:
    ptr = batch.day_ptr
    if ptr.device.type == "cpu":
        return ptr
    host = getattr(batch, "day_ptr_host", None)
    # a host copy that does not describe this batch (e.g. kept through a slice) is not used
    if host is not None and host.numel() == ptr.numel() and int(host[-1]) == n_rows:
        return host
    return ptr.cpu()


def pad_days(x: Tensor, day_ptr: Tensor, day_ptr_host: Tensor, fill: float = 0.0) -> Tensor:
    """(N, H) rows of K concatenated days -> (H, K, n_max), day k's rows at [:, k, :n_k]."""
    counts_host = day_ptr_host[1:] - day_ptr_host[:-1]
    k = int(counts_host.numel())
    n_max = int(counts_host.max()) if k else 0
    counts = (day_ptr[1:] - day_ptr[:-1]).to(x.device)
    day = torch.repeat_interleave(torch.arange(k, device=x.device), counts, output_size=x.shape[0])
    pos = torch.arange(x.shape[0], device=x.device) - day_ptr.to(x.device)[day]
    out = x.new_full((x.shape[1], k, n_max), fill)
    out[:, day, pos] = x.T
    return out


# --------------------------------------------------------------------------- the loss
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
    total, comps = compute_loss_tensors(pred, batch, weights, cfg, horizons)
    keys = list(comps)
    values = torch.stack([comps[k].detach() for k in keys]).tolist() if keys else []  # the one host sync
    return total, dict(zip(keys, values))


def compute_loss_tensors(
    pred: Tensor,
    batch: _BatchLike,
    weights: LossWeights,
    cfg: LossConfig,
    horizons: tuple[int, ...],
) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`compute_loss` without any host sync: the components stay 0-d tensors."""
    n_h = len(horizons)
    if pred.ndim != 2 or pred.shape[1] != n_h:
        raise ValueError(f"pred must be (N, {n_h}), got {tuple(pred.shape)}")
    if batch.y.shape != pred.shape or batch.mask.shape != pred.shape:
        raise ValueError(f"batch.y/mask {tuple(batch.y.shape)} do not match pred {tuple(pred.shape)}")
    hw = torch.tensor(_horizon_weights(cfg, horizons), dtype=torch.float32, device=pred.device)
    active = {k: float(getattr(weights, k)) for k in ("mse", "rankic", "cs_ic", "sharpe")}
    active = {k: v for k, v in active.items() if v > 0}
    name = {"mse": "point", "rankic": "rankic", "cs_ic": "cs_ic", "sharpe": "sharpe"}

    with torch.autocast(device_type=pred.device.type, enabled=False):
        p_all = pred.float()
        ptr, ptr_host = batch.day_ptr, _host_day_ptr(batch, p_all.shape[0])
        valid = pad_days(batch.mask.bool(), ptr, ptr_host, fill=False)  # (H, K, n)
        w = valid.float()
        p = pad_days(p_all, ptr, ptr_host) * w  # (H, K, n); padding is 0, never NaN
        y = pad_days(batch.y.float(), ptr, ptr_host) * w
        n = w.sum(-1)  # (H, K) valid stocks per horizon and day
        day_ok = n >= 2  # days with < 2 valid stocks are skipped
        nan = p_all.new_tensor(float("nan"))

        def day_mean(per_day: Tensor) -> Tensor:  # (H, K) -> (H,), NaN where no day is defined
            cnt = day_ok.sum(-1)
            s = torch.where(day_ok, per_day, 0.0).sum(-1)
            return torch.where(cnt > 0, s / cnt.clamp(min=1), nan)

        terms: dict[str, Tensor] = {}  # key -> (H,)
        if "mse" in active:
            if cfg.point == "huber":
                pl_ = F.huber_loss(p, y, delta=cfg.huber_delta, reduction="none")
            else:
                pl_ = (p - y) ** 2
            terms["mse"] = day_mean(_mean(pl_, w, n))
        if "rankic" in active:
            std_p = _standardise_rows(p, w, n)
            h_, k_, m_ = p.shape
            ranks = soft_rank_rows(std_p.reshape(h_ * k_, m_), valid.reshape(h_ * k_, m_),
                                   cfg.softrank_temperature).reshape(p.shape)
            ry = exact_rank_rows(y.reshape(h_ * k_, m_), valid.reshape(h_ * k_, m_)).reshape(p.shape)
            terms["rankic"] = day_mean(1.0 - _pearson_rows(ranks, ry, w, n))
        if "cs_ic" in active:
            terms["cs_ic"] = day_mean(1.0 - _pearson_rows(p, y, w, n))
        if "sharpe" in active:
            c = (p - _mean(p, w, n)[..., None]) * w
            port = c / (c.abs().sum(-1, keepdim=True) + EPS)
            r = torch.where(day_ok, (port * y).sum(-1), 0.0)  # (H, K) daily long-short returns
            cnt = day_ok.sum(-1)  # (H,)
            mu = r.sum(-1) / cnt.clamp(min=1)
            var = (torch.where(day_ok, r - mu[:, None], 0.0) ** 2).sum(-1) / (cnt - 1).clamp(min=1)
            sd = torch.where(var > 0, var, 1.0).sqrt() * (var > 0)  # sqrt(0) would give NaN grads
            terms["sharpe"] = torch.where(cnt >= 2, -mu / (sd + EPS), nan)

        total = p_all.sum() * 0.0  # keeps the graph connected even if no term is defined
        components: dict[str, Tensor] = {}
        for key, per_h in terms.items():
            finite = torch.isfinite(per_h)
            wf = torch.where(finite, hw, 0.0)
            wsum = wf.sum()
            value = torch.where(finite, per_h, 0.0).mul(wf).sum() / wsum.clamp(min=EPS)
            value = torch.where(wsum > 0, value, nan)
            for j in range(n_h):
                components[f"{name[key]}_{horizons[j]}d"] = per_h[j]
            components[name[key]] = value
            total = total + active[key] * torch.where(wsum > 0, value, 0.0)
        components["total"] = total
    return total, components
