"""Trainer loop on a tiny model and hand-made DayBatches: phases, micro-batches, NaN guard,
plateau LR, early stopping, compile fallback, validation metrics vs scipy."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from torch.optim.lr_scheduler import ReduceLROnPlateau

from atft_core.batch import DayBatch
from atft_core.config import Blocks, SchedulerConfig, load_config
from atft_core.train import loop as loop_mod
from atft_core.train.checkpoint import load_checkpoint, load_weights, nonfinite_tensors
from atft_core.train.loop import Trainer, micro_batches, slice_days
from atft_core.train.predict import predict_loader, quick_metrics
from atft_core.train.scheduler import LRController, PlateauScaler

HORIZONS = (1, 5, 10, 20)


# --------------------------------------------------------------------------- fixtures
class TinyModel(torch.nn.Module):
    """Linear on the last step + a neighbour-mean 'graph' block that set_blocks really switches."""

    def __init__(self, n_features: int, horizons=HORIZONS, hidden: int = 8, dropout: float = 0.1):
        super().__init__()
        self.enc = torch.nn.Linear(n_features, hidden)
        self.nb = torch.nn.Linear(hidden, hidden)
        self.drop = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(hidden, len(horizons))
        self.blocks = Blocks()
        self.calls: list[Blocks] = []

    def set_blocks(self, blocks: Blocks) -> None:
        self.blocks = blocks
        self.calls.append(blocks)

    def forward(self, x, edge_index, edge_attr):  # x (N, L, F)
        h = torch.tanh(self.enc(x[:, -1, :]))  # (N, hidden)
        if self.blocks.gat and edge_index.numel():
            agg = torch.zeros_like(h).index_add_(0, edge_index[1], h[edge_index[0]])
            deg = torch.zeros(h.shape[0], 1, dtype=h.dtype).index_add_(
                0, edge_index[1], torch.ones(edge_index.shape[1], 1, dtype=h.dtype))
            h = h + self.nb(agg / deg.clamp(min=1))
        return self.head(self.drop(h))  # (N, H)


def toy_loss(pred, batch, weights, loss_cfg, horizons):
    """Per-day masked MSE (+ 1 - Pearson when cs_ic > 0), averaged over days; fp32."""
    days = []
    ics = []
    for sl in batch.day_slices():
        p, y, m = pred[sl], batch.y[sl], batch.mask[sl].float()
        days.append(((p - y) ** 2 * m).sum() / m.sum().clamp(min=1))
        pc, yc = p - p.mean(0), y - y.mean(0)
        ics.append(1 - ((pc * yc).sum(0) / (pc.norm(dim=0) * yc.norm(dim=0) + 1e-8)).mean())
    mse = torch.stack(days).mean()
    ic = torch.stack(ics).mean()
    total = weights.mse * mse + weights.cs_ic * ic
    return total, {"mse": float(mse.detach()), "cs_ic": float(ic.detach())}


def make_day(rng, day_index: int, n: int, n_features: int = 3, lookback: int = 4):
    x = rng.standard_normal((n, lookback, n_features)).astype(np.float32)
    signal = x[:, -1, 0:1] * np.array([[1.0, 0.8, 0.5, 0.3]], dtype=np.float32)
    y = signal + 0.5 * rng.standard_normal((n, 4)).astype(np.float32)
    mask = rng.random((n, 4)) > 0.05
    src = rng.integers(0, n, 3 * n)
    dst = rng.integers(0, n, 3 * n)
    return dict(x=x, y=np.where(mask, y, 0.0).astype(np.float32),
                y_raw=np.where(mask, 0.01 * y, np.nan).astype(np.float32), mask=mask,
                edges=np.stack([src, dst]), date=dt.date(2020, 1, 1) + dt.timedelta(days=day_index),
                codes=np.array([f"{1000 + i}" for i in range(n)]))


def collate(days: list[dict]) -> DayBatch:
    ptr = np.cumsum([0] + [d["x"].shape[0] for d in days])
    edges = np.concatenate([d["edges"] + ptr[k] for k, d in enumerate(days)], axis=1)
    return DayBatch(
        x=torch.from_numpy(np.concatenate([d["x"] for d in days])),
        y=torch.from_numpy(np.concatenate([d["y"] for d in days])),
        y_raw=torch.from_numpy(np.concatenate([d["y_raw"] for d in days])),
        mask=torch.from_numpy(np.concatenate([d["mask"] for d in days])),
        edge_index=torch.from_numpy(edges).long(),
        edge_attr=torch.ones(edges.shape[1], 2),
        day_ptr=torch.from_numpy(ptr).long(),
        dates=[d["date"] for d in days],
        codes=np.concatenate([d["codes"] for d in days]),
    )


class ToyLoader:
    """DayBatchLoader-like: fixed days, per-epoch deterministic shuffle of day batches."""

    def __init__(self, n_days=24, days_per_batch=4, seed=0, shuffle=True, start=0, poison=None):
        rng = np.random.default_rng(seed)
        self.days = [make_day(rng, start + i, int(rng.integers(20, 31))) for i in range(n_days)]
        self.k, self.seed, self.shuffle, self.epoch = days_per_batch, seed, shuffle, 0
        self.poison = poison or set()  # {(epoch, batch_index)} whose x becomes NaN

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.days) / self.k)

    def __iter__(self):
        order = np.arange(len(self.days))
        if self.shuffle:
            order = np.random.default_rng(self.seed + 1000 * self.epoch).permutation(order)
        for i in range(len(self)):
            b = collate([self.days[j] for j in sorted(order[i * self.k:(i + 1) * self.k])])
            if (self.epoch, i) in self.poison or ("*", i) in self.poison:
                b.x[:] = float("nan")
            yield b


def tiny_cfg(*overrides: str):
    return load_config("test", ["train.device=cpu", "train.precision=fp32",
                                "train.optimizer.warmup_steps=2", *overrides])


def make_trainer(tmp_path, *overrides, poison=None, seed=0, **kw):
    cfg = tiny_cfg(*overrides)
    torch.manual_seed(seed)
    model = TinyModel(3)
    return Trainer(cfg, model, ToyLoader(poison=poison), ToyLoader(n_days=8, shuffle=False, seed=9, start=100),
                   tmp_path, loss_fn=toy_loss, **kw)


# --------------------------------------------------------------------------- micro-batches
def test_slice_days_matches_per_day_reference():
    rng = np.random.default_rng(1)
    days = [make_day(rng, i, n) for i, n in enumerate([5, 7, 4, 6])]
    full = collate(days)
    sub = slice_days(full, 1, 3)
    ref = collate(days[1:3])
    for name in ("x", "y", "mask", "edge_index", "edge_attr", "day_ptr"):
        assert torch.equal(getattr(sub, name), getattr(ref, name)), name
    assert torch.equal(torch.nan_to_num(sub.y_raw), torch.nan_to_num(ref.y_raw))
    assert sub.dates == ref.dates and list(sub.codes) == list(ref.codes)


def test_accumulated_gradient_equals_full_batch_gradient():
    rng = np.random.default_rng(2)
    batch = collate([make_day(rng, i, 10 + i) for i in range(4)])
    cfg = tiny_cfg()
    w = cfg.train.phases[0].weights
    torch.manual_seed(0)
    model = TinyModel(3, dropout=0.0)
    model.zero_grad()
    toy_loss(model(batch.x, batch.edge_index, batch.edge_attr), batch, w, cfg.loss, HORIZONS)[0].backward()
    full = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    parts = micro_batches(batch, 1)
    assert len(parts) == 4 and math.isclose(sum(wt for _, wt in parts), 1.0)
    for mb, wt in parts:
        (toy_loss(model(mb.x, mb.edge_index, mb.edge_attr), mb, w, cfg.loss, HORIZONS)[0] * wt).backward()
    acc = [p.grad for p in model.parameters() if p.grad is not None]
    for a, b in zip(full, acc, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- full loop
def test_fit_runs_every_phase_and_writes_outputs(tmp_path):
    tr = make_trainer(tmp_path, "train.grad_accum_days=2")
    res = tr.fit()
    phases = tr.cfg.train.phases
    assert len(res.history) == sum(p.epochs for p in phases)
    assert [r["phase"] for r in res.history] == [p.name for p in phases for _ in range(p.epochs)]
    assert tr.model.calls == [p.blocks for p in phases]  # set_blocks at every phase switch
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == len(res.history)
    for rec in lines:
        for key in ("train/loss", "train/mse", "val/loss", "val/rank_ic_1d", "val/rank_ic_5d",
                    "val/ic_1d", "val/sharpe_1d", "lr", "samples_per_s", "grad_norm", "nan_steps"):
            assert key in rec, key
        assert rec["stock_days"] > 0 and rec["samples_per_s"] > 0
    state, meta = load_weights(tmp_path / "model.safetensors")
    assert meta["epoch"] == res.best["epoch"] and meta["blocks"] == res.best["blocks"]
    best_rec = res.history[res.best["epoch"]]
    assert best_rec["best"] and best_rec["val/rank_ic_5d"] == pytest.approx(res.best_value)
    assert res.best_value == max(r["val/rank_ic_5d"] for r in res.history)
    assert res.nan_steps == 0
    # the toy signal is learnable: the best val RankIC@1d is clearly positive
    assert res.best["val"]["val/rank_ic_1d"] > 0.3


def test_learning_rate_warms_up_then_holds(tmp_path):
    cfg = tiny_cfg()
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    lrc = LRController(opt, 1e-3, 4, cfg.train.scheduler)
    lrc.start_phase(0.5)
    seen = []
    for _ in range(6):
        seen.append(lrc.apply())
        lrc.after_step()
    assert seen == pytest.approx([1.25e-4, 2.5e-4, 3.75e-4, 5e-4, 5e-4, 5e-4])
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)


@pytest.mark.parametrize("patience,factor,min_lr", [(1, 0.5, 1e-6), (0, 0.3, 2e-4), (2, 0.5, 0.0)])
def test_plateau_matches_torch_reduce_lr_on_plateau(patience, factor, min_lr):
    """Scripted val/rank_ic_5d: rises, stalls, rises, stalls, goes NaN -- same LRs as torch's."""
    metrics = [0.01, 0.02, 0.03, 0.03, 0.029, 0.028, 0.05, 0.05, 0.04, 0.04, 0.04, float("nan"), 0.01]
    sched = SchedulerConfig(factor=factor, patience=patience, min_lr=min_lr)
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    ref = ReduceLROnPlateau(ref_opt, mode="max", factor=factor, patience=patience, min_lr=min_lr)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    lrc = LRController(opt, 1e-3, 0, sched)
    lrc.start_phase(1.0)
    ours, theirs = [], []
    for m in metrics:
        lrc.epoch_end(m)
        ref.step(m if math.isfinite(m) else -math.inf)
        ours.append(lrc.apply())
        theirs.append(ref_opt.param_groups[0]["lr"])
    assert ours == pytest.approx(theirs, rel=1e-9)
    assert ours[-1] < ours[0]  # it did lower the LR when the metric stalled


