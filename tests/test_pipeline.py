"""atft_core.pipeline: one RunContext per task -- Params -> typed config (refused whole, before any
work), paths keyed by the run (DAG run id + model identity), identity blind to endpoints."""

import json

import polars as pl
import pytest

from atft_core import pipeline
from atft_core.config import ConfigError, load_config, model_config, model_identity_hash
from atft_core.pipeline import RunConfError, RunContext

DAG_PARAMS = ["actor", "config", "data_end", "data_source", "data_start", "epochs", "epochs_per_phase",
              "force", "hidden_size", "loss_weights", "lr", "min_rank_ic", "min_sharpe", "nproc",
              "overrides", "seed"]


def ctx(run_id="scheduled__2024-05-07T09:00:00+00:00", conf=None, **params):
    return {"dag_id": "atft_retrain", "run_id": run_id, "as_of": "2024-05-07",
            "params": {"config": "test", **params}, "conf": conf, "param_names": DAG_PARAMS}


@pytest.fixture(autouse=True)
def _no_endpoint_env(monkeypatch):
    for k in ("ATFT_REGISTRY", "ATFT_PUSHGATEWAY_URL", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)


def test_params_map_onto_config_keys():
    cfg = pipeline.task_config(ctx(lr=3e-3, seed=9, min_rank_ic=0.03, min_sharpe=0.7,
                                   epochs_per_phase=2, overrides=["graph.k=7"]))
    assert cfg.train.optimizer.lr == 3e-3 and cfg.train.seed == 9
    assert (cfg.gate.min_rank_ic, cfg.gate.min_sharpe) == (0.03, 0.7)
    assert [p.epochs for p in cfg.train.phases] == [2, 2, 2, 2] and cfg.graph.k == 7
    assert cfg.registry.uri == "file://var/registry"
    assert [p.epochs for p in pipeline.task_config(ctx(epochs=3)).train.phases] == [3, 3, 3, 3]
    assert [p.epochs for p in pipeline.task_config(ctx(epochs_per_phase=[2, 0, 1, 3])).train.phases] \
        == [2, 0, 1, 3]


def test_nproc_param_sets_train_nproc_but_not_the_model_identity():
    one, two = pipeline.RunContext.build(ctx()), pipeline.RunContext.build(ctx(nproc=2))
    assert two.config.train.nproc == 2 and two.training_config.train.nproc == 1
    assert two.identity == one.identity and two.run_dir == one.run_dir  # a retry with another N resumes
    assert pipeline.RunContext.build(ctx(seed=5)).identity != one.identity


def test_automatic_runs_skip_a_trading_day_already_retrained(tmp_path, monkeypatch):
    """AssetOrTimeSchedule fires twice on a normal day (the ingest Asset at ~17:35, the 18:00
    timetable): the second automatic run of the same day and model identity finds the first's
    completion record (written by the last task) and skips; manual runs, another day or another
    identity never do, and a torn record means "not done"."""
    monkeypatch.chdir(tmp_path)
    asset = {**ctx(run_id="asset_triggered__2024-05-07T08:35:00+00:00"), "run_type": "asset_triggered"}
    sched = {**ctx(run_id="scheduled__2024-05-07T09:00:00+00:00"), "run_type": "scheduled"}
    manual = {**ctx(run_id="manual__2024-05-07T09:30:00+00:00"), "run_type": "manual"}
    assert pipeline.day_already_retrained(sched) is None  # nothing completed yet
    ev = tmp_path / "evaluation.json"
    ev.write_text(json.dumps({"candidate": {"rank_ic_1d": 0.02}, "champion": None, "champion_run_id": None}))
    pipeline.report_metrics(asset, {"run_id": "r1", "run_dir": "runs/r1"}, {"evaluation_path": str(ev)},
                            {"decision": "promote", "reasons": []}, {"uri": "file://reg/runs/r1"})
    done = pipeline.day_already_retrained(sched)
    assert done["run_id"] == asset["run_id"] and done["decision"] == "promote"
    assert pipeline.day_already_retrained(manual) is None  # a person asked for it: it runs
    assert pipeline.day_already_retrained({**sched, "as_of": "2024-05-08"}) is None  # another day
    other = {**sched, "params": {**sched["params"], "seed": 99}}
    assert pipeline.day_already_retrained(other) is None  # another model identity
    RunContext.build(sched).day_marker.write_text('{"run_id": ')  # torn
    assert pipeline.day_already_retrained(sched) is None


