"""AdamW parameter groups (atft_core.train.optim): weight decay on weight matrices only."""

from __future__ import annotations

import pytest
import torch

from atft_core.config import apply_overrides, load_config
from atft_core.train.api import build_model
from atft_core.train.optim import build_adamw, param_groups


def _model():
    cfg = load_config("real_cpu", [])
    return build_model(cfg, 22)


def test_groups_of_the_atft_model():
    model = _model()
    decay, no_decay = param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = dict(model.named_parameters())
    # every trainable parameter exactly once
    assert sorted(decay["names"] + no_decay["names"]) == sorted(names)
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == sum(
        p.numel() for p in model.parameters())
    norms = {f"{m}.{n}" for m, mod in model.named_modules() if isinstance(mod, torch.nn.LayerNorm)
             for n, _ in mod.named_parameters(recurse=False)}
    assert norms  # the model has LayerNorms (GRN, temporal, GAT)
    biases = {n for n in names if n.endswith("bias") or ".bias_" in n}
    for n in decay["names"]:
        assert n not in norms and n not in biases, n
        assert "embed" not in n.rsplit(".", 1)[-1], n
        assert names[n].ndim >= 2, n
    assert norms <= set(no_decay["names"]) and biases <= set(no_decay["names"])
    assert {"vsn.embed_weight", "vsn.embed_bias"} <= set(no_decay["names"])
    # the weight matrices are decayed: linear, LSTM and attention projections
    for n in ("temporal.lstm.weight_ih_l0", "temporal.lstm.weight_hh_l0", "temporal.attn.in_proj_weight",
              "heads.hidden.0.weight", "vsn.select_grn.fc1.weight"):
        assert n in decay["names"], n


def test_one_step_decays_only_the_decayed_group():
    """Zero gradients: AdamW's update is the decay alone, w <- w * (1 - lr * wd) for the decayed
    group and no change for the rest."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.Embedding(5, 3))
    lr, wd = 0.1, 0.5
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_adamw(model, lr, wd)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(model.named_parameters())
    torch.testing.assert_close(after["0.weight"].detach(), before["0.weight"] * (1 - lr * wd))
    for n in ("0.bias", "1.weight", "1.bias", "2.weight"):
        torch.testing.assert_close(after[n].detach(), before[n], rtol=0, atol=0)


def test_trainer_uses_the_groups(tmp_path):
    from atft_core.train.loop import Trainer

    cfg = apply_overrides(load_config("real_cpu", []), {"train.optimizer.weight_decay": 0.02})
    model = _model()
    trainer = Trainer(cfg, model, [], [], tmp_path)
    groups = trainer.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.02, 0.0]
    assert groups[0]["names"] == param_groups(model, 0.02)[0]["names"]


def test_resume_from_a_single_group_checkpoint_is_refused_clearly(tmp_path):
    """A checkpoint written before the groups (one AdamW group) cannot be resumed silently with
    another decay set: CheckpointError naming the group counts (the CLI prints it as one line)."""
    from test_trainer import make_trainer  # tests/ is on sys.path (pytest prepend import mode)

    from atft_core.train.checkpoint import (
        CheckpointError,
        latest_checkpoint,
        load_checkpoint,
        save_checkpoint,
    )

    t = make_trainer(tmp_path)
    t.fit(resume=False)
    path = latest_checkpoint(t.ckpt_dir)
    ck = load_checkpoint(path)
    old = torch.optim.AdamW(t.model.parameters(), lr=1e-3, weight_decay=1e-4)  # the pre-groups optimizer
    ck["optimizer"] = old.state_dict()
    save_checkpoint(path, ck)
    with pytest.raises(CheckpointError, match="1 parameter group"):
        make_trainer(tmp_path).fit(resume=True)
    make_trainer(tmp_path / "fresh").fit(resume=True)  # a new run dir trains
