"""The replay report: ``report.md`` + ``replay.png`` (matplotlib, Agg), written atomically.

Figure: cumulative served long-short return @1d per policy; live RankIC (20-day mean, as known
each day) per horizon; the champion timeline of the deep policies with every gate decision.
Markdown: inputs, the summary table, RankIC by horizon, and one line per retrain with the gate's
decision and reasons.
"""

from __future__ import annotations

import datetime as dt
import io
import math
from pathlib import Path
from typing import Any

import polars as pl

from atft_core.atomic import atomic_write_bytes, atomic_write_text

LABELS = {"policy": "policy (retrain + gate)", "never_retrain": "never retrain",
          "always_promote": "always promote", "reversal_1d": "1-day reversal",
          "low_vol_20d": "20-day low volatility"}


def _fmt(v: Any, nd: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{nd}f}"


def write_report(out: Path, state: dict[str, Any], daily: pl.DataFrame, live: pl.DataFrame,
                 summary: dict[str, dict[str, Any]], horizons: tuple[int, ...]) -> Path:
    _write_png(out / "replay.png", state, daily, live, horizons)
    inp = state["inputs"]
    lines = [
        "# atft replay", "",
        f"Quotes `{inp['data']}` (sha256 {inp['data_sha256'][:12]}), serving days {inp['start']} .. "
        f"{inp['end']} ({len(state['serving_days'])} trading days), retrain every {inp['every']} "
        f"trading days ({len(state['retrains'])} retrains, config sha256 {inp['config_sha256'][:12]}). "
        f"Training + gating time: {state.get('seconds', 0):.0f} s.", "",
        "![replay](replay.png)", "",
        "## Served signal, all policies on the same days", "",
        "| policy | RankIC@1d | ICIR@1d | hit@1d | LS Sharpe@1d | cum LS@1d | max DD@1d | days | "
        "retrains | promotions |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p, s in summary.items():
        lines.append(
            f"| {LABELS.get(p, p)} | {_fmt(s.get('rank_ic_1d'))} | {_fmt(s.get('rank_icir_1d'), 3)} | "
            f"{_fmt(s.get('hit_rate_1d'), 3)} | {_fmt(s.get('sharpe_1d'), 2)} | "
            f"{_fmt(s.get('cum_ls_return_1d'))} | {_fmt(s.get('max_drawdown_1d'))} | "
            f"{s.get('n_days_1d', 'n/a')} | {s['retrains']} | {s['promotions']} |")
    lines += ["", "## Mean daily RankIC by horizon", "",
              "| policy | " + " | ".join(f"{h}d" for h in horizons) + " |",
              "|---|" + "---|" * len(horizons)]
    for p, s in summary.items():
        lines.append(f"| {LABELS.get(p, p)} | " + " | ".join(_fmt(s.get(f"rank_ic_{h}d")) for h in horizons) + " |")
    lines += ["", "## Champion timeline (policy)", "",
              "| day | candidate | cand. RankIC@1d | champion | champ. RankIC@1d | decision | reasons |",
              "|---|---|---|---|---|---|---|"]
    for r in state["retrains"]:
        cand, champ = r["candidate"] or {}, r["champion"] or {}
        before = (r["champion_before"] or {}).get("policy", "-")
        decision = r["gate"]["decision"]
        if r["bootstrap"]:
            decision = f"bootstrap (gate: {decision})"
        reasons = "; ".join(r["gate"]["reasons"]) or "all checks passed"
        lines.append(f"| {r['day']} | {r['run_id']} | {_fmt(cand.get('rank_ic_1d'))} | {before} | "
                     f"{_fmt(champ.get('rank_ic_1d'))} | {decision} | {reasons.replace('|', '/')} |")
    lines += ["", "Live RankIC: the rolling mean over the last 20 (60) serving days whose label had "
              "matured (day s counts from s+1+h on), per `atft_core.replay.scoring`. Long-short: "
              "top minus bottom 20% by the served signal, equal weight (`atft_core.evaluate`).", ""]
    return atomic_write_text(out / "report.md", "\n".join(lines))


def _write_png(path: Path, state: dict[str, Any], daily: pl.DataFrame, live: pl.DataFrame,
               horizons: tuple[int, ...]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_h_rows = math.ceil(len(horizons) / 2)
    fig = plt.figure(figsize=(13, 4 + 3 * n_h_rows + 2.5))
    gs = fig.add_gridspec(2 + n_h_rows, 2, height_ratios=[4] + [3] * n_h_rows + [2.5])
    ax = fig.add_subplot(gs[0, :])
    for p in daily["policy"].unique(maintain_order=True):
        d = daily.filter(pl.col("policy") == p).sort("Date")
        ax.plot(d["Date"].to_list(), d["ls_return_1d"].fill_null(0.0).cum_sum().to_list(),
                label=LABELS.get(p, p), lw=1.4)
    _retrain_lines(ax, state)
    ax.set_title("cumulative served long-short return @1d (top - bottom 20%)")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    for i, h in enumerate(horizons):
        a = fig.add_subplot(gs[1 + i // 2, i % 2])
        sub = live.filter((pl.col("horizon") == f"{h}d") & (pl.col("window") == "20d"))
        for p in sub["policy"].unique(maintain_order=True):
            s = sub.filter(pl.col("policy") == p).sort("Date")
            a.plot(s["Date"].to_list(), s["value"].to_list(), label=LABELS.get(p, p), lw=1.1)
        a.axhline(0.0, color="k", lw=0.6)
        a.set_title(f"live RankIC@{h}d, 20-day mean (as known that day)", fontsize=9)
        a.grid(alpha=0.3)
        a.tick_params(labelsize=7)
    _timeline(fig.add_subplot(gs[-1, :]), state)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _retrain_lines(ax, state: dict[str, Any]) -> None:
    for r in state["retrains"]:
        ax.axvline(dt.date.fromisoformat(r["day"]), color="0.85", lw=0.6, zorder=0)


def _timeline(ax, state: dict[str, Any]) -> None:
    """One row per deep policy: segments coloured by the served model; gate markers on 'policy'."""
    import matplotlib.pyplot as plt

    from atft_core.replay.engine import DEEP_POLICIES, champion_by_day

    runs = [r["run_id"] for r in state["retrains"]]
    cmap = plt.get_cmap("tab20")
    for row, p in enumerate(reversed(DEEP_POLICIES)):
        by_day = champion_by_day(state, p)
        days = sorted(by_day)
        i = 0
        while i < len(days):
            j = i
            while j + 1 < len(days) and by_day[days[j + 1]] == by_day[days[i]]:
                j += 1
            k = runs.index(by_day[days[i]])
            ax.barh(row, (days[j] - days[i]).days + 1, left=days[i], color=cmap(k % 20), height=0.6)
            i = j + 1
    top = len(DEEP_POLICIES) - 1  # the 'policy' row
    for r in state["retrains"]:
        day = dt.date.fromisoformat(r["day"])
        ok = r["gate"]["decision"] == "promote"
        ax.plot(day, top + 0.45, marker="^" if ok else "x", color="green" if ok else "red", ms=7)
    ax.set_yticks(range(len(DEEP_POLICIES)), [LABELS[p] for p in reversed(DEEP_POLICIES)], fontsize=8)
    ax.set_title("champion timeline (colour = served model; ^ gate promote, x gate reject)", fontsize=9)
    ax.tick_params(axis="x", labelsize=7)