def test_plateau_lowers_lr_when_metric_stalls():
    p = PlateauScaler(SchedulerConfig(factor=0.5, patience=1, min_lr=1e-6))
    assert not p.step(0.05, 1e-3) and not p.step(0.05, 1e-3)  # 1 bad epoch <= patience
    assert p.step(0.05, 1e-3) and p.state.scale == 0.5  # 2nd bad epoch: reduce
    assert not p.step(0.06, 5e-4) and p.state.scale == 0.5  # improvement resets


def test_plateau_in_the_loop_reduces_lr_on_scripted_metric(tmp_path, monkeypatch):
    """The trainer feeds val/rank_ic_5d to the plateau: a flat metric halves the LR."""
    monkeypatch.setattr(loop_mod, "quick_metrics",
                        lambda preds: {f"{k}_{h}d": 0.1 for k in ("rank_ic", "ic", "sharpe") for h in HORIZONS})
    tr = make_trainer(tmp_path, "train.phases=[{name: only, epochs: 5, blocks: {gat: false}}]",
                      "train.scheduler.patience=0", "train.scheduler.factor=0.5",
                      "train.early_stopping.patience=10", "train.optimizer.warmup_steps=0")
    res = tr.fit()
    lrs = [r["lr"] for r in res.history]
    # epoch 0 sets the best; each later flat epoch reduces the LR of the epoch after it
    assert lrs == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4, 1.25e-4])
    assert [r["lr_reduced"] for r in res.history] == [False, True, True, True, True]


