"""The one training loop: every phase and every HPO trial run through :class:`Trainer`.

Per optimizer step: the day batch is split into micro-batches of ``grad_accum_days`` days
(the accumulated gradient is exactly the whole batch's, see :mod:`atft_core.train.grad_accum`),
forward under bf16 autocast (CUDA or CPU), loss in fp32, backward, grad-norm clip, one host sync
to check that loss and grad norm are finite (NaN guard), AdamW step (decay on weight matrices
only, :mod:`atft_core.train.optim`) with the LR from :class:`LRController` (warmup + plateau +
NaN shrink). Under ``torchrun`` (``dist`` enabled,
:mod:`atft_core.train.ddp`) each rank runs the forward of its contiguous share of the batch's
days, the predictions are gathered so every rank evaluates the *whole batch's* loss (cross-day
Sharpe included), backward reaches only the rank's own rows, and the parameter gradients are
summed over ranks: the step equals one process with the same global batch.

Per epoch, the epoch-end callbacks run in this order (:func:`~atft_core.train.callbacks.
default_epoch_end_callbacks`); the order is what exact resume needs:

1. ``validate``      val metrics into the record (rank 0 evaluates and broadcasts).
2. ``plateau_lr``    ReduceLROnPlateau scale on ``scheduler.monitor``.
3. ``early_stop``    patience on ``early_stopping.monitor`` (+ NaN-guard counters).
4. ``best_weights``  global best -> ``model.safetensors``; before the checkpoint, so a checkpoint
                     never names a best epoch whose weights are not on disk.
5. ``commit_epoch``  record -> history, epoch counters advance.
6. ``checkpoint``    RNG captured, checkpoint written atomically (rank 0), NaN-guard restore point.
                     Everything above changes checkpointed state and so must come before it;
                     everything below only has effects that a resume replays or rewrites.
7. ``metrics_jsonl`` one line (a resume rewrites the file from the checkpoint's history).
8. ``tensorboard``   the same scalars into ``{run_dir}/tensorboard`` event files.
9. ``user_hook``     the caller's ``on_epoch_end(record)``.
10. ``prune_hook``   HPO pruning (may raise ``optuna.TrialPruned``).
11. ``phase_switch`` phase done (epochs or early stop) -> next phase; derived from checkpointed
                     state only, so :meth:`Trainer.fit` takes the same switch on resume.

The RNG bracket lives in one place, :meth:`Trainer._epoch_end`: after the callbacks (even when
one raises) the RNG states are put back to the ones the checkpoint captured, so hooks that draw
random numbers cannot make an uninterrupted run differ from one resumed from that checkpoint.
The loaders' order is a pure function of ``set_epoch(global_epoch)``.
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
from atft_core.train.callbacks import (
    EarlyStopping,
    EpochEndCallback,
    JsonlLogger,
    Progress,
    default_epoch_end_callbacks,
)
from atft_core.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
)
from atft_core.train.ddp import SINGLE_PROCESS, DistContext, check_settings, identity_sha256
from atft_core.train.gpu_stats import StepTimes, epoch_figures, epoch_start
from atft_core.train.grad_accum import backward_batch_objective
from atft_core.train.nan_guard import NanGuard
from atft_core.train.optim import build_adamw
from atft_core.train.phases import resolve_phases
from atft_core.train.predict import Predictions, autocast_ctx, predict_loader, quick_metrics
from atft_core.train.scheduler import LRController
from atft_core.train.tensorboard import TensorBoardLogger

log = logging.getLogger("atft.train")

# loss_fn(pred (N,H) fp32, batch, weights, loss_cfg, horizons) -> (total, components: floats or
# 0-d tensors, copied to the host with the step's one sync)
LossFn = Callable[..., tuple[torch.Tensor, dict[str, float | torch.Tensor]]]
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
        day_ptr_host=None,
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
    from atft_core.losses import compute_loss_tensors

    return compute_loss_tensors  # components stay on the device until the step's one sync


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


@dataclass
class EpochEnd:
    """What the epoch-end callbacks share: the trainer, the phase, the epoch record they fill,
    the monitored value and the RNG states the checkpoint captured."""

    trainer: Trainer
    phase: PhaseConfig
    rec: dict[str, Any]
    value: float = math.nan
    rng: dict[str, Any] | None = None


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
        callbacks: epoch-end steps (default :func:`default_epoch_end_callbacks`, whose order the
            module docstring explains).
        dist: the torch.distributed context (:func:`atft_core.train.ddp.init_distributed`);
            default one process.
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
        callbacks: list[EpochEndCallback] | None = None,
        dist: DistContext | None = None,
    ) -> None:
        self.cfg = cfg
        self.tc = cfg.train
        self.horizons = tuple(cfg.features.horizons)
        self.dist = dist or SINGLE_PROCESS
        self.device = self.dist.device_for(resolve_device(self.tc.device))
        if self.dist.enabled:
            if prune_hook is not None:
                raise ValueError("HPO pruning runs one process per trial; prune_hook needs nproc=1")
            check_settings(cfg, self.dist.world_size)
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
        # decay on weight matrices only, not biases/norms/embeddings (optim.py)
        self.optimizer = build_adamw(self.model, self.tc.optimizer.lr, self.tc.optimizer.weight_decay)
        self.lr = LRController(self.optimizer, self.tc.optimizer.lr, self.tc.optimizer.warmup_steps,
                               self.tc.scheduler)
        self.early = EarlyStopping(self.tc.early_stopping)
        self.guard = NanGuard(self.tc.nan_guard)
        self.jsonl = JsonlLogger(self.run_dir / "metrics.jsonl")
        self.tensorboard = TensorBoardLogger(self.run_dir)  # the TensorBoardEpoch callback writes it
        self.state = LoopState()
        self.callbacks = callbacks if callbacks is not None else default_epoch_end_callbacks()
        self.config_sha256 = identity_sha256(cfg)
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

    def _autocast_forward(self, b: DayBatch) -> torch.Tensor:
        with autocast_ctx(self.device, self.tc.precision):
            return self.forward(b)  # (n, H)

    def _loss(self, pred: torch.Tensor, b: DayBatch, weights: LossWeights):
        return self.loss_fn(pred.float(), b, weights, self.cfg.loss, self.horizons)

    # ------------------------------------------------------------------ checkpoint state
    def checkpoint_state(self, rng: dict[str, Any], rng_ranks: list[Any] | None = None) -> dict[str, Any]:
        s = self.state
        return {
            "config_yaml": self.cfg.to_yaml(),
            "config_sha256": self.config_sha256,
            "world_size": self.dist.world_size,
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
            "rng_ranks": rng_ranks or [],
        }

    def _restore(self, path: Path) -> None:
        ck = load_checkpoint(path)
        if ck["config_sha256"] != self.config_sha256:
            raise CheckpointError(
                f"{path} was written with a different config (sha256 {ck['config_sha256'][:12]} vs "
                f"{self.config_sha256[:12]}); resume with the same config or use a new run dir"
            )
        self.model.load_state_dict(ck["model"])
        saved_groups, groups = len(ck["optimizer"]["param_groups"]), len(self.optimizer.param_groups)
        if saved_groups != groups:  # written before the weight-decay groups (optim.py)
            raise CheckpointError(
                f"{path} holds optimizer state for {saved_groups} parameter group(s), this code builds "
                f"{groups} (weight decay on weight matrices only); resume with the code that wrote it "
                f"or use a new run dir")
        self.optimizer.load_state_dict(ck["optimizer"])
        self.lr.load_state_dict(ck["lr_controller"])
        self.early.load_state_dict(ck["early_stopping"])
        self.guard.load_state_dict(ck["nan_guard"])
        s = self.state
        s.phase_index, s.epoch_in_phase = int(ck["phase_index"]), int(ck["epoch_in_phase"])
        s.global_epoch, s.global_step = int(ck["global_epoch"]), int(ck["global_step"])
        s.best_value, s.best, s.history = float(ck["best_value"]), dict(ck["best"]), list(ck["history"])
        self._restore_rng(ck)
        if self.dist.is_main:
            # the file may hold lines of an epoch killed after its checkpoint was not yet written
            self.jsonl.rewrite(s.history)
        log.info("resumed from %s (phase %s, global epoch %d, step %d)",
                 path.name, ck["phase_name"], s.global_epoch, s.global_step)

    def _restore_rng(self, ck: Mapping[str, Any]) -> None:
        """Each rank's own RNG states when the checkpoint has one per rank of this world size;
        after a resume with another process count, rank 0's states on every rank and a fixed
        per-rank reseed of torch (dropout masks stay distinct across ranks)."""
        ranks = ck.get("rng_ranks") or []
        if len(ranks) == self.dist.world_size and self.dist.enabled:
            restore_rng(ranks[self.dist.rank])
            return
        restore_rng(ck["rng"])
        if self.dist.rank:
            torch.manual_seed(self.dist.rank_seed(self.tc.seed, self.state.global_epoch))

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
        epoch_start(self.device)
        t0 = time.perf_counter()
        times = StepTimes()  # data wait vs compute per step (gpu_stats.py)
        desc = f"{phase.name} e{self.state.global_epoch}"
        for i, batch in enumerate(self.progress.batches(prefetch(self.train_loader, self.device), n_total, desc)):
            if i >= n_total:
                break
            times.batch_ready()
            stock_days += batch.num_stock_days
            self.optimizer.zero_grad(set_to_none=True)
            lr = self.lr.apply()
            if self.dist.enabled:
                step_loss, step_comps = self._sharded_forward_backward(batch, phase)
                self.dist.all_reduce_grads(params)  # sum over ranks = the global batch's gradient
            else:
                step_loss, step_comps = self._forward_backward(batch, phase)
            gnorm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            # the one host sync per step: loss, grad norm and the loss components in one copy;
            # loss and grad norm must be finite or the step is skipped
            tensor_keys = [k for k, v in step_comps.items() if isinstance(v, torch.Tensor)]
            host = torch.stack([step_loss.float(), gnorm.float(),
                                *(step_comps[k].float() for k in tensor_keys)]).tolist()
            step_comps = {**step_comps, **dict(zip(tensor_keys, host[2:]))}
            ok = math.isfinite(host[0]) and math.isfinite(host[1])
            if not ok:
                self.optimizer.zero_grad(set_to_none=True)
                n_bad += 1
                if self.guard.bad_step():
                    log.warning("NaN guard: %d non-finite steps in a row; restoring last good state, "
                                "lr x %.3g", self.tc.nan_guard.max_consecutive, self.tc.nan_guard.lr_factor)
                    self.guard.restore(model, self.optimizer)
                    self.lr.shrink_for_nan(self.tc.nan_guard.lr_factor)
                times.step_done()
                continue
            self.optimizer.step()
            self.guard.good_step()
            self.lr.after_step()
            self.state.global_step += 1
            n_good += 1
            loss_sum += step_loss
            gnorm_sum += host[1]
            for k, v in step_comps.items():
                comp_sums[k] = comp_sums.get(k, 0.0) + v
            times.step_done()
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
            **epoch_figures(stock_days, times, elapsed, self.device),  # samples/s, data wait, GPU
        }
        return rec

    def _forward_backward(self, batch: DayBatch, phase: PhaseConfig) -> tuple[torch.Tensor, dict]:
        """One process: the whole batch's loss, also with micro-batches (grad_accum.py: exact,
        Sharpe included)."""
        return backward_batch_objective(
            self._autocast_forward, lambda pred, b: self._loss(pred, b, phase.weights), batch,
            [mb for mb, _ in micro_batches(batch, self.tc.grad_accum_days)], self.device)

    def _sharded_forward_backward(self, batch: DayBatch, phase: PhaseConfig) -> tuple[torch.Tensor, dict[str, float]]:
        """This rank's days forward; every rank's predictions gathered (no grad) and this rank's
        own block put back with its graph, so the loss is the whole batch's and its gradient
        reaches exactly this rank's rows: d loss / d theta = sum over ranks of what each computes."""
        bounds = self.dist.day_bounds(batch.num_days)
        ptr = batch.day_ptr.tolist()
        rows = [ptr[hi] - ptr[lo] for lo, hi in bounds]
        lo, hi = bounds[self.dist.rank]
        if hi > lo:
            with autocast_ctx(self.device, self.tc.precision):
                own = self.forward(slice_days(batch, lo, hi)).float()  # (rows[rank], H)
        else:  # more ranks than days in this batch
            own = torch.zeros((0, len(self.horizons)), device=self.device)
        pieces = self.dist.all_gather_rows(own.detach(), rows)
        pieces[self.dist.rank] = own
        loss, comps = self._loss(torch.cat(pieces), batch, phase.weights)
        if own.requires_grad:
            loss.backward()
        return loss.detach(), {k: float(v) for k, v in comps.items()}

    def validate(self, phase: PhaseConfig) -> tuple[dict[str, float], Predictions]:
        self.val_loader.set_epoch(0)
        preds = predict_loader(
            self.model, self.val_loader, self.horizons, self.device, self.tc.precision,
            loss_fn=lambda out, b: self._loss(out, b, phase.weights)[0],
        )
        metrics = {"val/loss": preds.loss, **{f"val/{k}": v for k, v in quick_metrics(preds).items()}}
        return metrics, preds

    # ------------------------------------------------------------------ fit
    def phase_finished(self, phase: PhaseConfig) -> bool:
        s = self.state
        return s.epoch_in_phase >= phase.epochs or (s.epoch_in_phase > 0 and self.early.state.stopped)

    def next_phase(self) -> None:
        self.state.phase_index += 1
        self.state.epoch_in_phase = 0

    def fit(self, resume: bool = True) -> FitResult:
        seed_everything(self.tc.seed, deterministic=self.device.type == "cpu")
        if self.dist.rank:  # distinct dropout masks per rank, reproducible per (seed, rank)
            torch.manual_seed(self.dist.rank_seed(self.tc.seed, 0))
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        resumed_from = None
        last = latest_checkpoint(self.ckpt_dir) if resume else None
        if last is not None:
            self._restore(last)
            resumed_from = str(last)
        elif self.jsonl.path.exists() and self.dist.is_main:
            self.jsonl.rewrite([])
        self.dist.broadcast_parameters(self.model)  # every rank starts from rank 0's weights
        self.guard.snapshot(self.model, self.optimizer)
        s = self.state
        entered = -1
        while s.phase_index < len(self.phases):
            phase = self.phases[s.phase_index]
            if self.phase_finished(phase):  # a 0-epoch phase, or resumed at a phase's end
                self.next_phase()
                continue
            if entered != s.phase_index:
                entered = s.phase_index
                self.model.set_blocks(phase.blocks)
                if s.epoch_in_phase == 0:
                    self.lr.start_phase(phase.lr_scale)
                    self.early.reset()
            self._run_epoch(phase)
        self.dist.barrier()
        self.tensorboard.close()
        return FitResult(
            best_value=s.best_value, best=s.best, history=s.history,
            nan_steps=self.guard.stats.skipped_steps, nan_restores=self.guard.stats.restores,
            global_step=s.global_step, resumed_from=resumed_from,
            weights_path=self.run_dir / "model.safetensors",
        )

    def _run_epoch(self, phase: PhaseConfig) -> None:
        s = self.state
        train_rec = self._train_epoch(phase)
        rec: dict[str, Any] = {
            "phase": phase.name, "phase_index": s.phase_index, "epoch": s.global_epoch,
            "epoch_in_phase": s.epoch_in_phase, "global_step": s.global_step, **train_rec,
        }
        self._epoch_end(EpochEnd(trainer=self, phase=phase, rec=rec))

    def _epoch_end(self, state: EpochEnd) -> None:
        """Run the epoch-end callbacks in order inside the RNG bracket (module docstring)."""
        try:
            for cb in self.callbacks:
                if cb.main_process_only and not self.dist.is_main:
                    continue
                cb.on_epoch_end(state)
        finally:
            if state.rng is not None:
                restore_rng(state.rng)


def history_by_phase(history: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for r in history:
        out.setdefault(str(r["phase"]), []).append(r)
    return out
