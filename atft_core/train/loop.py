"""The one training loop: every phase and every HPO trial run through :class:`Trainer`.

Per optimizer step: the day batch is split into micro-batches of ``grad_accum_days`` days
(weights = share of days, so the accumulated gradient is the batch mean of per-day losses),
forward under bf16 autocast (CUDA or CPU), loss in fp32, backward, grad-norm clip, one host sync
to check that loss and grad norm are finite (NaN guard), AdamW step with the LR from
:class:`LRController` (warmup + plateau + NaN shrink).

Per epoch: validation predictions -> metrics (``val/...``), plateau + per-phase early stopping on
the monitored metric, best weights (global over all phases; the blocks that were on are stored
in the safetensors metadata), an atomic checkpoint, a metrics.jsonl line, the optional
``on_epoch_end(record)`` hook.

Exact resume: a checkpoint is written at the end of every epoch with model/optimizer/LR/early
stopping/NaN-guard state, the epoch history and the RNG states; the loaders' order is a pure
function of ``set_epoch(global_epoch)``. RNG states are captured at the checkpoint and restored
after the epoch-end hooks run, so hooks cannot make a resumed run diverge from an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from atft_core.batch import DayBatch
from atft_core.config import Config, LossWeights, PhaseConfig
from atft_core.train.callbacks import EarlyStopping, JsonlLogger, Progress
from atft_core.train.checkpoint import (
    CheckpointError,
    capture_rng,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    restore_rng,
    save_checkpoint,
    save_weights,
)
from atft_core.train.nan_guard import NanGuard
from atft_core.train.phases import blocks_dict, resolve_phases
from atft_core.train.predict import Predictions, autocast_ctx, predict_loader, quick_metrics
from atft_core.train.scheduler import LRController

log = logging.getLogger("atft.train")

# loss_fn(pred (N,H) fp32, batch, weights, loss_cfg, horizons) -> (total, components)
LossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]
EpochHook = Callable[[dict[str, Any]], None]


class DayLoader(Protocol):
    def __iter__(self) -> Iterator[DayBatch]: ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...


# --------------------------------------------------------------------------- helpers
def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python/numpy/torch; on CPU also ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds the legacy global RNG for third-party code
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    return torch.device(name)


def slice_days(batch: DayBatch, lo: int, hi: int) -> DayBatch:
    """Days ``lo:hi`` of a batch as a batch (edges never cross days, so a row-range filter and an
    offset shift give the sub-graph)."""
    if lo == 0 and hi == batch.num_days:
        return batch
    ptr = batch.day_ptr
    r0, r1 = int(ptr[lo]), int(ptr[hi])
    src = batch.edge_index[0]
    keep = (src >= r0) & (src < r1)
    rows = slice(r0, r1)
    return replace(
        batch, x=batch.x[rows], y=batch.y[rows], y_raw=batch.y_raw[rows], mask=batch.mask[rows],
        edge_index=batch.edge_index[:, keep] - r0, edge_attr=batch.edge_attr[keep],
        day_ptr=ptr[lo:hi + 1] - r0, dates=batch.dates[lo:hi], codes=batch.codes[r0:r1],
    )


def micro_batches(batch: DayBatch, days: int) -> list[tuple[DayBatch, float]]:
    """[(micro-batch, weight)], weights = share of the batch's days (sum 1)."""
    k = batch.num_days
    if days <= 0 or days >= k:
        return [(batch, 1.0)]
    return [(slice_days(batch, a, min(a + days, k)), (min(a + days, k) - a) / k) for a in range(0, k, days)]


def prefetch(batches: Iterable[DayBatch], device: torch.device) -> Iterator[DayBatch]:
    """Yield batches on ``device``; on CUDA the next batch is pinned and its host->device copy
    issued (non_blocking) before the current one is handed out, so copies overlap compute.
    Same thread, same order: determinism is untouched."""
    if device.type != "cuda":
        yield from batches
        return
    it = iter(batches)
    try:
        nxt = next(it).pin_memory().to(device, non_blocking=True)
    except StopIteration:
        return
    for b in it:
        cur, nxt = nxt, b.pin_memory().to(device, non_blocking=True)
        yield cur
    yield nxt


def _default_loss_fn() -> LossFn:
    from atft_core.losses import compute_loss

    return compute_loss


