"""Task-level functions: every Airflow task is a thin call into exactly one of these.

Each function takes ``ctx``, a plain dict the DAG builds from the Airflow context::

    {"dag_id", "run_id", "data_interval_start", "data_interval_end", "as_of" (YYYY-MM-DD, Tokyo),
     "params": {...Airflow Params...}, "try_number"}

and returns a JSON-able dict (it goes to XCom). Nothing here imports Airflow.

Decisions (SPEC is silent):
* Paths are keyed by the data interval, never "now": ``{work_root}/{dag_id}/{as_of}/...``; the
  training run id is ``{as_of}-{config hash}-{hash of the Airflow run id}`` so a retry of the same
  DAG run resumes its own checkpoint, and a new run (another config or a re-trigger) trains anew.
* The data window ends at ``data.end`` when a manual run sets it, else at the latest trading day
  expected for ``as_of``. With no ``data.source`` the synthetic market is generated to end there,
  so the embedded demo is always "fresh".
* Only a promoted candidate is published: the registry holds models that were champions once.
* Endpoints come from the environment, as SPEC 11 allows: ``ATFT_REGISTRY`` (registry URI),
  ``ATFT_PUSHGATEWAY_URL`` (read by :mod:`atft_core.observability`), ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from atft_core import calendar
from atft_core.atomic import atomic_write_text
from atft_core.config import Config, apply_overrides, load_config

log = logging.getLogger(__name__)

# Airflow Param name -> dotted config key (the UI form maps onto the one typed config).
PARAM_TO_CONFIG: dict[str, str] = {
    "lr": "train.optimizer.lr",
    "hidden_size": "model.hidden_size",
    "seed": "train.seed",
    "min_rank_ic": "gate.min_rank_ic",
    "min_sharpe": "gate.min_sharpe",
    "data_source": "data.source",
    "data_start": "data.start",
    "data_end": "data.end",
}
LOSS_WEIGHT_PARAMS = ("mse", "rankic", "cs_ic", "sharpe")


class DataNotFresh(RuntimeError):
    """The latest expected trading day is not in the data yet (the task retries later)."""


# --------------------------------------------------------------------------- config & paths
def task_config(ctx: dict[str, Any]) -> Config:
    """Config for this DAG run: the named YAML + Params mapped onto dotted keys + endpoints."""
    params = dict(ctx.get("params") or {})
    cfg = load_config(params.get("config") or "default")
    overrides: dict[str, Any] = {}
    for name, key in PARAM_TO_CONFIG.items():
        if params.get(name) not in (None, ""):
            overrides[key] = params[name]
    epochs = params.get("epochs_per_phase")
    if epochs not in (None, "", []):
        epochs = [epochs] * len(cfg.train.phases) if isinstance(epochs, int) else list(epochs)
        if len(epochs) != len(cfg.train.phases):
            raise ValueError(
                f"epochs_per_phase has {len(epochs)} values; the config has "
                f"{len(cfg.train.phases)} phases"
            )
        for i, e in enumerate(epochs):
            overrides[f"train.phases.{i}.epochs"] = e
    weights = params.get("loss_weights") or {}
    for i in range(len(cfg.train.phases)):
        for w in LOSS_WEIGHT_PARAMS:
            if w in weights and weights[w] is not None:
                # a UI loss weight scales that component in every phase that uses it
                base = getattr(cfg.train.phases[i].weights, w)
                overrides[f"train.phases.{i}.weights.{w}"] = base * float(weights[w])
    if os.environ.get("ATFT_REGISTRY"):
        overrides["registry.uri"] = os.environ["ATFT_REGISTRY"]
    if os.environ.get("ATFT_PUSHGATEWAY_URL"):
        overrides["metrics.pushgateway_url"] = os.environ["ATFT_PUSHGATEWAY_URL"]
    if os.environ.get("ATFT_QUOTES_STORE") and overrides.get("data.source", cfg.data.source) is not None:
        overrides["data.source"] = os.environ["ATFT_QUOTES_STORE"]  # where the store lives (deployment)
    extra = params.get("overrides") or []
    cfg = apply_overrides(cfg, overrides) if overrides else cfg
    return apply_overrides(cfg, list(extra)) if extra else cfg


def data_end_day(ctx: dict[str, Any], cfg: Config) -> dt.date:
    end = cfg.data.end or ctx["as_of"]
    return calendar.latest_expected_trading_day(end)


def work_dir(ctx: dict[str, Any], cfg: Config) -> Path:
    d = Path(cfg.work_root) / _safe(ctx["dag_id"]) / str(data_end_day(ctx, cfg))
    d.mkdir(parents=True, exist_ok=True)
    return d


def run_id_for(ctx: dict[str, Any], cfg: Config) -> str:
    airflow_run = hashlib.sha256(str(ctx.get("run_id", "")).encode()).hexdigest()[:6]
    return f"{data_end_day(ctx, cfg):%Y%m%d}-{cfg.sha256()[:8]}-{airflow_run}"


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in s)


def _pusher(ctx: dict[str, Any], cfg: Config, task_id: str):
    from atft_core.observability import MetricsPusher

    return MetricsPusher(cfg.metrics, job=cfg.metrics.job, dag_id=ctx.get("dag_id"), task_id=task_id)


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str))


# --------------------------------------------------------------------------- tasks
def check_fresh_data(ctx: dict[str, Any]) -> dict[str, Any]:
    """Locate the raw quotes for this interval and check the latest expected day is present.

    Synthetic (no ``data.source``): generate the market ending at the expected day into the
    work dir (idempotent: an existing store for this interval is reused).
    """
    import polars as pl

    from atft_core.data.store import scan_store, write_store

    cfg = task_config(ctx)
    end = data_end_day(ctx, cfg)
    wd = work_dir(ctx, cfg)
    if cfg.data.source is None:
        raw = wd / "raw"
        if not raw.exists():
            from atft_core.data.synthetic import generate_market

            syn = cfg.data.synthetic
            start = calendar.add_trading_days(end, -(syn.n_days - 1))
            market = generate_market(syn.model_copy(update={"start": start.isoformat()}), cfg.horizons)
            market.oracle.write_parquet(wd / "oracle.parquet")
            write_store(market.quotes, raw)
        source = str(raw)
    else:
        source = cfg.data.source
    lf = scan_store(source, start=cfg.data.start, end=end.isoformat())
    stats = lf.select(pl.len().alias("rows"), pl.col("Date").max().alias("latest")).collect()
    rows, latest = int(stats["rows"][0]), stats["latest"][0]
    if rows == 0 or latest is None or latest < end:
        raise DataNotFresh(
            f"data at {source} ends at {latest}; the latest expected trading day is {end}"
        )
    return {"source": source, "rows": rows, "latest_day": str(latest), "expected_day": str(end)}


def validate_data(ctx: dict[str, Any], fresh: dict[str, Any] | None = None) -> dict[str, Any]:
    """Great Expectations suite over the interval's quotes; raises on failure (nothing runs on)."""
    from atft_core.data.store import is_partitioned_store, read_quotes
    from atft_core.validation import DataValidationError, validate_quotes

    cfg = task_config(ctx)
    wd = work_dir(ctx, cfg)
    source = (fresh or {}).get("source") or (str(wd / "raw") if cfg.data.source is None else cfg.data.source)
    end = data_end_day(ctx, cfg)
    # a day-partitioned store is judged as it is read: split-adjusted (a split is not a bad tick)
    data = read_quotes(source, start=cfg.data.start, end=end) if is_partitioned_store(source) else source
    try:
        report = validate_quotes(data, cfg.validation, as_of=end, docs_dir=wd / "validation",
                                 start=cfg.data.start, end=end)
    except DataValidationError as err:  # unreadable input: still a failed validation stage
        _pusher(ctx, cfg, "validate").data_validation(
            success=False, rows=0, latest_trading_day=None, bad_ticks=0)
        raise err
    _write_json(wd / "validation.json", report.to_dict())
    report.bad_ticks.write_parquet(wd / "bad_ticks.parquet")
    _pusher(ctx, cfg, "validate").data_validation(
        success=report.success, rows=report.rows, latest_trading_day=report.last_date,
        bad_ticks=report.bad_ticks.height, codes=report.codes,
        failed_expectations=len(report.failed), seconds=report.seconds,
    )
    if not report.success:
        raise DataValidationError(report)
    return {"success": True, "rows": report.rows, "source": source,
            "bad_ticks": report.bad_ticks.height, "warnings": len(report.warnings),
            "data_docs": str(report.data_docs) if report.data_docs else None}


