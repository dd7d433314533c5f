"""Per-epoch steps of the training loop: early stopping, metrics.jsonl, progress output, and the
ordered epoch-end callbacks (:func:`default_epoch_end_callbacks`).

Checkpoint writing itself is :mod:`atft_core.train.checkpoint`; the loop decides when.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from atft_core.config import EarlyStoppingConfig
from atft_core.jsonsafe import json_safe
from atft_core.train.checkpoint import atomic_write_text

log = logging.getLogger("atft.train")


# --------------------------------------------------------------------------- early stopping
@dataclass
class EarlyStoppingState:
    best: float = -math.inf
    bad_epochs: int = 0
    stopped: bool = False


class EarlyStopping:
    """Mode-max early stopping on one metric, reset at every phase start."""

    def __init__(self, cfg: EarlyStoppingConfig) -> None:
        self.cfg = cfg
        self.state = EarlyStoppingState()

    def reset(self) -> None:
        self.state = EarlyStoppingState()

    def update(self, value: float) -> bool:
        """Feed an epoch's metric; returns True when the phase should stop now."""
        s = self.state
        if math.isfinite(value) and value > s.best + self.cfg.min_delta:
            s.best = value
            s.bad_epochs = 0
        else:
            s.bad_epochs += 1
        s.stopped = s.bad_epochs >= self.cfg.patience
        return s.stopped

    def state_dict(self) -> dict[str, Any]:
        return asdict(self.state)

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        self.state = EarlyStoppingState(float(d["best"]), int(d["bad_epochs"]), bool(d["stopped"]))


# --------------------------------------------------------------------------- metrics.jsonl
def json_line(record: Mapping[str, Any]) -> str:
    # NaN/inf are written as null: strict JSON readers (Grafana, jq) reject NaN
    return json.dumps(json_safe(record), sort_keys=False, allow_nan=False)


