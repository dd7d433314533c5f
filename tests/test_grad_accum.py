"""Gradient accumulation computes the whole batch's objective (issue 12 fault 9), Sharpe on."""

from __future__ import annotations

import pytest
import torch

from atft_core.config import LossConfig, LossWeights, ModelConfig
from atft_core.losses import compute_loss
from atft_core.model import ATFTGATFAN
from atft_core.train.grad_accum import backward_batch_objective
from atft_core.train.loop import micro_batches
from tests.test_model import HORIZONS, make_batch

CFG = ModelConfig(hidden_size=16, vsn_hidden=8, vsn_feature_dim=4, attn_heads=2, gat_heads=2,
                  lstm_layers=1, ffn_mult=2, dropout=0.0, fan_top_k=2)
SHARPE = LossWeights(mse=0.2, rankic=0.3, cs_ic=0.2, sharpe=1.0)


def _grads(model, fn):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    out = fn()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("days", [1, 2])
def test_micro_batches_give_the_full_batch_gradient_with_sharpe_on(days):
    batch = make_batch(k_days=3, n_per_day=(30, 27, 33), n_features=6)
    torch.manual_seed(0)
    model = ATFTGATFAN(CFG, 6, HORIZONS).train()  # dropout 0: full and micro forwards agree
    loss = lambda p, b: compute_loss(p, b, SHARPE, LossConfig(), HORIZONS)  # noqa: E731
    fwd = lambda b: model(b.x, b.edge_index, b.edge_attr)  # noqa: E731
    micro = [mb for mb, _ in micro_batches(batch, days)]
    assert len(micro) == (3 if days == 1 else 2)

    (l_full, c_full), g_full = _grads(model, lambda: backward_batch_objective(
        fwd, loss, batch, [batch], torch.device("cpu")))
    (l_acc, c_acc), g_acc = _grads(model, lambda: backward_batch_objective(
        fwd, loss, batch, micro, torch.device("cpu")))
    assert c_full["sharpe"] == pytest.approx(c_acc["sharpe"], rel=1e-5)
    assert float(l_full) == pytest.approx(float(l_acc), rel=1e-5)
    assert set(g_full) == set(g_acc)
    for name in g_full:
        torch.testing.assert_close(g_acc[name], g_full[name], rtol=1e-4, atol=2e-5, msg=name)

    # what accumulation did before: day-share-weighted micro-batch losses (Sharpe NaN/different)
    def naive():
        comps = []
        for mb, w in micro_batches(batch, days):
            t, c = loss(fwd(mb), mb)
            (t * w).backward()
            comps.append(c)
        return comps
    comps, g_naive = _grads(model, naive)
    if days == 1:
        assert all(c["sharpe"] != c["sharpe"] for c in comps)  # NaN: dropped from the objective
    diff = max(float((g_naive[n] - g_full[n]).abs().max()) for n in g_full)
    assert diff > 1e-4  # the naive objective really is another one


def test_dropout_masks_are_the_same_in_both_passes():
    """With dropout on, the two-pass gradient equals one autograd pass over the same micro-batch
    forwards (same RNG draws): the RNG state is replayed for the second pass."""
    batch = make_batch(k_days=3, n_per_day=(30, 27, 33), n_features=6)
    torch.manual_seed(0)
    model = ATFTGATFAN(CFG.model_copy(update={"dropout": 0.3}), 6, HORIZONS).train()
    loss = lambda p, b: compute_loss(p, b, SHARPE, LossConfig(), HORIZONS)  # noqa: E731
    fwd = lambda b: model(b.x, b.edge_index, b.edge_attr)  # noqa: E731
    micro = [mb for mb, _ in micro_batches(batch, 1)]

    def one_pass():
        t, c = loss(torch.cat([fwd(mb) for mb in micro]).float(), batch)
        t.backward()
        return t.detach(), c

    (l_ref, _), g_ref = _grads(model, one_pass)
    (l_acc, _), g_acc = _grads(model, lambda: backward_batch_objective(
        fwd, loss, batch, micro, torch.device("cpu")))
    assert float(l_acc) == pytest.approx(float(l_ref), rel=1e-5)
    for name in g_ref:
        torch.testing.assert_close(g_acc[name], g_ref[name], rtol=1e-4, atol=2e-5, msg=name)
    torch.manual_seed(123)
    assert float(one_pass()[0]) == pytest.approx(float(l_ref), rel=1e-5)  # deterministic given the seed
    torch.manual_seed(124)
    assert float(one_pass()[0]) != pytest.approx(float(l_ref), rel=1e-5)  # dropout really draws
