"""ATFT-GAT-FAN: gradients, block switches, equivariance, causality, FAN, autocast."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import torch

from atft_core.batch import DayBatch
from atft_core.config import Blocks, LossConfig, LossWeights, ModelConfig
from atft_core.losses import compute_loss
from atft_core.model import ATFTGATFAN
from atft_core.model.fan import FAN

HORIZONS = (1, 5, 10, 20)
SMALL = ModelConfig(hidden_size=32, vsn_hidden=16, vsn_feature_dim=8, attn_heads=4, gat_heads=2,
                    lstm_layers=2, ffn_mult=2, dropout=0.0, fan_top_k=3)


def make_batch(k_days: int = 3, n_per_day: tuple[int, ...] = (50, 47, 53), lookback: int = 20,
               n_features: int = 25, k_nn: int = 5, seed: int = 0) -> DayBatch:
    """K days of random windows; per day a random directed kNN-style graph (no cross-day edges)."""
    g = torch.Generator().manual_seed(seed)
    sizes = n_per_day[:k_days]
    ptr = torch.tensor([0, *np.cumsum(sizes).tolist()])
    n = int(ptr[-1])
    edges = []
    for d, size in enumerate(sizes):
        src = torch.arange(size).repeat_interleave(k_nn)
        dst = (src + 1 + torch.randint(0, size - 1, (size * k_nn,), generator=g)) % size  # no self
        edges.append(torch.stack([src, dst]) + ptr[d])
    edge_index = torch.cat(edges, dim=1)
    e = edge_index.shape[1]
    edge_attr = torch.stack([torch.rand(e, generator=g) * 2 - 1,
                             (torch.rand(e, generator=g) < 0.3).float()], dim=1)
    y = torch.randn(n, len(HORIZONS), generator=g)
    mask = torch.rand(n, len(HORIZONS), generator=g) > 0.1
    y_raw = torch.where(mask, y * 0.02, torch.nan)
    return DayBatch(
        x=torch.randn(n, lookback, n_features, generator=g), y=torch.where(mask, y, 0.0),
        y_raw=y_raw, mask=mask, edge_index=edge_index, edge_attr=edge_attr, day_ptr=ptr,
        dates=[dt.date(2024, 1, 4) + dt.timedelta(days=i) for i in range(k_days)],
        codes=np.array([f"{1000 + i}" for i in range(n)]),
    )


def _model(seed: int = 0, cfg: ModelConfig = SMALL, n_features: int = 25) -> ATFTGATFAN:
    torch.manual_seed(seed)
    return ATFTGATFAN(cfg, n_features, HORIZONS)


ALL_TERMS = LossWeights(mse=1.0, rankic=0.5, cs_ic=0.5, sharpe=0.1)


def _backward(model: ATFTGATFAN, batch: DayBatch) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    pred = model(batch.x, batch.edge_index, batch.edge_attr)
    total, _ = compute_loss(pred, batch, ALL_TERMS, LossConfig(), HORIZONS)
    total.backward()
    return pred.detach()


def test_default_size_is_about_five_million_parameters():
    n = ATFTGATFAN(ModelConfig(), 25, HORIZONS).num_parameters()
    assert 4.5e6 <= n <= 6.0e6, n


def test_gradients_reach_every_parameter_with_all_blocks_on():
    model, batch = _model(), make_batch()
    pred = _backward(model, batch)
    assert pred.shape == (batch.num_stock_days, len(HORIZONS))
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} gradient is all zero"


@pytest.mark.parametrize("block,prefixes", [
    ("gat", ("graph.",)),
    ("fan", ("fan.",)),
    ("attention", ("temporal.attn.", "temporal.attn_gate.", "temporal.attn_norm.")),
])
def test_switching_a_block_off_changes_output_and_freezes_its_parameters(block, prefixes):
    model, batch = _model().eval(), make_batch()
    with torch.no_grad():
        on = model(batch.x, batch.edge_index, batch.edge_attr)
    model.train()
    model.set_blocks(Blocks(**{block: False}))
    off = _backward(model, batch)
    assert (on - off).abs().max() > 1e-4, f"switching {block} off changed nothing"
    switched, others = 0, 0
    for name, p in model.named_parameters():
        if name.startswith(prefixes):
            switched += 1
            assert p.grad is None or p.grad.abs().sum() == 0, f"{name} trained while {block} is off"
        else:
            others += 1
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert switched > 0 and others > 0
    model.set_blocks(Blocks())  # switching back on restores the original computation
    with torch.no_grad():
        again = model.eval()(batch.x, batch.edge_index, batch.edge_attr)
    torch.testing.assert_close(again, on)


def test_gat_off_ignores_the_graph_and_gat_on_uses_it():
    model, batch = _model().eval(), make_batch()
    other = torch.flip(batch.edge_index, dims=[0])  # reversed edges: a different graph
    with torch.no_grad():
        a = model(batch.x, batch.edge_index, batch.edge_attr)
        b = model(batch.x, other, batch.edge_attr)
        model.set_blocks(Blocks(gat=False))
        c = model(batch.x, batch.edge_index, batch.edge_attr)
        d = model(batch.x, other, batch.edge_attr)
    assert (a - b).abs().max() > 1e-4
    torch.testing.assert_close(c, d)


def test_permutation_equivariance_within_days():
    model, batch = _model().eval(), make_batch()
    g = torch.Generator().manual_seed(1)
    ptr = batch.day_ptr.tolist()
    perm = torch.cat([torch.randperm(ptr[k + 1] - ptr[k], generator=g) + ptr[k]
                      for k in range(len(ptr) - 1)])  # new row r holds old row perm[r]
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(len(perm))
    with torch.no_grad():
        out = model(batch.x, batch.edge_index, batch.edge_attr)
        out_p = model(batch.x[perm], inv[batch.edge_index], batch.edge_attr)
    torch.testing.assert_close(out_p, out[perm], atol=1e-5, rtol=1e-4)


def test_days_do_not_leak_into_each_other():
    model, batch = _model().eval(), make_batch()
    x2 = batch.x.clone()
    x2[batch.day_ptr[1]:] += 3.0  # change every day but the first
    with torch.no_grad():
        a = model(batch.x, batch.edge_index, batch.edge_attr)
        b = model(x2, batch.edge_index, batch.edge_attr)
    first = slice(0, int(batch.day_ptr[1]))
    torch.testing.assert_close(a[first], b[first])
    assert (a[first.stop:] - b[first.stop:]).abs().max() > 1e-4


def test_temporal_attention_is_causal_and_last_only_matches_full():
    model = _model().eval()
    v = torch.randn(7, 20, SMALL.hidden_size)
    t = 9
    v2 = v.clone()
    v2[:, t + 1:] = torch.randn(7, 20 - t - 1, SMALL.hidden_size)
    with torch.no_grad():
        full = model.temporal(v, last_only=False)  # (N, L, H)
        full2 = model.temporal(v2, last_only=False)
        last = model.temporal(v, last_only=True)  # (N, H)
    torch.testing.assert_close(full[:, : t + 1], full2[:, : t + 1])
    assert (full[:, t + 1:] - full2[:, t + 1:]).abs().max() > 1e-3
    torch.testing.assert_close(last, full[:, -1], atol=1e-5, rtol=1e-4)


def test_fan_removes_exactly_the_top_k_frequencies():
    length = 20
    t = torch.arange(length, dtype=torch.float64)
    level_and_cycle = 3.0 + 2.0 * torch.cos(2 * torch.pi * 2 * t / length)  # DC + frequency 2
    noise = 0.01 * torch.randn(length, dtype=torch.float64)
    x = (level_and_cycle + noise).reshape(1, length, 1)
    residual, removed = FAN.decompose(x, top_k=2)
    torch.testing.assert_close(residual + removed, x.float(), atol=1e-5, rtol=0)
    assert (removed[0, :, 0].double() - level_and_cycle).abs().max() < 0.02
    assert residual.abs().max() < 0.05
    all_freq, _ = FAN.decompose(x, top_k=length)  # every frequency removed -> nothing left
    assert all_freq.abs().max() < 1e-5


def test_bf16_autocast_forward_backward_has_finite_grads_and_fp32_loss():
    model, batch = _model(), make_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = model(batch.x, batch.edge_index, batch.edge_attr)
        total, comps = compute_loss(pred, batch, ALL_TERMS, LossConfig(), HORIZONS)
    assert pred.dtype == torch.bfloat16
    assert total.dtype == torch.float32
    total.backward()
    assert np.isfinite(comps["total"])
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_bad_inputs_raise_clear_errors():
    model, batch = _model(), make_batch()
    with pytest.raises(ValueError, match="x must be"):
        model(batch.x[..., :10], batch.edge_index, batch.edge_attr)
    with pytest.raises(ValueError, match="edge_attr must be"):
        model(batch.x, batch.edge_index, batch.edge_attr[:, :1])
    with pytest.raises(ValueError, match="divisible"):
        ATFTGATFAN(ModelConfig(hidden_size=30, attn_heads=4), 25, HORIZONS)


def test_quantile_heads_have_their_own_outputs():
    cfg = SMALL.model_copy(update={"quantiles": (0.1, 0.5, 0.9)})
    model, batch = _model(cfg=cfg), make_batch()
    point, q = model.forward_with_quantiles(batch.x, batch.edge_index, batch.edge_attr)
    assert point.shape == (batch.num_stock_days, 4) and q.shape == (batch.num_stock_days, 4, 3)


@pytest.mark.parametrize("d", [8, 25, 32])
def test_grn_layernorm_matches_torch_layernorm(d):
    """The GRN's LayerNorm (gain/shift split out on CPU at narrow widths) is nn.LayerNorm: same
    state dict, bit-identical forward, gradients equal within rounding, same dtype under autocast."""
    from atft_core.model.grn import LayerNorm

    torch.manual_seed(d)
    ref, ours = torch.nn.LayerNorm(d), LayerNorm(d)
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 40, d) * 3 + 1
    grad = torch.randn(3, 40, d)
    outs = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        y.backward(grad)
        outs.append((y.detach(), xi.grad, m.weight.grad, m.bias.grad))
    assert torch.equal(outs[0][0], outs[1][0])
    split = type(ours(x).grad_fn).__name__ == "AddcmulBackward0"
    assert split == (d in (8, 25))  # the split path ran where it is meant to, the fused one elsewhere
    for a, b in zip(outs[0][1:], outs[1][1:]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours(x.bfloat16()).dtype == ref(x.bfloat16()).dtype


@pytest.mark.parametrize("d_in,d_out", [(8, 8), (64, 25), (64, 64)])
def test_glu_matches_fused_glu(d_in, d_out):
    """GLU (two half matmuls on CPU below 64 wide) == F.glu(Linear(x)): values and gradients."""
    from atft_core.model.grn import GLU

    torch.manual_seed(d_out)
    glu = GLU(d_in, d_out)
    x = torch.randn(5, 30, d_in, requires_grad=True)
    y = glu(x)
    ref = torch.nn.functional.glu(glu.proj(x), dim=-1)
    torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6)
    assert (type(y.grad_fn).__name__ == "MulBackward0") == (d_out < 64)  # which path ran
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, glu.proj.weight, glu.proj.bias], grad)
    want = torch.autograd.grad(ref, [x, glu.proj.weight, glu.proj.bias], grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_stacked_lstm_layer_by_layer_equals_single_layers_with_the_same_mask():
    """temporal.LSTM (training, fp32, CPU): the layers run one by one with a 15-bit keep mask
    between them; equal, bit for bit, to single-layer nn.LSTMs with that mask drawn from the same
    seed (outputs, final states, gradients); same state dict as nn.LSTM; eval = nn.LSTM."""
    from torch import nn

    from atft_core.model.grn import keep_mask
    from atft_core.model.temporal import LSTM

    torch.manual_seed(0)
    n, steps, h, p = 40, 7, 24, 0.3
    ours = LSTM(16, h, num_layers=3, batch_first=True, dropout=p)
    ref = nn.LSTM(16, h, num_layers=3, batch_first=True, dropout=p)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    ref.load_state_dict(ours.state_dict())
    singles = [nn.LSTM(16 if i == 0 else h, h, batch_first=True) for i in range(3)]
    for i, layer in enumerate(singles):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(layer, f"{name}_l0").data.copy_(getattr(ours, f"{name}_l{i}").data)
    x = torch.randn(n, steps, 16)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.manual_seed(5)
    out, (h_n, c_n) = ours.train()(x1)
    torch.manual_seed(5)
    y, hs, cs = x2, [], []
    for i, layer in enumerate(singles):
        if i:
            keep, scale = keep_mask((steps, n, h), p)  # drawn seq-first, as the layer loop does
            y = torch.where(keep.transpose(0, 1), y, 0.0) * scale
        y, (a, b) = layer(y)
        hs.append(a)
        cs.append(b)
    assert out.shape == (n, steps, h)
    assert torch.equal(out, y) and torch.equal(h_n, torch.cat(hs)) and torch.equal(c_n, torch.cat(cs))
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (y * g).sum().backward()
    assert torch.equal(x1.grad, x2.grad)
    assert torch.equal(ours.weight_hh_l2.grad, singles[2].weight_hh_l0.grad)
    assert torch.equal(ours.weight_ih_l1.grad, singles[1].weight_ih_l0.grad)
    ours.eval(), ref.eval()
    assert torch.equal(ours(x)[0], ref(x)[0])
