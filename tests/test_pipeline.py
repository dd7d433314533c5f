"""atft_core.pipeline: Params -> typed config, paths keyed by the data interval (never "now")."""

import pytest

from atft_core import pipeline
from atft_core.config import ConfigError


def ctx(**params):
    return {"dag_id": "atft_retrain", "run_id": "scheduled__2024-05-07", "as_of": "2024-05-07",
            "params": {"config": "test", **params}}


def test_params_map_onto_config_keys(monkeypatch):
    monkeypatch.delenv("ATFT_REGISTRY", raising=False)
    cfg = pipeline.task_config(ctx(lr=3e-3, seed=9, min_rank_ic=0.03, min_sharpe=0.7,
                                   epochs_per_phase=2, overrides=["graph.k=7"]))
    assert cfg.train.optimizer.lr == 3e-3 and cfg.train.seed == 9
    assert (cfg.gate.min_rank_ic, cfg.gate.min_sharpe) == (0.03, 0.7)
    assert [p.epochs for p in cfg.train.phases] == [2, 2, 2, 2] and cfg.graph.k == 7
    assert cfg.registry.uri == "file://var/registry"


def test_loss_weight_params_scale_every_phase():
    base = pipeline.task_config(ctx())
    cfg = pipeline.task_config(ctx(loss_weights={"rankic": 2.0, "mse": None}))
    for b, p in zip(base.train.phases, cfg.train.phases, strict=True):
        assert p.weights.rankic == pytest.approx(2.0 * b.weights.rankic)
        assert p.weights.mse == b.weights.mse


def test_bad_params_are_refused_with_the_key():
    with pytest.raises(ValueError, match="epochs_per_phase has 2 values"):
        pipeline.task_config(ctx(epochs_per_phase=[1, 2]))
    with pytest.raises(ConfigError, match="model.hidden_size"):
        pipeline.task_config(ctx(hidden_size=3))
    with pytest.raises(ConfigError, match="graph.kk: unknown key"):
        pipeline.task_config(ctx(overrides=["graph.kk=3"]))


def test_endpoints_from_the_environment(monkeypatch):
    monkeypatch.setenv("ATFT_REGISTRY", "s3://bucket/prefix")
    monkeypatch.setenv("ATFT_PUSHGATEWAY_URL", "http://127.0.0.1:9091")
    cfg = pipeline.task_config(ctx())
    assert cfg.registry.uri == "s3://bucket/prefix"
    assert cfg.metrics.pushgateway_url == "http://127.0.0.1:9091"


def test_paths_and_run_ids_are_keyed_by_the_interval(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = ctx()
    cfg = pipeline.task_config(c)
    # a holiday as_of maps to the latest trading day; an explicit data.end wins
    assert str(pipeline.data_end_day(c | {"as_of": "2024-05-06"}, cfg)) == "2024-05-02"
    assert pipeline.work_dir(c, cfg).as_posix().endswith("var/work/atft_retrain/2024-05-07")
    rid = pipeline.run_id_for(c, cfg)
    assert rid == pipeline.run_id_for(dict(c), cfg)  # a retry resumes the same run
    assert rid.startswith("20240507-") and rid != pipeline.run_id_for(c | {"run_id": "manual__x"}, cfg)
    other = pipeline.task_config(ctx(seed=1))
    assert pipeline.run_id_for(c, other) != rid  # another config is another run
    assert all(ch.isalnum() or ch in "._-" for ch in rid)