def test_loss_weight_params_scale_every_phase():
    base = pipeline.task_config(ctx())
    cfg = pipeline.task_config(ctx(loss_weights={"rankic": 2.0, "mse": None}))
    for b, p in zip(base.train.phases, cfg.train.phases, strict=True):
        assert p.weights.rankic == pytest.approx(2.0 * b.weights.rankic)
        assert p.weights.mse == b.weights.mse


def test_bad_params_are_refused_with_the_key():
    with pytest.raises(RunConfError, match=r"epochs_per_phase has 2 values; the config has 4 phases"):
        pipeline.task_config(ctx(epochs_per_phase=[1, 2]))
    with pytest.raises(ConfigError, match="model.hidden_size"):
        pipeline.task_config(ctx(hidden_size=3))
    with pytest.raises(ConfigError, match="graph.kk: unknown key"):
        pipeline.task_config(ctx(overrides=["graph.kk=3"]))
    with pytest.raises(RunConfError, match="loss_weights: unknown component"):
        pipeline.task_config(ctx(loss_weights={"rank_ic": 2.0}))


# --------------------------------------------------------------------------- fault 14
def test_unknown_conf_key_is_refused_before_any_work(tmp_path, monkeypatch):
    """Fault 14: an unknown key in the trigger conf (a typo: ``lrr``) was silently ignored and the
    run trained with the config's lr and promoted."""
    monkeypatch.chdir(tmp_path)
    c = ctx(conf={"config": "test", "lrr": 0.1, "seed": 1}, seed=1)
    with pytest.raises(RunConfError, match=r"unknown conf key\(s\) \['lrr'\]: not a Param"):
        pipeline.validate_conf(c)
    assert not (tmp_path / "var").exists()  # refused before anything was written


def test_validate_conf_checks_the_whole_conf_first(tmp_path, monkeypatch):
    """Fault 14: a wrong-length epochs_per_phase is refused by the first task (the DAG runs it with
    retries=0), not inside check_fresh_data after two retries with backoff."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunConfError, match="epochs_per_phase has 3 values"):
        pipeline.validate_conf(ctx(epochs_per_phase=[1, 1, 1]))
    with pytest.raises(RunConfError, match="train.optimizer.lrr: unknown key"):
        pipeline.validate_conf(ctx(overrides=["train.optimizer.lrr=0.1"]))
    assert not (tmp_path / "var").exists()
    ok = pipeline.validate_conf(ctx(conf={"config": "test", "lr": 0.01}, lr=0.01))
    record = json.loads((tmp_path / ok["work_dir"] / "run_context.json").read_text())
    assert record["identity"] == ok["identity"] and record["params"]["lr"] == 0.01
    assert load_config(tmp_path / ok["work_dir"] / "config.yaml").train.optimizer.lr == 0.01


# --------------------------------------------------------------------------- fault 15
def test_runs_of_the_same_day_keep_separate_paths(tmp_path, monkeypatch):
    """Fault 15: a manual test-config run and the scheduled run of the same trading day shared
    var/work/atft_retrain/{day}: the manual run's raw data made the scheduled one fail."""
    monkeypatch.chdir(tmp_path)
    scheduled = ctx()
    manual = ctx(run_id="manual__2024-05-07T12:00:00+00:00",
                 overrides=["data.synthetic.n_days=120", "data.synthetic.n_stocks=20"])
    a, b = RunContext.build(scheduled), RunContext.build(manual)
    assert a.as_of == b.as_of and a.data_end == b.data_end
    assert a.work_dir != b.work_dir and a.run_dir != b.run_dir
    for rc in (a, b):  # the day stays in the path, for humans
        assert rc.work_dir.parent.as_posix() == "var/work/atft_retrain/2024-05-07"
    assert a.work_dir.name == f"scheduled__2024-05-07T09-00-00-00-00.{a.identity[:8]}"
    # the same DAG run with another model config (a re-trigger with new Params) is another path too
    assert RunContext.build(ctx(lr=0.01)).work_dir != a.work_dir
    # each run's synthetic market lands in its own work dir, with its own window
    fb = pipeline.check_fresh_data(manual)
    fa = pipeline.check_fresh_data(scheduled)
    assert fa["source"] != fb["source"]
    days = {k: pl.read_parquet(f"{f['source']}/**/*.parquet")["Date"].n_unique()
            for k, f in (("a", fa), ("b", fb))}
    assert days == {"a": 200, "b": 120}  # the test config has 200 days, the manual run 120


