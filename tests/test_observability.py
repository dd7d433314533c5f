"""atft_core.observability: metric table, pushadd semantics, textfile fallback, gateway resolution,
the statsd mapping against Airflow's own metric names, and (integration) real Pushgateway +
Prometheus binaries on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from bin_helpers import (
    free_port,
    require_binary,
    start_pushgateway,
    start_server,
    stop_server,
    wait_until,
)

from atft_core import observability as obs
from atft_core.config import MetricsConfig
from atft_core.observability import METRICS, Delivery, MetricsPusher
from atft_core.observability import pusher as obs_pusher

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "include" / "prometheus" / "rules" / "atft_alerts.yml"
DASHBOARD = ROOT / "include" / "grafana" / "dashboards" / "atft_retrain.json"
STATSD = ROOT / "include" / "statsd" / "statsd_mapping.yml"


class Clock:
    def __init__(self, t: float = 1_700_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def textfile_pusher(tmp_path, **kw) -> MetricsPusher:
    return MetricsPusher(MetricsConfig(textfile_dir=str(tmp_path)), environ={}, **kw)


def exercise_every_stage(p: MetricsPusher) -> list[Delivery]:
    """One call of every public method with every optional metric set."""
    return [
        p.data_validation(True, 12_000, dt.date(2024, 5, 7), 3, codes=300, failed_expectations=0,
                          seconds=2.5),
        p.features(11_500, 4.0, columns=24),
        p.train_epoch(3, 1, 2500.0, {1: 0.04, 5: 0.03, 10: 0.02, 20: 0.01}, 1.7, 0.12, 2,
                      train_loss=0.93, val_loss=0.97, learning_rate=2e-4, gpu_util=0.85,
                      gpu_mem_bytes=3.2e9, data_wait_ratio=0.03),
        p.stage("train", True, 600.0),
        p.stage("evaluate", True, 30.0),
        p.gate("promote", {1: 0.05, 5: 0.04}, {1: 0.03, 5: 0.02}, 0.9, 0.7, 0.02, 0.5),
        p.publish(True, 4_000_000, 1.5),
        p.retrain_success("2024-05-07"),
        p.task_result(p.dag_id, "train", "failed"),
        p.task_result(p.dag_id, "train", "success"),
        p.signal_published("2024-05-07"),
        p.drift({"ret_1d": 0.02, "vol_5d": 0.31}, {1: 0.05, 5: 0.04}),
        p.live_metrics([{"role": r, "horizon": 1, "window": w, "rank_ic": 0.03, "ls_return": 0.001,
                         "ls_cum": 0.02, "icir": 0.4, "hit_rate": 0.52}
                        for r in ("champion", "shadow") for w in ("1d", "20d", "cum")], 0.0),
    ]


def samples(path: str | Path) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(Path(path).read_text()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(path, name, **labels) -> float | None:
    for (n, lab), v in samples(path).items():
        if n == name and all(dict(lab).get(k) == w for k, w in labels.items()):
            return v
    return None


# --------------------------------------------------------------------------- metric table
def test_metric_table_follows_prometheus_conventions():
    allowed_labels = {"horizon", "decision", "stage", "window", "role", "feature"}
    for name, spec in METRICS.items():
        assert re.fullmatch(r"atft_[a-z0-9_]+", name), name
        assert name == spec.name
        assert (spec.kind == "counter") == name.endswith("_total"), name
        assert set(spec.labels) <= allowed_labels, name
        assert spec.help and spec.help.endswith("."), name
        # base units only: no milliseconds, kilobytes, percent
        assert not re.search(r"_(ms|milliseconds|kb|mb|gb|percent|minutes|hours)(_|$)", name), name
    spec9 = {"atft_data_validation_success", "atft_data_rows",
             "atft_data_latest_trading_day_timestamp_seconds", "atft_train_samples_per_second",
             "atft_train_epoch", "atft_val_rank_ic", "atft_train_nan_steps_total",
             "atft_gate_decision", "atft_candidate_rank_ic", "atft_champion_rank_ic",
             "atft_retrain_last_success_timestamp_seconds", "atft_train_grad_norm",
             "atft_train_val_gap_ratio", "atft_gpu_utilization_ratio", "atft_gpu_memory_bytes"}
    assert spec9 <= set(METRICS)


def test_every_metric_is_emitted_and_promtool_check_metrics_is_clean(tmp_path):
    promtool = require_binary("promtool")
    p = textfile_pusher(tmp_path, dag_id="atft_retrain")
    deliveries = exercise_every_stage(p)
    assert all(d.kind == "textfile" for d in deliveries), deliveries
    files = sorted(tmp_path.glob("*.prom"))
    seen = set()
    for f in files:
        r = subprocess.run([promtool, "check", "metrics"], input=f.read_bytes(),
                           capture_output=True, timeout=30)
        # promtool prints naming/lint problems and exits 1; a clean file prints nothing
        assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (
            f.name, r.stdout.decode(), r.stderr.decode())
        seen |= {n.removesuffix("_total") + ("_total" if n.endswith("_total") else "")
                 for n, _ in samples(f)}
    assert seen == set(METRICS), set(METRICS) ^ seen


def test_promtool_check_metrics_can_fail():
    promtool = require_binary("promtool")
    bad = b"# HELP atft_bad_ms a counter in milliseconds\n# TYPE atft_bad_ms counter\natft_bad_ms 3\n"
    r = subprocess.run([promtool, "check", "metrics"], input=bad, capture_output=True, timeout=30)
    assert r.returncode != 0 and (r.stdout + r.stderr).strip()


# --------------------------------------------------------------------------- textfile / pushadd
def test_failed_run_keeps_last_success_in_textfile(tmp_path):
    clock = Clock(1000.0)
    p = textfile_pusher(tmp_path, dag_id="d", task_id="publish", clock=clock)
    d1 = p.publish(True, 123, 2.0)
    clock.t = 5000.0
    d2 = p.publish(False, 0, 9.0)
    assert d1.where == d2.where and d1.kind == "textfile"
    f = Path(d2.where)
    assert value(f, "atft_publish_success") == 0.0
    assert value(f, "atft_publish_last_success_timestamp_seconds") == 1000.0  # not erased
    assert value(f, "atft_publish_bytes") == 123.0
    assert value(f, "atft_stage_duration_seconds", stage="publish") == 9.0
    assert value(f, "atft_stage_last_success_timestamp_seconds", stage="publish") == 1000.0
    assert value(f, "atft_publish_success", dag_id="d", task_id="publish") == 0.0
    # node-exporter reads *.prom only; no temp files are left behind
    assert not [x for x in tmp_path.iterdir() if x.name.endswith(".tmp")]


def test_groups_do_not_leak_between_pushes(tmp_path):
    p = textfile_pusher(tmp_path, dag_id="d")
    train = Path(p.train_epoch(1, 0, 100.0, {1: 0.1}, 1.0, 0.0, 0).where)
    gate = Path(p.gate("reject", {1: 0.0}, None, 0.0, None, 0.02, 0.5).where)
    assert train != gate
    assert {n for n, _ in samples(train)} <= {s for s in METRICS if "train" in s or "val_" in s
                                              or "gpu" in s}
    assert not any(n.startswith("atft_train") for n, _ in samples(gate))
    assert value(gate, "atft_champion_rank_ic") is None  # no champion: nothing pushed
    # epoch pushes overwrite (per-epoch live view): the latest epoch wins
    p.train_epoch(2, 0, 200.0, {1: 0.2}, 1.0, 0.0, 5)
    assert value(train, "atft_train_epoch") == 2.0
    assert value(train, "atft_train_nan_steps_total") == 5.0
    assert value(train, "atft_val_rank_ic", horizon="1d") == pytest.approx(0.2)


def test_atomic_write_failure_keeps_old_file_and_never_raises(tmp_path, monkeypatch, caplog):
    p = textfile_pusher(tmp_path, dag_id="d", task_id="t")
    path = Path(p.features(10, 1.0).where)
    before = path.read_text()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with caplog.at_level(logging.WARNING, logger="atft_core.observability"):
        d = p.features(99, 2.0)
    assert d.kind == "dropped" and "disk full" in d.error
    assert path.read_text() == before
    assert not [x for x in tmp_path.iterdir() if x.name.endswith(".tmp")]
    assert "metrics dropped" in caplog.text


def test_unwritable_textfile_dir_does_not_fail_the_task(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")

    def publish_task() -> str:  # what a DAG task does: publish, push metrics, return
        p = MetricsPusher(MetricsConfig(textfile_dir=str(blocker / "sub")), environ={})
        d = p.publish(True, 10, 1.0)
        assert d.kind == "dropped"
        return "published"

    assert publish_task() == "published"


def test_gateway_down_falls_back_to_textfile_and_backs_off(tmp_path, monkeypatch, caplog):
    port = free_port()  # nothing listens there
    clock = Clock(0.0)
    cfg = MetricsConfig(pushgateway_url=f"http://127.0.0.1:{port}", textfile_dir=str(tmp_path),
                        push_timeout_seconds=2.0, retry_after_seconds=60.0)
    calls = []
    real = obs_pusher.pushadd_to_gateway

    def counting(*a, **k):
        calls.append(k["grouping_key"])
        return real(*a, **k)

    monkeypatch.setattr(obs_pusher, "pushadd_to_gateway", counting)
    p = MetricsPusher(cfg, dag_id="d", task_id="train", environ={}, clock=clock)
    with caplog.at_level(logging.WARNING, logger="atft_core.observability"):
        d1 = p.train_epoch(1, 0, 10.0, {1: 0.1}, 1.0, 0.0, 0)
    assert d1.kind == "textfile" and Path(d1.where).exists()
    assert "falling back to the textfile" in caplog.text
    clock.t = 30.0  # within retry_after: the gateway is not tried again
    d2 = p.train_epoch(2, 0, 10.0, {1: 0.1}, 1.0, 0.0, 0)
    assert d2.kind == "textfile" and len(calls) == 1
    clock.t = 61.0  # after retry_after: tried again (and still down)
    p.train_epoch(3, 0, 10.0, {1: 0.1}, 1.0, 0.0, 0)
    assert len(calls) == 2
    assert calls[0] == {"dag_id": "d", "task_id": "train"}
    assert value(d2.where, "atft_train_epoch") == 3.0


def test_gate_counts_consecutive_rejections(tmp_path):
    clock = Clock(100.0)
    p = textfile_pusher(tmp_path, dag_id="d", task_id="gate", clock=clock)
    args = ({1: 0.0}, {1: 0.03}, 0.1, 0.6, 0.02, 0.5)
    f = Path(p.gate("reject", *args).where)
    assert value(f, "atft_gate_rejections_consecutive") == 1.0
    p.gate("reject", *args)
    p.gate("reject", *args)
    assert value(f, "atft_gate_rejections_consecutive") == 3.0
    assert value(f, "atft_gate_last_promotion_timestamp_seconds") is None
    assert value(f, "atft_gate_decision", decision="reject") == 1.0
    assert value(f, "atft_gate_decision", decision="promote") == 0.0
    clock.t = 200.0
    p.gate("force", *args)
    assert value(f, "atft_gate_rejections_consecutive") == 0.0
    assert value(f, "atft_gate_last_promotion_timestamp_seconds") == 200.0
    assert value(f, "atft_gate_decision", decision="force") == 1.0
    p.gate("reject", *args, consecutive_rejections=7)  # caller-supplied count wins
    assert value(f, "atft_gate_rejections_consecutive") == 7.0
    assert value(f, "atft_gate_last_promotion_timestamp_seconds") == 200.0
    assert value(f, "atft_gate_min_rank_ic") == pytest.approx(0.02)


def test_bad_arguments_raise_clear_errors(tmp_path):
    p = textfile_pusher(tmp_path)
    with pytest.raises(ValueError, match="unknown stage 'training'"):
        p.stage("training", True, 1.0)
    with pytest.raises(ValueError, match="unknown gate decision 'accept'"):
        p.gate("accept", {1: 0.1}, None, 0.0, None, 0.0, 0.0)
    with pytest.raises(ValueError, match="horizon 'x'"):
        p.train_epoch(1, 0, 1.0, {"x": 0.1}, 1.0, 0.0, 0)
    with pytest.raises(ValueError, match="empty per-horizon"):
        p.train_epoch(1, 0, 1.0, {}, 1.0, 0.0, 0)
    with pytest.raises(ValueError, match="infinite"):
        p.train_epoch(1, 0, float("inf"), {1: 0.1}, 1.0, 0.0, 0)
    with pytest.raises(ValueError, match="not declared"):
        p.push("train", [("atft_made_up", {}, 1.0)])
    with pytest.raises(ValueError, match="labels"):
        p.push("train", [("atft_val_rank_ic", {}, 1.0)])
    assert not list(tmp_path.glob("*.prom"))  # nothing half-written
    # NaN is legal ("not computable") and round-trips
    f = p.train_epoch(1, 0, 1.0, {1: float("nan")}, 1.0, 0.0, 0).where
    assert value(f, "atft_val_rank_ic", horizon="1d") != value(f, "atft_val_rank_ic", horizon="1d")


def test_task_result_states(tmp_path):
    clock = Clock(50.0)
    p = textfile_pusher(tmp_path, clock=clock)
    f = Path(p.task_result("atft_retrain", "features", "TaskInstanceState.SUCCESS").where)
    assert f.name == "atft__atft__atft_retrain__features.prom"
    assert value(f, "atft_task_success") == 1.0
    clock.t = 60.0
    p.task_result("atft_retrain", "features", "up_for_retry")
    assert value(f, "atft_task_success") == 0.0
    assert value(f, "atft_task_last_success_timestamp_seconds") == 50.0
    assert value(f, "atft_task_last_failure_timestamp_seconds") == 60.0
    d = p.task_result("atft_retrain", "features", "skipped")
    assert d.kind == "dropped" and value(f, "atft_task_success") == 0.0


def test_grouping_defaults_from_airflow_context(tmp_path):
    cfg = MetricsConfig(textfile_dir=str(tmp_path), job="nightly")
    env = {"AIRFLOW_CTX_DAG_ID": "atft_retrain", "AIRFLOW_CTX_TASK_ID": "train_model"}
    p = MetricsPusher(cfg, environ=env)
    assert p.grouping("train") == {"dag_id": "atft_retrain", "task_id": "train_model"}
    assert Path(p.stage("train", True, 1.0).where).name == "atft__nightly__atft_retrain__train_model.prom"
    q = MetricsPusher(cfg, environ={})
    assert q.grouping("features") == {"dag_id": "adhoc", "task_id": "features"}
    assert MetricsPusher(cfg, dag_id="x", task_id="y", environ=env).grouping("gate") == {
        "dag_id": "x", "task_id": "y"}


# --------------------------------------------------------------------------- gateway resolution
def test_resolve_gateway_order():
    cfg = MetricsConfig()
    assert obs.resolve_gateway(cfg, {}) is None
    conn = "http://pg:9091"
    env = {"ATFT_PUSHGATEWAY_URL": "http://env:9091/", "AIRFLOW_CONN_ATFT_PUSHGATEWAY": conn}
    assert obs.resolve_gateway(cfg, env).url == "http://env:9091"
    assert obs.resolve_gateway(cfg, {"AIRFLOW_CONN_ATFT_PUSHGATEWAY": conn}).url == "http://pg:9091"
    explicit = MetricsConfig(pushgateway_url="http://cfg:9091")
    assert obs.resolve_gateway(explicit, env) == obs.Gateway("http://cfg:9091", source="config")


@pytest.mark.parametrize("conn,url,user,pw", [
    ("http://pushgateway:9091", "http://pushgateway:9091", None, None),
    ("https://u%40x:p%2Fw@pg.example:443", "https://pg.example:443", "u@x", "p/w"),
    ("http://pg:9091/https", "https://pg:9091", None, None),
    ('{"conn_type": "http", "host": "pg", "port": 9091, "schema": "https", "login": "a",'
     ' "password": "b"}', "https://pg:9091", "a", "b"),
    ('{"conn_type": "http", "host": "http://pg.internal", "port": 9091}', "http://pg.internal:9091",
     None, None),
])
def test_parse_airflow_connection(conn, url, user, pw):
    gw = obs.parse_airflow_connection(conn)
    assert (gw.url, gw.username, gw.password) == (url, user, pw)


@pytest.mark.parametrize("conn,msg", [("{not json", "invalid JSON"), ('{"conn_type": "http"}', "no host"),
                                      ("  ", "empty")])
def test_parse_airflow_connection_errors(conn, msg, tmp_path, caplog):
    with pytest.raises(ValueError, match=msg):
        obs.parse_airflow_connection(conn)
    if conn.strip():
        with caplog.at_level(logging.WARNING, logger="atft_core.observability"):
            p = MetricsPusher(MetricsConfig(textfile_dir=str(tmp_path)),
                              environ={"AIRFLOW_CONN_ATFT_PUSHGATEWAY": conn})
        assert p.gateway is None and msg in caplog.text
        assert p.stage("gate", True, 1.0).kind == "textfile"


# --------------------------------------------------------------------------- stale deadline
def _deadline_by_loop(day: dt.date, n: int) -> dt.datetime:
    """Obvious reference: walk calendar days, counting XTKS sessions after ``day``."""
    import exchange_calendars as xcals

    sessions = {s.date() for s in xcals.get_calendar("XTKS").sessions}
    d, seen = day, 0
    while seen < n:
        d += dt.timedelta(days=1)
        seen += d in sessions
    return dt.datetime.combine(d + dt.timedelta(days=1), dt.time(0), tzinfo=obs.TOKYO)


@pytest.mark.parametrize("day,expected", [
    (dt.date(2024, 4, 26), dt.date(2024, 5, 2)),   # Fri; Mon Apr 29 Showa Day -> Tue, Wed
    (dt.date(2024, 6, 3), dt.date(2024, 6, 6)),    # Mon -> Tue, Wed
    (dt.date(2024, 12, 27), dt.date(2025, 1, 7)),  # Fri -> Mon Dec 30, (closed Dec 31-Jan 3), Mon Jan 6
])
def test_stale_deadline_counts_jpx_trading_days(day, expected):
    ts = obs.stale_deadline(day, 2)
    want = dt.datetime.combine(expected, dt.time(0), tzinfo=obs.TOKYO)
    assert ts == want.timestamp() == _deadline_by_loop(day, 2).timestamp()


def test_retrain_success_pushes_timestamp_and_deadline(tmp_path):
    clock = Clock(dt.datetime(2024, 4, 26, 19, 0, tzinfo=obs.TOKYO).timestamp())
    p = textfile_pusher(tmp_path, clock=clock)
    f = p.retrain_success().where  # data day defaults to today in Tokyo
    assert value(f, "atft_retrain_last_success_timestamp_seconds") == clock.t
    assert value(f, "atft_retrain_stale_after_timestamp_seconds") == obs.stale_deadline(
        dt.date(2024, 4, 26), 2)


# --------------------------------------------------------------------------- statsd mapping
def _glob_to_regex(glob: str) -> re.Pattern:
    # statsd-exporter glob: '*' matches one dot-separated component
    return re.compile("^" + r"\.".join("([^.]+)" if part == "*" else re.escape(part)
                                       for part in glob.split(".")) + "$")


def _airflow_statsd_names() -> dict[str, str]:
    """Every Airflow StatsD name (legacy dotted form, prefix 'airflow.') -> its type."""
    import importlib.util

    spec = importlib.util.find_spec("airflow")  # locate without importing Airflow (~5 s)
    if spec is None or not spec.origin:
        pytest.skip("Airflow is not installed")
    tmpl = Path(spec.origin).parent / "_shared" / "observability" / "metrics" / "metrics_template.yaml"
    if not tmpl.exists():
        pytest.skip("this Airflow has no metrics_template.yaml")
    fill = {"dag_id": "atft_retrain", "task_id": "train", "state": "failed", "pool_name": "gpu",
            "executor_class_name": "CeleryExecutor", "bundle_name": "dags-folder",
            "file_name": "atft_retrain_py", "queue": "gpu", "job_name": "SchedulerJob"}
    out = {}
    for m in yaml.safe_load(tmpl.read_text())["metrics"]:
        name = m["legacy_name"] if m.get("legacy_name") not in (None, "-") else m["name"]
        try:
            out["airflow." + name.format(**fill)] = m["type"]
        except KeyError:
            continue  # placeholders we do not map (worker names, ...)
    return out


def _map(mappings, name):
    for m in mappings:
        if m.get("match_type") == "regex":
            if re.search(m["match"], name):
                return m, ()
        else:
            hit = _glob_to_regex(m["match"]).match(name)
            if hit:
                return m, hit.groups()
    return None, ()


def test_statsd_mapping_covers_airflow_metrics():
    mapping = yaml.safe_load(STATSD.read_text())
    mappings = mapping["mappings"]
    assert mapping["defaults"]["match_type"] == "glob"
    assert mappings[-1]["action"] == "drop"  # unmapped metrics are dropped, not exported raw
    names = _airflow_statsd_names()
    used = set()
    for name, kind in names.items():
        m, groups = _map(mappings, name)
        if m is None or m.get("action") == "drop":
            continue
        used.add(m["match"])
        prom = m["name"]
        assert re.fullmatch(r"airflow_[a-z0-9_]+", prom), prom
        if kind == "counter":
            assert prom.endswith("_total"), (name, prom)
        if kind == "timer":
            assert prom.endswith("_seconds"), (name, prom)
        for label, ref in m.get("labels", {}).items():
            i = int(ref.lstrip("$")) - 1
            assert 0 <= i < len(groups) and groups[i], (name, label, ref)
    # every mapping matches a real Airflow metric (no typos)
    assert used == {m["match"] for m in mappings if m.get("action") != "drop"}
    # the list is mapped with labels
    required = {
        "airflow.dagrun.duration.success.atft_retrain": ("airflow_dagrun_duration_seconds",
                                                        {"state": "success", "dag_id": "atft_retrain"}),
        "airflow.dagrun.duration.failed.atft_retrain": ("airflow_dagrun_duration_seconds",
                                                       {"state": "failed", "dag_id": "atft_retrain"}),
        "airflow.ti.finish.atft_retrain.train.failed": (
            "airflow_ti_finish_total", {"dag_id": "atft_retrain", "task_id": "train", "state": "failed"}),
        "airflow.ti_failures": ("airflow_ti_failures_total", {}),
        "airflow.scheduler_heartbeat": ("airflow_scheduler_heartbeat_total", {}),
        "airflow.pool.open_slots.gpu": ("airflow_pool_open_slots", {"pool": "gpu"}),
        "airflow.pool.running_slots.gpu": ("airflow_pool_running_slots", {"pool": "gpu"}),
        "airflow.dag_processing.total_parse_time": ("airflow_dag_processing_total_parse_time_seconds", {}),
        "airflow.dag_processing.import_errors": ("airflow_dag_processing_import_errors", {}),
        "airflow.dag.atft_retrain.train.duration": (
            "airflow_task_duration_seconds", {"dag_id": "atft_retrain", "task_id": "train"}),
    }
    for name, (prom, labels) in required.items():
        assert name in names, f"Airflow no longer emits {name}"
        m, groups = _map(mappings, name)
        assert m["name"] == prom
        got = {k: groups[int(v.lstrip("$")) - 1] for k, v in m.get("labels", {}).items()}
        assert got == labels, name
    assert _map(mappings, "airflow.some.new_metric")[0].get("action") == "drop"


# --------------------------------------------------------------------------- integration
def _query(prom_url: str, expr: str) -> dict:
    url = f"{prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def _scalar(prom_url: str, expr: str) -> float | None:
    res = _query(prom_url, expr)["data"]["result"]
    return float(res[0]["value"][1]) if res else None


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory):
    url, proc = start_pushgateway(tmp_path_factory.mktemp("pgw") / "pushgateway.log")
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def prometheus(pushgateway, tmp_path_factory):
    binary = require_binary("prometheus")
    d = tmp_path_factory.mktemp("prom")
    port = free_port()
    rules = d / "atft_alerts.yml"
    rules.write_text(RULES.read_text())
    cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
           "rule_files": [str(rules)],
           "scrape_configs": [{"job_name": "pushgateway", "honor_labels": True,
                               "static_configs": [{"targets": [pushgateway.split("//")[1]]}]}]}
    (d / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    url = f"http://127.0.0.1:{port}"
    proc = start_server([binary, f"--config.file={d / 'prometheus.yml'}",
                         f"--storage.tsdb.path={d / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                        f"{url}/-/ready", d / "prometheus.log", timeout=60)
    yield url
    stop_server(proc)


@pytest.mark.integration
@pytest.mark.slow
def test_push_and_query_back_through_prometheus(prometheus, pushgateway, tmp_path):
    clock = Clock(1_714_100_000.0)
    cfg = MetricsConfig(pushgateway_url=pushgateway, textfile_dir=str(tmp_path))
    p = MetricsPusher(cfg, dag_id="atft_retrain", task_id="publish", environ={}, clock=clock)
    d = p.publish(True, 4096, 1.25)
    assert d == Delivery("pushgateway", pushgateway)
    sel = '{job="atft",dag_id="atft_retrain",task_id="publish"}'
    wait_until(lambda: _scalar(prometheus, f"atft_publish_success{sel}") == 1.0, what="first scrape")
    assert _scalar(prometheus, f"atft_publish_last_success_timestamp_seconds{sel}") == clock.t
    assert _scalar(prometheus, f"atft_publish_bytes{sel}") == 4096.0
    # a failed run afterwards: success flips to 0, last_success survives (pushadd)
    t_success = clock.t
    clock.t += 86400
    assert p.publish(False, 0, 7.0).kind == "pushgateway"
    wait_until(lambda: _scalar(prometheus, f"atft_publish_success{sel}") == 0.0, what="second scrape")
    assert _scalar(prometheus, f"atft_publish_last_success_timestamp_seconds{sel}") == t_success
    stage_sel = '{dag_id="atft_retrain",task_id="publish",stage="publish"}'
    assert _scalar(prometheus, f"atft_stage_duration_seconds{stage_sel}") == 7.0
    assert not list(tmp_path.glob("*.prom"))  # the gateway was up: no fallback file


@pytest.mark.integration
def test_every_stage_and_the_airflow_connection_path(prometheus, pushgateway, tmp_path):
    host_port = pushgateway.split("//")[1]
    host, port = host_port.split(":")
    env = {"AIRFLOW_CONN_ATFT_PUSHGATEWAY": json.dumps({"conn_type": "http", "host": host,
                                                        "port": int(port)}),
           "AIRFLOW_CTX_DAG_ID": "atft_itest"}
    p = MetricsPusher(MetricsConfig(textfile_dir=str(tmp_path)), environ=env)
    assert p.gateway.source == "AIRFLOW_CONN_ATFT_PUSHGATEWAY"
    deliveries = exercise_every_stage(p)
    assert {d.kind for d in deliveries} == {"pushgateway"}
    # the gate's rejection counter is read back from the Pushgateway's API
    for _ in range(3):
        p.gate("reject", {1: 0.0}, {1: 0.01}, 0.1, 0.6, 0.02, 0.5)
    assert p.previous_value("gate", "atft_gate_rejections_consecutive") == 3.0
    # the task-failure counter is read back and incremented through the API too
    for _ in range(2):
        p.task_failure("atft_itest", "check_fresh_data")
    assert p.previous_value("retrain", "atft_task_failures_total", dag_id="atft_itest",
                            task_id="check_fresh_data") == 2.0
    wait_until(lambda: _scalar(prometheus, 'atft_gate_rejections_consecutive{dag_id="atft_itest"}')
               == 3.0, what="gate metrics")
    wait_until(lambda: _scalar(prometheus, 'atft_train_epoch{dag_id="atft_itest"}') == 3.0,
               what="train metrics")
    assert _scalar(prometheus, 'atft_val_rank_ic{dag_id="atft_itest",horizon="5d"}') == 0.03

    # every alert and dashboard expression runs on real data without a PromQL error
    exprs = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    dash = json.loads(DASHBOARD.read_text())
    panel_exprs = [t["expr"] for pnl in dash["panels"] for t in pnl.get("targets", [])]
    subst = {"$job": ".*", "$dag_id": "atft_itest", "$__rate_interval": "1m"}
    for e in exprs + panel_exprs:
        for k, v in subst.items():
            e = e.replace(k, v)
        res = _query(prometheus, e)
        assert res["status"] == "success", (e, res)
    # and the atft panels show data for this DAG
    empty = []
    for e in panel_exprs:
        if "airflow_" in e:
            continue  # StatsD metrics are not in this test's Prometheus
        for k, v in subst.items():
            e = e.replace(k, v)
        if not _query(prometheus, e)["data"]["result"]:
            empty.append(e)
    assert not empty, empty
    # the rules loaded into a real Prometheus are healthy
    with urllib.request.urlopen(f"{prometheus}/api/v1/rules", timeout=5) as r:
        groups = json.load(r)["data"]["groups"]
    rules = [rule for g in groups for rule in g["rules"]]
    assert len(rules) == len(exprs) and all(rule["health"] in ("ok", "unknown") for rule in rules)


@pytest.mark.integration
def test_gateway_down_falls_back_to_textfile_task_succeeds(tmp_path):
    url, proc = start_pushgateway(tmp_path / "pgw.log")
    try:
        cfg = MetricsConfig(pushgateway_url=url, textfile_dir=str(tmp_path / "metrics"))
        p = MetricsPusher(cfg, dag_id="atft_retrain", task_id="train", environ={})
        assert p.train_epoch(1, 0, 900.0, {1: 0.02}, 1.0, 0.05, 0).kind == "pushgateway"
    finally:
        stop_server(proc)  # the gateway goes down mid-run

    def train_task() -> str:
        d = MetricsPusher(cfg, dag_id="atft_retrain", task_id="train",
                          environ={}).train_epoch(2, 0, 800.0, {1: 0.03}, 1.0, 0.05, 1)
        assert d.kind == "textfile", d
        return d.where

    where = train_task()
    assert Path(where).parent == tmp_path / "metrics"
    assert value(where, "atft_train_epoch", dag_id="atft_retrain", task_id="train") == 2.0
    assert value(where, "atft_train_nan_steps_total") == 1.0


# --------------------------------------------------------------------------- the shared helper
def test_require_binary_skips_locally_and_fails_in_ci(monkeypatch):
    import bin_helpers

    monkeypatch.setattr(bin_helpers.shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not found"):
        bin_helpers.require_binary("promtool")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        bin_helpers.require_binary("promtool")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        bin_helpers.require_binary("promtool")


def test_one_task_reporting_two_stages_keeps_both(tmp_path):
    clock = Clock(10.0)
    p = textfile_pusher(tmp_path, dag_id="d", task_id="train_and_evaluate", clock=clock)
    p.stage("train", True, 600.0)
    clock.t = 20.0
    f = p.stage("evaluate", False, 30.0).where
    assert value(f, "atft_stage_duration_seconds", stage="train") == 600.0
    assert value(f, "atft_stage_duration_seconds", stage="evaluate") == 30.0
    assert value(f, "atft_stage_success", stage="evaluate") == 0.0
    assert value(f, "atft_stage_last_success_timestamp_seconds", stage="train") == 10.0
    assert value(f, "atft_stage_last_success_timestamp_seconds", stage="evaluate") is None
    p.stage("train", True, 500.0)  # the newest value of a stage replaces its older one
    assert value(f, "atft_stage_duration_seconds", stage="train") == 500.0
    assert value(f, "atft_stage_duration_seconds", stage="evaluate") == 30.0


def test_cli_metrics_list_and_where(capsys, monkeypatch):
    from atft_core.cli import main

    assert main(["metrics", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(METRICS)
    assert "atft_val_rank_ic{horizon}\tgauge\t" in "\n".join(lines)
    monkeypatch.delenv("ATFT_PUSHGATEWAY_URL", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_ATFT_PUSHGATEWAY", raising=False)
    assert main(["metrics", "where", "metrics.textfile_dir=/tmp/x"]) == 0
    assert capsys.readouterr().out.strip() == "textfile /tmp/x"
    monkeypatch.setenv("ATFT_PUSHGATEWAY_URL", "http://pg:9091")
    assert main(["metrics", "where"]) == 0
    assert capsys.readouterr().out.strip() == "pushgateway http://pg:9091 (from ATFT_PUSHGATEWAY_URL)"


# --------------------------------------------------------------------------- issue 12, fault 11
class TrickleServer:
    """127.0.0.1 HTTP server that answers one byte per second (at most ``max_bytes``), so a
    client with only a per-read timeout never times out. Stopped by :meth:`stop` (thread join)."""

    def __init__(self, max_bytes: int = 25):
        import socket
        import threading

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.max_bytes = max_bytes
        self.stopped = threading.Event()
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        reply = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".ljust(self.max_bytes, b" ")
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            with conn:
                for b in reply[: self.max_bytes]:
                    if self.stopped.wait(1.0):
                        break
                    try:
                        conn.sendall(bytes([b]))
                    except OSError:  # the client gave up: next connection
                        break

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.sock.close()


def test_trickling_gateway_is_cut_at_the_total_deadline(tmp_path, caplog):
    """push_timeout_seconds used to bound each read only: one byte a second held a push for
    minutes. Now it is the deadline of the whole request; the push falls back to the textfile."""
    import time

    server = TrickleServer()
    try:
        cfg = MetricsConfig(pushgateway_url=server.url, textfile_dir=str(tmp_path),
                            push_timeout_seconds=2.0)
        p = MetricsPusher(cfg, dag_id="d", task_id="train", environ={})
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="atft_core.observability"):
            d = p.stage("train", True, 1.0)
        elapsed = time.monotonic() - t0
    finally:
        server.stop()
    assert server.connections == 1
    assert 1.9 <= elapsed < 2.0 + 1.5, elapsed  # the deadline, plus a little slack
    assert d.kind == "textfile" and value(d.where, "atft_stage_success", stage="train") == 1.0
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "within 2 s" in lines[0] and "falling back to the textfile" in lines[0]


def test_request_with_deadline_bounds_reads_of_a_silent_server():
    import socket
    import time

    from atft_core.observability import DeadlineExceeded, request_with_deadline

    with socket.socket() as srv:  # accepts (backlog) but never answers
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="within 0.5 s"):
            request_with_deadline(f"http://127.0.0.1:{srv.getsockname()[1]}/x", deadline_s=0.5)
        assert time.monotonic() - t0 < 1.5


# --------------------------------------------------------------------------- task failures counter
def test_task_failures_counter_counts_failed_tries(tmp_path):
    """atft_task_failures_total{dag_id,task_id} (issue 12 fault 16's metric): +1 per failed or
    retried try, read back and incremented across pushers (one listener call per try)."""
    from atft_core.observability import record_task_failure

    cfg = MetricsConfig(textfile_dir=str(tmp_path))
    p = MetricsPusher(cfg, environ={})
    f = Path(p.task_result("atft_retrain", "check_fresh_data", "up_for_retry").where)
    assert value(f, "atft_task_failures_total") == 1.0
    assert record_task_failure(cfg, "atft_retrain", "check_fresh_data", environ={}).kind == "textfile"
    assert value(f, "atft_task_failures_total") == 2.0
    MetricsPusher(cfg, environ={}).task_result("atft_retrain", "check_fresh_data", "success")
    MetricsPusher(cfg, environ={}).task_result("atft_retrain", "check_fresh_data", "upstream_failed")
    assert value(f, "atft_task_failures_total") == 2.0  # success / upstream_failed do not count
    assert value(f, "atft_task_success") == 0.0
    other = Path(p.task_failure("atft_retrain", "train").where)
    assert other != f and value(other, "atft_task_failures_total") == 1.0
    assert "# TYPE atft_task_failures_total counter" in f.read_text()


def test_gate_against_a_trickling_gateway_waits_one_deadline_in_total(tmp_path):
    """gate() reads the rejection count back, then pushes: a bad gateway costs one deadline."""
    import time

    server = TrickleServer()
    try:
        cfg = MetricsConfig(pushgateway_url=server.url, textfile_dir=str(tmp_path),
                            push_timeout_seconds=1.0)
        p = MetricsPusher(cfg, dag_id="d", task_id="gate", environ={})
        t0 = time.monotonic()
        d = p.gate("reject", {1: 0.0}, None, 0.1, None, 0.02, 0.5)
        elapsed = time.monotonic() - t0
    finally:
        server.stop()
    assert d.kind == "textfile" and elapsed < 1.0 + 1.0, elapsed
    assert value(d.where, "atft_gate_rejections_consecutive") == 1.0
