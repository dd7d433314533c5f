"""Atomic, self-describing checkpoints that load without unpickling arbitrary objects.

A checkpoint is a ``torch.save`` of a dict holding only tensors, numbers, strings, None and
lists/dicts of those, so :func:`load_checkpoint` can use ``torch.load(weights_only=True)``.
RNG states are converted to that form (:func:`capture_rng` / :func:`restore_rng`).
Best weights are written as safetensors with JSON-able string metadata (which blocks were on).

Every write goes to a temp file in the destination directory, is fsync'ed, renamed over the
target with ``os.replace`` and the directory is fsync'ed, so a kill at any moment leaves either
the old file or the new one, never a torn one.

Integrity (format 2): a checkpoint carries ``content_sha256``, a digest of its whole content
(every tensor's dtype, shape and bytes, every number and string, in a canonical order);
:func:`load_checkpoint` recomputes it, so a flipped byte is an error naming the file, not a
silently different model. :func:`scan_checkpoints` / :func:`latest_checkpoint` skip a bad
checkpoint and fall back to the newest one that verifies, logging which file was skipped and why.
A digest of the content rather than of the file bytes keeps the file a plain ``torch.save`` and
also catches corruption that torch's zip reader does not check.

Determinism: safetensors writes its JSON header from a hash map, so the same weights and
metadata gave different bytes from one save to the next (and a re-publish of the same run
conflicted in the registry). :func:`save_weights` rewrites the header with sorted keys, so equal
inputs give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, safe_open, save

from atft_core.atomic import atomic_write_bytes, atomic_write_text, fsync_dir  # noqa: F401 (re-exported)

CHECKPOINT_FORMAT = 2  # 2: content_sha256 (format 1 had no checksum)
DIGEST_KEY = "content_sha256"
CHECKPOINT_GLOB = "epoch_[0-9][0-9][0-9][0-9].pt"

log = logging.getLogger("atft.train")


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
def _feed(h: Any, obj: Any) -> None:
    """Feed ``obj`` into the hash ``h`` in a canonical, type-tagged order."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, Mapping):
        items = sorted(obj.items(), key=lambda kv: (type(kv[0]).__name__, str(kv[0])))
        h.update(f"D{len(items)}".encode())
        for k, v in items:
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, list | tuple):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, bool) or obj is None:
        h.update(f"B{obj}".encode())
    elif isinstance(obj, int):
        h.update(f"I{obj}".encode())
    elif isinstance(obj, float):
        h.update(f"F{obj.hex()}".encode())
    elif isinstance(obj, str):
        b = obj.encode()
        h.update(f"S{len(b)}:".encode() + b)
    else:  # e.g. torch.dtype in an optimizer state: its repr is stable
        h.update(f"O{type(obj).__name__}:{obj!r}".encode())


def content_digest(state: Mapping[str, Any]) -> str:
    """sha256 over the checkpoint content (every key but :data:`DIGEST_KEY`)."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != DIGEST_KEY})
    return h.hexdigest()


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Atomically save a training checkpoint; raises if any floating tensor is not finite."""
    assert_finite(state.get("model"), "checkpoint (model)")
    assert_finite(state.get("optimizer"), "checkpoint (optimizer)")
    payload = {"format": CHECKPOINT_FORMAT, **state}
    payload[DIGEST_KEY] = content_digest(payload)
    return atomic_write_bytes(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and verify a checkpoint written by :func:`save_checkpoint`.

    ``weights_only=True``: no pickle code runs. Raises :class:`CheckpointError` naming the file
    when it is missing, truncated, not a checkpoint, of another format, or its content digest
    does not match (flipped bytes)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - report which file is bad and why
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"cannot load checkpoint {path} (truncated or not a checkpoint): "
                              f"{first[:160]}") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not an atft checkpoint of format {CHECKPOINT_FORMAT} "
                              f"(found {got!r}); start the run again with --no-resume")
    want = state.get(DIGEST_KEY)
    if not isinstance(want, str) or content_digest(state) != want:
        raise CheckpointError(f"{path}: checksum mismatch (content_sha256); the file is corrupt")
    return state