# --------------------------------------------------------------------------- state
@dataclass
class LoopState:
    phase_index: int = 0
    epoch_in_phase: int = 0  # epochs of the current phase already finished
    global_epoch: int = 0  # epochs finished over all phases
    global_step: int = 0
    best_value: float = -math.inf
    best: dict[str, Any] = field(default_factory=dict)  # phase, epoch, blocks, metrics
    history: list[dict[str, Any]] = field(default_factory=list)
    compile_failed: bool = False


@dataclass(frozen=True)
class FitResult:
    """What :meth:`Trainer.fit` returns (api.TrainResult adds holdout metrics)."""

    best_value: float
    best: dict[str, Any]
    history: list[dict[str, Any]]
    nan_steps: int
    nan_restores: int
    global_step: int
    resumed_from: str | None
    weights_path: Path


class Trainer:
    """Args:
        cfg: the full config (train.*, loss, features.horizons are used; the whole YAML is saved
            into every checkpoint).
        model: a module with ``forward(x, edge_index, edge_attr) -> (N, H)`` and
            ``set_blocks(Blocks)``.
        train_loader, val_loader: DayBatchLoader-like (``set_epoch``, ``len``, iterable).
        run_dir: outputs (model.safetensors, metrics.jsonl, checkpoints/).
        loss_fn: defaults to :func:`atft_core.losses.compute_loss`.
        on_epoch_end: called with each epoch's record (e.g. MetricsPusher.train_epoch).
        epochs_scale: HPO shortens every phase by this factor.
        prune_hook: called with (global_epoch, monitored value) after each epoch; HPO raises
            optuna.TrialPruned from it.
    """

    def __init__(
        self,
        cfg: Config,
        model: torch.nn.Module,
        train_loader: DayLoader,
        val_loader: DayLoader,
        run_dir: str | Path,
        *,
        loss_fn: LossFn | None = None,
        on_epoch_end: EpochHook | None = None,
        epochs_scale: float = 1.0,
        prune_hook: Callable[[int, float], None] | None = None,
        progress: Progress | None = None,
        keep_checkpoints: int = 2,
    ) -> None:
        self.cfg = cfg
        self.tc = cfg.train
        self.horizons = tuple(cfg.features.horizons)
        self.device = resolve_device(self.tc.device)
        self.model = model.to(self.device)
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.loss_fn = loss_fn or _default_loss_fn()
        self.on_epoch_end = on_epoch_end
        self.prune_hook = prune_hook
        self.progress = progress or Progress()
        self.keep_checkpoints = keep_checkpoints
        self.phases = resolve_phases(self.tc, epochs_scale)
        self.monitor = self.tc.early_stopping.monitor
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self.tc.optimizer.lr, weight_decay=self.tc.optimizer.weight_decay
        )
        self.lr = LRController(self.optimizer, self.tc.optimizer.lr, self.tc.optimizer.warmup_steps,
                               self.tc.scheduler)
        self.early = EarlyStopping(self.tc.early_stopping)
        self.guard = NanGuard(self.tc.nan_guard)
        self.jsonl = JsonlLogger(self.run_dir / "metrics.jsonl")
        self.state = LoopState()
        self._forward = self._init_forward()

    # ------------------------------------------------------------------ forward / compile
    def _init_forward(self) -> Callable[..., torch.Tensor]:
        if not self.tc.compile:
            return self.model
        try:
            return torch.compile(self.model)
        except Exception as err:  # noqa: BLE001 - any compile failure falls back to eager
            log.warning("torch.compile unavailable (%s: %s); continuing eager", type(err).__name__, err)
            self.state.compile_failed = True
            return self.model

    def forward(self, b: DayBatch) -> torch.Tensor:
        try:
            return self._forward(b.x, b.edge_index, b.edge_attr)
        except Exception as err:
            if self._forward is self.model:
                raise
            # compiled graphs fail lazily (at first call); eager is always the fallback
            log.warning("torch.compile failed at run time (%s: %s); continuing eager",
                        type(err).__name__, str(err).splitlines()[0] if str(err) else "")
            self._forward = self.model
            self.state.compile_failed = True
            return self.model(b.x, b.edge_index, b.edge_attr)

    def _loss(self, pred: torch.Tensor, b: DayBatch, weights: LossWeights):
        return self.loss_fn(pred.float(), b, weights, self.cfg.loss, self.horizons)

    # ------------------------------------------------------------------ checkpoint state
    def _checkpoint_state(self, rng: dict[str, Any]) -> dict[str, Any]:
        s = self.state
        return {
            "config_yaml": self.cfg.to_yaml(),
            "config_sha256": self.cfg.sha256(),
            "phase_index": s.phase_index,
            "phase_name": self.phases[s.phase_index].name,
            "epoch_in_phase": s.epoch_in_phase,
            "global_epoch": s.global_epoch,
            "global_step": s.global_step,
            "best_value": s.best_value,
            "best": s.best,
            "history": s.history,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "lr_controller": self.lr.state_dict(),
            "early_stopping": self.early.state_dict(),
            "nan_guard": self.guard.state_dict(),
            "rng": rng,
        }

    def _restore(self, path: Path) -> None:
        ck = load_checkpoint(path)
        if ck["config_sha256"] != self.cfg.sha256():
            raise CheckpointError(
                f"{path} was written with a different config (sha256 {ck['config_sha256'][:12]} vs "
                f"{self.cfg.sha256()[:12]}); resume with the same config or use a new run dir"
            )
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.lr.load_state_dict(ck["lr_controller"])
        self.early.load_state_dict(ck["early_stopping"])
        self.guard.load_state_dict(ck["nan_guard"])
        s = self.state
        s.phase_index, s.epoch_in_phase = int(ck["phase_index"]), int(ck["epoch_in_phase"])
        s.global_epoch, s.global_step = int(ck["global_epoch"]), int(ck["global_step"])
        s.best_value, s.best, s.history = float(ck["best_value"]), dict(ck["best"]), list(ck["history"])
        restore_rng(ck["rng"])
        # the file may hold lines of an epoch killed after its checkpoint was not yet written
        self.jsonl.rewrite(s.history)
        log.info("resumed from %s (phase %s, global epoch %d, step %d)",
                 path.name, ck["phase_name"], s.global_epoch, s.global_step)

    # ------------------------------------------------------------------ one epoch
    def _train_epoch(self, phase: PhaseConfig) -> dict[str, float]:
        tc, model = self.tc, self.model
        model.train()
        self.train_loader.set_epoch(self.state.global_epoch)
        n_total = len(self.train_loader)
        if tc.max_train_batches_per_epoch is not None:
            n_total = min(n_total, tc.max_train_batches_per_epoch)
        loss_sum = torch.zeros((), device=self.device)
        comp_sums: dict[str, float] = {}
        gnorm_sum, n_good, n_bad, stock_days = 0.0, 0, 0, 0
        params = list(model.parameters())
        lr = self.lr.current_lr()
        t0 = time.perf_counter()
        desc = f"{phase.name} e{self.state.global_epoch}"
        for i, batch in enumerate(self.progress.batches(prefetch(self.train_loader, self.device), n_total, desc)):
            if i >= n_total:
                break
            stock_days += batch.num_stock_days
            self.optimizer.zero_grad(set_to_none=True)
            lr = self.lr.apply()
            step_loss = torch.zeros((), device=self.device)
            step_comps: dict[str, float] = {}
            for mb, w in micro_batches(batch, tc.grad_accum_days):
                with autocast_ctx(self.device, tc.precision):
                    pred = self.forward(mb)  # (n, H)
                loss, comps = self._loss(pred, mb, phase.weights)
                (loss * w).backward()
                step_loss = step_loss + loss.detach() * w
                for k, v in comps.items():
                    step_comps[k] = step_comps.get(k, 0.0) + float(v) * w
            gnorm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            # one host sync per step: both must be finite or the step is skipped
            ok = bool(torch.isfinite(step_loss) & torch.isfinite(gnorm))
            if not ok:
                self.optimizer.zero_grad(set_to_none=True)
                n_bad += 1
                if self.guard.bad_step():
                    log.warning("NaN guard: %d non-finite steps in a row; restoring last good state, "
                                "lr x %.3g", self.tc.nan_guard.max_consecutive, self.tc.nan_guard.lr_factor)
                    self.guard.restore(model, self.optimizer)
                    self.lr.shrink_for_nan(self.tc.nan_guard.lr_factor)
                continue
            self.optimizer.step()
            self.guard.good_step()
            self.lr.after_step()
            self.state.global_step += 1
            n_good += 1
            loss_sum += step_loss
            gnorm_sum += float(gnorm)
            for k, v in step_comps.items():
                comp_sums[k] = comp_sums.get(k, 0.0) + v
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - t0
        rec = {
            "train/loss": float(loss_sum) / n_good if n_good else float("nan"),
            **{f"train/{k}": v / max(n_good, 1) for k, v in comp_sums.items()},
            "lr": self.lr.current_lr() if n_total == 0 else lr,
            "grad_norm": gnorm_sum / n_good if n_good else float("nan"),
            "nan_steps": n_bad,
            "steps": n_good,
            "stock_days": stock_days,
            "train_time_s": elapsed,
            "samples_per_s": stock_days / elapsed if elapsed > 0 else float("nan"),
        }
        return rec

    def validate(self, phase: PhaseConfig) -> tuple[dict[str, float], Predictions]:
        self.val_loader.set_epoch(0)
        preds = predict_loader(
            self.model, self.val_loader, self.horizons, self.device, self.tc.precision,
            loss_fn=lambda out, b: self._loss(out, b, phase.weights)[0],
        )
        metrics = {"val/loss": preds.loss, **{f"val/{k}": v for k, v in quick_metrics(preds).items()}}
        return metrics, preds

    # ------------------------------------------------------------------ fit
    def fit(self, resume: bool = True) -> FitResult:
        seed_everything(self.tc.seed, deterministic=self.device.type == "cpu")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resumed_from = None
        last = latest_checkpoint(self.ckpt_dir) if resume else None
        if last is not None:
            self._restore(last)
            resumed_from = str(last)
        elif self.jsonl.path.exists():
            self.jsonl.rewrite([])
        self.guard.snapshot(self.model, self.optimizer)
        s = self.state
        while s.phase_index < len(self.phases):
            phase = self.phases[s.phase_index]
            self.model.set_blocks(phase.blocks)
            if s.epoch_in_phase == 0:
                self.lr.start_phase(phase.lr_scale)
                self.early.reset()
            while s.epoch_in_phase < phase.epochs and not self.early.state.stopped:
                self._run_epoch(phase)
            s.phase_index += 1
            s.epoch_in_phase = 0
        return FitResult(
            best_value=s.best_value, best=s.best, history=s.history,
            nan_steps=self.guard.stats.skipped_steps, nan_restores=self.guard.stats.restores,
            global_step=s.global_step, resumed_from=resumed_from,
            weights_path=self.run_dir / "model.safetensors",
        )

    def _run_epoch(self, phase: PhaseConfig) -> None:
        s = self.state
        train_rec = self._train_epoch(phase)
        val_rec, _ = self.validate(phase)
        rec: dict[str, Any] = {
            "phase": phase.name, "phase_index": s.phase_index, "epoch": s.global_epoch,
            "epoch_in_phase": s.epoch_in_phase, "global_step": s.global_step, **train_rec, **val_rec,
        }
        if self.monitor not in rec:
            raise KeyError(f"early_stopping.monitor {self.monitor!r} is not a metric; have {sorted(rec)}")
        value = float(rec[self.monitor])
        sched_monitor = self.tc.scheduler.monitor
        if sched_monitor not in rec:
            raise KeyError(f"scheduler.monitor {sched_monitor!r} is not a metric; have {sorted(rec)}")
        rec["lr_reduced"] = self.lr.epoch_end(float(rec[sched_monitor]))
        rec["early_stop"] = self.early.update(value)
        rec["nan_steps_total"] = self.guard.stats.skipped_steps
        rec["nan_restores"] = self.guard.stats.restores
        if math.isfinite(value) and value > s.best_value:
            s.best_value = value
            s.best = {"phase": phase.name, "phase_index": s.phase_index, "epoch": s.global_epoch,
                      "blocks": blocks_dict(phase.blocks), "monitor": self.monitor, "value": value,
                      "val": {k: v for k, v in val_rec.items()}}
            save_weights(self.run_dir / "model.safetensors", self.model.state_dict(), {
                "phase": phase.name, "phase_index": s.phase_index, "epoch": s.global_epoch,
                "blocks": blocks_dict(phase.blocks), "monitor": self.monitor, "value": value,
                "config_sha256": self.cfg.sha256(), "horizons": list(self.horizons),
            })
            rec["best"] = True
        else:
            rec["best"] = False
        s.history.append(rec)
        s.epoch_in_phase += 1
        s.global_epoch += 1
        rng = capture_rng()
        save_checkpoint(checkpoint_path(self.ckpt_dir, s.global_epoch), self._checkpoint_state(rng))
        prune_checkpoints(self.ckpt_dir, self.keep_checkpoints)
        self.guard.snapshot(self.model, self.optimizer)
        self.jsonl.append(rec)
        self.progress.epoch(rec, self.monitor)
        try:
            if self.on_epoch_end is not None:
                self.on_epoch_end(dict(rec))
            if self.prune_hook is not None:
                self.prune_hook(s.global_epoch, value)
        finally:
            restore_rng(rng)


def history_by_phase(history: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for r in history:
        out.setdefault(str(r["phase"]), []).append(r)
    return out
