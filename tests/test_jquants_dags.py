"""Real data by default, the synthetic-data promotion rule, and the nightly chain under dag.test():
atft_ingest (local J-Quants V2 server) -> Asset event -> asset-triggered atft_retrain on day D."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from jquants_server import API_KEY, Market, serve

from atft_core import calendar, pipeline
from atft_core.config import load_config
from atft_core.data.store import data_source_kind

REPO = Path(__file__).resolve().parents[1]
PASSING = {"rank_ic_1d": 0.2, "sharpe_1d": 2.0, "coverage": 1.0, "pred_std_1d": 0.01, "n_days": 5,
           "daily": {"date": [f"2024-05-0{i}" for i in range(1, 6)], "rank_ic_1d": [0.2] * 5,
                     "ls_return_1d": [0.0] * 5}}


def test_production_reads_the_store_demo_and_tests_are_synthetic():
    assert load_config("default").data.source == "var/data/quotes"
    assert load_config("default").gate.allow_synthetic is False
    for name in ("demo", "test", "graph_gain"):
        cfg = load_config(name)
        assert cfg.data.source is None and cfg.gate.allow_synthetic is True, name
    assert load_config("default", ["data.source=synthetic"]).data.source is None


def test_data_source_kind(tmp_path):
    from atft_core.config import SyntheticConfig
    from atft_core.data.synthetic import generate_market, save_market

    assert data_source_kind(None) == "synthetic"
    assert data_source_kind("s3://bucket/quotes") == "store"
    assert data_source_kind(tmp_path / "real") == "store"
    save_market(generate_market(SyntheticConfig(n_stocks=10, n_days=60)), tmp_path / "synth")
    assert data_source_kind(tmp_path / "synth") == "synthetic"  # `atft synth` output is not market data


def _gate(tmp_path, monkeypatch, params: dict) -> dict:
    monkeypatch.chdir(tmp_path)
    ctx = {"dag_id": "atft_retrain", "run_id": "scheduled__x", "as_of": "2024-05-07",
           "data_interval_start": "2024-05-06T09:00:00+00:00", "data_interval_end": "2024-05-07T09:00:00+00:00",
           "params": params, "try_number": 1}
    cfg = pipeline.task_config(ctx)
    ev = pipeline.work_dir(ctx, cfg) / "evaluation.json"
    ev.write_text(json.dumps({"candidate": PASSING, "champion": None, "champion_run_id": None}))
    return pipeline.gate(ctx, {"evaluation_path": str(ev)})


def test_production_config_on_synthetic_data_is_refused_promotion(tmp_path, monkeypatch):
    monkeypatch.setenv("ATFT_PUSHGATEWAY_URL", "")
    refused = _gate(tmp_path, monkeypatch, {"config": "default", "data_source": "synthetic"})
    assert refused["decision"] == "reject"
    assert any("trained on synthetic data: refusing to promote" in r and "allow_synthetic" in r
               for r in refused["reasons"])
    # force does not override provenance
    forced = _gate(tmp_path, monkeypatch, {"config": "default", "data_source": "synthetic",
                                           "force": True, "actor": "ops"})
    assert forced["decision"] == "reject"
    # the same numbers on the test config (allow_synthetic: true) are promoted
    assert _gate(tmp_path, monkeypatch, {"config": "test"})["decision"] == "promote"
    # and on market data (a store) the rule does not apply
    assert _gate(tmp_path, monkeypatch, {"config": "default"})["decision"] == "promote"


def test_quotes_store_env_moves_the_store_not_the_choice(monkeypatch):
    ctx = {"dag_id": "d", "run_id": "r", "as_of": "2024-05-07", "params": {"config": "test"}}
    monkeypatch.setenv("ATFT_QUOTES_STORE", "s3://atft/quotes")
    assert pipeline.task_config(ctx).data.source is None  # the demo/test config stays synthetic
    ctx["params"] = {"config": "default"}
    assert pipeline.task_config(ctx).data.source == "s3://atft/quotes"


@pytest.mark.slow  # two GX validations
def test_ingest_tasks_validate_before_commit_and_rerun_idempotently(tmp_path, monkeypatch):
    from atft_core import ingest_pipeline
    from atft_core.data.jquants import JQuantsFeed, fetch_range
    from atft_core.data.store import stored_days
    from atft_core.validation import DataValidationError

    monkeypatch.chdir(tmp_path)
    day = dt.date(2024, 5, 9)
    days = calendar.trading_days(calendar.add_trading_days(day, -40), day)
    store = tmp_path / "quotes"
    market = Market(codes=[f"{1300 + j}0" for j in range(30)], days=days, published_through=day)
    ctx = {"dag_id": "atft_ingest", "run_id": "scheduled__1", "as_of": str(day),
           "params": {"config": "test", "data_source": str(store)}}
    with serve(market) as srv:
        monkeypatch.setenv("JQUANTS_API_URL", srv.url)
        monkeypatch.setenv("HOME", str(tmp_path))
        fetch_range(JQuantsFeed(API_KEY), days[0], days[-2], str(store), progress=False)
        before = {p: p.read_bytes() for p in store.rglob("*.parquet")}
        # a day with 5 of 30 stocks fails coverage: nothing reaches the store
        real_bars = market.bars
        monkeypatch.setattr(market, "bars", lambda d: real_bars(d)[:5] if d == day else real_bars(d))
        thin = ingest_pipeline.fetch_day(ctx, API_KEY)
        with pytest.raises(DataValidationError, match="coverage"):
            ingest_pipeline.validate_day(ctx, thin)
        assert {p: p.read_bytes() for p in store.rglob("*.parquet")} == before
        # the full day passes, commits, and a re-run (backfill of the same day) changes nothing
        monkeypatch.setattr(market, "bars", real_bars)
        fetched = ingest_pipeline.fetch_day(ctx, API_KEY)
        assert ingest_pipeline.validate_day(ctx, fetched)["rows"] > 0
        first = ingest_pipeline.commit_day(ctx, fetched)
        assert first["replaced_existing_day"] is False and stored_days(store)[-1] == day
        after = {p: p.read_bytes() for p in store.rglob("*.parquet")}
        rerun = ingest_pipeline.commit_day(ctx | {"run_id": "backfill__1"},
                                           ingest_pipeline.fetch_day(ctx | {"run_id": "backfill__1"}, API_KEY))
        assert rerun["replaced_existing_day"] is True
        assert {p: p.read_bytes() for p in store.rglob("*.parquet")} == after
    with pytest.raises(ingest_pipeline.IngestConfigError, match="synthetic"):
        ingest_pipeline.fetch_day(ctx | {"params": {"config": "test"}}, API_KEY)


# --------------------------------------------------------------------------- the chain
CHAIN = r"""
import json, os, sys
import pendulum
sys.path.insert(0, os.path.join(sys.argv[1], "plugins"))
from unittest import mock
from airflow.dag_processing.dagbag import DagBag
from airflow.models import dagrun as dagrun_mod
from airflow.models.asset import AssetDagRunQueue, AssetEvent, AssetModel
from airflow.settings import Session
from airflow.utils.types import DagRunTriggeredByType, DagRunType
from sqlalchemy import select

