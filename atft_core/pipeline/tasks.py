"""Task-level functions: every Airflow task is a thin call into exactly one of these.

Each takes ``ctx`` (the plain dict the DAG builds from the Airflow context, see
:mod:`atft_core.pipeline.run_context`), builds the :class:`RunContext` once, and returns a small
JSON-able dict for XCom: **references** (paths, run ids, URIs) and headline facts, never a second
copy of a record that is on disk. Nothing here imports Airflow.

Decisions (SPEC is silent):
* The data window ends at ``data.end`` when a manual run sets it, else at the latest trading day
  expected for the run's day. With no ``data.source`` the synthetic market is generated to end
  there, into the run's own work dir, so the embedded demo is always "fresh".
* **One evaluation path**: training returns its weights and validation numbers only;
  :func:`evaluate_holdout` scores candidate and champion with one function
  (:func:`score_on_holdout`) on the same holdout dates and writes ``evaluation.json``; the gate,
  the publish reason and the summary read that file.
* Only a promoted candidate is published: the registry holds models that were champions once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

from atft_core import calendar
from atft_core.atomic import atomic_write_text
from atft_core.pipeline.run_context import RunContext

log = logging.getLogger(__name__)


class DataNotFresh(RuntimeError):
    """The latest expected trading day is not in the data yet (the sensor pokes again later)."""


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str))


def _read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def _source(rc: RunContext) -> str:
    return str(rc.work_dir / "raw") if rc.config.data.source is None else rc.config.data.source


# --------------------------------------------------------------------------- tasks
def validate_conf(ctx: dict[str, Any]) -> dict[str, Any]:
    """First task: the whole conf (Params + dotted overrides) -> typed config, before any work.

    Raises :class:`~atft_core.pipeline.run_context.RunConfError` naming the key (the DAG fails
    the run at once, without retries). Writes the run's identity and resolved config."""
    rc = RunContext.build(ctx)
    wd = rc.ensure_work_dir()
    atomic_write_text(wd / "config.yaml", rc.config.to_yaml())
    _write_json(wd / "run_context.json", rc.record())
    return {"work_dir": str(wd), "identity": rc.identity, "training_run_id": rc.training_run_id,
            "config": rc.params.get("config") or "default", "data_end": str(rc.data_end)}


AUTOMATIC_RUN_TYPES = ("scheduled", "asset_triggered")


def day_already_retrained(ctx: dict[str, Any]) -> dict[str, Any] | None:
    """For an automatic run (the 18:00 timetable or the quotes-store Asset event): the record of
    an earlier run that completed this trading day's retrain with the same model identity, else
    None. Why: ``AssetOrTimeSchedule`` fires twice on a normal day (the feed lands at ~17:35, the
    timetable at 18:00); ``max_active_runs=1`` queues the second behind the first, which then
    finds the day done and skips instead of training and gating the same day again. A run that
    failed leaves no record, so the next trigger retrains. Manual and backfill runs never skip."""
    rc = RunContext.build(ctx)
    if rc.run_type not in AUTOMATIC_RUN_TYPES or not rc.day_marker.is_file():
        return None
    try:
        return _read_json(rc.day_marker)
    except ValueError:  # a torn or foreign file is not a completed run: retrain
        log.warning("ignoring unreadable day marker %s", rc.day_marker)
        return None


def check_fresh_data(ctx: dict[str, Any]) -> dict[str, Any]:
    """Locate the raw quotes for this run and check the latest expected day is present.

    Synthetic (no ``data.source``): generate the market ending at the expected day into the
    run's work dir (idempotent: an existing store of this run is reused).
    """
    import polars as pl

    from atft_core.data.store import scan_store, write_store

    rc = RunContext.build(ctx)
    cfg, end, wd = rc.config, rc.data_end, rc.ensure_work_dir()
    if cfg.data.source is None and not (wd / "raw").exists():
        from atft_core.data.synthetic import generate_market

        syn = cfg.data.synthetic
        start = calendar.add_trading_days(end, -(syn.n_days - 1))
        market = generate_market(syn.model_copy(update={"start": start.isoformat()}), cfg.horizons)
        market.oracle.write_parquet(wd / "oracle.parquet")
        write_store(market.quotes, wd / "raw")
    source = _source(rc)
    lf = scan_store(source, start=cfg.data.start, end=end.isoformat())
    stats = lf.select(pl.len().alias("rows"), pl.col("Date").max().alias("latest")).collect()
    rows, latest = int(stats["rows"][0]), stats["latest"][0]
    if rows == 0 or latest is None or latest < end:
        raise DataNotFresh(f"data at {source} ends at {latest}; the latest expected trading day is {end}")
    return {"source": source, "rows": rows, "latest_day": str(latest), "expected_day": str(end)}


