"""End to end: the real ``atft_retrain`` DAG with ``dag.test()`` (Airflow on SQLite), the real
pipeline, a real S3 protocol server over HTTP (moto, 127.0.0.1) and a real Pushgateway.

1. first run (no champion): trains on a tiny synthetic market and is promoted;
2. second run with a deliberately worse config (lr 1e-7: the model barely moves from its random
   init) is rejected and the champion stays;
3. a run on data that fails validation (High < Low on many rows) stops before training,
   publishes nothing and pushes ``atft_data_validation_success 0``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from bin_helpers import start_pushgateway, stop_server

from atft_core.commands.demo import airflow_env

pytest_plugins = ["s3_server"]
REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, os, sys
from unittest.mock import patch
import pendulum
sys.path.insert(0, os.path.join(sys.argv[1], "plugins"))
from airflow.dag_processing.dagbag import DagBag
from airflow.models.dagrun import DagRun
from airflow.serialization.definitions.dag import SerializedDAG
from airflow.utils.types import DagRunType
from atft_core.registry import Registry

_create = SerializedDAG.create_dagrun

def create_scheduled(self, **kw):
    # dag.test() creates manual runs; make this one what the scheduler creates for the interval
    kw.update(run_type=DagRunType.SCHEDULED, run_after=kw["logical_date"],
              run_id=DagRun.generate_run_id(run_type=DagRunType.SCHEDULED,
                                            logical_date=kw["logical_date"], run_after=kw["logical_date"]))
    return _create(self, **kw)

bag = DagBag(dag_folder=os.path.join(sys.argv[1], "dags"))
assert not bag.import_errors, bag.import_errors
dag = bag.dags["atft_retrain"]
runs = json.loads(sys.argv[2])
registry = Registry(os.environ.get("ATFT_REGISTRY", "file://var/registry"))
out = []
for day, conf, *kind in runs:
    if kind == ["scheduled"]:
        with patch.object(SerializedDAG, "create_dagrun", create_scheduled):
            dr = dag.test(logical_date=pendulum.parse(day), run_conf=conf)
    else:
        dr = dag.test(logical_date=pendulum.parse(day), run_conf=conf)
    tis = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
    gate_ti = dr.get_task_instance("gate")
    decision = gate_ti.xcom_pull(task_ids="gate", key="decision") if tis.get("gate") == "success" else None
    alias = registry.get_alias("champion")
    conf_ti = dr.get_task_instance("validate_conf")
    out.append({"run_id": dr.run_id, "state": str(dr.state), "tis": tis, "decision": decision,
                "context": conf_ti.xcom_pull(task_ids="validate_conf") if tis.get("validate_conf") == "success" else None,
                "champion": alias.run_id if alias else None,
                "runs": sorted(r.run_id for r in registry.list_runs())})
print("E2E " + json.dumps(out, default=str))
"""


@pytest.fixture
def pushgateway(tmp_path):
    url, proc = start_pushgateway(tmp_path / "pushgateway.log")
    yield url
    stop_server(proc)


def _bad_quotes(path: Path) -> str:
    """A market whose quotes fail validation: High < Low on 5% of the rows. Returns its last day."""
    import numpy as np
    import polars as pl

    from atft_core.config import SyntheticConfig
    from atft_core.data.synthetic import generate_market

    q = generate_market(SyntheticConfig(n_stocks=30, n_days=120, start="2023-11-01", seed=5)).quotes
    bad = np.random.default_rng(0).random(q.height) < 0.05
    q = q.with_columns(pl.when(pl.Series(bad)).then(pl.col("Low") * 0.5).otherwise(pl.col("High"))
                       .alias("High"))
    q.write_parquet(path)
    return str(q["Date"].max())


def _gateway_samples(url: str) -> dict[str, list[tuple[str, float]]]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if line.startswith("atft_"):
            head, value = line.rsplit(" ", 1)
            name = head.split("{", 1)[0]
            out.setdefault(name, []).append((head, float(value)))
    return out


