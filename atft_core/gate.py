"""Promotion gate (SPEC 7): decide whether a candidate replaces the champion.

Inputs are evaluation dicts as produced by ``atft_core.evaluate.evaluate_predictions`` on the
SAME holdout window: ``rank_ic_1d``, ``sharpe_1d``, ``coverage``, ``pred_std_1d``, ``n_days`` and
``daily = {"date": [...], "rank_ic_1d": [...]}``.

Rules, in this order; the candidate is promoted iff every applicable check passes:

1. ``thresholds``: ``rank_ic_1d >= min_rank_ic`` and ``sharpe_1d >= min_sharpe``.
2. ``not_worse`` (only with a champion): daily RankIC@1d of both are aligned by date. The two
   date sets must be identical (same holdout window), without duplicates, with at least
   ``min_paired_days`` days, else reject. With ``d_t = cand_t - champ_t``:
   * ``mean_shortfall = -mean(d)``;
   * one-sided paired t-test ``scipy.stats.ttest_rel(cand, champ, alternative="less")``
     (H1: the candidate's mean daily RankIC is lower). If every ``d_t`` is equal the t statistic
     is undefined; then p = 0 if the common difference is negative, else 1.
   Reject iff ``p_value < paired_alpha`` (significantly worse) OR
   ``mean_shortfall > tolerance`` (worse by more than the allowed margin, significant or not).
   So a candidate that is better, or worse by at most ``tolerance`` without statistical
   evidence, passes.
3. ``sanity`` (candidate; the champion's daily series too when comparing): the summary numbers
   are present and finite, ``coverage >= min_coverage``, ``pred_std_1d > min_pred_std``
   (non-degenerate cross-sectional spread), ``n_days >= 1`` and every daily value finite.
4. ``beats_baselines`` (``gate.baseline_rule``, on by default, when a ladder is given): rule 2's
   paired test and tolerance (``gate.baseline_margin``) against the best baseline of the ladder
   (highest mean daily RankIC@1d among ridge / 1d reversal / 20d low vol, fitted on the
   candidate's own training rows, see atft_core.baselines); the record shows the ladder.
   With ``gate.promote_baseline_if_better`` a rejected candidate's ``fallback`` holds the ridge's
   own decision (same rules; its ladder is the other baselines): "promote" = publish the ridge.
No champion: rules 1, 3 (and 4) only. ``force=True`` (UI) promotes whatever the rules say, needs an
``actor``, and is recorded (``forced``, ``decision_without_force``, the failed reasons).

A champion that exists but cannot be evaluated (``champion=None`` with ``champion_unavailable``
saying why, e.g. it was trained on another feature set) is NOT "no champion": rule 2 cannot be
applied, so ``not_worse`` fails and the candidate is rejected unless forced. Passing on the
absolute thresholds alone would let a worse model replace a good one whenever scoring the
champion breaks. The reason is kept in the record (``champion_unavailable`` and ``reasons``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from atft_core.config import GateConfig
from atft_core.jsonsafe import json_safe

SUMMARY_KEYS = ("rank_ic_1d", "sharpe_1d", "coverage", "pred_std_1d", "n_days")


@dataclass(frozen=True)
class GateDecision:
    """JSON-able record of one gate decision (non-finite numbers are written as null)."""

    decision: str  # "promote" | "reject"
    decision_without_force: str
    forced: bool
    actor: str | None
    reasons: tuple[str, ...]
    checks: dict[str, bool | None]  # None = not applicable (no champion)
    candidate: dict[str, float | None]
    champion: dict[str, float | None] | None
    comparison: dict[str, Any] | None
    thresholds: dict[str, float]
    decided_at: str
    champion_unavailable: str | None = None  # a champion exists but could not be evaluated: why
    # baseline ladder (rule 4): headline numbers per baseline, the best one and the paired test
    ladder: dict[str, dict[str, float | None]] | None = None
    best_baseline: str | None = None
    baseline_comparison: dict[str, Any] | None = None
    # gate.promote_baseline_if_better: the best fitted baseline's own decision when this one rejects
    fallback: dict[str, Any] | None = None

    @property
    def promote(self) -> bool:
        return self.decision == "promote"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        return json_safe(d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)


def _num(d: Mapping[str, Any], key: str) -> float | None:
    v = d.get(key)
    if isinstance(v, bool) or v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _summary(d: Mapping[str, Any]) -> dict[str, float | None]:
    return {k: _num(d, k) for k in SUMMARY_KEYS}


def _sanity(who: str, d: Mapping[str, Any], cfg: GateConfig) -> list[str]:
    reasons = []
    nums = _summary(d)
    for k, v in nums.items():
        if v is None:
            reasons.append(f"{who}: {k} missing or not a number")
        elif not math.isfinite(v):
            reasons.append(f"{who}: {k} is not finite ({v})")
    cov, std, n = nums["coverage"], nums["pred_std_1d"], nums["n_days"]
    if cov is not None and math.isfinite(cov) and cov < cfg.min_coverage:
        reasons.append(f"{who}: coverage {cov:.4f} < min_coverage {cfg.min_coverage}")
    if std is not None and math.isfinite(std) and std <= cfg.min_pred_std:
        reasons.append(f"{who}: degenerate spread, pred_std_1d {std:.3g} <= {cfg.min_pred_std}")
    if n is not None and math.isfinite(n) and n < 1:
        reasons.append(f"{who}: n_days {n:g} < 1")
    return reasons


def _daily(who: str, d: Mapping[str, Any]) -> tuple[list[str], np.ndarray | None, list[str]]:
    """(dates, values, problems) of the daily RankIC@1d series."""
    daily = d.get("daily")
    if not isinstance(daily, Mapping) or "date" not in daily or "rank_ic_1d" not in daily:
        return [], None, [f"{who}: daily.date / daily.rank_ic_1d missing"]
    dates = [str(x) for x in daily["date"]]
    try:
        vals = np.asarray([np.nan if v is None else float(v) for v in daily["rank_ic_1d"]],
                          dtype=np.float64)
    except (TypeError, ValueError):
        return dates, None, [f"{who}: daily.rank_ic_1d is not numeric"]
    problems = []
    if len(dates) != len(vals):
        problems.append(f"{who}: daily has {len(dates)} dates but {len(vals)} rank_ic_1d values")
    if len(set(dates)) != len(dates):
        problems.append(f"{who}: daily has duplicate dates")
    bad = int((~np.isfinite(vals)).sum())
    if bad:
        problems.append(f"{who}: {bad} daily rank_ic_1d values are not finite")
    return dates, vals, problems


def _compare(candidate: Mapping[str, Any], champion: Mapping[str, Any],
             cfg: GateConfig, who: str = "champion",
             tolerance: float | None = None) -> tuple[bool, list[str], dict[str, Any]]:
    """Rule 2 against ``champion`` (or, with ``who``/``tolerance``, against a baseline)."""
    from scipy import stats

    tolerance = cfg.tolerance if tolerance is None else tolerance
    cd, cv, cprob = _daily("candidate", candidate)
    hd, hv, hprob = _daily(who, champion)
    comp: dict[str, Any] = {"n_candidate_days": len(cd), f"n_{who}_days": len(hd),
                            "tolerance": tolerance, "alpha": cfg.paired_alpha,
                            "test": f"scipy.stats.ttest_rel(candidate, {who}, alternative='less')"}
    if cprob or hprob:
        return False, cprob + hprob, comp
    assert cv is not None and hv is not None
    only_c, only_h = sorted(set(cd) - set(hd)), sorted(set(hd) - set(cd))
    if only_c or only_h:
        comp.update({"only_candidate": only_c[:10], f"only_{who}": only_h[:10]})
        return False, [f"holdout windows differ: {len(only_c)} dates only in candidate, "
                       f"{len(only_h)} only in {who} (e.g. {(only_c + only_h)[:3]})"], comp
    if len(cd) < cfg.min_paired_days:
        return False, [f"only {len(cd)} common holdout days < min_paired_days "
                       f"{cfg.min_paired_days}"], comp
    order = sorted(cd)
    c_by, h_by = dict(zip(cd, cv)), dict(zip(hd, hv))
    c = np.array([c_by[t] for t in order])  # (T,)
    h = np.array([h_by[t] for t in order])  # (T,)
    diff = c - h
    mean_diff = float(diff.mean())
    if np.all(diff == diff[0]):
        # zero variance: t undefined; a constant negative difference is as strong as it gets
        t_stat, p_value = (-math.inf if diff[0] < 0 else (math.inf if diff[0] > 0 else math.nan),
                           0.0 if diff[0] < 0 else 1.0)
    else:
        res = stats.ttest_rel(c, h, alternative="less")
        t_stat, p_value = float(res.statistic), float(res.pvalue)
    shortfall = -mean_diff
    significantly_worse = p_value < cfg.paired_alpha
    beyond_tolerance = shortfall > tolerance
    comp.update({"n_common_days": len(order), "candidate_mean_rank_ic": float(c.mean()),
                 f"{who}_mean_rank_ic": float(h.mean())})
    comp.update(mean_diff=mean_diff,
                mean_shortfall=shortfall, diff_std=float(diff.std(ddof=1)) if len(diff) > 1 else None,
                t_stat=t_stat, p_value=p_value, significantly_worse=significantly_worse,
                beyond_tolerance=beyond_tolerance)
    reasons = []
    if significantly_worse:
        reasons.append(f"candidate significantly worse than {who} on daily RankIC@1d "
                       f"(one-sided paired t={t_stat:.3f}, p={p_value:.4g} < {cfg.paired_alpha})")
    if beyond_tolerance:
        reasons.append(f"candidate mean daily RankIC@1d shortfall {shortfall:.5f} > tolerance "
                       f"{tolerance}" + (f" vs {who}" if who != "champion" else ""))
    return not reasons, reasons, comp


def _ladder_rule(candidate: Mapping[str, Any], ladder: Mapping[str, Mapping[str, Any]],
                 cfg: GateConfig) -> tuple[bool, list[str], dict[str, Any], str | None, dict]:
    """Rule 4: rule 2's paired test + tolerance against the best baseline (by mean RankIC@1d)."""
    table = {n: _summary(e) for n, e in ladder.items()}
    scored = {n: v["rank_ic_1d"] for n, v in table.items()
              if v["rank_ic_1d"] is not None and math.isfinite(v["rank_ic_1d"])}
    if not scored:
        return False, ["baseline ladder has no finite RankIC@1d: cannot show the candidate beats it"], \
            {}, None, table
    best = max(scored, key=lambda n: scored[n])
    ok, why, comp = _compare(candidate, ladder[best], cfg, who=f"baseline {best}",
                             tolerance=cfg.baseline_margin)
    if not ok:
        ranked = ", ".join(f"{n} {v:+.4f}" for n, v in sorted(scored.items(), key=lambda kv: -kv[1]))
        cand = _num(candidate, "rank_ic_1d")
        why = why + [f"baseline ladder (mean daily RankIC@1d): {ranked}; candidate "
                     f"{cand if cand is None else format(cand, '+.4f')}"]
    return ok, why, comp, best, table