def build_features(ctx: dict[str, Any], validated: dict[str, Any] | None = None) -> dict[str, Any]:
    """Point-in-time features + executable targets for the window, written atomically."""
    import polars as pl

    from atft_core import features
    from atft_core.data.store import scan_store

    cfg = task_config(ctx)
    wd = work_dir(ctx, cfg)
    source = (validated or {}).get("source") or (str(wd / "raw") if cfg.data.source is None else cfg.data.source)
    t0 = time.perf_counter()
    quotes = scan_store(source, start=cfg.data.start, end=data_end_day(ctx, cfg).isoformat())
    bad = wd / "bad_ticks.parquet"
    mask = pl.read_parquet(bad).select("Date", "Code") if bad.exists() else None
    frame = features.build_features(quotes, cfg, mask=mask)
    out = wd / "features.parquet"
    tmp = wd / "features.parquet.tmp"
    frame.write_parquet(tmp, compression="zstd")
    os.replace(tmp, out)
    seconds = time.perf_counter() - t0
    _pusher(ctx, cfg, "features").features(rows=frame.height, seconds=seconds,
                                           columns=len(features.FEATURE_COLUMNS))
    return {"features_path": str(out), "rows": frame.height, "seconds": round(seconds, 3)}


def train_candidate(ctx: dict[str, Any], feats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Phased trainer on the interval's features; a retry resumes this run's own checkpoint."""
    import polars as pl

    from atft_core.train.api import train_run

    cfg = task_config(ctx)
    wd = work_dir(ctx, cfg)
    frame = pl.read_parquet((feats or {}).get("features_path") or wd / "features.parquet")
    run_id = run_id_for(ctx, cfg)
    run_dir = Path(cfg.run_root) / run_id
    pusher = _pusher(ctx, cfg, "train")
    t0 = time.perf_counter()
    try:
        result = train_run(cfg, frame, run_dir, resume=True,
                           on_epoch_end=epoch_metrics_hook(pusher, cfg.horizons))
    except Exception:
        pusher.stage("train", success=False, seconds=time.perf_counter() - t0)
        raise
    pusher.stage("train", success=True, seconds=time.perf_counter() - t0)
    return {"run_id": run_id, "run_dir": str(run_dir), "best": _headline(result.best),
            "nan_steps": result.nan_steps, "resumed_from": result.resumed_from,
            "train_seconds": round(result.train_seconds, 1),
            "holdout": _headline(result.holdout_metrics)}


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
    """The scalar entries of a metrics dict (drops the daily series) for XCom."""
    if not m:
        return {}
    return {k: v for k, v in m.items() if not isinstance(v, list | dict)}


def evaluate_holdout(ctx: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
    """Candidate and current champion on the SAME holdout window (same features, same dates)."""
    import polars as pl

    from atft_core.registry import Registry
    from atft_core.train.api import evaluate_run_dir

    cfg = task_config(ctx)
    wd = work_dir(ctx, cfg)
    frame = pl.read_parquet(wd / "features.parquet")
    candidate = evaluate_run_dir(trained["run_dir"], frame, window="holdout", split_cfg=cfg)
    champion, champion_id, note = None, None, None
    registry = Registry.from_config(cfg)
    current = registry.get_alias("champion")
    if current is not None:
        champion_id = current.run_id
        dest = wd / f"champion-{champion_id}"
        if dest.exists():  # a retry of this task: fetch again, verified
            shutil.rmtree(dest)
        local = registry.load_champion(dest=dest)  # alias -> manifest -> verified checksums
        try:
            champion = evaluate_run_dir(local.path, frame, window="holdout", split_cfg=cfg)
        except ValueError as err:  # e.g. a feature set the champion was not trained on
            note = f"champion {champion_id} cannot be evaluated on this data: {err}"
            log.warning(note)
    out = {"candidate": candidate, "champion": champion, "champion_run_id": champion_id,
           "note": note}
    _write_json(wd / "evaluation.json", out)
    return {"evaluation_path": str(wd / "evaluation.json"), "champion_run_id": champion_id,
            "candidate": _headline(candidate), "champion": _headline(champion), "note": note}


def gate(ctx: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
    """Promotion decision (SPEC 7) written as JSON next to the run; pushes gate metrics."""
    from atft_core.data.store import data_source_kind
    from atft_core.gate import decide, refuse_synthetic

    cfg = task_config(ctx)
    wd = work_dir(ctx, cfg)
    full = json.loads(Path(evaluation["evaluation_path"]).read_text())
    params = ctx.get("params") or {}
    decision = decide(full["candidate"], full["champion"], cfg.gate,
                      force=bool(params.get("force")), actor=params.get("actor") or ctx.get("run_id"),
                      champion_unavailable=full.get("note") if full["champion"] is None else None)
    decision = refuse_synthetic(decision, data_source_kind(cfg.data.source), cfg.gate)
    record = decision.to_dict() | {"champion_run_id": full.get("champion_run_id")}
    _write_json(wd / "gate_decision.json", record)
    cand, champ = full["candidate"], full["champion"]
    _pusher(ctx, cfg, "gate").gate(
        decision="force" if decision.forced else record["decision"],
        candidate_rank_ic=_per_horizon(cand, cfg.horizons),
        champion_rank_ic=_per_horizon(champ, cfg.horizons) if champ else None,
        candidate_sharpe=_finite(cand.get("sharpe_1d")),
        champion_sharpe=_finite(champ.get("sharpe_1d")) if champ else None,
        min_rank_ic=cfg.gate.min_rank_ic, min_sharpe=cfg.gate.min_sharpe,
    )
    return {k: v for k, v in record.items() if k in
            ("decision", "forced", "reasons", "champion_run_id", "actor", "decided_at")}


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

    cfg = task_config(ctx)
    if decision.get("decision") != "promote":
        raise ValueError(f"publish called for a {decision.get('decision')!r} decision")
    t0 = time.perf_counter()
    registry = Registry.from_config(cfg)
    wd = work_dir(ctx, cfg)
    pusher = _pusher(ctx, cfg, "publish")
    try:
        from atft_core.data.store import data_source_kind

        # the manifest's data_fingerprint records the data source kind too: "store:sha256:..."
        fingerprint = (f"{data_source_kind(cfg.data.source)}:sha256:"
                       f"{hashlib.sha256((wd / 'features.parquet').read_bytes()).hexdigest()}")
        result = registry.publish(trained["run_dir"], trained["run_id"], data_fingerprint=fingerprint)
        full = json.loads((wd / "gate_decision.json").read_text())
        # CAS against the champion the gate compared with: a concurrent promotion makes this fail
        alias = registry.promote(trained["run_id"], reason=_gate_reason(full),
                                 actor=str(decision.get("actor") or ctx.get("run_id")),
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
    return f"gate {record.get('decision')}{forced}: {nums}; " + "; ".join(record.get("reasons") or [])


def report_metrics(ctx: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """Final stage: the end-to-end success timestamp and a summary JSON for the run."""
    cfg = task_config(ctx)
    wd = work_dir(ctx, cfg)
    _write_json(wd / "summary.json", summary)
    _pusher(ctx, cfg, "metrics").retrain_success(data_day=data_end_day(ctx, cfg))
    return {"summary_path": str(wd / "summary.json")} | summary


# --------------------------------------------------------------------------- HPO & rollback
def hpo_create_study(ctx: dict[str, Any]) -> dict[str, Any]:
    from atft_core.train import hpo

    cfg = task_config(ctx)
    fresh = check_fresh_data(ctx)
    validate_data(ctx, fresh)
    feats = build_features(ctx, fresh)
    study = hpo.create_study(cfg, study_name=f"{cfg.hpo.study_name}-{data_end_day(ctx, cfg):%Y%m%d}")
    return {"study_name": study.study_name, "storage": cfg.hpo.storage,
            "features_path": feats["features_path"]}


def hpo_run_trial(ctx: dict[str, Any], study: dict[str, Any], trial_index: int) -> dict[str, Any]:
    import polars as pl

    from atft_core.train import hpo

    cfg = task_config(ctx)
    frame = pl.read_parquet(study["features_path"])
    return hpo.run_trial(cfg, frame, study_name=study["study_name"], storage=study["storage"],
                         trial_index=trial_index)


def hpo_summarise(ctx: dict[str, Any], study: dict[str, Any], trials: list[Any]) -> dict[str, Any]:
    from atft_core.train import hpo

    cfg = task_config(ctx)
    summary = hpo.summarise(study_name=study["study_name"], storage=study["storage"])
    _write_json(work_dir(ctx, cfg) / "hpo_summary.json", summary)
    return summary


def rollback(ctx: dict[str, Any], to_run_id: str | None, reason: str) -> dict[str, Any]:
    from atft_core.registry import Registry

    cfg = task_config(ctx)
    registry = Registry.from_config(cfg)
    rec = registry.rollback(to=to_run_id or None, reason=reason, actor=str(ctx.get("run_id")))
    return rec.to_dict()
