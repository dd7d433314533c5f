"""Atomic, self-describing checkpoints that load without unpickling arbitrary objects.

A checkpoint is a ``torch.save`` of a dict holding only tensors, numbers, strings, None and
lists/dicts of those, so :func:`load_checkpoint` can use ``torch.load(weights_only=True)``.
RNG states are converted to that form (:func:`capture_rng` / :func:`restore_rng`).
Best weights are written as safetensors with JSON-able string metadata (which blocks were on).

Every write goes to a temp file in the destination directory, is fsync'ed, renamed over the
target with ``os.replace`` and the directory is fsync'ed, so a kill at any moment leaves either
the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, safe_open, save

from atft_core.atomic import atomic_write_bytes, atomic_write_text, fsync_dir  # noqa: F401 (re-exported)

CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, of an unknown format or not finite."""


# --------------------------------------------------------------------------- finiteness
def nonfinite_tensors(obj: Any, prefix: str = "") -> list[str]:
    """Names of floating tensors (nested in dicts/lists) holding NaN or Inf."""
    bad: list[str] = []
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
            bad.append(prefix or "<tensor>")
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            bad += nonfinite_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            bad += nonfinite_tensors(v, f"{prefix}[{i}]")
    return bad


def assert_finite(obj: Any, what: str) -> None:
    bad = nonfinite_tensors(obj)
    if bad:
        raise CheckpointError(f"refusing to save {what}: non-finite values in {bad[:5]}")


# --------------------------------------------------------------------------- RNG states
def capture_rng() -> dict[str, Any]:
    """torch / numpy / python RNG states as tensors and lists (weights_only-loadable)."""
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global RNG is what we save
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": int(py_version), "internal": list(py_internal), "gauss": py_gauss},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Atomically save a training checkpoint; raises if any floating tensor is not finite."""
    assert_finite(state.get("model"), "checkpoint (model)")
    assert_finite(state.get("optimizer"), "checkpoint (optimizer)")
    payload = {"format": CHECKPOINT_FORMAT, **state}
    return atomic_write_bytes(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no pickle code)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - report which file is bad and why
        raise CheckpointError(f"cannot load checkpoint {path}: {err}") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an atft checkpoint of format {CHECKPOINT_FORMAT}")
    return state


def checkpoint_path(ckpt_dir: str | Path, global_epoch: int) -> Path:
    return Path(ckpt_dir) / f"epoch_{global_epoch:04d}.pt"


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The newest ``epoch_NNNN.pt`` in ``ckpt_dir`` (temp files are ignored)."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return None
    found = sorted(d.glob("epoch_[0-9][0-9][0-9][0-9].pt"))
    return found[-1] if found else None


def prune_checkpoints(ckpt_dir: str | Path, keep_last: int) -> None:
    found = sorted(Path(ckpt_dir).glob("epoch_[0-9][0-9][0-9][0-9].pt"))
    for old in found[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)


# --------------------------------------------------------------------------- best weights
def save_weights(path: str | Path, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Path:
    """Atomically write model weights as safetensors; metadata values are JSON-encoded strings."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    assert_finite(tensors, f"weights {path}")
    meta = {k: json.dumps(v) for k, v in metadata.items()}
    return atomic_write_bytes(path, save(tensors, metadata=meta))


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, metadata) from a safetensors file written by :func:`save_weights`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"weights not found: {path}")
    with safe_open(str(path), framework="pt") as fh:
        raw = fh.metadata() or {}
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    return load_file(str(path)), meta