def decide(candidate: Mapping[str, Any], champion: Mapping[str, Any] | None, cfg: GateConfig,
           force: bool = False, actor: str | None = None, *,
           champion_unavailable: str | None = None,
           ladder: Mapping[str, Mapping[str, Any]] | None = None) -> GateDecision:
    """Apply SPEC 7 (see the module docstring for the exact rules).

    Args:
        candidate: evaluation dict of the new model on the holdout window.
        champion: evaluation dict of the current champion on the same window, or None.
        cfg: thresholds.
        force: promote regardless (manual override); requires ``actor``; recorded.
        champion_unavailable: with ``champion=None``, why an existing champion could not be
            evaluated; the candidate is then rejected unless forced (see the module doc).
        ladder: evaluation dicts of the baselines on the same holdout (``atft_core.baselines``),
            by name; rule 4 applies when ``cfg.baseline_rule`` and a ladder is given.
    Returns:
        GateDecision (``.to_dict()`` is JSON-able).
    """
    if force and not actor:
        raise ValueError("force=True needs an actor (who overrode the gate) to be recorded")
    reasons: list[str] = []
    checks: dict[str, bool | None] = {}

    sanity = _sanity("candidate", candidate, cfg)
    if champion is not None:
        _, _, cprob = _daily("candidate", candidate)
        sanity += [p for p in cprob if "not finite" in p]
    checks["sanity"] = not sanity
    reasons += sanity

    nums = _summary(candidate)
    ric, shp = nums["rank_ic_1d"], nums["sharpe_1d"]
    thr = []
    if ric is None or not math.isfinite(ric) or ric < cfg.min_rank_ic:
        thr.append(f"rank_ic_1d {ric} < min_rank_ic {cfg.min_rank_ic}")
    if shp is None or not math.isfinite(shp) or shp < cfg.min_sharpe:
        thr.append(f"sharpe_1d {shp} < min_sharpe {cfg.min_sharpe}")
    checks["thresholds"] = not thr
    reasons += thr

    comparison = None
    if champion is not None and champion_unavailable:
        raise ValueError("champion_unavailable is only meaningful without champion metrics")
    if champion is None and champion_unavailable:
        checks["not_worse"] = False
        reasons.append(f"champion could not be evaluated ({champion_unavailable}); the candidate "
                       "cannot be shown not worse: rejected unless forced")
    elif champion is None:
        checks["not_worse"] = None
    else:
        ok, why, comparison = _compare(candidate, champion, cfg)
        checks["not_worse"] = ok
        reasons += [w for w in why if w not in reasons]

    best_baseline, baseline_comp, table = None, None, None
    if ladder is not None:
        table = {n: _summary(e) for n, e in ladder.items()}
    if cfg.baseline_rule and ladder is not None:
        ok, why, baseline_comp, best_baseline, table = _ladder_rule(candidate, ladder, cfg)
        checks["beats_baselines"] = ok
        reasons += [w for w in why if w not in reasons]

    base = "promote" if all(v is not False for v in checks.values()) else "reject"
    fallback = None
    if base == "reject" and not force and cfg.promote_baseline_if_better and ladder \
            and "ridge" in ladder:
        # the served signal is never worse than the ladder: the ridge faces the same gate
        # (thresholds, sanity, the champion, the other baselines)
        others = {n: e for n, e in ladder.items() if n != "ridge"}
        fb = decide(ladder["ridge"], champion, cfg.model_copy(update={"promote_baseline_if_better": False}),
                    champion_unavailable=champion_unavailable, ladder=others or None)
        fallback = {"baseline": "ridge", "decision": fb.decision, "reasons": list(fb.reasons),
                    "checks": fb.checks}
    if force:
        reasons.append(f"forced promotion by {actor}" + (" overriding a reject" if base ==
                                                        "reject" else ""))
    return GateDecision(
        decision="promote" if force else base,
        decision_without_force=base,
        forced=bool(force),
        actor=actor,
        reasons=tuple(reasons),
        checks=checks,
        candidate=nums,
        champion=_summary(champion) if champion is not None else None,
        comparison=comparison,
        thresholds=cfg.model_dump(),
        decided_at=datetime.now(UTC).isoformat(),
        champion_unavailable=champion_unavailable,
        ladder=table,
        best_baseline=best_baseline,
        baseline_comparison=baseline_comp,
        fallback=fallback,
    )


def refuse_synthetic(decision: GateDecision, data_kind: str, cfg: GateConfig) -> GateDecision:
    """Data-provenance rule, after :func:`decide`: a model trained on synthetic data is never
    promoted into a registry unless ``gate.allow_synthetic`` is true (the demo and test configs).
    ``force`` does not override it: it is a property of the deployment, not of the model."""
    if data_kind != "synthetic" or cfg.allow_synthetic:
        return decision
    reason = ("trained on synthetic data: refusing to promote it (production config; set "
              "data.source to the quotes store, or gate.allow_synthetic: true for a demo)")
    return replace(decision, decision="reject", decision_without_force="reject",
                   reasons=(*decision.reasons, reason), checks={**decision.checks, "real_data": False})