@pytest.mark.slow
@pytest.mark.integration
def test_retrain_dag_promotes_rejects_and_stops_on_bad_data(tmp_path, s3_endpoint, s3_bucket,
                                                            pushgateway):
    bad_path = tmp_path / "bad_quotes.parquet"
    bad_day = _bad_quotes(bad_path)
    base = {"config": "test", "min_rank_ic": 0.0, "min_sharpe": 0.0,
            "overrides": ["data.synthetic.signal_strength=0.3"]}
    runs = [
        ("2024-05-07T12:00:00+00:00", base),
        ("2024-05-08T12:00:00+00:00", base | {"lr": 1e-7}),
        ("2024-05-09T12:00:00+00:00", base | {"data_source": str(bad_path), "data_end": bad_day}),
    ]
    first, worse, bad = _dag_test(tmp_path, runs, {
        "ATFT_REGISTRY": f"s3://{s3_bucket}/registry",
        "AWS_ENDPOINT_URL": s3_endpoint,
        "ATFT_PUSHGATEWAY_URL": pushgateway,
    })

    # 1. no champion yet: promoted, published to S3, alias set
    assert first["state"] == "success", first
    assert first["decision"]["decision"] == "promote" and first["decision"]["champion_run_id"] is None
    assert first["tis"]["publish"] == "success" and first["tis"]["skip_publish"] == "skipped"
    champion = first["champion"]
    assert champion is not None and first["runs"] == [champion]

    # 2. worse candidate: rejected against the champion on the same holdout; champion stays
    assert worse["state"] == "success", worse
    assert worse["decision"]["decision"] == "reject", worse["decision"]
    assert worse["decision"]["champion_run_id"] == champion
    assert worse["decision"]["reasons"], "a rejection names its reasons"
    assert worse["tis"]["publish"] == "skipped" and worse["tis"]["metrics"] == "success"
    assert worse["champion"] == champion and worse["runs"] == [champion]

    # 3. bad data: validation fails, nothing downstream runs, nothing published
    assert bad["state"] == "failed", bad
    assert bad["tis"]["validate"] == "failed"
    for t in ("features", "train", "evaluate", "gate", "publish"):
        assert bad["tis"][t] in ("upstream_failed", "skipped"), (t, bad["tis"])
    assert bad["champion"] == champion and bad["runs"] == [champion]
    run_dirs = sorted(p.name for p in (tmp_path / "var" / "runs").iterdir())
    assert len(run_dirs) == 2 and not any(n.startswith(bad_day.replace("-", "")) for n in run_dirs)

    # the day graphs live in {work_root}/graph_store: the first night built and stored them, the
    # next night read every day the two share and built only what it did not have
    stores = [json.loads((tmp_path / "var" / "runs" / n / "metrics.json").read_text())["graph_store"]
              for n in run_dirs]
    stores.sort(key=lambda g: g["hits"])
    assert {g["root"] for g in stores} == {"var/work/graph_store"}
    assert stores[0]["hits"] == 0 and stores[0]["writes"] > 0
    assert stores[1]["hits"] > 0 and stores[1]["writes"] < stores[0]["writes"] and stores[1]["bad"] == 0

    # the real Pushgateway holds the stages' metrics: validation failed last, gate rejected before
    s = _gateway_samples(pushgateway)
    assert [v for _, v in s["atft_data_validation_success"]] == [0.0]
    decisions = {h.split('decision="')[1].split('"')[0]: v for h, v in s["atft_gate_decision"]}
    assert decisions["reject"] == 1.0 and decisions["promote"] == 0.0
    assert any(v > 0 for _, v in s["atft_retrain_last_success_timestamp_seconds"])
    assert s["atft_publish_success"] and all(v == 1.0 for _, v in s["atft_publish_success"])
    assert any('task_id="validate"' in h and v == 0.0 for h, v in s["atft_task_success"])


