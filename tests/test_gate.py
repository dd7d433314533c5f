"""Promotion gate over constructed evaluation dicts; numbers checked against a slow reference."""

from __future__ import annotations

import json
import math
from datetime import date, timedelta

import numpy as np
import pytest
from scipy import stats

from atft_core.config import GateConfig
from atft_core.gate import decide

CFG = GateConfig(min_rank_ic=0.02, min_sharpe=0.5, tolerance=0.005, paired_alpha=0.05,
                 min_coverage=0.9, min_pred_std=1e-6, min_paired_days=5)


def dates(n: int, start: date = date(2024, 1, 4)) -> list[str]:
    return [(start + timedelta(days=i)).isoformat() for i in range(n)]


def make_eval(daily_ric, days=None, *, sharpe=1.0, coverage=1.0, pred_std=0.01, **over) -> dict:
    daily_ric = [float(x) for x in daily_ric]
    days = days or dates(len(daily_ric))
    ev = {"rank_ic_1d": float(np.mean(daily_ric)), "sharpe_1d": sharpe, "coverage": coverage,
          "pred_std_1d": pred_std, "n_days": len(daily_ric),
          "daily": {"date": list(days), "rank_ic_1d": daily_ric,
                    "ls_return_1d": [0.0] * len(daily_ric)}}
    ev.update(over)
    return ev


def reference_paired_t(c, h):
    """Slow obvious loop: t = mean(d) / (sd(d)/sqrt(n)); one-sided p = P(T_{n-1} <= t)."""
    d = [a - b for a, b in zip(c, h)]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1)
    t = mean / math.sqrt(var / n)
    return t, float(stats.t.cdf(t, n - 1))


rng = np.random.default_rng(0)
CHAMP = 0.05 + 0.03 * rng.standard_normal(60)


def test_first_model_promoted_on_rules_1_and_3():
    d = decide(make_eval(CHAMP), None, CFG)
    assert d.decision == "promote" and d.promote and not d.forced
    assert d.checks == {"sanity": True, "thresholds": True, "not_worse": None}
    assert d.comparison is None and d.champion is None
    assert d.candidate["rank_ic_1d"] == pytest.approx(float(np.mean(CHAMP)))
    json.loads(d.to_json())


def test_better_candidate_promoted_with_reference_numbers():
    cand = CHAMP + 0.01 + 0.005 * rng.standard_normal(60)
    d = decide(make_eval(cand), make_eval(CHAMP), CFG)
    assert d.decision == "promote" and d.checks["not_worse"] is True
    t, p = reference_paired_t(cand, CHAMP)
    assert d.comparison["t_stat"] == pytest.approx(t, rel=1e-9)
    assert d.comparison["p_value"] == pytest.approx(p, rel=1e-9)
    assert d.comparison["mean_diff"] == pytest.approx(float(np.mean(cand - CHAMP)))
    assert d.comparison["n_common_days"] == 60


@pytest.mark.parametrize("over,needle", [
    ({"rank_ic_1d": 0.01}, "min_rank_ic"),
    ({"sharpe_1d": 0.2}, "min_sharpe"),
])
def test_below_threshold_rejected(over, needle):
    d = decide(make_eval(CHAMP, **over), None, CFG)
    assert d.decision == "reject" and d.checks["thresholds"] is False
    assert any(needle in r for r in d.reasons)


def test_significantly_worse_than_champion_rejected():
    cand = CHAMP - 0.02 + 0.005 * rng.standard_normal(60)
    d = decide(make_eval(cand), make_eval(CHAMP), CFG)
    assert d.decision == "reject" and d.checks["not_worse"] is False
    assert d.comparison["significantly_worse"] and d.comparison["beyond_tolerance"]
    t, p = reference_paired_t(cand, CHAMP)
    assert d.comparison["p_value"] == pytest.approx(p, rel=1e-9) and p < 0.05


def test_small_consistent_shortfall_within_tolerance_is_still_rejected_if_significant():
    cand = CHAMP - 0.002 + 0.0005 * rng.standard_normal(60)  # 0.002 < tolerance 0.005
    d = decide(make_eval(cand), make_eval(CHAMP), CFG)
    assert d.decision == "reject"
    assert d.comparison["significantly_worse"] and not d.comparison["beyond_tolerance"]


def test_noisy_small_shortfall_within_tolerance_promoted():
    noise = rng.standard_normal(60)
    noise = (noise - noise.mean()) / noise.std(ddof=1)
    cand = CHAMP - 0.002 + 0.03 * noise  # mean shortfall exactly 0.002, t ~ -0.52
    d = decide(make_eval(cand), make_eval(CHAMP), CFG)
    assert d.comparison["mean_shortfall"] == pytest.approx(0.002, abs=1e-12)
    assert not d.comparison["significantly_worse"] and d.decision == "promote"


def test_shortfall_beyond_tolerance_rejected_even_if_not_significant():
    noise = rng.standard_normal(60)
    noise = (noise - noise.mean()) / noise.std(ddof=1)
    cand = CHAMP - 0.008 + 0.2 * noise  # shortfall 0.008 > tolerance 0.005, t ~ -0.31
    d = decide(make_eval(cand), make_eval(CHAMP), CFG)
    assert d.checks["thresholds"] and d.checks["sanity"]
    assert d.comparison["mean_shortfall"] == pytest.approx(0.008, abs=1e-12)
    assert not d.comparison["significantly_worse"] and d.comparison["beyond_tolerance"]
    assert d.decision == "reject"


