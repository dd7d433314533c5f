"""A run dir holds one run (issue 12 faults 2, 3 and 8 at the train_run level).

Fast tests drive :func:`prepare_run_dir` with real checkpoint files; the slow one trains tiny
runs end to end through :func:`train_run`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from atft_core.config import load_config
from atft_core.train import checkpoint as ck
from atft_core.train.api import RunDirError, prepare_run_dir


def _cfg(*extra: str):
    return load_config("test", ["train.device=cpu", *extra])


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _fake_run(run_dir: Path, cfg, epochs: int) -> None:
    """What a finished run leaves: config.yaml, weights, metrics, the last checkpoints."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    (run_dir / "metrics.json").write_text(json.dumps({"config_sha256": cfg.sha256()}))
    ck.save_weights(run_dir / "model.safetensors", torch.nn.Linear(2, 1).state_dict(),
                    {"config_sha256": cfg.sha256()})
    for e in range(max(1, epochs - 1), epochs + 1):
        ck.save_checkpoint(ck.checkpoint_path(run_dir / "checkpoints", e),
                           {"model": torch.nn.Linear(2, 1).state_dict(), "config_sha256": cfg.sha256(),
                            "global_epoch": e})


def test_fresh_start_moves_an_earlier_run_aside(tmp_path):
    cfg = _cfg()
    run = tmp_path / "run"
    _fake_run(run, cfg, epochs=3)
    before = _snapshot(run)
    scan, moved = prepare_run_dir(cfg, run, resume=False)
    assert scan.newest_valid is None and moved is not None
    assert not run.exists()  # the new run starts in an empty dir of its own
    assert moved.parent == tmp_path and moved.name.startswith("run.prev-")
    assert _snapshot(moved) == before  # moved, not changed or deleted


def test_resume_without_any_checkpoint_also_starts_in_an_empty_dir(tmp_path):
    cfg = _cfg()
    run = tmp_path / "run"
    _fake_run(run, cfg, epochs=1)
    for p in (run / "checkpoints").iterdir():
        p.unlink()
    scan, moved = prepare_run_dir(cfg, run, resume=True)
    assert scan.newest_valid is None and moved is not None and not run.exists()


def test_foreign_files_in_the_run_dir_are_refused_untouched(tmp_path):
    cfg = _cfg()
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "metrics.json").write_text("{}")
    before = _snapshot(tmp_path)
    with pytest.raises(RunDirError, match=r"notes\.txt"):
        prepare_run_dir(cfg, tmp_path, resume=False)
    assert _snapshot(tmp_path) == before
    scan, moved = prepare_run_dir(cfg, tmp_path / "empty-or-new", resume=False)
    assert moved is None


def test_resume_with_another_config_is_refused_before_any_write(tmp_path):
    cfg_a, cfg_b = _cfg(), _cfg("train.optimizer.lr=0.005")
    run = tmp_path / "run"
    _fake_run(run, cfg_a, epochs=2)
    before = _snapshot(run)
    with pytest.raises(ck.CheckpointError, match="different config.*nothing was written"):
        prepare_run_dir(cfg_b, run, resume=True)
    assert _snapshot(run) == before
    scan, moved = prepare_run_dir(cfg_a, run, resume=True)  # the same config resumes in place
    assert scan.newest_valid.name == "epoch_0002.pt" and moved is None


def test_resume_falls_back_past_a_corrupt_checkpoint(tmp_path):
    cfg = _cfg()
    run = tmp_path / "run"
    _fake_run(run, cfg, epochs=3)
    newest = run / "checkpoints" / "epoch_0003.pt"
    newest.write_bytes(newest.read_bytes()[:200])
    scan, moved = prepare_run_dir(cfg, run, resume=True)
    assert scan.newest_valid.name == "epoch_0002.pt" and moved is None
    assert scan.describe()[0]["file"].endswith("epoch_0003.pt")


@pytest.mark.slow
def test_train_run_owns_its_run_dir_end_to_end(tmp_path):
    """Fault 2: a --no-resume run into a dir with a longer earlier run used to keep the old
    epoch_0002/0003.pt and prune its own epoch_0001.pt; fault 3: a refused resume rewrote
    config.yaml; fault 8: a corrupt newest checkpoint must fall back to the previous one."""
    from atft_core.train.api import as_panel, load_features, train_run

    tiny = ["train.max_train_batches_per_epoch=1", "data.synthetic.n_days=90",
            "data.synthetic.n_stocks=12", "features.horizons=[1]", "loss.horizon_weights={1: 1.0}",
            "train.early_stopping.monitor=val/rank_ic_1d", "train.scheduler.monitor=val/rank_ic_1d",
            "split.val_days=5", "split.holdout_days=5", "features.min_history=5",
            "dataset.lookback=5", "graph.corr_window=10"]
    phases = "train.phases=[{{name: a, epochs: {n}, blocks: {{gat: false, fan: false}}}}]"
    cfg3, cfg1 = _cfg(*tiny, phases.format(n=3)), _cfg(*tiny, phases.format(n=1), "train.seed=7")
    panel = as_panel(load_features(cfg3), cfg3)
    run = tmp_path / "run"
    kw = {"evaluate_holdout": False, "write_report": False}
    train_run(cfg3, panel, run, resume=False, **kw)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_0002.pt", "epoch_0003.pt"]

    res = train_run(cfg1, panel, run, resume=False, **kw)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_0001.pt"]
    assert res.moved_aside and (Path(res.moved_aside) / "checkpoints" / "epoch_0003.pt").exists()
    sha = cfg1.sha256()
    assert ck.load_checkpoint(run / "checkpoints" / "epoch_0001.pt")["config_sha256"] == sha
    assert json.loads((run / "metrics.json").read_text())["config_sha256"] == sha
    assert ck.load_weights(run / "model.safetensors")[1]["config_sha256"] == sha
    assert (run / "config.yaml").read_text() == cfg1.to_yaml()

    before = _snapshot(run)
    with pytest.raises(ck.CheckpointError, match="different config"):
        train_run(cfg3, panel, run, resume=True, **kw)
    assert _snapshot(run) == before  # config.yaml included

    # a corrupt newest checkpoint: resume from the previous valid one and say so
    train_run(cfg3, panel, tmp_path / "b", resume=True, **kw)
    bad = tmp_path / "b" / "checkpoints" / "epoch_0003.pt"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    res = train_run(cfg3, panel, tmp_path / "b", resume=True, **kw)
    assert res.resumed_from.endswith("epoch_0002.pt")
    assert [s["file"] for s in res.skipped_checkpoints] == [str(bad)]
    recorded = json.loads((tmp_path / "b" / "metrics.json").read_text())["skipped_checkpoints"]
    assert recorded[0]["file"] == str(bad) and "truncated" in recorded[0]["reason"]
