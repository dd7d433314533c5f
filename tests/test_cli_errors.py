"""Issue 12 fault 12: one `atft CMD: ...` line instead of a traceback.

Disk full cannot be produced on demand here (no tmpfs), so ENOSPC is injected where the kernel
reports it for a buffered write: ``os.fsync`` of the file (every durable writer in atft --
atomic writes, the quotes store, the registry's file store -- fsyncs before its rename).
Root ignores permission bits, so a read-only run dir is injected as EROFS at temp-file creation.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile

import pytest
import torch

from atft_core import atomic
from atft_core.cli import explain_error, main
from atft_core.train import checkpoint as ck

TINY = ["train.device=cpu", "train.max_train_batches_per_epoch=1", "data.synthetic.n_days=90",
        "data.synthetic.n_stocks=12", "features.horizons=[1]", "loss.horizon_weights={1: 1.0}",
        "train.early_stopping.monitor=val/rank_ic_1d", "train.scheduler.monitor=val/rank_ic_1d",
        "split.val_days=5", "split.holdout_days=5", "features.min_history=5", "dataset.lookback=5",
        "graph.corr_window=10", "train.phases=[{name: a, epochs: 1, blocks: {gat: false, fan: false}}]"]


def _one_line(capsys, prefix: str) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("atft")]
    assert lines and lines[-1].startswith(prefix), err
    assert "Traceback" not in err, err
    return lines[-1]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Relative deployment roots (var/work/graph_store) land in the test's folder, not the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def disk_full(monkeypatch):
    real = os.fsync

    def fsync(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):  # directories' fsync is best effort anyway
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_explain_error_maps_errnos_and_leaves_bugs_alone():
    msg, code = explain_error(OSError(errno.ENOSPC, "No space left on device", "/data/x.parquet"))
    assert code == 1 and msg.startswith("no space left on the device holding /data/x.parquet")
    msg, code = explain_error(OSError(errno.EROFS, "Read-only file system", "/runs/a"))
    assert code == 1 and "cannot write /runs/a" in msg and "read-only" in msg
    assert explain_error(FileNotFoundError(errno.ENOENT, "No such file or directory", "f"))[1] == 2
    assert explain_error(ck.CheckpointError("x.pt: checksum mismatch")) == ("x.pt: checksum mismatch", 2)
    assert explain_error(KeyError("bug")) is None and explain_error(ValueError("bug")) is None


def test_atomic_write_names_the_file_on_disk_full_and_keeps_the_old_one(tmp_path, disk_full):
    target = tmp_path / "metrics.json"
    with pytest.raises(OSError) as info:
        atomic.atomic_write_text(target, "{}")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_atomic_writes_are_readable_unless_told_otherwise(tmp_path):
    """The temp file is 0600 (mkstemp); the result used to keep it: 0644 unless a secret."""
    p = atomic.atomic_write_text(tmp_path / "a.json", "{}")
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
    secret = atomic.atomic_write_text(tmp_path / "token", "s", mode=0o600)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    atomic.atomic_write_text(secret, "s2")  # a rewrite keeps the file's mode
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_config_errors_from_train_are_one_line(capsys):
    for bad, needle in (("train.phases=[]", "at least one phase"),
                        ("train.phases=[{name: a, epochs: 0}]", "0 epochs")):
        assert main(["train", "--config", "test", bad]) == 2
        assert needle in _one_line(capsys, "atft: config error:")


def test_train_disk_full_read_only_and_truncated_checkpoint(tmp_path, capsys, monkeypatch, disk_full):
    run = tmp_path / "run"
    assert main(["train", "--config", "test", "--run-dir", str(run), *TINY]) == 1
    line = _one_line(capsys, "atft train: no space left on the device holding ")
    assert str(run) in line
    monkeypatch.undo()  # disk has space again

    def read_only(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), k.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert main(["train", "--config", "test", "--run-dir", str(tmp_path / "ro"), *TINY]) == 1
    assert "read-only" in _one_line(capsys, "atft train: cannot write ")
    monkeypatch.undo()

    ckpt = run / "checkpoints" / "epoch_0001.pt"
    ck.save_checkpoint(ckpt, {"model": torch.nn.Linear(2, 1).state_dict(), "config_sha256": "x"})
    ckpt.write_bytes(ckpt.read_bytes()[:300])
    assert main(["train", "--config", "test", "--run-dir", str(run), *TINY]) == 2
    line = _one_line(capsys, "atft train: no usable checkpoint")
    assert "epoch_0001.pt" in line and "truncated" in line


def test_evaluate_a_pickle_named_model_safetensors(tmp_path, capsys):
    from atft_core.config import load_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(load_config("test", TINY).to_yaml())
    torch.save({"w": torch.zeros(2)}, run / "model.safetensors")
    assert main(["evaluate", "--run-dir", str(run), "--config", "test", *TINY]) == 2
    assert "model.safetensors is not a readable safetensors file" in _one_line(capsys, "atft evaluate: ")


@pytest.mark.slow
def test_ingest_and_publish_on_a_full_disk(tmp_path, capsys, monkeypatch):
    from atft_core.config import load_config
    from atft_core.data.synthetic import generate_market

    cfg = load_config("test", TINY)
    src = tmp_path / "quotes.parquet"
    generate_market(cfg.data.synthetic, cfg.horizons).quotes.write_parquet(src)
    run = tmp_path / "run"
    assert main(["train", "--config", "test", "--run-dir", str(run), *TINY]) == 0
    capsys.readouterr()

    real = os.fsync

    def fsync(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert main(["ingest", str(src), "--out", str(tmp_path / "store"), "--format", "canonical"]) == 1
    _one_line(capsys, "atft ingest: no space left on ")
    registry = f"file://{tmp_path / 'registry'}"
    rc = main(["registry", "publish", str(run), "--uri", registry])
    assert rc == 1, capsys.readouterr()
    _one_line(capsys, "atft registry publish: no space left on ")


def test_too_few_days_for_the_splits_is_one_line_and_writes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", "test", "--run-dir", str(run), "data.synthetic.n_days=60"]) == 2
    assert "not enough trading days for the splits" in _one_line(capsys, "atft train: ")
    assert not run.exists()