bag = DagBag(dag_folder=os.path.join(sys.argv[1], "dags"))
assert not bag.import_errors, bag.import_errors
store, day, tokyo_close = sys.argv[2], sys.argv[3], sys.argv[4]
conf = {"config": "test", "data_source": store}

ingest = bag.dags["atft_ingest"].test(logical_date=pendulum.parse(tokyo_close), run_conf=conf)
ingest_tis = {ti.task_id: str(ti.state) for ti in ingest.get_task_instances()}
s = Session()
asset = s.scalar(select(AssetModel).where(AssetModel.name == "atft_quotes_store"))
events = s.scalars(select(AssetEvent).where(AssetEvent.asset_id == asset.id)).all()
queued = [q.target_dag_id for q in s.scalars(select(AssetDagRunQueue)).all()]

# what the scheduler does with a queued asset event (_create_dag_runs_asset_triggered):
# an ASSET_TRIGGERED run, no logical date / data interval, run_after = the event time
event = events[-1]
def asset_triggered_run(*, dag, session, conf, start_date, **_):
    dr = dag.create_dagrun(
        run_id=dagrun_mod.DagRun.generate_run_id(run_type=DagRunType.ASSET_TRIGGERED, logical_date=None,
                                                 run_after=event.timestamp),
        logical_date=None, data_interval=None, run_after=event.timestamp, conf=conf,
        run_type=DagRunType.ASSET_TRIGGERED, triggered_by=DagRunTriggeredByType.ASSET,
        state="running", start_date=start_date, session=session)
    dr.consumed_asset_events.append(session.merge(event))
    session.commit()
    return dr

