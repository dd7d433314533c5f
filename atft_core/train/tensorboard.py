"""TensorBoard event files in every run directory (issue 13): ``{run_dir}/tensorboard/``.

Per epoch (step = the global epoch, as in ``metrics.jsonl``) every finite numeric entry of the
epoch record is written under its own key: losses by component (``train/loss``, ``train/mse``,
``train/rankic`` ...), validation metrics per horizon (``val/rank_ic_1d`` ...), ``lr``,
``grad_norm``, ``samples_per_s`` (stock-days/s) and the rest. So ``tensorboard --logdir
var/runs`` compares runs, experiment seeds and HPO trials side by side, and every scalar equals
the metrics.jsonl line of that epoch (float32). Phase boundaries: ``phase/index`` at each phase's
first epoch, and a text entry naming the phase and its blocks. After evaluation,
:func:`write_hparams` records the config's hyper-parameters with the final holdout metrics.

``torch.utils.tensorboard`` needs the ``tensorboard`` package; without it the logger is a no-op
that says so once in the log (training never fails for want of a viewer).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("atft.train")
TB_DIR = "tensorboard"
# record keys that are bookkeeping, not curves
_SKIP = frozenset({"epoch", "phase_index", "epoch_in_phase", "global_step"})


def _writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # tensorboard not installed
        log.warning("TensorBoard logging off: %s", err)
        return None
    return SummaryWriter(log_dir=str(log_dir))


def scalars_of(rec: Mapping[str, Any]) -> dict[str, float]:
    """The entries of an epoch record that become TensorBoard scalars (finite numbers; bools too)."""
    out = {}
    for k, v in rec.items():
        if k in _SKIP or isinstance(v, str | dict | list) or v is None:
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out[k] = f
    return out


class TensorBoardLogger:
    """Writes epoch records to ``{run_dir}/tensorboard`` (see the module doc)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.log_dir = Path(run_dir) / TB_DIR
        self._w = None
        self._off = False

    def _get(self):
        if self._w is None and not self._off:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._w = _writer(self.log_dir)
            self._off = self._w is None
        return self._w

    def epoch(self, rec: Mapping[str, Any]) -> None:
        w = self._get()
        if w is None:
            return
        step = int(rec["epoch"])
        if int(rec.get("epoch_in_phase", -1)) == 0:
            w.add_scalar("phase/index", float(rec.get("phase_index", 0)), step)
            w.add_text("phase/start", f"epoch {step}: phase {rec.get('phase')}", step)
        for k, v in scalars_of(rec).items():
            w.add_scalar(k, v, step)
        w.flush()

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None


def _flat_hparams(cfg) -> dict[str, Any]:
    """Scalar hyper-parameters of a Config (model, optimizer, dataset, loss, phase epochs)."""
    d = cfg.to_dict()
    out: dict[str, Any] = {}
    for sec in ("model", "dataset", "graph"):
        for k, v in d.get(sec, {}).items():
            if isinstance(v, int | float | str | bool):
                out[f"{sec}.{k}"] = v
    for k, v in d["train"]["optimizer"].items():
        out[f"train.optimizer.{k}"] = v
    out["train.seed"] = d["train"]["seed"]
    out["train.phases"] = ",".join(f"{p['name']}x{p['epochs']}" for p in d["train"]["phases"])
    return out


def write_hparams(run_dir: str | Path, cfg, metrics: Mapping[str, Any]) -> dict[str, float]:
    """hparams entry: the config's hyper-parameters with the final (holdout) metrics' scalars,
    prefixed ``holdout/``. Returns the metric dict written ({} when TensorBoard is missing)."""
    w = _writer(Path(run_dir) / TB_DIR)
    if w is None:
        return {}
    m = {f"holdout/{k}": v for k, v in scalars_of(
        {k: v for k, v in metrics.items() if not isinstance(v, bool)}).items()}
    try:
        w.add_hparams(_flat_hparams(cfg), m, run_name=".")
    finally:
        w.close()
    return m
