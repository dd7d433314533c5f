"""NaN guard: a non-finite loss or gradient skips the optimizer step and is counted; after
``max_consecutive`` such steps in a row the last good model+optimizer state (kept in memory,
refreshed at every epoch end) is restored and the LR shrinks by ``lr_factor``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch

from atft_core.config import NanGuardConfig


@dataclass
class NanGuardStats:
    skipped_steps: int = 0  # total non-finite steps skipped
    consecutive: int = 0
    restores: int = 0


class NanGuard:
    """Args: cfg (max_consecutive, lr_factor)."""

    def __init__(self, cfg: NanGuardConfig) -> None:
        self.cfg = cfg
        self.stats = NanGuardStats()
        self._good: dict[str, Any] | None = None

    @staticmethod
    def finite(value: torch.Tensor | float) -> bool:
        if isinstance(value, torch.Tensor):
            return bool(torch.isfinite(value).all())
        return math.isfinite(value)

    def snapshot(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Remember a known-good state (deep copies on the same device)."""
        self._good = {
            "model": copy.deepcopy(model.state_dict()),
            "optimizer": copy.deepcopy(optimizer.state_dict()),
        }

    def good_step(self) -> None:
        self.stats.consecutive = 0

    def bad_step(self) -> bool:
        """Count a skipped step; True when the caller must :meth:`restore` now."""
        self.stats.skipped_steps += 1
        self.stats.consecutive += 1
        return self.stats.consecutive >= self.cfg.max_consecutive

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if self._good is None:
            raise RuntimeError("NaN guard: no good state to restore (snapshot() never called)")
        model.load_state_dict(self._good["model"])
        optimizer.load_state_dict(copy.deepcopy(self._good["optimizer"]))
        self.stats.consecutive = 0
        self.stats.restores += 1

    def state_dict(self) -> dict[str, int]:
        return {"skipped_steps": self.stats.skipped_steps, "consecutive": self.stats.consecutive,
                "restores": self.stats.restores}

    def load_state_dict(self, d: dict[str, int]) -> None:
        self.stats = NanGuardStats(**{k: int(v) for k, v in d.items()})
