"""Per-epoch side effects of the training loop: early stopping, metrics.jsonl, progress output.

Checkpoint writing itself is :mod:`atft_core.train.checkpoint`; the loop decides when.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
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
        for i, item in enumerate(it):
            if self.log_every and i and i % self.log_every == 0:
                log.info("%s: batch %d/%d", desc, i, total)
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