def test_early_stopping_ends_a_phase(tmp_path, monkeypatch):
    monkeypatch.setattr(loop_mod, "quick_metrics",
                        lambda preds: {f"{k}_{h}d": 0.1 for k in ("rank_ic", "ic", "sharpe") for h in HORIZONS})
    tr = make_trainer(tmp_path, "train.phases=[{name: a, epochs: 6}, {name: b, epochs: 1}]",
                      "train.early_stopping.patience=2")
    res = tr.fit()
    assert [r["phase"] for r in res.history] == ["a", "a", "a", "b"]
    assert res.history[2]["early_stop"]


# --------------------------------------------------------------------------- NaN guard
def test_poisoned_batch_is_skipped_and_counted(tmp_path):
    tr = make_trainer(tmp_path, poison={(1, 2)})
    res = tr.fit()
    assert res.nan_steps == 1 and res.nan_restores == 0
    assert [r["nan_steps"] for r in res.history] == [0, 1, 0, 0]
    assert res.history[-1]["nan_steps_total"] == 1
    for p in (tmp_path / "checkpoints").glob("*.pt"):
        ck = load_checkpoint(p)
        assert not nonfinite_tensors(ck["model"]) and not nonfinite_tensors(ck["optimizer"])
    assert all(torch.isfinite(v).all() for v in load_weights(tmp_path / "model.safetensors")[0].values())