retrain_conf = conf | {"min_rank_ic": -1.0, "min_sharpe": -20.0,
                       "overrides": ["train.max_train_batches_per_epoch=2"]}  # the chain, not the model
with mock.patch.object(dagrun_mod, "get_or_create_dagrun", asset_triggered_run):
    retrain = bag.dags["atft_retrain"].test(logical_date=None, run_conf=retrain_conf)
fresh = retrain.get_task_instance("check_fresh_data").xcom_pull(task_ids="check_fresh_data")
print("CHAIN " + json.dumps({
    "ingest_state": str(ingest.state), "ingest_tis": ingest_tis,
    "events": [e.extra for e in events], "queued": queued,
    "retrain_state": str(retrain.state), "retrain_type": str(retrain.run_type),
    "retrain_tis": {ti.task_id: str(ti.state) for ti in retrain.get_task_instances()},
    "fresh": fresh}, default=str))
"""


@pytest.mark.slow
@pytest.mark.integration
def test_ingest_asset_event_triggers_retrain_on_day_d(tmp_path, monkeypatch):
    from atft_core.commands.demo import airflow_env
    from atft_core.data.jquants import JQuantsFeed, fetch_range
    from atft_core.data.store import read_quotes, stored_days

    day = dt.date(2024, 5, 9)
    days = calendar.trading_days(calendar.add_trading_days(day, -199), day)
    codes = [f"{1300 + j}0" for j in range(40)]
    store = tmp_path / "quotes"
    with serve(Market(codes=codes, days=days, published_through=day), page_size=25) as srv:
        monkeypatch.setenv("JQUANTS_API_URL", srv.url)
        monkeypatch.setenv("HOME", str(tmp_path))
        fetch_range(JQuantsFeed(API_KEY), days[0], days[-2], str(store), progress=False)  # history
        assert stored_days(store)[-1] == days[-2]
        env = airflow_env(tmp_path / "airflow") | {
            "JQUANTS_API_URL": srv.url, "HOME": str(tmp_path),
            # the key only in the Airflow connection (password), as in production
            "AIRFLOW_CONN_JQUANTS_DEFAULT": json.dumps({"conn_type": "generic", "password": API_KEY}),
            "ATFT_PUSHGATEWAY_URL": "", "ATFT_REGISTRY": f"file://{tmp_path / 'registry'}",
            # an unpaused consumer is what the scheduler queues asset events for
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False"}
        env.pop("JQUANTS_API_KEY", None)
        airflow = Path(sys.executable).with_name("airflow")
        mig = subprocess.run([str(airflow), "db", "migrate"], env=env, capture_output=True, text=True,
                             timeout=300, cwd=tmp_path)
        assert mig.returncode == 0, mig.stderr[-2000:]
        close = f"{day}T08:30:00+00:00"  # 17:30 JST on D: atft_ingest's slot
        proc = subprocess.run([sys.executable, "-c", CHAIN, str(REPO), str(store), str(day), close],
                              env=env, capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CHAIN ")]
    assert proc.returncode == 0 and lines, (proc.stdout[-3000:], proc.stderr[-6000:])
    out = json.loads(lines[-1].removeprefix("CHAIN "))
    # ingest: fetch -> validate -> commit, day D in the store, one Asset event naming D
    assert out["ingest_state"] == "success", out
    assert out["ingest_tis"] == {"fetch": "success", "validate": "success", "commit": "success"}
    assert stored_days(store)[-1] == day
    assert read_quotes(store, day, day).height == len(codes)
    assert [e["day"] for e in out["events"]] == [str(day)]
    assert "atft_retrain" in out["queued"], out  # the scheduler would start the retrain now
    # the asset-triggered retrain (event at 17:3x JST, before the 18:00 cutoff) is for day D
    assert out["retrain_type"] == "asset_triggered", out
    assert out["fresh"]["latest_day"] == str(day) and out["fresh"]["expected_day"] == str(day), out
    assert out["retrain_state"] == "success", out["retrain_tis"]
