"""Prometheus alert rules: `promtool check rules` / `promtool test rules` pass, every alert has a
firing and a not-firing unit test, the tests can fail (a broken rule, a changed threshold, a wrong
expectation), and every metric the rules use is declared by the library or the statsd mapping."""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from bin_helpers import require_binary

from atft_core.observability import METRICS

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "include" / "prometheus"
RULES = PROM / "rules" / "atft_alerts.yml"
RULE_TESTS = PROM / "tests" / "atft_alerts_test.yml"
STATSD = ROOT / "include" / "statsd" / "statsd_mapping.yml"


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    exe = require_binary("promtool")
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def known_metric_names() -> set[str]:
    """Library metrics + statsd-exporter outputs (+ histogram series) + Prometheus' own `up`."""
    names = set(METRICS) | {"up"}
    for m in yaml.safe_load(STATSD.read_text())["mappings"]:
        if m.get("action") == "drop":
            continue
        names.add(m["name"])
        if m.get("observer_type") == "histogram":
            names |= {m["name"] + s for s in ("_bucket", "_sum", "_count")}
    return names


_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
    "offset", "time", "max", "min", "sum", "avg", "count", "absent", "rate", "increase", "changes",
    "histogram_quantile", "day_of_week", "le", "inf", "nan",
}


def metric_names_in(expr: str) -> set[str]:
    """Metric names used in a PromQL expression (identifiers not in label braces, not keywords)."""
    no_labels = re.sub(r"\{[^}]*\}", "", expr)
    no_strings = re.sub(r'"[^"]*"', "", no_labels)
    no_ranges = re.sub(r"\[[^\]]*\]", "", no_strings)
    idents = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", no_ranges))
    in_grouping = set()
    for grp in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)",
                          no_ranges):
        in_grouping |= {x.strip() for x in grp.split(",")}
    return {i for i in idents - _PROMQL_WORDS - in_grouping if not re.fullmatch(r"\d+[smhdwy]?", i)}


def test_promtool_check_rules_passes():
    r = promtool("check", "rules", RULES)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in r.stdout


