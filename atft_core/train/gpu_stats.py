"""Per-epoch throughput, step-time breakdown and GPU figures (issue 15 item 3).

The trainer times every step in two parts: *data wait* (from the end of the previous step until
the next batch is in hand: loader work, host->device copy) and *compute* (forward, loss, backward,
optimizer step). :func:`epoch_figures` turns the totals into the epoch record's entries, which
:func:`atft_core.pipeline.epoch_metrics_hook` pushes as ``atft_train_samples_per_second``,
``atft_train_data_wait_ratio``, ``atft_gpu_utilization_ratio`` and ``atft_gpu_memory_bytes``.

GPU figures come from the CUDA runtime only on a CUDA device (nothing on CPU):
``torch.cuda.utilization`` (NVML; needs the ``nvidia-ml-py`` module, else the utilisation is
left out and said once in the log) and ``torch.cuda.max_memory_allocated`` (the epoch's peak:
:func:`epoch_start` resets it). ``cuda`` is a parameter so tests can pass a stand-in object.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger("atft.train")

# epoch-record keys that measure time (differ between otherwise identical runs)
TIMING_KEYS = frozenset({"train_time_s", "samples_per_s", "data_wait_s", "compute_s", "data_wait_ratio",
                         "gpu_utilization_ratio", "gpu_memory_bytes"})
_warned: set[str] = set()


@dataclass
class StepTimes:
    """Sums over an epoch's steps: seconds waiting for data and seconds computing."""

    data_wait_s: float = 0.0
    compute_s: float = 0.0
    steps: int = 0
    _mark: float = field(default_factory=lambda: time.perf_counter())

    def batch_ready(self) -> None:
        """Call when a batch is in hand: the time since the last mark was data wait."""
        now = time.perf_counter()
        self.data_wait_s += now - self._mark
        self._mark = now

    def step_done(self) -> None:
        """Call when the step's work is finished (after a device sync on GPUs, see below)."""
        now = time.perf_counter()
        self.compute_s += now - self._mark
        self._mark = now
        self.steps += 1


def epoch_start(device: torch.device, cuda: Any = torch.cuda) -> None:
    """Reset the CUDA peak-memory counter so the epoch's peak is its own."""
    if device.type == "cuda":
        cuda.reset_peak_memory_stats(device)


def gpu_figures(device: torch.device, cuda: Any = torch.cuda) -> dict[str, float]:
    """``gpu_utilization_ratio`` (0..1) and ``gpu_memory_bytes`` (peak allocated) on CUDA; {} on CPU."""
    if device.type != "cuda":
        return {}
    out = {"gpu_memory_bytes": float(cuda.max_memory_allocated(device))}
    try:
        out["gpu_utilization_ratio"] = float(cuda.utilization(device)) / 100.0
    except Exception as err:  # noqa: BLE001 - NVML missing / not permitted: memory still reported
        if "util" not in _warned:
            _warned.add("util")
            log.warning("GPU utilisation unavailable (%s: %s); reporting memory only",
                        type(err).__name__, err)
    return out


def epoch_figures(stock_days: int, times: StepTimes, elapsed_s: float, device: torch.device,
                  cuda: Any = torch.cuda) -> dict[str, float]:
    """The epoch record's speed entries: samples/s, the step-time breakdown and the GPU figures."""
    step_s = times.data_wait_s + times.compute_s
    return {
        "samples_per_s": stock_days / elapsed_s if elapsed_s > 0 else float("nan"),
        "data_wait_s": times.data_wait_s,
        "compute_s": times.compute_s,
        "data_wait_ratio": times.data_wait_s / step_s if step_s > 0 else float("nan"),
        **gpu_figures(device, cuda),
    }
