"""DAG integrity: parsing (errors, time, no heavy imports), policies, graph shape, Params,
the plugins (listener, context helper) and one end-to-end ``dag.test()`` of the wiring.

Parsing and ``dag.test()`` run in subprocesses so ``sys.modules`` and Airflow's config start
clean; the structure tests use an in-process DagBag plus a serialization round trip (what the
scheduler and API server see, including Param validation on trigger).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
DAG_IDS = {"atft_retrain", "atft_hpo", "atft_rollback", "atft_ingest", "atft_score"}
HEAVY = ("torch", "great_expectations", "torch_geometric", "polars")


def airflow_env(home: Path) -> dict[str, str]:
    """The demo's local-Airflow environment (SQLite in ``home``), without a Pushgateway."""
    from atft_core.commands.demo import airflow_env as local_airflow_env

    env = local_airflow_env(home)
    env.pop("ATFT_PUSHGATEWAY_URL", None)
    return env


@pytest.fixture(scope="module")
def af_env(tmp_path_factory):
    """Airflow env for this module's in-process parts (tmp AIRFLOW_HOME, repo dags/plugins)."""
    home = tmp_path_factory.mktemp("airflow_home")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in airflow_env(home).items():
            if k.startswith("AIRFLOW"):
                mp.setenv(k, v)
        mp.syspath_prepend(str(REPO / "plugins"))
        yield home


# --------------------------------------------------------------------------- parsing (subprocess)
PARSE_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
t_airflow = time.perf_counter() - t0
bag = DagBag(dag_folder=sys.argv[1])
from airflow.serialization.serialized_objects import DagSerialization
ser = {}
for dag_id, dag in bag.dags.items():
    s = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    ser[dag_id] = {"timetable": type(s.timetable).__name__, "summary": s.timetable.summary,
                   "tt": s.timetable.serialize() if hasattr(s.timetable, "serialize") else None}
