"""The ``atft_score`` DAG's task functions (one call per task; nothing here imports Airflow).

``ctx`` is the dict the DAGs build (``plugins/atft_airflow_utils.task_ctx``); the config, work dir
and data source come from :mod:`atft_core.pipeline` exactly as for ``atft_retrain``.

Decisions:
* **Shadow = newest gate-rejected candidate, published.** The nightly pipeline publishes only
  promoted runs and keeps a rejected candidate's run dir only on the training machine. Each retrain
  run's ``summary.json`` already records ``decision``, ``run_id`` and ``run_dir``;
  :func:`update_shadow` takes the newest rejected one (run day <= D) and publishes it to the
  registry like any run (immutable, checksummed; the registry refuses a mixed run dir) under the
  alias ``shadow``. Shadow scoring then goes through the same verified load as the champion, works
  on workers that do not share the training disk, and the alias history records every shadow
  with its gate reasons. The ``champion`` alias is never touched; shadow signals live under
  ``signals/{D}/shadow/`` and are never served.
* Drift and the signal gauges are pushed by the champion's scoring task; live metrics by
  ``monitor`` (history at ``{work_root}/atft_score/live_history.parquet``: one file across days).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _cfg_day(ctx: dict[str, Any]):
    from atft_core import pipeline

    cfg = pipeline.task_config(ctx)
    end = cfg.data.end or ctx["as_of"]
    from atft_core import calendar

    return cfg, calendar.latest_expected_trading_day(end)


def _pusher(ctx: dict[str, Any], cfg: Any, task_id: str):
    from atft_core.observability import MetricsPusher

    return MetricsPusher(cfg.metrics, job=cfg.metrics.job, dag_id=ctx.get("dag_id"), task_id=task_id)


class NoChampionError(RuntimeError):
    """No run behind the alias: nothing to serve. Not transient, so the task should not retry."""


def score(ctx: dict[str, Any], fresh: dict[str, Any], role: str = "champion") -> dict[str, Any]:
    """Score day D with the ``role`` alias (verified load) and publish the signal. The champion's
    task also pushes drift and the signal gauges. A shadow alias that is not set: skipped."""
    from atft_core.registry import NotFoundError, Registry
    from atft_core.serving.predict import predict_day
    from atft_core.serving.signals import publish_signal

    cfg, day = _cfg_day(ctx)
    registry = Registry.from_config(cfg)
    if role == "shadow" and registry.get_alias("shadow") is None:
        return {"role": role, "skipped": "no shadow (no rejected candidate published yet)"}
    try:
        signal = predict_day(registry, day, fresh["source"], alias=role)
    except NotFoundError as err:
        raise NoChampionError(f"atft_score: {err}") from None
    rec = publish_signal(registry, signal, role=role)
    out = {"role": role, "day": str(day), "run_id": rec.run_id, "uri": rec.uri,
           "sha256": rec.sha256, "rows": rec.rows, "already_published": rec.already_published}
    if role == "champion":
        from atft_core.serving.drift import day_drift

        drift = day_drift(signal)
        pusher = _pusher(ctx, cfg, "score_champion")
        pusher.signal_published(day)
        if "feature_psi" in drift:
            pusher.drift(drift["feature_psi"],
                         {k.removeprefix("pred_"): v for k, v in drift["prediction_psi"].items()})
        out["drift"] = drift
    return out


def update_shadow(ctx: dict[str, Any]) -> dict[str, Any]:
    """Publish the newest gate-rejected candidate (run day <= D) and point ``shadow`` at it."""
    from atft_core.registry import Registry
    from atft_core.serving.shadow import newest_rejected, register_shadow

    cfg, day = _cfg_day(ctx)
    found = newest_rejected(Path(cfg.work_root) / "atft_retrain", day)
    if found is None:
        return {"shadow": None, "note": "no rejected candidate on or before this day"}
    rec = register_shadow(Registry.from_config(cfg), found, actor=str(ctx.get("run_id") or "atft_score"))
    return {"shadow": rec["run_id"], "moved": rec["moved"]}


def monitor(ctx: dict[str, Any], fresh: dict[str, Any]) -> dict[str, Any]:
    """Live metrics of past champion/shadow signals whose labels are known by D."""
    from atft_core.registry import Registry
    from atft_core.serving.monitor import monitor as run_monitor

    cfg, day = _cfg_day(ctx)
    history = Path(cfg.work_root) / "atft_score" / "live_history.parquet"
    out = run_monitor(Registry.from_config(cfg), fresh["source"], day, cfg, history,
                      pusher=_pusher(ctx, cfg, "monitor"))
    out["summary"] = [r for r in out["summary"] if r["window"] in ("20d", "cum")]
    return json.loads(json.dumps(out, default=str))