def test_different_holdout_windows_rejected():
    d = decide(make_eval(CHAMP, dates(60, date(2024, 1, 5))), make_eval(CHAMP), CFG)
    assert d.decision == "reject" and any("holdout windows differ" in r for r in d.reasons)
    # same set of dates in a different order is the same window
    order = list(reversed(range(60)))
    shuffled = make_eval(CHAMP[order], [dates(60)[i] for i in order])
    assert decide(shuffled, make_eval(CHAMP), CFG).comparison["mean_diff"] == pytest.approx(0.0)


def test_too_few_common_days_rejected():
    d = decide(make_eval(CHAMP[:4]), make_eval(CHAMP[:4]), CFG)
    assert d.decision == "reject" and any("min_paired_days" in r for r in d.reasons)


def test_constant_difference_has_defined_p():
    d = decide(make_eval(CHAMP - 0.001), make_eval(CHAMP), CFG)
    assert d.comparison["p_value"] == 0.0 and d.decision == "reject"
    d = decide(make_eval(CHAMP), make_eval(CHAMP), CFG)
    assert d.comparison["p_value"] == 1.0 and d.decision == "promote"


@pytest.mark.parametrize("over,needle", [
    ({"rank_ic_1d": float("nan")}, "rank_ic_1d is not finite"),
    ({"sharpe_1d": float("inf")}, "sharpe_1d is not finite"),
    ({"pred_std_1d": float("nan")}, "pred_std_1d is not finite"),
    ({"coverage": None}, "coverage missing"),
    ({"coverage": 0.5}, "min_coverage"),
    ({"pred_std_1d": 0.0}, "degenerate spread"),
])
def test_nan_and_sanity_failures_rejected(over, needle):
    d = decide(make_eval(CHAMP, **over), None, CFG)
    assert d.decision == "reject" and d.checks["sanity"] is False
    assert any(needle in r for r in d.reasons)
    doc = json.loads(d.to_json())  # strict JSON: non-finite numbers become null
    assert all(v is None or math.isfinite(v) for v in doc["candidate"].values())


def test_nan_in_daily_series_rejected_when_comparing():
    cand = CHAMP.copy()
    cand[3] = np.nan
    ev = make_eval(cand)
    ev["rank_ic_1d"] = 0.05
    d = decide(ev, make_eval(CHAMP), CFG)
    assert d.decision == "reject" and any("not finite" in r for r in d.reasons)


def test_force_is_recorded():
    bad = make_eval(CHAMP, rank_ic_1d=0.0)
    d = decide(bad, None, CFG, force=True, actor="alice")
    assert d.decision == "promote" and d.forced and d.actor == "alice"
    assert d.decision_without_force == "reject"
    assert any("min_rank_ic" in r for r in d.reasons)
    assert any("forced promotion by alice" in r for r in d.reasons)
    assert json.loads(d.to_json())["forced"] is True
    with pytest.raises(ValueError, match="actor"):
        decide(bad, None, CFG, force=True)


# --------------------------------------------------------------------------- issue 12, fault 6
def test_champion_that_cannot_be_evaluated_rejects_unless_forced():
    """A champion exists but scoring it failed: not "no champion" (which would pass on the
    thresholds alone); the candidate cannot be shown not worse -> reject, reason recorded."""
    good = make_eval(CHAMP + 0.05)
    why = "champion 20240105-abc cannot be evaluated on this data: missing feature ret_60d"
    d = decide(good, None, CFG, champion_unavailable=why)
    assert d.decision == "reject" and not d.promote
    assert d.checks == {"sanity": True, "thresholds": True, "not_worse": False}
    assert d.champion_unavailable == why
    assert any(why in r and "unless forced" in r for r in d.reasons)
    rec = json.loads(d.to_json())
    assert rec["champion_unavailable"] == why and rec["decision"] == "reject"

    forced = decide(good, None, CFG, force=True, actor="alice", champion_unavailable=why)
    assert forced.decision == "promote" and forced.decision_without_force == "reject"
    assert forced.champion_unavailable == why and any(why in r for r in forced.reasons)

    # no champion at all is still decided on rules 1 and 3
    assert decide(good, None, CFG).decision == "promote"
    with pytest.raises(ValueError, match="champion_unavailable"):
        decide(good, make_eval(CHAMP), CFG, champion_unavailable=why)


def test_gate_thresholds_must_be_finite():
    """Issue 12 fault 4: `x < nan` is False, so a NaN threshold promoted anything."""
    from atft_core.config import ConfigError, load_config

    for key in ("gate.min_rank_ic", "gate.min_sharpe", "gate.tolerance"):
        for bad in (".nan", ".inf", "-.inf"):
            with pytest.raises(ConfigError, match=key.split(".")[1]):
                load_config("default", [f"{key}={bad}"])
    with pytest.raises(ConfigError, match="min_rank_ic"):
        load_config("default", ["gate.min_rank_ic=1.5"])  # a rank correlation is in [-1, 1]