from airflow.sdk.listener import get_listener_manager
lm = get_listener_manager()
print("PARSE_RESULT " + json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dags": sorted(bag.dags),
    "file_seconds": {Path(s.file).name if False else s.file: s.duration.total_seconds() for s in bag.dagbag_stats},
    "airflow_import_seconds": t_airflow,
    "heavy": [m for m in sys.argv[2].split(",") if m in sys.modules],
    "serialized": ser,
    "listeners": [getattr(p, "__name__", str(p)) for p in lm.pm.get_plugins()],
}))
""".replace("Path(s.file).name if False else ", "")


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow_parse")
    proc = subprocess.run(
        [sys.executable, "-c", PARSE_SCRIPT, str(REPO / "dags"), ",".join(HEAVY)],
        env=airflow_env(home), capture_output=True, text=True, timeout=300, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PARSE_RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("PARSE_RESULT "))


@pytest.mark.slow  # a fresh interpreter importing Airflow
def test_dagbag_parses_every_dag_without_import_errors(parsed):
    assert parsed["errors"] == {}
    assert set(parsed["dags"]) == DAG_IDS
    for name, seconds in sorted(parsed["file_seconds"].items()):
        print(f"parse time {name}: {seconds * 1000:.1f} ms")  # figures for the report (-s)
    print(f"airflow import: {parsed['airflow_import_seconds']:.2f} s")
    assert set(parsed["file_seconds"]) == {f"{d}.py" for d in DAG_IDS}


@pytest.mark.slow  # a fresh interpreter importing Airflow
def test_no_heavy_library_is_imported_at_parse_time(parsed):
    # torch/GX/PyG/polars at module level would cost ~12 s per parse (SPEC 10)
    assert parsed["heavy"] == []


@pytest.mark.slow  # a fresh interpreter importing Airflow
def test_dags_survive_serialization_with_the_registered_timetable(parsed):
    s = parsed["serialized"]
    # the JPX timetable OR the quotes store's Asset (atft_ingest commits day D)
    assert s["atft_retrain"]["timetable"] == "AssetOrTimeSchedule"
    assert s["atft_retrain"]["summary"] == "Asset or JPX trading days 18:00 JST"
    assert '"at": "18:00"' in json.dumps(s["atft_retrain"]["tt"]["timetable"])
    assert "atft_quotes_store" in json.dumps(s["atft_retrain"]["tt"]["asset_condition"])
    assert s["atft_ingest"]["timetable"] == "JPXTradingDayTimetable"
    assert s["atft_ingest"]["tt"] == {"at": "17:30"}
    assert s["atft_hpo"]["timetable"] == "TokyoCronTimetable"  # Asia/Tokyo cron, summary "... JST"
    assert s["atft_rollback"]["timetable"] == "NullTimetable"


@pytest.mark.slow  # a fresh interpreter importing Airflow
def test_metrics_listener_plugin_is_registered(parsed):
    assert "atft_metrics_listener" in parsed["listeners"]


@pytest.mark.slow  # a fresh interpreter importing Airflow
def test_heavy_import_detector_is_not_blind(tmp_path):
    """The check above would fail for a DAG file importing polars at module level."""
    bad = tmp_path / "dags"
    bad.mkdir()
    (bad / "heavy_dag.py").write_text(
        "import polars\nfrom airflow.sdk import dag, task\n"
        "@dag(schedule=None)\ndef heavy():\n    @task\n    def t():\n        pass\n    t()\nheavy()\n")
    proc = subprocess.run(
        [sys.executable, "-c", PARSE_SCRIPT, str(bad), ",".join(HEAVY)],
        env=airflow_env(tmp_path), capture_output=True, text=True, timeout=300, cwd=REPO)
    out = json.loads([ln for ln in proc.stdout.splitlines()
                      if ln.startswith("PARSE_RESULT ")][-1].removeprefix("PARSE_RESULT "))
    assert "polars" in out["heavy"]


# --------------------------------------------------------------------------- structure (in-process)
@pytest.fixture(scope="module")
def bag(af_env):
    from airflow.dag_processing.dagbag import DagBag

    b = DagBag(dag_folder=str(REPO / "dags"))
    assert b.import_errors == {}
    return b


@pytest.fixture(scope="module")
def serialized(bag):
    """The scheduler/API-server view of each DAG (validates trigger confs against Params)."""
    from airflow.serialization.serialized_objects import DagSerialization

    return {k: DagSerialization.deserialize_dag(DagSerialization.serialize_dag(d))
            for k, d in bag.dags.items()}


def test_policies(bag):
    for dag_id, dag in bag.dags.items():
        assert "atft" in dag.tags, dag_id
        assert dag.max_active_runs == 1, dag_id
        assert dag.doc_md and dag.doc_md.lstrip().startswith(f"# {dag_id}"), dag_id
        for t in dag.tasks:
            assert t.owner == "atft-mlops", (dag_id, t.task_id)
            assert t.doc_md, (dag_id, t.task_id)
            if dag_id == "atft_rollback" or (dag_id, t.task_id) == ("atft_retrain", "validate_conf"):
                assert t.retries == 0  # not idempotent / cannot be fixed by retrying
            else:
                assert t.retries >= 1, (dag_id, t.task_id)
    retrain = bag.dags["atft_retrain"]
    assert retrain.catchup is False
    assert type(retrain.timetable).__name__ == "AssetOrTimeSchedule"
    assert type(retrain.timetable.timetable).__name__ == "JPXTradingDayTimetable"
    assert bag.dags["atft_ingest"].catchup is False
    assert type(bag.dags["atft_rollback"].timetable).__name__ == "NullTimetable"  # manual only


def test_retrain_task_graph(bag):
    dag = bag.dags["atft_retrain"]
    edges = {t.task_id: set(t.downstream_task_ids) for t in dag.tasks}
    assert edges == {
        "validate_conf": {"not_done_today"},
        "not_done_today": {"check_fresh_data"},
        "check_fresh_data": {"validate"},
        "validate": {"features"},
        "features": {"train"},
        "train": {"evaluate", "publish", "metrics"},
        "evaluate": {"gate", "metrics"},
        "gate": {"publish", "skip_publish", "metrics"},
        "publish": {"metrics"},
        "skip_publish": {"metrics"},
        "metrics": set(),
    }
    train = dag.get_task("train")
    assert (train.queue, train.pool) == ("gpu", "gpu")
    assert {t.task_id for t in dag.tasks if t.queue == "gpu"} == {"train"}
    assert dag.get_task("gate").task_type == "_BranchPythonDecoratedOperator"
    assert dag.get_task("check_fresh_data").mode == "reschedule"
    assert str(dag.get_task("metrics").trigger_rule) in ("none_failed_min_one_success",
                                                          "TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS")


def test_hpo_maps_trials_over_one_study(bag, serialized):
    dag = bag.dags["atft_hpo"]
    edges = {t.task_id: set(t.downstream_task_ids) for t in dag.tasks}
    assert edges == {
        "create_study": {"plan_trials", "run_trial", "summarise"},
        "plan_trials": {"run_trial"},
        "run_trial": {"summarise"},
        "summarise": set(),
    }
    trial = dag.get_task("run_trial")
    assert type(trial).__name__ == "DecoratedMappedOperator"
    assert (trial.queue, trial.pool) == ("gpu", "gpu")
    assert "0 3 * * 6" in serialized["atft_hpo"].timetable.summary and dag.catchup is False
    assert trial.doc_md.startswith("One Optuna trial")


@pytest.mark.parametrize(
    ("conf", "bad_key"),
    [
        ({"lr": -1}, "lr"),
        ({"lr": 0}, "lr"),
        ({"lr": "fast"}, "lr"),
        ({"hidden_size": 3}, "hidden_size"),
        ({"hidden_size": 4096}, "hidden_size"),
        ({"hidden_size": 64.5}, "hidden_size"),
        ({"epochs_per_phase": [1, -1, 1, 1]}, "epochs_per_phase"),
        ({"epochs_per_phase": 5000}, "epochs_per_phase"),
        ({"loss_weights": {"bogus": 1.0}}, "loss_weights"),
        ({"loss_weights": {"rankic": -0.5}}, "loss_weights"),
        ({"min_rank_ic": 2.0}, "min_rank_ic"),
        ({"data_start": "2024-02-30"}, "data_start"),
        ({"config": "../../etc/passwd"}, "config"),
        ({"config": "no-such-config"}, "config"),
        ({"epochs_per_phase": 2}, "epochs_per_phase"),
        ({"epochs": -1}, "epochs"),
        ({"data_end": "07/05/2024"}, "data_end"),
        ({"force": "yes"}, "force"),
        ({"nproc": 0}, "nproc"),
        ({"nproc": 16}, "nproc"),
        ({"overrides": ["not an override"]}, "overrides"),
    ],
)
def test_retrain_params_refuse_bad_values_before_anything_runs(serialized, conf, bad_key):
    from airflow.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match=f"param {bad_key}"):
        serialized["atft_retrain"].params.deep_merge(conf).validate()


def test_retrain_params_accept_a_full_good_form(serialized):
    conf = {"config": "demo", "epochs_per_phase": [1, 2, 1, 1], "lr": 1e-3, "hidden_size": 64,
            "loss_weights": {"rankic": 2.0, "sharpe": None}, "seed": 1, "min_rank_ic": 0.01,
            "min_sharpe": 0.3, "data_start": "2023-01-04", "data_end": "2024-05-07",
            "overrides": ["graph.k=20"], "force": True, "actor": "quant@desk", "nproc": 2}
    assert serialized["atft_retrain"].params.deep_merge(conf).validate() == conf | {
        "data_source": None, "epochs": None}
    defaults = serialized["atft_retrain"].params.deep_merge({}).validate()
    assert defaults["config"] == "default" and defaults["force"] is False


def test_retrain_params_map_onto_the_typed_config(bag):
    """Every Param the pipeline maps is on the form, and a good form yields the expected Config."""
    from atft_core import pipeline

    params = bag.dags["atft_retrain"].params
    assert set(pipeline.PARAM_TO_CONFIG) <= set(params.keys())
    form = {k: params[k] for k in params} | {"config": "test", "lr": 3e-3, "hidden_size": 32,
                                              "epochs_per_phase": [2, 0, 1, 3]}
    cfg = pipeline.task_config({"params": form})
    assert cfg.train.optimizer.lr == 3e-3 and cfg.model.hidden_size == 32
    assert [p.epochs for p in cfg.train.phases] == [2, 0, 1, 3]


def test_other_dags_params(serialized):
    from airflow.exceptions import ParamValidationError

    hpo = serialized["atft_hpo"].params
    assert hpo.deep_merge({}).validate()["n_trials"] == 8
    for bad in (0, 65, "8"):
        with pytest.raises(ParamValidationError, match="n_trials"):
            hpo.deep_merge({"n_trials": bad}).validate()
    rb = serialized["atft_rollback"].params
    with pytest.raises(ParamValidationError, match="reason"):
        rb.deep_merge({}).validate()  # a rollback needs a reason (audit)
    with pytest.raises(ParamValidationError, match="to_run_id"):
        rb.deep_merge({"reason": "bad model", "to_run_id": "../x y"}).validate()
    ok = rb.deep_merge({"reason": "RankIC collapsed", "to_run_id": "20240507-abc-123"}).validate()
    assert ok["to_run_id"] == "20240507-abc-123"


# --------------------------------------------------------------------------- plugins
def _ti(dag_id="atft_retrain", task_id="train", params=None):
    def ctx():
        if params is None:
            raise RuntimeError("no runtime context (API-server TaskInstance)")
        return {"params": params}

    return SimpleNamespace(dag_id=dag_id, task_id=task_id, get_template_context=ctx)


def test_listener_reports_success_and_failure_to_the_textfile(af_env, tmp_path, monkeypatch):
    import atft_metrics_listener as listener

    from atft_core.observability import read_textfile_value

    monkeypatch.delenv("ATFT_PUSHGATEWAY_URL", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_ATFT_PUSHGATEWAY", raising=False)
    params = {"config": "test", "overrides": [f"metrics.textfile_dir={tmp_path}"]}
    listener.on_task_instance_success(previous_state=None, task_instance=_ti(params=params))
    files = list(tmp_path.glob("*.prom"))
    assert len(files) == 1 and "atft_retrain" in files[0].name and "train" in files[0].name
    assert read_textfile_value(files[0], "atft_task_success") == 1.0
    listener.on_task_instance_failed(previous_state=None, task_instance=_ti(params=params),
                                     error=RuntimeError("boom"))
    assert read_textfile_value(files[0], "atft_task_success") == 0.0
    assert read_textfile_value(files[0], "atft_task_last_failure_timestamp_seconds") > 1.6e9
    # other DAGs are not ours to report
    assert listener.report_task_result(_ti(dag_id="example", params=params), "success") is False
    assert len(list(tmp_path.glob("*.prom"))) == 1


def test_listener_errors_never_reach_the_task(af_env, monkeypatch, caplog):
    import atft_metrics_listener as listener

    import atft_core.observability as obs

    class Exploding:
        def __init__(self, *a, **k):
            raise OSError("disk on fire")

    monkeypatch.setattr(obs, "MetricsPusher", Exploding)
    assert listener.report_task_result(_ti(params={"config": "test"}), "failed") is False
    # the hooks swallow it too, and an unparsable config (bad Param) is no exception either
    assert listener.on_task_instance_failed(previous_state=None, task_instance=_ti(),
                                            error="x") is None
    assert listener.on_task_instance_success(
        previous_state=None, task_instance=_ti(params={"config": "no-such-config"})) is None
    assert "could not report" in caplog.text


def test_task_ctx_uses_the_interval_and_tokyo_trading_day(af_env):
    import pendulum
    from atft_airflow_utils import task_ctx

    dag_run = SimpleNamespace(dag_id="atft_retrain", run_id="scheduled__x", conf={"lr": 0.01},
                              run_type=SimpleNamespace(value="scheduled"),  # DagRunType.SCHEDULED
                              run_after=pendulum.datetime(2024, 5, 7, 9, tz="UTC"))
    ctx = task_ctx({"dag_run": dag_run, "ti": SimpleNamespace(try_number=2),
                    "dag": SimpleNamespace(params={"lr": None, "config": "default"}),
                    "data_interval_start": pendulum.datetime(2024, 5, 2, 9, tz="UTC"),
                    "data_interval_end": pendulum.datetime(2024, 5, 7, 9, tz="UTC"),
                    "params": {"lr": 0.01}}, endpoints=False)
    assert ctx == {"dag_id": "atft_retrain", "run_id": "scheduled__x", "run_type": "scheduled",
                   "data_interval_start": "2024-05-02T09:00:00+00:00",
                   "data_interval_end": "2024-05-07T09:00:00+00:00",
                   "as_of": "2024-05-07", "params": {"lr": 0.01}, "try_number": 2,
                   "conf": {"lr": 0.01}, "param_names": ["config", "lr"]}
    json.dumps(ctx)  # JSON-able
    # no data interval (Airflow 3 manual run without logical date): JPX interval of run_after
    dag_run = SimpleNamespace(dag_id="atft_rollback", run_id="manual__y", conf=None,
                              run_after=pendulum.datetime(2024, 5, 11, 1, tz="UTC"))  # Sat 10:00 JST
    ctx = task_ctx({"dag_run": dag_run, "ti": SimpleNamespace(try_number=1),
                    "data_interval_start": None, "data_interval_end": None, "params": {}},
                   endpoints=False)
    assert ctx["as_of"] == "2024-05-10" and ctx["conf"] == {} and ctx["param_names"] is None
    assert ctx["data_interval_end"] == "2024-05-10T09:00:00+00:00"


def test_connections_resolve_through_airflow_hooks(af_env, monkeypatch):
    """BaseHook / AwsBaseHook read Airflow's secrets backends (env here; metadata DB or a secrets
    backend in a deployment) -- the endpoints reach the run's config and metrics pusher."""
    from atft_airflow_utils import airflow_endpoints

    from atft_core.pipeline import RunContext

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
              "ATFT_PUSHGATEWAY_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_ATFT_PUSHGATEWAY", "http://gw-user:gw%20pass@127.0.0.1:9091")
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({
        "conn_type": "aws", "login": "AKIDEXAMPLE", "password": "s3cret",
        "extra": {"endpoint_url": "http://127.0.0.1:5000", "region_name": "ap-northeast-1"}}))
    monkeypatch.setattr("os.environ", dict(__import__("os").environ))  # the hook exports keys here
    ep = airflow_endpoints()
    assert ep["s3_endpoint_url"] == "http://127.0.0.1:5000" and ep["aws_credentials"] == "aws_default"
    import os

    assert (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]) == ("AKIDEXAMPLE", "s3cret")
    monkeypatch.delenv("AIRFLOW_CONN_ATFT_PUSHGATEWAY")  # the pusher must use what the hook found
    rc = RunContext.build({"dag_id": "atft_retrain", "run_id": "r", "as_of": "2024-05-07",
                           "params": {"config": "test"}, "endpoints": ep})
    assert rc.config.registry.endpoint_url == "http://127.0.0.1:5000"
    gw = rc.pusher("train").gateway
    assert (gw.url, gw.username, gw.password) == ("http://127.0.0.1:9091", "gw-user", "gw pass")
    assert "s3cret" not in json.dumps(ep) and "s3cret" not in json.dumps(rc.record())


