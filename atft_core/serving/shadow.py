"""The shadow model: the newest candidate the gate rejected, published under the alias
``shadow`` so it is scored through the registry's verified load like the champion (see
:mod:`atft_core.serving.tasks` for why). It is never served: its signals go to
``signals/{D}/shadow/`` and nothing moves ``champion``."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def newest_rejected(retrain_work_root: str | Path, day: dt.date) -> dict[str, Any] | None:
    """The newest ``summary.json`` under the retrain DAG's work root with decision ``reject``,
    a run id dated on or before ``day`` (``YYYYMMDD-...``) and its run dir still present."""
    best, best_key = None, None
    root = Path(retrain_work_root)
    if not root.is_dir():
        return None
    for path in root.rglob("summary.json"):
        try:
            s = json.loads(path.read_text())
            rid = str(s["run_id"])
            run_day = dt.date(int(rid[:4]), int(rid[4:6]), int(rid[6:8]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a retrain summary
        if s.get("decision") != "reject" or run_day > day:
            continue
        if not (Path(s.get("run_dir", "")) / "model.safetensors").is_file():
            continue
        key = (run_day, path.stat().st_mtime)
        if best_key is None or key > best_key:
            best, best_key = s | {"summary_path": str(path)}, key
    return best


def register_shadow(registry: Any, summary: dict[str, Any], actor: str) -> dict[str, Any]:
    """Publish the rejected run (idempotent) and point ``shadow`` at it unless it already does."""
    run_id = str(summary["run_id"])
    registry.publish(summary["run_dir"], run_id)
    cur = registry.get_alias("shadow")
    if cur is not None and cur.run_id == run_id:
        return {"run_id": run_id, "moved": False}
    reasons = "; ".join(summary.get("reasons") or []) or "no reasons recorded"
    registry.promote(run_id, alias="shadow", reason=f"gate rejected: {reasons}"[:500], actor=actor,
                     expect=cur.run_id if cur else None)
    log.info("shadow -> %s (was %s)", run_id, cur.run_id if cur else None)
    return {"run_id": run_id, "moved": True}
