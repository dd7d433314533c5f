"""Exact resume: a run interrupted (in process, or SIGKILLed in a subprocess mid-epoch) and resumed
ends bitwise equal to an uninterrupted run with the same seed (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from atft_core.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import TinyModel, ToyLoader, tiny_cfg, toy_loss  # noqa: E402

from atft_core.train.gpu_stats import TIMING_KEYS as TIMING  # noqa: E402
from atft_core.train.loop import Trainer  # noqa: E402

OVERRIDES = ["train.phases.0.epochs=2", "train.phases.3.epochs=2"]


class CrashingLoader(ToyLoader):
    def __init__(self, crash_at=None, **kw):
        super().__init__(**kw)
        self.crash_at = crash_at

    def __iter__(self):
        for i, b in enumerate(super().__iter__()):
            if (self.epoch, i) == self.crash_at:
                raise KeyboardInterrupt("simulated kill")
            yield b


def run(tmp, crash_at=None, init_seed=0, resume=True):
    cfg = tiny_cfg(*OVERRIDES)
    torch.manual_seed(init_seed)
    model = TinyModel(3)
    tr = Trainer(cfg, model, CrashingLoader(crash_at=crash_at), ToyLoader(n_days=8, shuffle=False, seed=9, start=100),
                 tmp, loss_fn=toy_loss)
    return tr, tr.fit(resume=resume)


def strip(history):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in history]


def assert_same_run(dir_a: Path, dir_b: Path) -> None:
    ca, cb = load_checkpoint(latest_checkpoint(dir_a / "checkpoints")), load_checkpoint(latest_checkpoint(dir_b / "checkpoints"))
    assert ca["global_step"] == cb["global_step"] and ca["global_epoch"] == cb["global_epoch"]
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert strip(ca["history"]) == strip(cb["history"])
    wa, ma = load_weights(dir_a / "model.safetensors")
    wb, mb = load_weights(dir_b / "model.safetensors")
    assert ma == mb and all(torch.equal(wa[k], wb[k]) for k in wa)
    la = [json.loads(x) for x in (dir_a / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (dir_b / "metrics.jsonl").read_text().splitlines()]
    assert strip(la) == strip(lb)


def test_in_process_interrupt_and_resume_is_exact(tmp_path):
    _, full = run(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", crash_at=(3, 2))  # mid-epoch 3 (checkpoints 1..3 exist)
    assert latest_checkpoint(tmp_path / "cut" / "checkpoints").name == "epoch_0003.pt"
    # a different init seed proves the weights come from the checkpoint, not the constructor
    tr, resumed = run(tmp_path / "cut", init_seed=123)
    assert resumed.resumed_from.endswith("epoch_0003.pt")
    assert len(resumed.history) == len(full.history) == 6
    assert_same_run(tmp_path / "full", tmp_path / "cut")


def test_resume_with_another_config_is_refused(tmp_path):
    run(tmp_path)
    cfg = tiny_cfg(*OVERRIDES, "train.optimizer.lr=0.5")
    tr = Trainer(cfg, TinyModel(3), ToyLoader(), ToyLoader(n_days=8, shuffle=False), tmp_path, loss_fn=toy_loss)
    with pytest.raises(CheckpointError, match="different config"):
        tr.fit()


SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    import torch
    from test_trainer import TinyModel, ToyLoader, tiny_cfg, toy_loss
    from atft_core.train.loop import Trainer

    class SlowLoader(ToyLoader):
        def __iter__(self):
            for b in super().__iter__():
                time.sleep({sleep})  # gives the test time to kill mid-epoch
                yield b

    cfg = tiny_cfg(*{overrides!r})
    torch.manual_seed(0)
    tr = Trainer(cfg, TinyModel(3), SlowLoader(), ToyLoader(n_days=8, shuffle=False, seed=9, start=100),
                 sys.argv[1], loss_fn=toy_loss)
    res = tr.fit(resume=True)
    print("DONE", res.resumed_from)
""")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bitwise_equal(tmp_path):
    script = tmp_path / "train_toy.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), sleep=0.15, overrides=OVERRIDES))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    full = subprocess.run([sys.executable, str(script), str(tmp_path / "full")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]

    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, str(script), str(cut)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = cut / "checkpoints" / "epoch_0002.pt"
        deadline = time.monotonic() + 240
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert first.exists(), "no checkpoint appeared"
        time.sleep(0.4)  # a few batches into epoch 2
        assert proc.poll() is None, "run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = latest_checkpoint(cut / "checkpoints")
    assert killed_at.name in ("epoch_0002.pt", "epoch_0003.pt")
    resumed = subprocess.run([sys.executable, str(script), str(cut)], env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"DONE {killed_at}" in resumed.stdout
    assert_same_run(tmp_path / "full", cut)


@pytest.mark.slow
@pytest.mark.integration
def test_atft_train_cli_killed_then_resumed_then_evaluated(tmp_path):
    """The real stack through the CLI: `atft train` SIGKILLed after its first checkpoint,
    `atft train --resume` finishes it (no duplicated epochs), `atft evaluate` scores it."""
    run_dir = tmp_path / "run"
    overrides = ["data.synthetic.n_stocks=20", "train.max_train_batches_per_epoch=2",
                 "train.precision=fp32", "train.device=cpu",
                 "train.phases=[{name: baseline, epochs: 2, blocks: {gat: false, fan: false}}, "
                 "{name: graph, epochs: 2, blocks: {gat: true, fan: false}}]"]
    cmd = [sys.executable, "-m", "atft_core.cli", "train", "--config", "test", "--run-dir", str(run_dir), *overrides]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 400
        while latest_checkpoint(run_dir / "checkpoints") is None and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    killed_at = latest_checkpoint(run_dir / "checkpoints")
    assert killed_at is not None and not (run_dir / "metrics.json").exists()
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["resumed_from"] == str(killed_at)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1, 2, 3]
    final = json.loads((run_dir / "metrics.json").read_text())
    assert final["holdout"]["n_days"] > 0 and "rank_ic_1d" in final["holdout"]
    for name in ("report.md", "loss_curves.png", "rank_ic_curves.png", "rank_ic_by_horizon.png",
                 "cumulative_long_short.png", "model.safetensors", "config.yaml"):
        assert (run_dir / name).exists(), name
    ev = subprocess.run([sys.executable, "-m", "atft_core.cli", "evaluate", "--run-dir", str(run_dir),
                         "--window", "holdout"], env=env, capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr[-3000:]
    metrics = json.loads(ev.stdout)
    # the same weights on the same window give the same numbers as the run's own metrics.json
    assert metrics["rank_ic_1d"] == pytest.approx(final["holdout"]["rank_ic_1d"], abs=1e-9)
    assert metrics["window"]["n_days"] == final["splits"]["holdout"]["n_days"]
