"""The checked-in expectation suite (include/gx/atft_quotes.json) and its run-time parameters.

The file is GX's own suite JSON (``type`` / ``kwargs`` / ``meta`` per expectation). Values written
as ``{"$PARAMETER": name}`` are resolved here from :class:`ValidationConfig` and the run (we resolve
them ourselves rather than via GX suite parameters because ``mostly`` and ``type_list`` must be
concrete, and Data Docs then show the real thresholds). ``meta.requires`` drops an expectation
when the run cannot evaluate it: ``as_of`` (no run date given) and ``fresh`` (no run date, or
``cfg.require_fresh`` is false); ``meta.optional`` drops checks of an optional column
(TurnoverValue, AdjustmentFactor, Sector33Code) that the source does not have.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from atft_core.validation.derive import NUMERIC_PANDAS_TYPES, Derived

SUITE_PATH = Path(__file__).resolve().parents[2] / "include" / "gx" / "atft_quotes.json"
SUITE_NAME = "atft_quotes"


@lru_cache(maxsize=1)
def load_suite_spec(path: str = str(SUITE_PATH)) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def suite_parameters(cfg, derived: Derived) -> dict[str, Any]:
    """Every ``$PARAMETER`` the suite file uses, from config and the derived facts."""
    return {
        "min_rows": cfg.min_rows,
        "numeric_types": list(NUMERIC_PANDAS_TYPES),
        "ohlc_tolerance": cfg.ohlc_tolerance,
        "ohlc_mostly": 1.0 - cfg.max_ohlc_violation_fraction,
        "max_abs_daily_return": cfg.max_abs_daily_return,
        "min_daily_return": -cfg.max_abs_daily_return,
        "bad_tick_mostly": 1.0 - cfg.max_bad_tick_fraction,
        "n_sessions": derived.n_sessions,
        "min_daily_coverage": cfg.min_daily_coverage,
    }


def _resolve(value: Any, params: dict[str, Any]) -> Any:
    if isinstance(value, dict) and set(value) == {"$PARAMETER"}:
        name = value["$PARAMETER"]
        if name not in params:
            raise KeyError(f"suite parameter {name!r} has no value (known: {sorted(params)})")
        return params[name]
    if isinstance(value, dict):
        return {k: _resolve(v, params) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, params) for v in value]
    return value


def resolved_expectations(params: dict[str, Any], has_as_of: bool, require_fresh: bool,
                          columns: Iterable[str]) -> list[dict[str, Any]]:
    """The suite's expectation dicts with parameters filled in and unrunnable ones dropped
    (``meta.optional``: only when the optional column is present in ``columns``)."""
    present = set(columns)
    out = []
    for exp in load_suite_spec()["expectations"]:
        if exp.get("meta", {}).get("optional") and not set(columns_of(exp["kwargs"])) <= present:
            continue
        needs = exp.get("meta", {}).get("requires")
        if needs == "as_of" and not has_as_of:
            continue
        if needs == "fresh" and not (has_as_of and require_fresh):
            continue
        out.append({"type": exp["type"], "kwargs": _resolve(exp["kwargs"], params),
                    "meta": dict(exp.get("meta", {}))})
    return out


def columns_of(kwargs: dict[str, Any]) -> list[str]:
    """The columns an expectation reads (column / column_A / column_B / column_list)."""
    cols = [kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs]
    return cols + list(kwargs.get("column_list", []))
