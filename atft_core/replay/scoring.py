"""Score what each policy served: the evaluation module's daily numbers, then live rolling means.

Daily IC/RankIC/long-short per horizon come from :func:`atft_core.evaluate.daily_metrics` and the
summary from :func:`atft_core.evaluate.evaluate_predictions` (no second implementation).

Live = as a monitor would know it: the label of day s at horizon h matures at the close of
s+1+h, so the live rolling mean at day t covers the last ``window`` scored days s <= t-1-h (fewer while the
history is shorter), the definition of ``serving.monitor.rolling``. ``atft_live_rank_ic{horizon,window,role}`` is this
value per day.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

LIVE_WINDOWS = (20, 60)


def live_rolling_mean(values: np.ndarray, h: int, window: int) -> np.ndarray:
    """(T,) daily values -> (T,) the mean a monitor knows at each day t: over the last
    ``window`` scored (finite) days s with s <= t-1-h, fewer while the history is shorter (as
    ``serving.monitor.rolling``); NaN before the first label matures."""
    t_len = len(values)
    out = np.full(t_len, np.nan)
    scored = np.flatnonzero(np.isfinite(values))  # days with a score, ascending
    for t in range(t_len):
        known = scored[scored <= t - 1 - h]
        if len(known):
            out[t] = float(values[known[-window:]].mean())
    return out


def score_policies(served: dict[str, pl.DataFrame], horizons: tuple[int, ...],
                   state: dict[str, Any]) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, dict]]:
    """(daily, live, summary) for every policy (see the module docstring)."""
    from atft_core.evaluate import daily_metrics, evaluate_predictions

    days = pl.DataFrame({"Date": [s for s in state["serving_days"]]}).with_columns(
        pl.col("Date").str.to_date())
    dailies, lives, summary = [], [], {}
    for policy, frame in served.items():
        d = days.join(daily_metrics(frame, horizons), on="Date", how="left").with_columns(
            policy=pl.lit(policy))
        dailies.append(d)
        for h in horizons:
            vals = d[f"rank_ic_{h}d"].cast(pl.Float64).fill_null(math.nan).to_numpy()
            for w in LIVE_WINDOWS:
                lives.append(pl.DataFrame({
                    "Date": d["Date"], "policy": policy, "horizon": f"{h}d", "window": f"{w}d",
                    "value": live_rolling_mean(vals, h, w)}).with_columns(pl.col("value").fill_nan(None)))
        ev = evaluate_predictions(frame, horizons)
        head = {k: v for k, v in ev.items() if not isinstance(v, list | dict)}
        for h in horizons:
            ls = d[f"ls_return_{h}d"].cast(pl.Float64).fill_null(0.0)
            head[f"cum_ls_return_{h}d"] = float(ls.sum())
        summary[policy] = head | _counts(state, policy)
    return pl.concat(dailies, how="diagonal"), pl.concat(lives), summary


def _counts(state: dict[str, Any], policy: str) -> dict[str, Any]:
    """Retrains, promotions and distinct models a policy served."""
    recs = state["retrains"]
    if policy == "policy":
        promos = sum(1 for r in recs[1:] if r["gate"]["decision"] == "promote")
        return {"retrains": len(recs), "promotions": promos, "models_served": promos + 1}
    if policy == "always_promote":
        return {"retrains": len(recs), "promotions": max(len(recs) - 1, 0), "models_served": len(recs)}
    if policy == "never_retrain":
        return {"retrains": min(len(recs), 1), "promotions": 0, "models_served": 1}
    return {"retrains": 0, "promotions": 0, "models_served": 0}
