"""Checkpoints: atomic writes, weights_only loading, RNG round trip, finiteness, safetensors."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch

from atft_core.train import checkpoint as ck


def test_atomic_write_keeps_old_file_when_replace_fails(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    ck.atomic_write_bytes(target, b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        ck.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]  # no temp file left


def test_atomic_write_failing_writer_leaves_nothing(tmp_path):
    def bad(fh):
        fh.write(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        ck.atomic_write_bytes(tmp_path / "x.pt", bad)
    assert list(tmp_path.iterdir()) == []


def test_rng_roundtrip_restores_all_generators():
    torch.manual_seed(1)
    np.random.seed(2)  # noqa: NPY002 - the global RNG is what the trainer saves
    random.seed(3)
    torch.rand(3), np.random.rand(2), random.random()  # noqa: NPY002
    state = ck.capture_rng()
    a = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)])  # noqa: NPY002
    torch.rand(7), np.random.rand(7), random.random()  # noqa: NPY002 - move them on
    ck.restore_rng(state)
    b = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)])  # noqa: NPY002
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def _state(model, opt):
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": ck.capture_rng(),
            "phase_index": 1, "best_value": float("-inf"), "history": [{"a": 1.0, "b": None}],
            "config_yaml": "x: 1\n"}


def test_checkpoint_roundtrip_with_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = ck.save_checkpoint(tmp_path / "epoch_0001.pt", _state(model, opt))
    loaded = ck.load_checkpoint(path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded["model"][k], v)
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters())
    opt2.load_state_dict(loaded["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert loaded["history"] == [{"a": 1.0, "b": None}] and loaded["best_value"] == float("-inf")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_load_refuses_arbitrary_pickles(tmp_path):
    path = tmp_path / "epoch_0001.pt"
    torch.save({"format": ck.CHECKPOINT_FORMAT, "x": Evil()}, path)
    with pytest.raises(ck.CheckpointError, match="cannot load"):
        ck.load_checkpoint(path)
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"format": 1}))
    with pytest.raises(ck.CheckpointError):
        ck.load_checkpoint(plain)


def test_wrong_format_and_missing_are_clear_errors(tmp_path):
    torch.save({"format": 99}, tmp_path / "a.pt")
    with pytest.raises(ck.CheckpointError, match="format"):
        ck.load_checkpoint(tmp_path / "a.pt")
    with pytest.raises(ck.CheckpointError, match="not found"):
        ck.load_checkpoint(tmp_path / "none.pt")


def test_non_finite_state_is_never_saved(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(ck.CheckpointError, match="weight"):
        ck.save_checkpoint(tmp_path / "epoch_0001.pt", _state(model, opt))
    with pytest.raises(ck.CheckpointError):
        ck.save_weights(tmp_path / "model.safetensors", model.state_dict(), {})
    assert list(tmp_path.iterdir()) == []


def test_weights_roundtrip_with_metadata(tmp_path):
    model = torch.nn.Linear(3, 2)
    meta = {"blocks": {"gat": False, "fan": True}, "epoch": 3, "phase": "graph"}
    ck.save_weights(tmp_path / "model.safetensors", model.state_dict(), meta)
    state, got = ck.load_weights(tmp_path / "model.safetensors")
    assert got == meta
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v)


def test_latest_and_prune(tmp_path):
    for e in (1, 2, 10, 3):
        (tmp_path / f"epoch_{e:04d}.pt").write_bytes(b"x")
    (tmp_path / ".epoch_0011.pt.abc.tmp").write_bytes(b"partial")
    assert ck.latest_checkpoint(tmp_path).name == "epoch_0010.pt"
    ck.prune_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pt")) == ["epoch_0003.pt", "epoch_0010.pt"]
    assert ck.latest_checkpoint(tmp_path / "missing") is None
