"""Throughput, step-time breakdown and GPU figures reach Prometheus through the real code path,
and the throughput-low / GPU-underutilised alert conditions become true (issue 15 item 3)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from atft_core.config import MetricsConfig
from atft_core.observability import MetricsPusher, read_textfile_value
from atft_core.pipeline import epoch_metrics_hook
from atft_core.train.gpu_stats import StepTimes, epoch_figures, epoch_start, gpu_figures

RULES = Path(__file__).parent.parent / "include" / "prometheus" / "rules" / "atft_alerts.yml"


class FakeCuda:
    """Stand-in for ``torch.cuda``: only the GPU queries (no device needed)."""

    def __init__(self, util_percent: int, peak_bytes: int) -> None:
        self.util, self.peak, self.resets = util_percent, peak_bytes, 0

    def utilization(self, device):
        return self.util

    def max_memory_allocated(self, device):
        return self.peak

    def reset_peak_memory_stats(self, device):
        self.resets += 1


def _threshold(alert: str) -> float:
    doc = yaml.safe_load(RULES.read_text())
    expr = next(r["expr"] for g in doc["groups"] for r in g["rules"] if r.get("alert") == alert)
    return float(re.search(r"<\s*([0-9.]+)", expr).group(1))


def _times(wait: float, compute: float, steps: int) -> StepTimes:
    t = StepTimes()
    t.data_wait_s, t.compute_s, t.steps = wait, compute, steps
    return t


def test_step_timer_splits_wait_and_compute(monkeypatch):
    clock = iter([0.0, 0.5, 2.5, 2.6, 4.6])
    monkeypatch.setattr("atft_core.train.gpu_stats.time.perf_counter", lambda: next(clock))
    t = StepTimes()  # mark at 0.0
    t.batch_ready()  # 0.5 s waiting
    t.step_done()  # 2.0 s computing
    t.batch_ready()  # 0.1 s
    t.step_done()  # 2.0 s
    assert (t.data_wait_s, t.compute_s, t.steps) == pytest.approx((0.6, 4.0, 2))


def test_cpu_runs_report_no_gpu_figures():
    fake = FakeCuda(50, 123)
    assert gpu_figures(torch.device("cpu"), fake) == {}
    epoch_start(torch.device("cpu"), fake)
    assert fake.resets == 0
    rec = epoch_figures(1000, _times(0.2, 3.8, 5), 4.0, torch.device("cpu"), fake)
    assert rec == pytest.approx({"samples_per_s": 250.0, "data_wait_s": 0.2, "compute_s": 3.8,
                                 "data_wait_ratio": 0.05})


def test_gpu_figures_reach_the_textfile_and_fire_both_alert_conditions(tmp_path):
    fake = FakeCuda(util_percent=30, peak_bytes=7_500_000_000)
    dev = torch.device("cuda", 0)
    epoch_start(dev, fake)
    assert fake.resets == 1
    # a slow, input-bound epoch: 400 stock-days in 2 s, 1.5 s of it waiting for data
    rec = epoch_figures(400, _times(1.5, 0.5, 4), 2.0, dev, fake)
    assert rec["gpu_utilization_ratio"] == pytest.approx(0.30)
    assert rec["gpu_memory_bytes"] == 7.5e9 and rec["data_wait_ratio"] == pytest.approx(0.75)
    pusher = MetricsPusher(MetricsConfig(textfile_dir=str(tmp_path)), environ={}, dag_id="atft_retrain",
                           task_id="train")
    hook = epoch_metrics_hook(pusher, (1, 5))
    hook({"epoch": 0, "phase_index": 0, "train/loss": 1.0, "val/loss": 1.1, "grad_norm": 0.5, "lr": 1e-3,
          "val/rank_ic_1d": 0.02, "val/rank_ic_5d": 0.01, **rec})
    prom = next(tmp_path.glob("*.prom"))
    util = read_textfile_value(prom, "atft_gpu_utilization_ratio")
    sps = read_textfile_value(prom, "atft_train_samples_per_second")
    assert util == pytest.approx(0.30) and sps == pytest.approx(200.0)
    assert read_textfile_value(prom, "atft_gpu_memory_bytes") == 7.5e9
    assert read_textfile_value(prom, "atft_train_data_wait_ratio") == pytest.approx(0.75)
    # the alert rules' conditions hold for what was pushed (the rules' own thresholds)
    assert util < _threshold("ATFTGPUUnderutilized")
    assert sps < _threshold("ATFTTrainThroughputLow")


def test_missing_nvml_still_reports_memory(caplog):
    class NoNvml(FakeCuda):
        def utilization(self, device):
            raise ModuleNotFoundError("pynvml does not seem to be installed")

    out = gpu_figures(torch.device("cuda", 0), NoNvml(0, 42))
    assert out == {"gpu_memory_bytes": 42.0}