def validate_data(ctx: dict[str, Any], fresh: dict[str, Any] | None = None) -> dict[str, Any]:
    """Great Expectations suite over the run's quotes; raises on failure (nothing runs on)."""
    from atft_core.data.store import is_partitioned_store, read_quotes
    from atft_core.validation import DataValidationError, validate_quotes

    rc = RunContext.build(ctx)
    wd, end = rc.ensure_work_dir(), rc.data_end
    source = (fresh or {}).get("source") or _source(rc)
    # a day-partitioned store is judged as it is read: split-adjusted (a split is not a bad tick)
    data = read_quotes(source, start=rc.config.data.start, end=end) if is_partitioned_store(source) else source
    pusher = rc.pusher("validate")
    try:
        report = validate_quotes(data, rc.config.validation, as_of=end, docs_dir=wd / "validation",
                                 start=rc.config.data.start, end=end)
    except DataValidationError:  # unreadable input: still a failed validation stage
        pusher.data_validation(success=False, rows=0, latest_trading_day=None, bad_ticks=0)
        raise
    _write_json(wd / "validation.json", report.to_dict())
    report.bad_ticks.write_parquet(wd / "bad_ticks.parquet")
    pusher.data_validation(
        success=report.success, rows=report.rows, latest_trading_day=report.last_date,
        bad_ticks=report.bad_ticks.height, codes=report.codes,
        failed_expectations=len(report.failed), seconds=report.seconds,
    )
    if not report.success:
        raise DataValidationError(report)
    return {"success": True, "rows": report.rows, "source": source,
            "bad_ticks": report.bad_ticks.height, "warnings": len(report.warnings),
            "validation_path": str(wd / "validation.json"),
            "data_docs": str(report.data_docs) if report.data_docs else None}


def build_features(ctx: dict[str, Any], validated: dict[str, Any] | None = None) -> dict[str, Any]:
    """Point-in-time features + executable targets for the window, written atomically."""
    import os

    import polars as pl

    from atft_core import features
    from atft_core.data.store import scan_store

    rc = RunContext.build(ctx)
    wd = rc.ensure_work_dir()
    source = (validated or {}).get("source") or _source(rc)
    t0 = time.perf_counter()
    quotes = scan_store(source, start=rc.config.data.start, end=rc.data_end.isoformat())
    bad = wd / "bad_ticks.parquet"
    mask = pl.read_parquet(bad).select("Date", "Code") if bad.exists() else None
    frame = features.build_features(quotes, rc.config, mask=mask)
    out, tmp = wd / "features.parquet", wd / "features.parquet.tmp"
    frame.write_parquet(tmp, compression="zstd")
    os.replace(tmp, out)
    seconds = time.perf_counter() - t0
    rc.pusher("features").features(rows=frame.height, seconds=seconds, columns=len(features.feature_columns(rc.config)))
    return {"features_path": str(out), "rows": frame.height, "seconds": round(seconds, 3)}