def checkpoint_path(ckpt_dir: str | Path, global_epoch: int) -> Path:
    return Path(ckpt_dir) / f"epoch_{global_epoch:04d}.pt"


def checkpoint_files(ckpt_dir: str | Path) -> list[Path]:
    """``epoch_NNNN.pt`` files of ``ckpt_dir``, oldest first (temp files are ignored)."""
    d = Path(ckpt_dir)
    return sorted(d.glob(CHECKPOINT_GLOB)) if d.is_dir() else []


@dataclass(frozen=True)
class CheckpointScan:
    """Outcome of :func:`scan_checkpoints`.

    ``newest_valid``: the newest checkpoint that loads and verifies (None if there is none);
    ``skipped``: (file, reason) of every newer one that did not; ``config_sha256`` of the valid one.
    """

    newest_valid: Path | None
    skipped: tuple[tuple[Path, str], ...]
    config_sha256: str | None = None

    @property
    def fell_back(self) -> bool:
        return bool(self.skipped) and self.newest_valid is not None

    def describe(self) -> list[dict[str, str]]:
        return [{"file": str(p), "reason": why} for p, why in self.skipped]


def scan_checkpoints(ckpt_dir: str | Path) -> CheckpointScan:
    """Find the newest checkpoint that verifies, newest first; log each one skipped.

    Raises :class:`CheckpointError` when checkpoints exist but none verifies (resuming would
    silently start over in a dir that holds another state)."""
    skipped: list[tuple[Path, str]] = []
    for path in reversed(checkpoint_files(ckpt_dir)):
        try:
            state = load_checkpoint(path)
        except CheckpointError as err:
            skipped.append((path, str(err)))
            log.warning("checkpoint %s is unusable (%s); trying the previous one", path, err)
            continue
        if skipped:
            log.warning("resuming from %s: the newer checkpoint(s) %s failed verification",
                        path, ", ".join(p.name for p, _ in skipped))
        return CheckpointScan(path, tuple(skipped), str(state.get("config_sha256") or "") or None)
    if skipped:
        raise CheckpointError(
            f"no usable checkpoint in {ckpt_dir}: " + "; ".join(why for _, why in skipped)
            + " -- start the run again with --no-resume (the old run dir is moved aside)")
    return CheckpointScan(None, ())


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The newest ``epoch_NNNN.pt`` in ``ckpt_dir`` that verifies (see :func:`scan_checkpoints`)."""
    return scan_checkpoints(ckpt_dir).newest_valid


def prune_checkpoints(ckpt_dir: str | Path, keep_last: int) -> None:
    found = checkpoint_files(ckpt_dir)
    for old in found[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)


# --------------------------------------------------------------------------- best weights
def canonical_safetensors(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header keys sorted (byte-deterministic).

    Layout: 8-byte little-endian header length N, N bytes of JSON (padded with spaces to a
    multiple of 8), then the tensor data; offsets in the header are relative to the data, so the
    header can be re-serialised without touching the data."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blob[8 + n:]


def save_weights(path: str | Path, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Path:
    """Atomically write model weights as safetensors; metadata values are JSON-encoded strings.

    Equal weights and metadata give byte-identical files (:func:`canonical_safetensors`)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in sorted(state_dict.items())}
    assert_finite(tensors, f"weights {path}")
    meta = {k: json.dumps(metadata[k], sort_keys=True) for k in sorted(metadata)}
    return atomic_write_bytes(path, canonical_safetensors(save(tensors, metadata=meta)))


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, metadata) from a safetensors file written by :func:`save_weights`.

    Raises :class:`CheckpointError` naming the file when it is missing or not a readable
    safetensors file (a pickle renamed to ``.safetensors``, a truncated download)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"weights not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata() or {}
        state = load_file(str(path))
    except Exception as err:  # noqa: BLE001 - SafetensorError, OSError, ...: name the file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated, or another "
                              f"format under this name): {first[:160]}") from None
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    return state, meta
