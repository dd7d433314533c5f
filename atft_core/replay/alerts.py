"""The replay's live metrics as a ``promtool test rules`` input: does the alert fire on them?

One serving day of the replay becomes one day of Prometheus time (day k starts at k*24h; weekends
and holidays are squeezed out, so a rule's ``for: 3d`` means 3 trading days here). Within a day
the value is sampled every ``interval`` (the Pushgateway is scraped continuously, and an instant
vector only looks back 5 minutes); a day without a value (labels not matured yet) has no samples.

:func:`promtool_test_doc` builds the test document for one alert rule of a rules file with the
expected alerts at chosen days; the expected annotations are the rule's templates rendered with
the series' labels and value (only ``{{ $value }}`` and ``{{ $labels.NAME }}`` are supported; other
template syntax raises, rather than guessing what Prometheus would print).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

SAMPLES_PER_DAY = {"1m": 1440, "2m": 720, "5m": 288}
_TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")


def find_rule(rules_file: str | Path, alertname: str) -> dict[str, Any]:
    """The alerting rule named ``alertname`` (KeyError naming the file if absent)."""
    doc = yaml.safe_load(Path(rules_file).read_text())
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            if rule.get("alert") == alertname:
                return rule
    raise KeyError(f"no alert {alertname!r} in {rules_file}")


def promql_value(v: float) -> float:
    """The value as written into the series: rounded to 6 decimals, so Go's and Python's shortest
    float formatting agree (``{{ $value }}``)."""
    return round(float(v), 6)


def series_values(daily: Sequence[float | None], interval: str = "2m") -> str:
    """promtool expanding notation: each day's value repeated for the day, '_' = no sample."""
    n = SAMPLES_PER_DAY[interval]
    parts = []
    for v in daily:
        if v is None or v != v:
            parts.append(f"_x{n - 1}")
        else:
            parts.append(f"{promql_value(v)}x{n - 1}")
    return " ".join(parts)


def render(template: str, labels: Mapping[str, str], value: float) -> str:
    def sub(m: re.Match) -> str:
        expr = m.group(1)
        if expr == "$value":
            return repr(promql_value(value))
        if expr.startswith("$labels.") and expr[8:] in labels:
            return str(labels[expr[8:]])
        raise ValueError(f"template {{{{ {expr} }}}} is not supported by the replay's renderer")

    return _TEMPLATE.sub(sub, template)


def promtool_test_doc(rules_file: str | Path, alertname: str, series: str,
                      labels: Mapping[str, str], daily: Sequence[float | None],
                      checks: Sequence[tuple[int, bool]], interval: str = "2m") -> dict[str, Any]:
    """A promtool test document (dict; dump it as YAML next to nothing else).

    Args:
        series: the metric name; ``labels`` its labels (e.g. role/horizon/window and job labels).
        daily: the value per serving day (None/NaN = none that day).
        checks: (day index, firing?) pairs; the check is at the END of that day (its last sample).
    """
    rule = find_rule(rules_file, alertname)
    selector = series + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    n = SAMPLES_PER_DAY[interval]
    minutes = int(interval[:-1])
    cases = []
    for day, firing in checks:
        eval_minutes = (day * n + n - 1) * minutes
        exp = []
        if firing:
            value = daily[day]
            exp.append({
                "exp_labels": {**dict(labels), **rule.get("labels", {})},
                "exp_annotations": {k: render(v, labels, value)
                                    for k, v in (rule.get("annotations") or {}).items()},
            })
        cases.append({"eval_time": f"{eval_minutes}m", "alertname": alertname, "exp_alerts": exp})
    return {
        "rule_files": [str(Path(rules_file).resolve())],
        "evaluation_interval": "1h",
        "tests": [{"interval": interval,
                   "input_series": [{"series": selector, "values": series_values(daily, interval)}],
                   "alert_rule_test": cases}],
    }


def write_promtool_test(path: str | Path, doc: dict[str, Any]) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(doc, sort_keys=False, width=10**9))
    return path
