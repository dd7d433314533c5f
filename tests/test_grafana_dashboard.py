"""Grafana: the provisioned dashboard's PromQL parses (promtool check rules on a generated rule
file, one recording rule per panel target), uses only declared metrics, covers the issue's panels,
has a sane layout, and the provisioning files point at it and at the Prometheus datasource."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml
from bin_helpers import require_binary
from test_prometheus_rules import known_metric_names, metric_names_in

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "include" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "atft_retrain.json"

# Grafana template variables -> values that make the expression plain PromQL
SUBST = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1d", "$job": ".*",
         "$dag_id": ".*"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def plain(expr: str) -> str:
    for k, v in SUBST.items():
        expr = expr.replace(k, v)
    assert "$" not in expr, f"unknown template variable in {expr!r}"
    return expr


def all_exprs() -> list[tuple[str, str]]:
    out = [(f"{p['title']} / {t['refId']}", t["expr"]) for p in panels() for t in p["targets"]]
    out += [(f"annotation {a['name']}", a["expr"]) for a in dashboard()["annotations"]["list"]
            if "expr" in a]
    return out


def recording_rules(exprs: list[tuple[str, str]]) -> dict:
    return {"groups": [{"name": "grafana_panels", "rules": [
        {"record": f"grafana:panel_{i}", "expr": plain(e)} for i, (_, e) in enumerate(exprs)]}]}


def promtool_check_rules(tmp_path: Path, doc: dict) -> subprocess.CompletedProcess:
    exe = require_binary("promtool")
    p = tmp_path / "panels.rules.yml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return subprocess.run([exe, "check", "rules", str(p)], capture_output=True, text=True, timeout=60)


def test_every_panel_expression_parses_with_promtool(tmp_path):
    exprs = all_exprs()
    assert len(exprs) >= 30
    r = promtool_check_rules(tmp_path, recording_rules(exprs))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in r.stdout


def test_a_broken_panel_expression_is_caught(tmp_path):
    exprs = [*all_exprs(), ("broken", "sum by (dag_id (atft_data_rows)")]
    r = promtool_check_rules(tmp_path, recording_rules(exprs))
    assert r.returncode != 0 and "grafana:panel_" in r.stdout + r.stderr


def test_panels_use_only_declared_metrics():
    known = known_metric_names()
    for title, e in all_exprs():
        used = metric_names_in(plain(e))
        assert used, title
        assert used <= known, (title, used - known)


def test_dashboard_covers_the_issue():
    used = set()
    for _, e in all_exprs():
        used |= metric_names_in(plain(e))
    required = {
        # data quality
        "atft_data_validation_success", "atft_data_rows", "atft_data_bad_ticks",
        "atft_data_latest_trading_day_timestamp_seconds",
        # training curves and throughput
        "atft_train_loss", "atft_val_loss", "atft_val_rank_ic", "atft_train_samples_per_second",
        "atft_train_grad_norm", "atft_train_val_gap_ratio", "atft_gpu_utilization_ratio",
        # candidate vs champion, gate decisions
        "atft_candidate_rank_ic", "atft_champion_rank_ic", "atft_candidate_sharpe",
        "atft_champion_sharpe", "atft_gate_decision",
        # DAG run durations and failures (StatsD)
        "airflow_dagrun_duration_seconds_sum", "airflow_ti_finish_total",
    }
    assert required <= used, required - used


def test_layout_ids_and_datasource():
    d = dashboard()
    assert d["uid"] and d["title"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    ds_uid = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
                           .read_text())["datasources"][0]["uid"]
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another"
                cells.add((x, y))
        if p["type"] != "row":
            assert p["datasource"]["uid"] == ds_uid, p["title"]
            assert p["targets"] and all(t["datasource"]["uid"] == ds_uid for t in p["targets"])
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), p["title"]
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"job", "dag_id"} <= names
    for v in d["templating"]["list"]:
        metric = v["query"]["query"].split("(")[1].split(",")[0].strip()
        assert metric in known_metric_names(), v["name"]


def test_provisioning_points_at_the_dashboards():
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["apiVersion"] == 1
    (src,) = ds["datasources"]
    assert src["type"] == "prometheus" and src["url"].startswith("http")
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "atft.yml").read_text())
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    assert list((GRAFANA / "dashboards").glob("*.json")) == [DASHBOARD]
