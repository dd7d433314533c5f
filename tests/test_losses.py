"""Losses: soft rank -> exact Spearman, per-day references, masks, Sharpe direction, fp32."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, rankdata, spearmanr

from atft_core.config import LossConfig, LossWeights
from atft_core.losses import compute_loss, exact_rank, soft_rank, soft_spearman

HORIZONS = (1, 5, 10, 20)
HW = np.array([1.0, 0.8, 0.5, 0.3]) / 2.6


def _batch(sizes=(40, 35, 50, 45), seed=0, masked=0.15):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    ptr = torch.tensor([0, *np.cumsum(sizes).tolist()])
    y = torch.randn(n, len(HORIZONS), generator=g).round(decimals=1)  # ties on purpose
    mask = torch.rand(n, len(HORIZONS), generator=g) > masked
    return SimpleNamespace(y=torch.where(mask, y, 0.0), mask=mask, day_ptr=ptr)


def _days(b):
    p = b.day_ptr.tolist()
    return [slice(p[k], p[k + 1]) for k in range(len(p) - 1)]


def test_exact_rank_matches_scipy_average_ranks_with_ties():
    v = torch.tensor([3.0, 1.0, 2.0, 3.0, 1.0, 1.0, 5.0])
    np.testing.assert_allclose(exact_rank(v).numpy(), rankdata(v.numpy()))
    rng = np.random.default_rng(0)
    w = rng.integers(0, 20, 300).astype(np.float32)
    np.testing.assert_allclose(exact_rank(torch.from_numpy(w)).numpy(), rankdata(w))


def test_soft_spearman_converges_to_scipy_as_temperature_goes_to_zero():
    rng = np.random.default_rng(1)
    p = rng.normal(size=200)
    y = np.round(rng.normal(size=200), 1)  # ties in the target
    exact = spearmanr(p, y).statistic
    temps = [1.0, 0.1, 0.01, 0.001, 1e-4, 1e-5]
    errs = [abs(float(soft_spearman(torch.from_numpy(p), torch.from_numpy(y), t)) - exact) for t in temps]
    # measured: 1.9e-2, 2.8e-3, 7.8e-4, 1.3e-4, 1.0e-5, 8e-11
    assert all(a > b for a, b in zip(errs, errs[1:])), errs  # monotone convergence
    assert errs[0] > 1e-2 and errs[3] < 1e-3 and errs[-1] < 1e-8, errs
    # ties in the prediction get average ranks too
    np.testing.assert_allclose(soft_rank(torch.tensor([0.0, 1.0, 1.0, 2.0], dtype=torch.float64), 1e-4),
                               [1.0, 2.5, 2.5, 4.0], atol=1e-9)


def test_rankic_gradient_points_towards_the_target_order():
    y = torch.tensor([0.5, -1.0, 2.0, 0.1, -0.3])
    p = torch.zeros(5, requires_grad=True)
    with torch.no_grad():
        p += torch.tensor([0.01, 0.02, -0.01, 0.0, 0.03])  # nearly flat, wrong order
    loss = 1 - soft_spearman(p, y, 0.5)
    loss.backward()
    assert p.grad[2] < 0 and p.grad[1] > 0  # raise the best stock, lower the worst
    with torch.no_grad():
        p2 = p - 0.05 * p.grad / p.grad.abs().max()
    assert 1 - soft_spearman(p2, y, 0.5) < loss


def test_point_and_cs_ic_equal_per_day_references():
    b = _batch()
    pred = torch.randn(b.y.shape, generator=torch.Generator().manual_seed(3))
    _, comp = compute_loss(pred, b, LossWeights(mse=1.0, cs_ic=1.0), LossConfig(), HORIZONS)
    mse_h, ic_h = [], []
    for j in range(4):
        mses, ics = [], []
        for s in _days(b):
            m = b.mask[s, j].numpy()
            pp, yy = pred[s, j].numpy()[m], b.y[s, j].numpy()[m]
            mses.append(np.mean((pp - yy) ** 2))
            ics.append(1 - pearsonr(pp, yy).statistic)
        mse_h.append(np.mean(mses))
        ic_h.append(np.mean(ics))
        assert comp[f"point_{HORIZONS[j]}d"] == pytest.approx(mse_h[-1], rel=1e-5)
        assert comp[f"cs_ic_{HORIZONS[j]}d"] == pytest.approx(ic_h[-1], rel=1e-5)
    assert comp["point"] == pytest.approx(float(HW @ mse_h), rel=1e-5)
    assert comp["cs_ic"] == pytest.approx(float(HW @ ic_h), rel=1e-5)
    assert comp["total"] == pytest.approx(comp["point"] + comp["cs_ic"], rel=1e-5)
    assert "rankic" not in comp and "sharpe" not in comp  # zero-weight terms are not computed


def test_huber_point_loss():
    b = _batch()
    pred = 3 * torch.randn(b.y.shape)
    _, comp = compute_loss(pred, b, LossWeights(), LossConfig(point="huber", huber_delta=0.5), HORIZONS)
    j, vals = 0, []
    for s in _days(b):
        m = b.mask[s, j].numpy()
        d = np.abs(pred[s, j].numpy()[m] - b.y[s, j].numpy()[m])
        vals.append(np.mean(np.where(d < 0.5, 0.5 * d**2, 0.5 * (d - 0.25))))
    assert comp["point_1d"] == pytest.approx(np.mean(vals), rel=1e-5)


def test_rankic_loss_at_low_temperature_is_one_minus_scipy_spearman():
    b = _batch()
    pred = torch.randn(b.y.shape, generator=torch.Generator().manual_seed(4))
    _, comp = compute_loss(pred, b, LossWeights(mse=0.0, rankic=1.0),
                           LossConfig(softrank_temperature=1e-6), HORIZONS)
    for j in range(4):
        ref = np.mean([1 - spearmanr(pred[s, j].numpy()[b.mask[s, j].numpy()],
                                     b.y[s, j].numpy()[b.mask[s, j].numpy()]).statistic
                       for s in _days(b)])
        assert comp[f"rankic_{HORIZONS[j]}d"] == pytest.approx(ref, abs=1e-4)


def test_sharpe_matches_reference_and_improves_when_predictions_align_with_returns():
    b = _batch(sizes=(60, 60, 60, 60, 60))
    g = torch.Generator().manual_seed(5)
    w = LossWeights(mse=0.0, sharpe=1.0)

    def sharpe_of(pred):
        return compute_loss(pred, b, w, LossConfig(), HORIZONS)[1]

    noise = torch.randn(b.y.shape, generator=g)
    aligned, random_, anti = b.y + 0.5 * noise, noise, -b.y + 0.5 * noise
    s_al, s_rand, s_anti = sharpe_of(aligned)["sharpe"], sharpe_of(random_)["sharpe"], sharpe_of(anti)["sharpe"]
    assert s_al < s_rand < s_anti and s_al < 0 < s_anti
    # numpy reference for horizon 1
    r = []
    for s in _days(b):
        m = b.mask[s, 0].numpy()
        p, y = aligned[s, 0].numpy()[m], b.y[s, 0].numpy()[m]
        wt = (p - p.mean()) / np.abs(p - p.mean()).sum()
        r.append(np.sum(wt * y))
    assert sharpe_of(aligned)["sharpe_1d"] == pytest.approx(-np.mean(r) / np.std(r, ddof=1), rel=1e-4)


def test_sharpe_needs_two_days():
    b = _batch(sizes=(50,))
    total, comp = compute_loss(torch.randn(50, 4, requires_grad=True), b,
                               LossWeights(mse=0.0, sharpe=1.0), LossConfig(), HORIZONS)
    assert math.isnan(comp["sharpe"]) and total.item() == 0.0
    total.backward()  # still a valid graph


def test_masked_rows_and_tiny_days_are_ignored():
    b = _batch(sizes=(40, 1, 45))  # the middle day has a single stock: skipped
    pred = torch.randn(b.y.shape, generator=torch.Generator().manual_seed(6))
    wts = LossWeights(mse=1.0, rankic=1.0, cs_ic=1.0, sharpe=1.0)
    _, c1 = compute_loss(pred, b, wts, LossConfig(), HORIZONS)
    b2 = SimpleNamespace(y=torch.where(b.mask, b.y, 1e6), mask=b.mask, day_ptr=b.day_ptr)
    pred2 = pred.clone()
    pred2[~b.mask] = -1e6
    pred2[40] = 123.0  # the lone stock of the skipped day
    _, c2 = compute_loss(pred2, b2, wts, LossConfig(), HORIZONS)
    for k in ("point", "rankic", "cs_ic", "sharpe", "total"):
        assert c1[k] == pytest.approx(c2[k], rel=1e-5), k


def test_loss_is_fp32_under_bf16_autocast_and_gradients_flow():
    b = _batch()
    pred = torch.randn(b.y.shape, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, comp = compute_loss(pred.bfloat16(), b, LossWeights(mse=1.0, rankic=1.0, cs_ic=1.0, sharpe=1.0),
                                   LossConfig(), HORIZONS)
    assert total.dtype == torch.float32 and np.isfinite(comp["total"])
    total.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_shape_and_horizon_errors():
    b = _batch()
    with pytest.raises(ValueError, match="pred must be"):
        compute_loss(torch.zeros(len(b.y), 3), b, LossWeights(), LossConfig(), HORIZONS)
    with pytest.raises(ValueError, match="no weight for horizons"):
        compute_loss(torch.zeros(len(b.y), 4), b, LossWeights(), LossConfig(), (1, 2, 3, 4))


# --------------------------------------------------------------------------- the old per-day loop, kept
# as the slow reference of the vectorised compute_loss (issue 15 item 1)
def _ref_soft_rank(v, t):
    return 0.5 + torch.sigmoid((v.unsqueeze(1) - v.unsqueeze(0)) / t).sum(dim=1)


def _ref_pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (a.norm() * b.norm() + 1e-8)


def _ref_loss(pred, batch, weights, cfg, horizons):
    from atft_core.losses import _horizon_weights

    hw = _horizon_weights(cfg, horizons)
    active = {k: float(getattr(weights, k)) for k in ("mse", "rankic", "cs_ic", "sharpe")}
    active = {k: v for k, v in active.items() if v > 0}
    name = {"mse": "point", "rankic": "rankic", "cs_ic": "cs_ic", "sharpe": "sharpe"}
    p_all, y_all, mask, ptr = pred.float(), batch.y.float(), batch.mask.bool(), batch.day_ptr.tolist()
    terms = {k: [] for k in active}
    for j in range(len(horizons)):
        per_day = {k: [] for k in active}
        for k in range(len(ptr) - 1):
            m = mask[ptr[k]:ptr[k + 1], j]
            if int(m.sum()) < 2:
                continue
            p, y = p_all[ptr[k]:ptr[k + 1], j][m], y_all[ptr[k]:ptr[k + 1], j][m]
            if "mse" in active:
                per_day["mse"].append(torch.nn.functional.huber_loss(p, y, delta=cfg.huber_delta)
                                      if cfg.point == "huber" else torch.nn.functional.mse_loss(p, y))
            if "rankic" in active:
                ps = (p - p.mean()) / (p.std(correction=0) + 1e-8)
                per_day["rankic"].append(1.0 - _ref_pearson(_ref_soft_rank(ps, cfg.softrank_temperature),
                                                            exact_rank(y)))
            if "cs_ic" in active:
                per_day["cs_ic"].append(1.0 - _ref_pearson(p, y))
            if "sharpe" in active:
                w = p - p.mean()
                per_day["sharpe"].append((w / (w.abs().sum() + 1e-8) * y).sum())
        for key in active:
            days = per_day[key]
            if key == "sharpe":
                r = torch.stack(days) if len(days) >= 2 else None
                val = -r.mean() / (r.std(correction=1) + 1e-8) if r is not None else None
            else:
                val = torch.stack(days).mean() if days else None
            terms[key].append(val if val is not None else p_all.new_tensor(math.nan))
    total, comps = p_all.sum() * 0.0, {}
    for key, per_h in terms.items():
        finite = [(hw[j], t) for j, t in enumerate(per_h) if torch.isfinite(t)]
        wsum = sum(w for w, _ in finite)
        value = sum(w * t for w, t in finite) / wsum if finite else None
        for j, t in enumerate(per_h):
            comps[f"{name[key]}_{horizons[j]}d"] = float(t.detach())
        comps[name[key]] = float(value.detach()) if value is not None else math.nan
        if value is not None:
            total = total + active[key] * value
    comps["total"] = float(total.detach())
    return total, comps


@pytest.mark.parametrize("point", ["mse", "huber"])
@pytest.mark.parametrize("sizes", [(40, 35, 50, 45), (40, 1, 45), (30,), (3, 60, 2, 25, 41)])
def test_vectorised_loss_equals_the_per_day_loop_values_and_gradients(point, sizes):
    b = _batch(sizes=sizes, seed=len(sizes), masked=0.3)
    g = torch.Generator().manual_seed(7)
    base = torch.randn(b.y.shape, generator=g)
    base[: sizes[0] // 2] = base[0]  # ties in the prediction too
    wts = LossWeights(mse=0.7, rankic=0.4, cs_ic=0.3, sharpe=0.2)
    cfg = LossConfig(point=point, softrank_temperature=0.3)
    p1, p2 = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
    t1, c1 = compute_loss(p1, b, wts, cfg, HORIZONS)
    t2, c2 = _ref_loss(p2, b, wts, cfg, HORIZONS)
    assert set(c1) == set(c2)
    for k in c2:
        if math.isnan(c2[k]):
            assert math.isnan(c1[k]), k
        else:
            assert c1[k] == pytest.approx(c2[k], rel=1e-5, abs=1e-6), k
    t1.backward()
    t2.backward()
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-4, atol=1e-6)


def test_chunked_soft_rank_equals_the_dense_one_with_gradients(monkeypatch):
    import atft_core.losses as losses

    monkeypatch.setattr(losses, "SOFTRANK_CHUNK_ELEMENTS", 37)  # many uneven chunks
    v = torch.randn(3, 23, dtype=torch.float64)
    valid = torch.rand(3, 23) > 0.2
    a = v.clone().requires_grad_(True)
    r = losses.soft_rank_rows(a, valid, 0.5)
    coeff = torch.randn(3, 23, dtype=torch.float64)
    (r * coeff * valid).sum().backward()
    for row in range(3):
        b = v[row][valid[row]].clone().requires_grad_(True)
        ref = _ref_soft_rank(b, 0.5)
        torch.testing.assert_close(r[row][valid[row]], ref.detach())
        (ref * coeff[row][valid[row]]).sum().backward()
        torch.testing.assert_close(a.grad[row][valid[row]], b.grad)
        assert (a.grad[row][~valid[row]] == 0).all()
    assert torch.autograd.gradcheck(lambda x: losses.soft_rank_rows(x, valid, 0.7),
                                    (v.clone().requires_grad_(True),))