def test_repeated_nan_restores_last_good_state_with_lower_lr(tmp_path):
    # every batch of epoch 1 is poisoned: 3 in a row -> restore + lr x 0.5, twice (6 batches)
    poison = {(1, i) for i in range(6)}
    tr = make_trainer(tmp_path, "train.nan_guard.max_consecutive=3", "train.nan_guard.lr_factor=0.5",
                      "train.optimizer.warmup_steps=0", poison=poison, keep_checkpoints=10)
    before = None

    def grab(rec):
        nonlocal before
        if rec["epoch"] == 0:
            before = {k: v.clone() for k, v in tr.model.state_dict().items()}

    tr.on_epoch_end = grab
    res = tr.fit()
    assert res.nan_steps == 6 and res.nan_restores == 2
    assert tr.lr.nan_scale == pytest.approx(0.25)
    ck = load_checkpoint(tmp_path / "checkpoints" / "epoch_0002.pt")
    for k, v in before.items():  # epoch 1 made no update: its state is epoch 0's
        assert torch.equal(ck["model"][k], v), k
    assert res.history[2]["lr"] == pytest.approx(1e-3 * 0.25)
    for p in (tmp_path / "checkpoints").glob("*.pt"):
        assert not nonfinite_tensors(load_checkpoint(p)["model"])


# --------------------------------------------------------------------------- precision / compile
def test_bf16_autocast_on_cpu_trains(tmp_path):
    tr = make_trainer(tmp_path, "train.precision=bf16")
    res = tr.fit()
    assert all(math.isfinite(r["train/loss"]) for r in res.history)
    assert res.best["val"]["val/rank_ic_1d"] > 0.2


