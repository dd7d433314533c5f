"""The phase schedule (SPEC 6): each phase sets the active model blocks, the loss weights and an
LR scale. HPO trials run the same schedule with epochs scaled by ``hpo.epochs_scale``."""

from __future__ import annotations

import math

from atft_core.config import Blocks, PhaseConfig, TrainConfig


def resolve_phases(train: TrainConfig, epochs_scale: float = 1.0) -> tuple[PhaseConfig, ...]:
    """Phases to run; with ``epochs_scale`` != 1 each non-empty phase keeps at least one epoch."""
    if not train.phases:
        raise ValueError("train.phases is empty: nothing to train")
    if epochs_scale == 1.0:
        return tuple(train.phases)
    return tuple(
        p.model_copy(update={"epochs": max(1, math.ceil(p.epochs * epochs_scale)) if p.epochs else 0})
        for p in train.phases
    )


def blocks_dict(blocks: Blocks) -> dict[str, bool]:
    return {"gat": blocks.gat, "fan": blocks.fan, "attention": blocks.attention}


def total_epochs(phases: tuple[PhaseConfig, ...]) -> int:
    return sum(p.epochs for p in phases)
