"""Learning-rate control: linear warmup per phase, ReduceLROnPlateau on the monitored val metric,
and the NaN guard's extra shrink factor.

``lr = phase_peak_lr * warmup(step) * plateau_scale * nan_scale``, floored at ``min_lr`` once the
plateau has reduced it (as torch's ReduceLROnPlateau floors). The plateau logic is torch's
``ReduceLROnPlateau`` semantics (mode, relative threshold 1e-4, patience, cooldown 0, min_lr)
re-implemented as a *scale* so it composes with warmup instead of fighting it over
``param_group["lr"]``; tests check it against torch's class on scripted metric sequences.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from atft_core.config import SchedulerConfig


@dataclass
class PlateauState:
    best: float = -math.inf
    num_bad_epochs: int = 0
    scale: float = 1.0
    reductions: int = 0


class PlateauScaler:
    """Mode-'max' ReduceLROnPlateau as a multiplicative scale.

    Args:
        cfg: factor, patience, min_lr (the monitor name is the caller's business).
        threshold: relative improvement needed (torch default 1e-4, 'rel' mode).
    """

    def __init__(self, cfg: SchedulerConfig, threshold: float = 1e-4) -> None:
        self.cfg = cfg
        self.threshold = threshold
        self.state = PlateauState()

    def is_better(self, value: float) -> bool:
        best = self.state.best
        if best == -math.inf:
            return True
        return value > best * (1.0 + self.threshold) if best >= 0 else value > best * (1.0 - self.threshold)

    def step(self, value: float, current_lr: float) -> bool:
        """Feed one epoch's metric; returns True when the LR was reduced. Non-finite counts as bad."""
        s = self.state
        if math.isfinite(value) and self.is_better(value):
            s.best = value
            s.num_bad_epochs = 0
            return False
        s.num_bad_epochs += 1
        if s.num_bad_epochs > self.cfg.patience:
            s.num_bad_epochs = 0
            new_lr = max(current_lr * self.cfg.factor, self.cfg.min_lr)
            # torch skips reductions smaller than eps=1e-8
            if current_lr - new_lr > 1e-8:
                s.scale *= new_lr / current_lr
                s.reductions += 1
                return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return asdict(self.state)

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.state = PlateauState(**d)


class LRController:
    """Owns ``param_group['lr']`` of one optimizer; call :meth:`apply` before each optimizer step.

    Args:
        optimizer: the optimizer whose groups all get the same LR.
        base_lr: cfg.train.optimizer.lr.
        warmup_steps: linear warmup length in optimizer steps, restarted at every phase start
            (newly switched-on blocks start from fresh weights and need it again).
        sched: plateau settings.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, warmup_steps: int,
                 sched: SchedulerConfig) -> None:
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.warmup_steps = warmup_steps
        self.min_lr = sched.min_lr
        self.plateau = PlateauScaler(sched)
        self.lr_scale = 1.0  # the phase's lr_scale
        self.nan_scale = 1.0  # product of NaN-guard lr_factor applications
        self.phase_step = 0

    def start_phase(self, lr_scale: float) -> None:
        """New phase: new peak LR, warmup restarts, plateau memory resets."""
        self.lr_scale = lr_scale
        self.phase_step = 0
        self.plateau = PlateauScaler(self.plateau.cfg, self.plateau.threshold)

    def warmup_factor(self) -> float:
        if self.warmup_steps <= 0:
            return 1.0
        return min(1.0, (self.phase_step + 1) / self.warmup_steps)

    def current_lr(self) -> float:
        lr = self.base_lr * self.lr_scale * self.warmup_factor() * self.plateau.state.scale * self.nan_scale
        if self.plateau.state.reductions:
            lr = max(lr, self.min_lr)
        return lr

    def apply(self) -> float:
        lr = self.current_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def after_step(self) -> None:
        self.phase_step += 1

    def epoch_end(self, monitored: float) -> bool:
        """Plateau step at the end of an epoch (after warmup's peak LR as the reference)."""
        peak = self.base_lr * self.lr_scale * self.plateau.state.scale * self.nan_scale
        return self.plateau.step(monitored, peak)

    def shrink_for_nan(self, factor: float) -> None:
        self.nan_scale *= factor

    def state_dict(self) -> dict[str, Any]:
        return {"plateau": self.plateau.state_dict(), "lr_scale": self.lr_scale,
                "nan_scale": self.nan_scale, "phase_step": self.phase_step}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.plateau.load_state_dict(d["plateau"])
        self.lr_scale = float(d["lr_scale"])
        self.nan_scale = float(d["nan_scale"])
        self.phase_step = int(d["phase_step"])
