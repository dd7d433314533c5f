"""The HPO and rollback DAGs' task functions (same contract as :mod:`.tasks`)."""

from __future__ import annotations

from typing import Any

from atft_core.pipeline.run_context import RunContext
from atft_core.pipeline.tasks import _write_json, build_features, check_fresh_data, validate_data


def hpo_create_study(ctx: dict[str, Any]) -> dict[str, Any]:
    from atft_core.train import hpo

    rc = RunContext.build(ctx)
    fresh = check_fresh_data(ctx)
    validate_data(ctx, fresh)
    feats = build_features(ctx, fresh)
    study = hpo.create_study(rc.config, study_name=f"{rc.config.hpo.study_name}-{rc.data_end:%Y%m%d}")
    return {"study_name": study.study_name, "storage": rc.config.hpo.storage,
            "features_path": feats["features_path"]}


def hpo_run_trial(ctx: dict[str, Any], study: dict[str, Any], trial_index: int) -> dict[str, Any]:
    import polars as pl

    from atft_core.train import hpo

    rc = RunContext.build(ctx)
    frame = pl.read_parquet(study["features_path"])
    return hpo.run_trial(rc.config, frame, study_name=study["study_name"], storage=study["storage"],
                         trial_index=trial_index)


def hpo_summarise(ctx: dict[str, Any], study: dict[str, Any], trials: list[Any]) -> dict[str, Any]:
    from atft_core.train import hpo

    rc = RunContext.build(ctx)
    summary = hpo.summarise(study_name=study["study_name"], storage=study["storage"])
    # the best trial becomes the config a retrain with hpo.use_best_from=latest trains next
    summary["best_config"] = hpo.publish_best(rc.base_config, study["storage"], study["study_name"])
    _write_json(rc.ensure_work_dir() / "hpo_summary.json", summary)
    return summary


def rollback(ctx: dict[str, Any], to_run_id: str | None, reason: str) -> dict[str, Any]:
    from atft_core.registry import Registry

    rc = RunContext.build(ctx)
    registry = Registry.from_config(rc.config)
    rec = registry.rollback(to=to_run_id or None, reason=reason, actor=rc.run_id)
    return rec.to_dict()