class JsonlLogger:
    """Appends one JSON line per epoch to ``metrics.jsonl`` (flushed + fsync'ed)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def rewrite(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Replace the file with exactly ``records`` (resume: drop lines of an epoch that was
        killed before its checkpoint landed)."""
        atomic_write_text(self.path, "".join(json_line(r) + "\n" for r in records))

    def append(self, record: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json_line(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- progress
class Progress:
    """tqdm bar on an interactive terminal, plain log lines (every ``log_every`` batches) otherwise."""

    def __init__(self, enabled: bool | None = None, log_every: int = 50) -> None:
        self.interactive = sys.stderr.isatty() if enabled is None else enabled
        self.log_every = log_every

    def batches(self, it: Iterable[Any], total: int, desc: str) -> Iterator[Any]:
        if self.interactive:
            from tqdm import tqdm

            yield from tqdm(it, total=total, desc=desc, leave=False, dynamic_ncols=True)
            return
        # a line every log_every batches or every 60 s: batch, stock-days/s and the epoch's ETA
        t0 = last = time.perf_counter()
        done = 0
        for i, item in enumerate(it):
            now = time.perf_counter()
            if i and ((self.log_every and i % self.log_every == 0) or now - last >= 60.0):
                rate = done / (now - t0) if now > t0 else float("nan")
                eta = (now - t0) / i * max(total - i, 0)
                log.info("%s: batch %d/%d, %.0f stock-days/s, epoch ETA %.0fs", desc, i, total, rate, eta)
                last = now
            done += int(getattr(item, "num_stock_days", 0))
            yield item

    @staticmethod
    def epoch_line(rec: Mapping[str, Any], monitor: str) -> str:
        def f(k: str) -> str:
            v = rec.get(k)
            return "nan" if v is None else f"{v:.4g}"

        return (f"[{rec['phase']} e{rec['epoch']}] train/loss={f('train/loss')} val/loss={f('val/loss')} "
                f"{monitor}={f(monitor)} val/rank_ic_1d={f('val/rank_ic_1d')} lr={f('lr')} "
                f"stock-days/s={f('samples_per_s')} nan_steps={rec.get('nan_steps', 0)}")

    def epoch(self, rec: Mapping[str, Any], monitor: str) -> None:
        line = self.epoch_line(rec, monitor)
        if self.interactive:
            from tqdm import tqdm

            tqdm.write(line)
        else:
            log.info(line)


# --------------------------------------------------------------------------- epoch-end callbacks
class EpochEndCallback:
    """One epoch-end step (Lightning-style). ``on_epoch_end(state)`` reads and updates the
    :class:`~atft_core.train.loop.EpochEnd` state; ``main_process_only`` steps (files, hooks) run
    on rank 0 of a distributed run and are skipped on the other ranks."""

    name = "callback"
    main_process_only = False

    def on_epoch_end(self, state: Any) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class Validate(EpochEndCallback):
    """Validation metrics into the record (rank 0 evaluates, every rank receives the same dict,
    so plateau, early stopping and best-epoch decisions agree across ranks)."""

    name = "validate"

    def on_epoch_end(self, state: Any) -> None:
        tr = state.trainer
        metrics = tr.validate(state.phase)[0] if tr.dist.is_main else None
        state.rec.update(tr.dist.broadcast_object(metrics))
        for key in (tr.monitor, tr.tc.scheduler.monitor):
            if key not in state.rec:
                raise KeyError(f"monitor {key!r} is not a metric; have {sorted(state.rec)}")
        state.value = float(state.rec[tr.monitor])


class PlateauLR(EpochEndCallback):
    name = "plateau_lr"

    def on_epoch_end(self, state: Any) -> None:
        tr = state.trainer
        state.rec["lr_reduced"] = tr.lr.epoch_end(float(state.rec[tr.tc.scheduler.monitor]))


class EarlyStop(EpochEndCallback):
    name = "early_stop"

    def on_epoch_end(self, state: Any) -> None:
        tr = state.trainer
        state.rec["early_stop"] = tr.early.update(state.value)
        state.rec["nan_steps_total"] = tr.guard.stats.skipped_steps
        state.rec["nan_restores"] = tr.guard.stats.restores


class BestWeights(EpochEndCallback):
    """Global best over all phases: ``model.safetensors`` (rank 0) + the loop state's ``best``.
    Written before the checkpoint, so a checkpoint never names a best epoch whose weights are
    not on disk."""

    name = "best_weights"

    def on_epoch_end(self, state: Any) -> None:
        from atft_core.train.checkpoint import save_weights
        from atft_core.train.phases import blocks_dict

        tr, s, phase, value = state.trainer, state.trainer.state, state.phase, state.value
        state.rec["best"] = bool(math.isfinite(value) and value > s.best_value)
        if not state.rec["best"]:
            return
        s.best_value = value
        val = {k: v for k, v in state.rec.items() if k.startswith("val/")}
        s.best = {"phase": phase.name, "phase_index": s.phase_index, "epoch": s.global_epoch,
                  "blocks": blocks_dict(phase.blocks), "monitor": tr.monitor, "value": value, "val": val}
        if tr.dist.is_main:
            save_weights(tr.run_dir / "model.safetensors", tr.model.state_dict(), {
                "phase": phase.name, "phase_index": s.phase_index, "epoch": s.global_epoch,
                "blocks": blocks_dict(phase.blocks), "monitor": tr.monitor, "value": value,
                "config_sha256": tr.cfg.sha256(), "horizons": list(tr.horizons),
            })


class CommitEpoch(EpochEndCallback):
    """The record joins the history and the epoch counters advance (what the checkpoint stores)."""

    name = "commit_epoch"

    def on_epoch_end(self, state: Any) -> None:
        s = state.trainer.state
        s.history.append(state.rec)
        s.epoch_in_phase += 1
        s.global_epoch += 1


class Checkpoint(EpochEndCallback):
    """Capture the RNG states, write the checkpoint (rank 0), prune old ones, and move the NaN
    guard's restore point here. ``state.rng`` is what the trainer restores after the later
    callbacks: the next epoch starts from exactly the RNG state a resume would load."""

    name = "checkpoint"

    def on_epoch_end(self, state: Any) -> None:
        from atft_core.train.checkpoint import (
            capture_rng,
            checkpoint_path,
            prune_checkpoints,
            save_checkpoint,
        )

        tr = state.trainer
        state.rng = capture_rng()
        ranks_rng = tr.dist.all_gather_object(state.rng) if tr.dist.enabled else None
        if tr.dist.is_main:
            save_checkpoint(checkpoint_path(tr.ckpt_dir, tr.state.global_epoch),
                            tr.checkpoint_state(state.rng, ranks_rng))
            prune_checkpoints(tr.ckpt_dir, tr.keep_checkpoints)
        tr.dist.barrier()  # no rank runs ahead of a checkpoint that is not yet on disk
        tr.guard.snapshot(tr.model, tr.optimizer)


class MetricsLine(EpochEndCallback):
    """metrics.jsonl line + progress line (a resume rewrites the file from the history)."""

    name = "metrics_jsonl"
    main_process_only = True

    def on_epoch_end(self, state: Any) -> None:
        tr = state.trainer
        tr.jsonl.append(state.rec)
        tr.progress.epoch(state.rec, tr.monitor)


class TensorBoardEpoch(EpochEndCallback):
    """The epoch record's scalars into ``{run_dir}/tensorboard`` (same values as metrics.jsonl)."""

    name = "tensorboard"
    main_process_only = True

    def on_epoch_end(self, state: Any) -> None:
        state.trainer.tensorboard.epoch(state.rec)


class UserHook(EpochEndCallback):
    """The caller's ``on_epoch_end(record)`` (e.g. the Pushgateway metrics hook); gets a copy."""

    name = "user_hook"
    main_process_only = True

    def on_epoch_end(self, state: Any) -> None:
        hook = state.trainer.on_epoch_end
        if hook is not None:
            hook(dict(state.rec))


class PruneHook(EpochEndCallback):
    """HPO: ``prune_hook(global_epoch, value)`` may raise optuna.TrialPruned."""

    name = "prune_hook"
    main_process_only = True

    def on_epoch_end(self, state: Any) -> None:
        hook = state.trainer.prune_hook
        if hook is not None:
            hook(state.trainer.state.global_epoch, state.value)


class PhaseSwitch(EpochEndCallback):
    """Ends the phase when its epochs are done or early stopping fired; :meth:`Trainer.fit` then
    switches blocks, LR peak/warmup and early-stopping memory for the next one. Derived from
    checkpointed state only, so a resumed run takes the same switch."""

    name = "phase_switch"

    def on_epoch_end(self, state: Any) -> None:
        tr = state.trainer
        if tr.phase_finished(state.phase):
            tr.next_phase()


def default_epoch_end_callbacks() -> list[EpochEndCallback]:
    """The order exact resume needs (see :mod:`atft_core.train.loop`)."""
    return [Validate(), PlateauLR(), EarlyStop(), BestWeights(), CommitEpoch(), Checkpoint(),
            MetricsLine(), TensorBoardEpoch(), UserHook(), PruneHook(), PhaseSwitch()]
