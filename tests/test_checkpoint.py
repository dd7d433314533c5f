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


def _tiny_state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    return {"model": model.state_dict(), "config_sha256": "c" * 64, "history": [], "best_value": 0.5}


def test_latest_and_prune(tmp_path):
    for e in (1, 2, 10, 3):
        ck.save_checkpoint(tmp_path / f"epoch_{e:04d}.pt", _tiny_state(e))
    (tmp_path / ".epoch_0011.pt.abc.tmp").write_bytes(b"partial")
    assert ck.latest_checkpoint(tmp_path).name == "epoch_0010.pt"
    ck.prune_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pt")) == ["epoch_0003.pt", "epoch_0010.pt"]
    assert ck.latest_checkpoint(tmp_path / "missing") is None


# --------------------------------------------------------------------------- issue 12, fault 8
def _flip_tensor_byte(path, tensor: torch.Tensor) -> None:
    """Flip one byte inside ``tensor``'s stored data (torch stores zip entries uncompressed)."""
    blob = bytearray(path.read_bytes())
    raw = tensor.contiguous().view(torch.uint8).numpy().tobytes()
    at = blob.find(raw)
    assert at > 0, "tensor bytes not found in the file"
    blob[at + len(raw) // 2] ^= 0x40
    path.write_bytes(bytes(blob))


def test_flipped_byte_in_checkpoint_is_detected_and_named(tmp_path):
    state = _tiny_state(1)
    path = ck.save_checkpoint(tmp_path / "epoch_0001.pt", state)
    ck.load_checkpoint(path)  # verifies
    _flip_tensor_byte(path, state["model"]["weight"])
    # torch itself still loads it: the flip is only visible to the checksum
    assert torch.load(path, weights_only=True)["format"] == ck.CHECKPOINT_FORMAT
    with pytest.raises(ck.CheckpointError, match=r"epoch_0001\.pt: checksum mismatch"):
        ck.load_checkpoint(path)


def test_corrupt_newest_checkpoint_falls_back_to_previous_valid(tmp_path, caplog):
    states = {e: _tiny_state(e) for e in (1, 2, 3)}
    for e, st in states.items():
        ck.save_checkpoint(tmp_path / f"epoch_{e:04d}.pt", st)
    _flip_tensor_byte(tmp_path / "epoch_0003.pt", states[3]["model"]["bias"])
    (tmp_path / "epoch_0002.pt").write_bytes((tmp_path / "epoch_0002.pt").read_bytes()[:100])  # truncated
    with caplog.at_level("WARNING", logger="atft.train"):
        scan = ck.scan_checkpoints(tmp_path)
    assert scan.newest_valid.name == "epoch_0001.pt" and scan.fell_back
    assert [p.name for p, _ in scan.skipped] == ["epoch_0003.pt", "epoch_0002.pt"]
    assert "checksum mismatch" in scan.skipped[0][1] and "truncated" in scan.skipped[1][1]
    assert scan.config_sha256 == "c" * 64
    assert "epoch_0003.pt" in caplog.text and "epoch_0002.pt" in caplog.text
    assert ck.latest_checkpoint(tmp_path).name == "epoch_0001.pt"
    loaded = ck.load_checkpoint(scan.newest_valid)
    assert torch.equal(loaded["model"]["weight"], states[1]["model"]["weight"])


def test_no_valid_checkpoint_is_an_error_not_a_silent_fresh_start(tmp_path):
    ck.save_checkpoint(tmp_path / "epoch_0001.pt", _tiny_state())
    (tmp_path / "epoch_0001.pt").write_bytes(b"\x00" * 64)
    with pytest.raises(ck.CheckpointError, match="no usable checkpoint.*epoch_0001.pt"):
        ck.latest_checkpoint(tmp_path)


def test_checkpoint_digest_covers_every_kind_of_value():
    base = {"a": torch.zeros(3), "b": [1, 2.5, None, "x", True], "c": {0: torch.ones(2, dtype=torch.bfloat16)}}
    d0 = ck.content_digest(base)
    for changed in ({**base, "a": torch.tensor([0.0, 0.0, 1e-30])},
                    {**base, "a": torch.zeros(3, dtype=torch.float64)},
                    {**base, "a": torch.zeros(1, 3)},
                    {**base, "b": [1, 2.5, None, "y", True]},
                    {**base, "b": [1, 2.5000001, None, "x", True]},
                    {**base, "b": [1, 2.5, None, "x", 1]},
                    {**base, "c": {1: torch.ones(2, dtype=torch.bfloat16)}}):
        assert ck.content_digest(changed) != d0
    assert ck.content_digest(dict(reversed(list(base.items())))) == d0  # key order is irrelevant


# --------------------------------------------------------------------------- issue 12, fault 10
def test_identical_weights_give_byte_identical_safetensors(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    meta = {"phase": "graph", "phase_index": 1, "epoch": 3, "monitor": "val/rank_ic_5d",
            "value": 0.12, "blocks": {"gat": True, "fan": False, "attention": True},
            "config_sha256": "ab" * 32, "horizons": [1, 5, 10, 20]}
    blobs = set()
    for i in range(12):  # safetensors' header map order varied from one save to the next
        ck.save_weights(tmp_path / f"m{i}.safetensors", model.state_dict(), dict(reversed(meta.items()))
                        if i % 2 else meta)
        blobs.add((tmp_path / f"m{i}.safetensors").read_bytes())
    assert len(blobs) == 1
    state, got = ck.load_weights(tmp_path / "m0.safetensors")
    assert got == meta
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v)
    blob = blobs.pop()
    assert int.from_bytes(blob[:8], "little") % 8 == 0  # header stays 8-byte aligned


# --------------------------------------------------------------------------- issue 12, fault 12
def test_pickle_named_safetensors_and_truncated_weights_are_clear_errors(tmp_path):
    fake = tmp_path / "model.safetensors"
    torch.save({"weight": torch.zeros(2)}, fake)  # a pickle/zip under the safetensors name
    with pytest.raises(ck.CheckpointError, match="model.safetensors is not a readable safetensors"):
        ck.load_weights(fake)
    real = tmp_path / "real.safetensors"
    ck.save_weights(real, torch.nn.Linear(3, 2).state_dict(), {"epoch": 1})
    real.write_bytes(real.read_bytes()[:-10])
    with pytest.raises(ck.CheckpointError, match="real.safetensors is not a readable safetensors"):
        ck.load_weights(real)