def _dag_test(tmp_path: Path, runs: list, env_extra: dict[str, str] | None = None) -> list[dict]:
    env = airflow_env(tmp_path / "airflow") | (env_extra or {})
    for k in ("ATFT_REGISTRY", "ATFT_PUSHGATEWAY_URL", "AIRFLOW_CONN_ATFT_PUSHGATEWAY"):
        if env_extra is None or k not in env_extra:
            env.pop(k, None)
    airflow = Path(sys.executable).with_name("airflow")
    mig = subprocess.run([str(airflow), "db", "migrate"], env=env, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert mig.returncode == 0, mig.stderr[-2000:]
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO), json.dumps(runs)], env=env,
                          capture_output=True, text=True, timeout=1500, cwd=tmp_path)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("E2E ")]
    assert proc.returncode == 0 and lines, (proc.stdout[-3000:], proc.stderr[-5000:])
    return json.loads(lines[-1].removeprefix("E2E "))


@pytest.mark.slow
@pytest.mark.integration
def test_manual_and_scheduled_runs_of_one_day_keep_separate_records(tmp_path):
    """Fault 15 end to end: a manual run with another config and the scheduled run of the SAME
    trading day both succeed, each on its own raw data, each with its own gate/summary records
    (they used to share var/work/atft_retrain/{day}: the manual run's market was reused by the
    scheduled run and its records were overwritten)."""
    import polars as pl

    gate = {"min_rank_ic": -1.0, "min_sharpe": -20.0}
    manual = {"config": "test", "seed": 1, "actor": "quant@desk", **gate,
              "overrides": ["data.synthetic.n_stocks=40", "data.synthetic.signal_strength=0.3"]}
    scheduled = {"config": "test", **gate, "overrides": ["data.synthetic.signal_strength=0.3"]}
    # Tue 2024-05-07: the manual trigger at 21:00 JST, then the scheduler's run (18:00 JST close)
    man, sch = _dag_test(tmp_path, [("2024-05-07T12:00:00+00:00", manual),
                                    ("2024-05-07T09:00:00+00:00", scheduled, "scheduled")])
    assert man["run_id"].startswith("manual__") and sch["run_id"].startswith("scheduled__")
    for run in (man, sch):
        assert run["state"] == "success", run
        assert {run["tis"][t] for t in ("validate_conf", "check_fresh_data", "train", "gate", "metrics")} \
            == {"success"}
    wd_man, wd_sch = (tmp_path / r["context"]["work_dir"] for r in (man, sch))
    assert wd_man != wd_sch and wd_man.parent == wd_sch.parent  # same day folder, separate runs
    assert wd_man.parent.name == "2024-05-07"
    codes = {k: pl.read_parquet(f"{wd}/raw/**/*.parquet")["Code"].n_unique()
             for k, wd in (("manual", wd_man), ("scheduled", wd_sch))}
    assert codes == {"manual": 40, "scheduled": 60}  # each run generated and used its own market
    records = {}
    for name, wd, run in (("manual", wd_man, man), ("scheduled", wd_sch, sch)):
        ctx = json.loads((wd / "run_context.json").read_text())
        summary = json.loads((wd / "summary.json").read_text())
        decision = json.loads((wd / "gate_decision.json").read_text())
        assert ctx["run_id"] == run["run_id"]
        assert summary["run_id"] == ctx["training_run_id"] == run["context"]["training_run_id"]
        assert summary["evaluation_path"] == str((wd / "evaluation.json").relative_to(tmp_path))
        assert decision["decision"] == run["decision"]["decision"]
        records[name] = summary
    assert records["manual"]["run_id"] != records["scheduled"]["run_id"]
    # the manual run promoted first; the scheduled run was gated against it
    assert man["decision"]["decision"] == "promote" and man["decision"]["champion_run_id"] is None
    assert sch["decision"]["champion_run_id"] == records["manual"]["run_id"]
    assert records["scheduled"]["previous_champion_run_id"] == records["manual"]["run_id"]