@pytest.mark.slow
def test_promtool_test_rules_passes():
    r = promtool("test", "rules", RULE_TESTS)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_every_alert_has_firing_and_quiet_cases():
    cases: dict[str, set[str]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            kind = "firing" if case.get("exp_alerts") else "quiet"
            cases.setdefault(case["alertname"], set()).add(kind)
    alerts = {r["alert"] for r in alert_rules()}
    assert set(cases) == alerts, set(cases) ^ alerts
    missing = {a: {"firing", "quiet"} - k for a, k in cases.items() if k != {"firing", "quiet"}}
    assert not missing, missing
    # the alerts exist
    assert {"ATFTRetrainStale", "ATFTDataValidationFailed", "ATFTChampionRankICDegraded",
            "ATFTTrainNaNSteps", "ATFTTrainThroughputLow", "ATFTPromotionRejectedRepeatedly",
            "ATFTRetrainSuccessAbsent"} <= alerts


def test_rules_use_only_declared_metrics():
    known = known_metric_names()
    for r in alert_rules():
        used = metric_names_in(r["expr"])
        assert used, r["alert"]
        assert used <= known, (r["alert"], used - known)
        assert {"severity"} <= set(r["labels"]) and r["labels"]["severity"] in (
            "critical", "warning", "info"), r["alert"]
        assert r["annotations"].get("summary"), r["alert"]


def test_metric_name_extraction():
    got = metric_names_in('sum by (dag_id) (increase(airflow_ti_finish_total{state="failed"}[1h]))'
                          ' > 0 unless on (job) up{job="x"} offset 5m')
    assert got == {"airflow_ti_finish_total", "up"}


# --------------------------------------------------------------------------- can it fail?
def _write_rules(tmp_path: Path, rules_doc: dict) -> Path:
    d = tmp_path / "rules"
    d.mkdir(exist_ok=True)
    p = d / "atft_alerts.yml"
    p.write_text(yaml.safe_dump(rules_doc, sort_keys=False))
    return p


def _write_tests(tmp_path: Path, tests_doc: dict) -> Path:
    d = tmp_path / "tests"
    d.mkdir(exist_ok=True)
    p = d / "atft_alerts_test.yml"
    p.write_text(yaml.safe_dump(tests_doc, sort_keys=False))
    return p


def _fast_tests() -> dict:
    """The unit tests minus the 4-day approximation group (keeps the mutation runs quick)."""
    doc = yaml.safe_load(RULE_TESTS.read_text())
    doc["tests"] = [t for t in doc["tests"]
                    if not any(c["alertname"] == "ATFTRetrainStaleApprox" and c["eval_time"] == "4d"
                               for c in t.get("alert_rule_test", []))]
    return doc


def _set_expr(rules_doc: dict, alert: str, expr: str) -> dict:
    doc = copy.deepcopy(rules_doc)
    for g in doc["groups"]:
        for r in g["rules"]:
            if r.get("alert") == alert:
                r["expr"] = expr
                return doc
    raise AssertionError(alert)


def test_broken_rule_fails_check(tmp_path):
    doc = _set_expr(yaml.safe_load(RULES.read_text()), "ATFTTrainNaNSteps",
                    "atft_train_nan_steps_total > > 0")
    r = promtool("check", "rules", _write_rules(tmp_path, doc))
    assert r.returncode != 0 and "parse error" in (r.stdout + r.stderr)


@pytest.mark.slow
def test_changed_threshold_fails_unit_tests(tmp_path):
    # the tests pin the rule's behaviour: "3 rejections in a row" relaxed to 4 must be caught
    rules = _set_expr(yaml.safe_load(RULES.read_text()), "ATFTPromotionRejectedRepeatedly",
                      "atft_gate_rejections_consecutive >= 4")
    _write_rules(tmp_path, rules)
    tests = _write_tests(tmp_path, _fast_tests())
    r = promtool("test", "rules", tests)
    assert r.returncode != 0
    assert "ATFTPromotionRejectedRepeatedly" in r.stdout + r.stderr
    # sanity: the same fast subset passes against the real rules
    _write_rules(tmp_path, yaml.safe_load(RULES.read_text()))
    ok = promtool("test", "rules", tests)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_wrong_expectation_fails_unit_tests(tmp_path):
    _write_rules(tmp_path, yaml.safe_load(RULES.read_text()))
    doc = _fast_tests()
    bad = {"rule_files": doc["rule_files"], "evaluation_interval": doc["evaluation_interval"],
           "tests": []}
    for t in doc["tests"]:
        cases = [c for c in t.get("alert_rule_test", []) if c["alertname"] == "ATFTDataValidationFailed"]
        if cases:
            t = copy.deepcopy(t)
            t["alert_rule_test"] = cases
            for c in cases:  # claim the failure is "warning" instead of "critical"
                for a in c.get("exp_alerts", []):
                    a["exp_labels"]["severity"] = "warning"
            bad["tests"].append(t)
    assert bad["tests"]
    r = promtool("test", "rules", _write_tests(tmp_path, bad))
    assert r.returncode != 0 and "ATFTDataValidationFailed" in r.stdout + r.stderr


# --------------------------------------------------------------------------- configs
def test_prometheus_config_is_valid_and_loads_the_rules(tmp_path):
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["pushgateway"].get("honor_labels") is True
    assert "honor_labels" not in jobs["statsd-exporter"]
    assert cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert cfg["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    # promtool resolves rule_files: point them at the repo's rules for the check
    local = copy.deepcopy(cfg)
    local["rule_files"] = [str(PROM / "rules" / "*.yml")]
    p = tmp_path / "prometheus.yml"
    p.write_text(yaml.safe_dump(local))
    r = promtool("check", "config", p)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in r.stdout


def test_alertmanager_routes_reference_defined_receivers_and_real_alerts():
    am = yaml.safe_load((PROM / "alertmanager.yml").read_text())
    receivers = {r["name"] for r in am["receivers"]}
    routes = [am["route"], *am["route"].get("routes", [])]
    assert {r["receiver"] for r in routes} <= receivers
    alerts = {r["alert"] for r in alert_rules()}
    for inh in am["inhibit_rules"]:
        for m in inh["source_matchers"] + inh["target_matchers"]:
            name, op, pattern = re.fullmatch(r'(\w+)(=~|=)"(.*)"', m).groups()
            assert name == "alertname"
            matched = {a for a in alerts if (re.fullmatch(pattern, a) if op == "=~" else a == pattern)}
            assert matched, m
    severities = {r["labels"]["severity"] for r in alert_rules()}
    routed = {re.search(r'severity="(\w+)"', m).group(1)
              for r in am["route"]["routes"] for m in r.get("matchers", [])}
    assert routed <= severities