def test_compile_failure_falls_back_to_eager(tmp_path, monkeypatch):
    def broken(fn):
        def call(*a, **k):
            raise RuntimeError("inductor exploded")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    tr = make_trainer(tmp_path, "train.compile=true")
    res = tr.fit()
    assert tr.state.compile_failed and len(res.history) == 4
    assert tr._forward is tr.model


# --------------------------------------------------------------------------- metrics
def test_quick_metrics_match_scipy():
    loader = ToyLoader(n_days=6, shuffle=False)
    torch.manual_seed(0)
    preds = predict_loader(TinyModel(3), loader, HORIZONS)
    m = quick_metrics(preds)
    for j, h in enumerate(HORIZONS):
        ric, ic = [], []
        for d in range(len(preds.day_ptr) - 1):
            sl = slice(preds.day_ptr[d], preds.day_ptr[d + 1])
            ok = preds.mask[sl, j]
            ric.append(spearmanr(preds.pred[sl, j][ok], preds.y_raw[sl, j][ok]).statistic)
            ic.append(pearsonr(preds.pred[sl, j][ok], preds.y_raw[sl, j][ok]).statistic)
        assert m[f"rank_ic_{h}d"] == pytest.approx(np.mean(ric), abs=1e-6)
        assert m[f"ic_{h}d"] == pytest.approx(np.mean(ic), abs=1e-5)
    frame = preds.frame()
    assert frame.columns == ["Date", "Code", *[f"pred_{h}d" for h in HORIZONS], *[f"y_{h}d" for h in HORIZONS]]
    assert frame.height == preds.pred.shape[0]
    assert frame["y_1d"].null_count() == int((~preds.mask[:, 0]).sum())


# --------------------------------------------------------------------------- epoch-end callbacks
def test_epoch_end_callbacks_run_in_the_documented_order(tmp_path):
    from atft_core.train.callbacks import EpochEndCallback

    tr = make_trainer(tmp_path)
    assert [cb.name for cb in tr.callbacks] == [
        "validate", "plateau_lr", "early_stop", "best_weights", "commit_epoch", "checkpoint",
        "metrics_jsonl", "tensorboard", "user_hook", "prune_hook", "phase_switch"]
    for i, name in enumerate(["validate", "plateau_lr", "early_stop", "best_weights", "commit_epoch",
                              "checkpoint", "metrics_jsonl", "tensorboard", "user_hook", "prune_hook",
                              "phase_switch"], 1):
        assert f"{i}. ``{name}``" in loop_mod.__doc__  # the docstring lists the same order
    seen = []

    class Spy(EpochEndCallback):
        name = "spy"

        def on_epoch_end(self, state):
            # after the checkpoint: the record is committed and the file on disk holds it
            ck = load_checkpoint(sorted((tmp_path / "checkpoints").glob("*.pt"))[-1])
            seen.append((state.rec["epoch"], ck["global_epoch"], state.rec["best"], state.rng is not None))

    tr.callbacks.insert(tr.callbacks.index(next(c for c in tr.callbacks if c.name == "checkpoint")) + 1, Spy())
    res = tr.fit()
    assert seen == [(r["epoch"], r["epoch"] + 1, r["best"], True) for r in res.history]


def test_callbacks_that_draw_random_numbers_cannot_change_the_run(tmp_path):
    """The RNG bracket: a hook that draws from every RNG (dropout is on) leaves the run as it was."""
    import random

    def greedy(rec):
        torch.rand(1000)
        np.random.rand(10)  # noqa: NPY002
        random.random()

    a = make_trainer(tmp_path / "a")
    ra = a.fit()
    b = make_trainer(tmp_path / "b", on_epoch_end=greedy)
    rb = b.fit()
    assert [r["train/loss"] for r in ra.history] == [r["train/loss"] for r in rb.history]
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