def test_missing_pool_is_named_with_the_fix(af_env):
    """Fault 13: a pool used by a task but missing in Airflow leaves the task 'scheduled' forever;
    the check names the pool, the tasks and the command that creates it."""
    import atft_pools

    from atft_core.config import CONFIG_DIR

    shipped = json.loads((CONFIG_DIR.parent / "airflow" / "pools.json").read_text())
    assert atft_pools.shipped_pools() == shipped and shipped["gpu"]["slots"] == 1
    tasks = [SimpleNamespace(task_id="train", pool="gpu"), SimpleNamespace(task_id="gate", pool="default_pool"),
             SimpleNamespace(task_id="x", pool=None)]
    used = atft_pools.pools_used(tasks)
    assert used == {"gpu": ["train"]}
    assert atft_pools.missing_pool_messages("atft_retrain", used, ["default_pool", "gpu"]) == []
    (line,) = atft_pools.missing_pool_messages("atft_retrain", used, ["default_pool"])
    assert line.startswith("atft: pool 'gpu' does not exist: atft_retrain.train will wait in 'scheduled'")
    assert "airflow pools import include/airflow/pools.json" in line
    assert 'airflow pools set gpu 1 "GPU worker slots' in line


def test_every_pool_the_dags_use_is_shipped(bag):
    """Fault 13: the gpu pool existed only in docker-compose; every pool is in pools.json, which the
    demo imports (airflow pools import) and docker-compose uses too."""
    import atft_pools

    used = {p for dag in bag.dags.values() for p in atft_pools.pools_used(dag.tasks)}
    assert used == {"gpu"} and used <= set(atft_pools.shipped_pools())
    demo = (REPO / "atft_core" / "commands" / "demo.py").read_text()
    assert '"pools", "import"' in demo
    assert "airflow pools import /opt/atft/include/airflow/pools.json" in (REPO / "docker/airflow-init.sh").read_text()
    assert "include/airflow/pools.json" in (REPO / "README.md").read_text()