def train_candidate(ctx: dict[str, Any], feats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Phased trainer on the run's features; a retry resumes this run's own checkpoint.

    Returns references to the weights and their validation metrics (``metrics.json``); the
    holdout is scored once, by :func:`evaluate_holdout`."""
    import polars as pl

    from atft_core.graph_store import store_dir
    from atft_core.train.api import train_run

    rc = RunContext.build(ctx)
    features_path = (feats or {}).get("features_path") or rc.work_dir / "features.parquet"
    graphs = store_dir(rc.config)  # day graphs of earlier nights are read, only new days built
    pusher = rc.pusher("train")
    nproc = rc.config.train.nproc
    from atft_core.train import ddp

    t0 = time.perf_counter()
    try:
        if nproc > 1:  # torch.distributed on this worker (gloo on CPU, NCCL with a GPU per rank)
            result = ddp.launch_train(rc.training_config, rc.run_dir, nproc, resume=True,
                                      features_path=features_path,
                                      hook_factory=functools.partial(_rank0_epoch_hook, rc),
                                      evaluate_holdout=False, graph_store=graphs)
        else:
            result = ddp.run_summary(train_run(
                rc.training_config, pl.read_parquet(features_path), rc.run_dir, resume=True,
                on_epoch_end=epoch_metrics_hook(pusher, rc.config.horizons), evaluate_holdout=False,
                graph_store=graphs))
    except Exception:
        pusher.stage("train", success=False, seconds=time.perf_counter() - t0)
        raise
    pusher.stage("train", success=True, seconds=time.perf_counter() - t0)
    # references + the monitor's best value; the full val metrics are in metrics.json
    best_value = float(result["best_value"])
    return {"run_id": rc.training_run_id, "run_dir": str(rc.run_dir), "nproc": nproc,
            "weights_path": str(result["weights_path"]), "metrics_path": str(result["metrics_path"]),
            "best_value": best_value if math.isfinite(best_value) else None,
            "best": _headline(result["best_record"]),
            "nan_steps": result["nan_steps"], "resumed_from": result["resumed_from"],
            "train_seconds": round(result["train_seconds"], 1)}


def _rank0_epoch_hook(rc: RunContext, cfg: Any):
    """``hook_factory`` for DDP: rank 0 (a spawned process) builds the live-metrics hook from the
    pickled run context (closures do not travel to spawned workers)."""
    return epoch_metrics_hook(rc.pusher("train"), rc.config.horizons)


def epoch_metrics_hook(pusher, horizons: tuple[int, ...]):
    """Trainer epoch record (metrics.jsonl keys) -> ``MetricsPusher.train_epoch`` (live dashboard).

    ``val_gap_ratio`` = |val loss - train loss| / |train loss| (gogooku3's overfit signal, < 0.2).
    """

    def hook(rec: dict[str, Any]) -> None:
        tr, va = rec.get("train/loss"), rec.get("val/loss")
        gap = abs(va - tr) / abs(tr) if tr and va is not None and math.isfinite(tr * va) else float("nan")
        pusher.train_epoch(
            epoch=int(rec["epoch"]) + 1, phase=int(rec["phase_index"]),
            samples_per_second=_finite(rec.get("samples_per_s")),
            val_rank_ic={h: _finite(rec.get(f"val/rank_ic_{h}d")) for h in horizons},
            grad_norm=_finite(rec.get("grad_norm")), val_gap_ratio=gap,
            nan_steps_total=int(rec.get("nan_steps_total", 0)),
            train_loss=_finite(tr), val_loss=_finite(va), learning_rate=_finite(rec.get("lr")),
            # measured by atft_core.train.gpu_stats; the GPU entries exist on CUDA runs only
            data_wait_ratio=_optional(rec.get("data_wait_ratio")),
            gpu_util=_optional(rec.get("gpu_utilization_ratio")),
            gpu_mem_bytes=_optional(rec.get("gpu_memory_bytes")),
        )

    return hook


def _headline(m: dict[str, Any] | None) -> dict[str, Any]:
    """The scalar entries of a metrics dict (drops the daily series)."""
    if not m:
        return {}
    return {k: v for k, v in m.items() if not isinstance(v, list | dict)}


def score_on_holdout(run_dir: str | Path, frame: Any, rc: RunContext,
                     graph_store: str | Path | None = None) -> dict[str, Any]:
    """THE holdout scoring of a model (candidate, champion of either family): the run's model on
    this run's holdout dates of ``frame``; day graphs from ``graph_store`` (default: the
    deployment's, :func:`atft_core.graph_store.store_dir`)."""
    from atft_core.baselines import evaluate_ridge_run, run_family
    from atft_core.graph_store import store_dir
    from atft_core.train.api import evaluate_run_dir

    if run_family(run_dir) == "ridge":  # a ridge promoted by gate.promote_baseline_if_better
        return evaluate_ridge_run(run_dir, frame, split_cfg=rc.config)
    return evaluate_run_dir(run_dir, frame, window="holdout", split_cfg=rc.config,
                            graph_store=graph_store or store_dir(rc.config))


def score_ladder(frame: Any, rc: RunContext, run_id: str) -> dict[str, Any] | None:
    """The baseline ladder on the candidate's own train rows and the same holdout (issue 13);
    the fitted ridge is written to ``{work_dir}/ridge-{run_id}`` (publishable as a fallback).
    None when neither the ladder rule nor the fallback is configured."""
    from atft_core.baselines import candidate_ladder

    g = rc.config.gate
    if not (g.baseline_rule or g.promote_baseline_if_better):
        return None
    ridge_dir = rc.ensure_work_dir() / f"ridge-{run_id}"
    if ridge_dir.exists():  # a retry of this task: our own earlier fit, refitted identically
        shutil.rmtree(ridge_dir)
    return candidate_ladder(frame, rc.config, ridge_dir)


def evaluate_holdout(ctx: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
    """Candidate and current champion on the SAME holdout window -> ``evaluation.json``."""
    import polars as pl

    from atft_core.registry import Registry

    rc = RunContext.build(ctx)
    wd = rc.ensure_work_dir()
    frame = pl.read_parquet(wd / "features.parquet")
    candidate = score_on_holdout(trained["run_dir"], frame, rc)
    champion, champion_id, note = None, None, None
    registry = Registry.from_config(rc.config)
    current = registry.get_alias("champion")
    if current is not None:
        champion_id = current.run_id
        dest = wd / f"champion-{champion_id}"
        if dest.exists():  # a retry of this task: fetch again, verified
            shutil.rmtree(dest)
        local = registry.load_champion(dest=dest)  # alias -> manifest -> verified checksums
        try:
            champion = score_on_holdout(local.path, frame, rc)
        except ValueError as err:  # e.g. a feature set the champion was not trained on
            note = f"champion {champion_id} cannot be evaluated on this data: {err}"
            log.warning(note)
    ladder = score_ladder(frame, rc, trained["run_id"])
    path = wd / "evaluation.json"
    _write_json(path, {"candidate_run_id": trained["run_id"], "candidate": candidate,
                       "champion": champion, "champion_run_id": champion_id, "note": note,
                       "ladder": ladder["evaluations"] if ladder else None,
                       "ladder_summary": ladder["summary"] if ladder else None,
                       "ridge_run_dir": ladder["ridge_run_dir"] if ladder else None})
    return {"evaluation_path": str(path), "candidate_run_id": trained["run_id"],
            "champion_run_id": champion_id, "note": note}


def gate(ctx: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
    """Promotion decision (SPEC 7) written as JSON in the run's work dir; pushes gate metrics."""
    from atft_core.data.store import data_source_kind
    from atft_core.gate import decide, refuse_synthetic

    rc = RunContext.build(ctx)
    wd = rc.ensure_work_dir()
    full = _read_json(evaluation["evaluation_path"])
    decision = decide(full["candidate"], full["champion"], rc.config.gate,
                      force=bool(rc.params.get("force")), actor=rc.params.get("actor") or rc.run_id,
                      champion_unavailable=full.get("note") if full["champion"] is None else None,
                      ladder=full.get("ladder"))
    kind = data_source_kind(rc.config.data.source)
    decision = refuse_synthetic(decision, kind, rc.config.gate)
    # what publish publishes: the candidate, or the ridge when the candidate lost and the ridge
    # passed the same gate (gate.promote_baseline_if_better; never a synthetic-data ridge)
    fb = decision.fallback or {}
    publish_what = ("candidate" if decision.promote else
                    "ridge" if fb.get("decision") == "promote" and full.get("ridge_run_dir")
                    and (kind != "synthetic" or rc.config.gate.allow_synthetic) else None)
    record = decision.to_dict() | {"champion_run_id": full.get("champion_run_id"),
                                   "publish": publish_what, "ridge_run_dir": full.get("ridge_run_dir")}
    path = wd / "gate_decision.json"
    _write_json(path, record)
    cand, champ, horizons = full["candidate"], full["champion"], rc.config.horizons
    rc.pusher("gate").gate(
        decision="force" if decision.forced else record["decision"],
        candidate_rank_ic=_per_horizon(cand, horizons),
        champion_rank_ic=_per_horizon(champ, horizons) if champ else None,
        candidate_sharpe=_finite(cand.get("sharpe_1d")),
        champion_sharpe=_finite(champ.get("sharpe_1d")) if champ else None,
        min_rank_ic=rc.config.gate.min_rank_ic, min_sharpe=rc.config.gate.min_sharpe,
    )
    return {k: v for k, v in record.items() if k in
            ("decision", "forced", "reasons", "champion_run_id", "actor", "decided_at", "publish",
             "ridge_run_dir")} | {"decision_path": str(path)}


def _finite(v: Any) -> float:
    return float(v) if v is not None and math.isfinite(float(v)) else float("nan")


def _optional(v: Any) -> float | None:
    """A figure that only some runs measure (GPU): absent or non-finite -> not pushed."""
    return float(v) if v is not None and math.isfinite(float(v)) else None


def _per_horizon(metrics: dict[str, Any], horizons: tuple[int, ...]) -> dict[int, float]:
    return {h: _finite(metrics.get(f"rank_ic_{h}d")) for h in horizons}


def publish(ctx: dict[str, Any], trained: dict[str, Any], decision: dict[str, Any]) -> dict[str, Any]:
    """Immutable, checksummed version in the registry, then move ``champion`` by CAS."""
    from atft_core.registry import Registry

    rc = RunContext.build(ctx)
    what = decision.get("publish", "candidate" if decision.get("decision") == "promote" else None)
    if what not in ("candidate", "ridge"):
        raise ValueError(f"publish called for a {decision.get('decision')!r} decision")
    if what == "ridge":  # the candidate lost; the ladder's ridge passed the gate (fallback)
        trained = {"run_dir": decision["ridge_run_dir"], "run_id": f"{trained['run_id']}-ridge"}
    t0 = time.perf_counter()
    registry = Registry.from_config(rc.config)
    pusher = rc.pusher("publish")
    try:
        from atft_core.data.store import data_source_kind

        # the manifest's data_fingerprint records the data source kind too: "store:sha256:..."
        fingerprint = (f"{data_source_kind(rc.config.data.source)}:sha256:"
                       f"{hashlib.sha256((rc.work_dir / 'features.parquet').read_bytes()).hexdigest()}")
        result = registry.publish(trained["run_dir"], trained["run_id"], data_fingerprint=fingerprint)
        full = _read_json(decision.get("decision_path") or rc.work_dir / "gate_decision.json")
        # CAS against the champion the gate compared with: a concurrent promotion makes this fail
        alias = registry.promote(trained["run_id"], reason=_gate_reason(full),
                                 actor=str(decision.get("actor") or rc.run_id),
                                 expect=decision.get("champion_run_id"), gate=full)
    except Exception:
        pusher.publish(success=False, bytes=0, seconds=time.perf_counter() - t0)
        raise
    seconds = time.perf_counter() - t0
    size = sum(f.size for f in result.manifest.files)
    pusher.publish(success=True, bytes=size, seconds=seconds)
    return {"run_id": trained["run_id"], "registry": registry.uri, "bytes": size,
            "uri": f"{registry.uri.rstrip('/')}/runs/{trained['run_id']}",
            "manifest_sha256": alias.manifest_sha256, "seconds": round(seconds, 3)}


def _gate_reason(record: dict[str, Any]) -> str:
    """One-line audit reason for the alias history: the decision and its headline numbers."""
    cand = record.get("candidate") or {}
    nums = ", ".join(f"{k}={cand[k]:.4f}" for k in ("rank_ic_1d", "sharpe_1d")
                     if isinstance(cand.get(k), int | float))
    forced = " (forced)" if record.get("forced") else ""
    head = f"gate {record.get('decision')}{forced}: {nums}; "
    if record.get("publish") == "ridge":
        head = f"ridge fallback promoted (candidate rejected: {nums}); "
    return head + "; ".join(record.get("reasons") or [])


def retrain_summary(trained: dict[str, Any], evaluation: dict[str, Any], decision: dict[str, Any],
                    published: dict[str, Any] | None) -> dict[str, Any]:
    """The run's summary from the tasks' references (published is None when skipped); the
    holdout numbers are read from the one ``evaluation.json``."""
    full = _read_json(evaluation["evaluation_path"])
    # publish always moves the champion (CAS): the candidate, or the ladder's ridge when the
    # candidate lost and the fallback passed the gate (decision "reject", publish "ridge")
    promoted = published is not None
    return {
        "run_id": trained["run_id"],
        "run_dir": trained["run_dir"],
        "report": f"{trained['run_dir']}/report.md",
        "decision": decision.get("decision"),
        "forced": bool(decision.get("forced", False)),
        "reasons": list(decision.get("reasons", [])),
        "evaluation_path": evaluation["evaluation_path"],
        "decision_path": decision.get("decision_path"),
        "holdout": _headline(full.get("candidate")),
        "champion_holdout": _headline(full.get("champion")),
        "previous_champion_run_id": full.get("champion_run_id"),
        "champion_run_id": published.get("run_id", trained["run_id"]) if promoted else full.get("champion_run_id"),
        "published_uri": published.get("uri") if published else None,
    }


def report_metrics(ctx: dict[str, Any], trained: dict[str, Any], evaluation: dict[str, Any],
                   decision: dict[str, Any], published: dict[str, Any] | None) -> dict[str, Any]:
    """Final stage: the run's summary JSON and the end-to-end success timestamp."""
    rc = RunContext.build(ctx)
    summary = retrain_summary(trained, evaluation, decision, published)
    path = rc.ensure_work_dir() / "summary.json"
    _write_json(path, summary)
    rc.pusher("metrics").retrain_success(data_day=rc.data_end)
    _write_json(rc.day_marker, {"run_id": rc.run_id, "run_type": rc.run_type, "decision": summary["decision"],
                                "summary_path": str(path), "identity": rc.identity})
    return {"summary_path": str(path), "decision": summary["decision"],
            "champion_run_id": summary["champion_run_id"], "published_uri": summary["published_uri"]}
