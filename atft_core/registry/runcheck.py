"""Is a run directory one run? (checked by ``Registry.publish`` before anything is uploaded)

A trainer run directory holds three records of the same training (atft_core.train):
``config.yaml`` (the config), ``metrics.json`` (``config_sha256`` and ``best`` = the epoch whose
weights were kept, with its monitored ``value``) and ``model.safetensors`` (metadata
``config_sha256``, ``epoch``, ``value``, JSON-encoded). A resume refused for another config, or a
fresh start into an old directory, can leave them from different trainings; such a run must not
be published. All three must name the same config hash, and metrics' best epoch/value must be
the weights' epoch/value.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from atft_core.registry.errors import PublishError


def read_weights_metadata(path: Path) -> dict[str, Any]:
    """Safetensors header metadata (values JSON-decoded where possible); PublishError if the
    file is not valid safetensors or holds no tensors. Never unpickles anything."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            raw = f.metadata() or {}
    except (SafetensorError, ValueError, OSError) as err:
        raise PublishError(f"{path} is not a valid safetensors file: {err}") from None
    if not keys:
        raise PublishError(f"{path} holds no tensors")
    meta: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except ValueError:
            meta[k] = v
    return meta


def _short(sha: object) -> str:
    return str(sha)[:12] if sha is not None else "nothing"


def check_run_agrees(run_dir: Path, config_sha: str, metrics: Any,
                     weights_meta: dict[str, Any]) -> None:
    """Raise PublishError (one line) unless config.yaml, metrics.json and the weights agree."""
    if not isinstance(metrics, dict):
        raise PublishError(f"{run_dir}/metrics.json must be a JSON object")
    m_sha = metrics.get("config_sha256")
    w_sha = weights_meta.get("config_sha256")
    if m_sha != config_sha or w_sha != config_sha:
        raise PublishError(
            f"run directory {run_dir} mixes runs: config.yaml hashes to {_short(config_sha)}, "
            f"metrics.json names config {_short(m_sha)}, model.safetensors names config "
            f"{_short(w_sha)}; retrain into a fresh run directory")
    best = metrics.get("best")
    if isinstance(best, dict) and "epoch" in best:
        same_epoch = best.get("epoch") == weights_meta.get("epoch")
        bv, wv = best.get("value"), weights_meta.get("value")
        same_value = (isinstance(bv, int | float) and isinstance(wv, int | float)
                      and math.isclose(bv, wv, rel_tol=1e-9, abs_tol=1e-12))
        if not (same_epoch and same_value):
            raise PublishError(
                f"run directory {run_dir} mixes runs: metrics.json's best is epoch "
                f"{best.get('epoch')} ({bv}), model.safetensors holds epoch "
                f"{weights_meta.get('epoch')} ({wv}); retrain into a fresh run directory")