def test_pool_check_runs_in_the_scheduler_listener(parsed):
    assert "atft_pools" in parsed["listeners"]


def test_params_form_reads_like_the_params_ui_example(serialized):
    """Sections, an enum of the shipped configs, date pickers, nothing optional starred (the form
    stars a field whose type does not allow null)."""
    from atft_core.config import CONFIG_DIR

    params = serialized["atft_retrain"].params
    schemas = {k: params.get_param(k).schema for k in params}
    assert set(schemas["config"]["enum"]) == {p.stem for p in CONFIG_DIR.glob("*.yaml")}
    assert {s.get("section") for s in schemas.values()} == {
        "Run", "Training (empty = the config's value)", "Data window", "Promotion gate", "Advanced"}
    starred = sorted(k for k, s in schemas.items() if "null" not in (
        s["type"] if isinstance(s["type"], list) else [s["type"]]))
    assert starred == ["config"]  # the only required field, and it has a default
    assert schemas["data_start"]["format"] == schemas["data_end"]["format"] == "date"
    assert all(s.get("title") and params.get_param(k).description for k, s in schemas.items())


def test_listener_counts_failures_even_when_the_conf_is_invalid(af_env, tmp_path, monkeypatch):
    """Fault 16: a task that failed because of its conf was reported as "could not report failed
    for check_fresh_data" -- the failure never reached Prometheus."""
    import atft_metrics_listener as listener

    from atft_core.observability import read_textfile_value

    monkeypatch.delenv("ATFT_PUSHGATEWAY_URL", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_ATFT_PUSHGATEWAY", raising=False)
    bad = {"config": "test", "epochs_per_phase": [1, 2], "overrides": [f"metrics.textfile_dir={tmp_path}"]}
    ti = _ti(task_id="check_fresh_data", params=bad)
    for n in (1, 2, 3):
        assert listener.report_task_result(ti, "failed") is True
        (prom,) = tmp_path.glob("*.prom")
        assert read_textfile_value(prom, "atft_task_failures_total") == float(n)
    assert read_textfile_value(prom, "atft_task_success") == 0.0
    text = prom.read_text()
    assert 'atft_task_failures_total{dag_id="atft_retrain",task_id="check_fresh_data"} 3.0' in text
    listener.on_task_instance_success(previous_state=None, task_instance=ti)
    assert read_textfile_value(prom, "atft_task_success") == 1.0
    assert read_textfile_value(prom, "atft_task_failures_total") == 3.0  # a success keeps the count


@pytest.mark.integration
def test_listener_failure_count_reaches_a_real_pushgateway(af_env, tmp_path, monkeypatch):
    import urllib.request

    import atft_metrics_listener as listener
    from bin_helpers import start_pushgateway, stop_server

    url, proc = start_pushgateway(tmp_path / "pushgateway.log")
    try:
        monkeypatch.setenv("ATFT_PUSHGATEWAY_URL", url)
        ti = _ti(task_id="validate_conf", params={"config": "test", "epochs_per_phase": [1]})
        for _ in range(2):
            listener.on_task_instance_failed(previous_state=None, task_instance=ti, error="bad conf")
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
            lines = [ln for ln in r.read().decode().splitlines()
                     if ln.startswith("atft_task_failures_total{")]
    finally:
        stop_server(proc)
    assert len(lines) == 1 and 'task_id="validate_conf"' in lines[0] and 'dag_id="atft_retrain"' in lines[0]
    assert float(lines[0].rsplit(" ", 1)[1]) == 2.0


# --------------------------------------------------------------------------- dag.test (wiring)
E2E_SCRIPT = r"""
import json, os, sys, types
sys.path.insert(0, os.path.join(sys.argv[1], "plugins"))
calls = []
state = {"decision": None}

class DataNotFresh(RuntimeError):
    pass

def rec(name, result):
    def f(ctx, *args):
        calls.append({"fn": name, "ctx": ctx, "args": args})
        return result(ctx, *args) if callable(result) else result
    return f

fake = types.ModuleType("atft_core.pipeline")
fake.DataNotFresh = DataNotFresh
fake.RunConfError = type("RunConfError", (ValueError,), {})
fake.validate_conf = rec("validate_conf", {"work_dir": "w", "identity": "abc"})
fake.check_fresh_data = rec("check_fresh_data", {"source": "raw", "rows": 10})
fake.validate_data = rec("validate_data", {"success": True, "source": "raw"})
fake.build_features = rec("build_features", {"features_path": "f.parquet"})
fake.train_candidate = rec("train_candidate", {"run_id": "r1", "run_dir": "runs/r1"})
fake.evaluate_holdout = rec("evaluate_holdout", {"evaluation_path": "w/evaluation.json",
                                                 "champion_run_id": "r0"})
fake.gate = rec("gate", lambda ctx, ev: {"decision": state["decision"], "reasons": ["why"]})
fake.publish = rec("publish", {"run_id": "r1", "uri": "file://reg/runs/r1"})
fake.report_metrics = rec("report_metrics", {"ok": True})
fake.day_already_retrained = rec("day_already_retrained", lambda ctx: state.get("done"))
import atft_core
sys.modules["atft_core.pipeline"] = fake
atft_core.pipeline = fake

import pendulum
from airflow.dag_processing.dagbag import DagBag
dag = DagBag(dag_folder=os.path.join(sys.argv[1], "dags")).dags["atft_retrain"]
out = {}
for decision, day in (("promote", 7), ("reject", 8)):
    state["decision"] = decision
    del calls[:]
    dr = dag.test(logical_date=pendulum.datetime(2024, 5, day, 12, tz="UTC"),
                  run_conf={"config": "test", "lr": 0.001})
    out[decision] = {"state": str(dr.state), "calls": list(calls),
                     "tis": {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}}
state["done"] = {"run_id": "scheduled__earlier", "decision": "promote"}  # the day was retrained
del calls[:]
dr = dag.test(logical_date=pendulum.datetime(2024, 5, 9, 12, tz="UTC"), run_conf={"config": "test"})
out["done"] = {"state": str(dr.state), "calls": list(calls),
               "tis": {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}}
print("E2E_RESULT " + json.dumps(out, default=str))
"""


@pytest.mark.slow
@pytest.mark.integration
def test_dag_test_runs_the_retrain_wiring_end_to_end(tmp_path):
    """Real Airflow (SQLite, dag.test) over a recording stand-in for atft_core.pipeline:
    ctx contents, XCom hand-offs, both gate branches and the metrics trigger rule."""
    env = airflow_env(tmp_path)
    airflow = Path(sys.executable).with_name("airflow")
    mig = subprocess.run([str(airflow), "db", "migrate"], env=env, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert mig.returncode == 0, mig.stderr[-2000:]
    proc = subprocess.run([sys.executable, "-c", E2E_SCRIPT, str(REPO)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("E2E_RESULT ")]
    assert proc.returncode == 0 and lines, (proc.stdout[-2000:], proc.stderr[-3000:])
    out = json.loads(lines[-1].removeprefix("E2E_RESULT "))

    promote, reject = out["promote"], out["reject"]
    assert promote["state"] == reject["state"] == "success"
    order = ["validate_conf", "day_already_retrained", "check_fresh_data", "validate_data", "build_features", "train_candidate",
             "evaluate_holdout", "gate"]
    assert [c["fn"] for c in promote["calls"]] == [*order, "publish", "report_metrics"]
    assert [c["fn"] for c in reject["calls"]] == [*order, "report_metrics"]
    assert promote["tis"]["skip_publish"] == "skipped" and promote["tis"]["publish"] == "success"
    assert reject["tis"]["publish"] == "skipped" and reject["tis"]["skip_publish"] == "success"
    assert reject["tis"]["metrics"] == "success"
    # a day already retrained: the short-circuit skips every later task, metrics included
    done = out["done"]
    assert done["state"] == "success" and [c["fn"] for c in done["calls"]] == ["validate_conf",
                                                                               "day_already_retrained"]
    assert done["tis"]["not_done_today"] == "success"
    assert {t: st for t, st in done["tis"].items() if t not in ("validate_conf", "not_done_today")} == \
        {t: "skipped" for t in done["tis"] if t not in ("validate_conf", "not_done_today")}

    ctx = promote["calls"][0]["ctx"]  # logical date Tue 2024-05-07 21:00 JST
    assert ctx["conf"] == {"config": "test", "lr": 0.001} and "overrides" in ctx["param_names"]
    assert ctx["as_of"] == "2024-05-07"
    assert ctx["data_interval_start"] == "2024-05-02T09:00:00+00:00"  # Golden Week closure
    assert ctx["data_interval_end"] == "2024-05-07T09:00:00+00:00"
    assert ctx["params"]["lr"] == 0.001 and ctx["params"]["config"] == "test"
    assert ctx["try_number"] == 1 and ctx["dag_id"] == "atft_retrain" and ctx["run_type"] == "manual"
    assert reject["calls"][0]["ctx"]["as_of"] == "2024-05-08"
    # hand-offs: each call gets its upstream's result
    by_fn = {c["fn"]: c["args"] for c in promote["calls"]}
    assert by_fn["validate_data"] == [{"source": "raw", "rows": 10}]
    assert by_fn["train_candidate"] == [{"features_path": "f.parquet"}]
    assert by_fn["publish"][1] == {"decision": "promote", "reasons": ["why"]}
    # metrics gets the references of every upstream (published is None when skipped)
    assert by_fn["report_metrics"] == [{"run_id": "r1", "run_dir": "runs/r1"},
                                       {"evaluation_path": "w/evaluation.json", "champion_run_id": "r0"},
                                       {"decision": "promote", "reasons": ["why"]},
                                       {"run_id": "r1", "uri": "file://reg/runs/r1"}]
    rargs = {c["fn"]: c["args"] for c in reject["calls"]}["report_metrics"]
    assert rargs[2]["decision"] == "reject" and rargs[3] is None