# --------------------------------------------------------------------------- identity
def test_model_identity_ignores_endpoints_roots_and_gate(monkeypatch):
    base = RunContext.build(ctx())
    monkeypatch.setenv("ATFT_REGISTRY", "s3://bucket/prefix")
    monkeypatch.setenv("ATFT_PUSHGATEWAY_URL", "http://127.0.0.1:9091")
    moved = RunContext.build(ctx(min_rank_ic=0.5, overrides=["work_root=/tmp/elsewhere",
                                                             "run_root=/tmp/runs",
                                                             "validation.docs_dir=/tmp/docs"]))
    assert moved.config.registry.uri == "s3://bucket/prefix"
    assert moved.config.metrics.pushgateway_url == "http://127.0.0.1:9091"
    assert moved.config.sha256() != base.config.sha256()
    # ...but the model is the same: same identity, same training run id, same saved config,
    # so a retry after an endpoint change resumes its checkpoint instead of being refused
    assert moved.identity == base.identity == model_identity_hash(base.config)
    assert moved.training_run_id == base.training_run_id
    assert moved.training_config.sha256() == base.training_config.sha256()
    assert model_config(moved.config).registry.uri == "file://var/registry"
    # what changes the model changes the identity
    for other in (ctx(lr=0.01), ctx(seed=3), ctx(data_start="2023-01-04"), ctx(hidden_size=24),
                  ctx(overrides=["features.clip=4.0"]), ctx(overrides=["validation.min_rows=5"])):
        assert RunContext.build(other).identity != base.identity, other["params"]


def test_run_ids_are_stable_per_run_and_safe():
    c = ctx()
    rc = RunContext.build(c)
    # a holiday as_of maps to the latest trading day; an explicit data.end wins
    assert str(RunContext.build(c | {"as_of": "2024-05-06"}).data_end) == "2024-05-02"
    assert str(RunContext.build(ctx(data_end="2024-04-30")).data_end) == "2024-04-30"
    assert rc.training_run_id == RunContext.build(dict(c)).training_run_id  # a retry resumes
    assert rc.training_run_id.startswith(f"20240507-{rc.identity[:8]}-")
    assert rc.training_run_id != RunContext.build(ctx(run_id="manual__x")).training_run_id
    hostile = RunContext.build(ctx(run_id="../../etc/passwd x" + "y" * 300))
    assert all(ch.isalnum() or ch in "._-" for ch in hostile.training_run_id + hostile.run_key)
    assert "/" not in hostile.run_key and len(hostile.run_key) <= 110
    assert hostile.work_dir.parent.as_posix() == "var/work/atft_retrain/2024-05-07"


def test_endpoints_from_the_environment_and_from_airflow_hooks(monkeypatch):
    monkeypatch.setenv("ATFT_REGISTRY", "s3://bucket/prefix")
    monkeypatch.setenv("ATFT_PUSHGATEWAY_URL", "http://127.0.0.1:9091")
    cfg = pipeline.task_config(ctx())
    assert cfg.registry.uri == "s3://bucket/prefix"
    assert cfg.metrics.pushgateway_url == "http://127.0.0.1:9091"
    # what the DAG resolved through AwsBaseHook / BaseHook (ctx["endpoints"])
    hooked = ctx() | {"endpoints": {"s3_endpoint_url": "http://127.0.0.1:5555",
                                    "pushgateway_conn_uri": "http://u:p@127.0.0.1:9092"}}
    monkeypatch.delenv("ATFT_PUSHGATEWAY_URL")
    rc = RunContext.build(hooked)
    assert rc.config.registry.endpoint_url == "http://127.0.0.1:5555"
    gw = rc.pusher("train").gateway
    assert (gw.url, gw.username, gw.password) == ("http://127.0.0.1:9092", "u", "p")
    assert "p@" not in json.dumps(rc.record())  # no secret in the run's record
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:6666")  # the env still wins
    assert RunContext.build(hooked).config.registry.endpoint_url is None


def test_metrics_config_survives_an_invalid_conf(tmp_path):
    params = {"config": "test", "epochs_per_phase": [1, 2], "overrides": [f"metrics.textfile_dir={tmp_path}"]}
    with pytest.raises(RunConfError):
        pipeline.config_from_params(params)
    assert pipeline.metrics_config_for(params).textfile_dir == str(tmp_path)
    assert pipeline.metrics_config_for({"config": "no-such"}).textfile_dir == "var/metrics"
