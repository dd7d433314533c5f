"""No untrained outputs (issue 13 item 6): no loss trains quantile heads, so the config refuses
them and a model built from any valid config outputs exactly one trained column per horizon."""

from __future__ import annotations

import pytest
import torch

from atft_core.config import ConfigError, apply_overrides, load_config


def test_config_refuses_quantile_heads():
    cfg = load_config("test")
    with pytest.raises(ConfigError, match="quantile heads are not trained"):
        apply_overrides(cfg, ["model.quantiles=[0.1, 0.9]"])
    assert apply_overrides(cfg, ["model.quantiles=[]"]).model.quantiles == ()


def test_heads_have_only_point_outputs_and_predictions_only_pred_columns():
    from atft_core.train.api import build_model

    cfg = load_config("test")
    model = build_model(cfg, 7)
    outs = [m.out_features for m in model.heads.out]
    assert outs == [1] * len(cfg.horizons)  # one point output per horizon, nothing untrained
    # every parameter of the heads receives a gradient from the point loss
    x = torch.randn(5, cfg.dataset.lookback, 7)
    ei = torch.zeros((2, 0), dtype=torch.int64)
    ea = torch.zeros((0, 2))
    model.set_blocks(cfg.train.phases[0].blocks)
    out = model(x, ei, ea)
    assert out.shape == (5, len(cfg.horizons))
    out.square().sum().backward()
    for name, p in model.heads.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
