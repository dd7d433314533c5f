"""Run report: report.md + PNG plots (matplotlib Agg, no display needed).

Plots: loss curves by phase, val RankIC curves per horizon by phase, RankIC by horizon (val and
holdout of the best weights), cumulative long-short return (val and holdout, 1d).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from atft_core.config import Config
from atft_core.train.checkpoint import atomic_write_bytes, atomic_write_text


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    _plt().close(fig)


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and v is not None else math.nan


def _phase_spans(history: Sequence[Mapping[str, Any]]) -> list[tuple[str, int, int]]:
    spans: list[tuple[str, int, int]] = []
    for r in history:
        if spans and spans[-1][0] == r["phase"]:
            spans[-1] = (spans[-1][0], spans[-1][1], r["epoch"])
        else:
            spans.append((r["phase"], r["epoch"], r["epoch"]))
    return spans


def _shade(ax, history) -> None:
    for i, (name, a, b) in enumerate(_phase_spans(history)):
        ax.axvspan(a - 0.5, b + 0.5, color=f"C{i}", alpha=0.08)
        ax.text((a + b) / 2, 1.0, name, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                fontsize=8)


def plot_curves(history: Sequence[Mapping[str, Any]], horizons: Sequence[int], out_dir: Path) -> list[str]:
    plt = _plt()
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(epochs, [_num(r.get("train/loss")) for r in history], "o-", label="train loss")
    ax.plot(epochs, [_num(r.get("val/loss")) for r in history], "s-", label="val loss")
    _shade(ax, history)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (phase weights)")
    ax.legend()
    _save(fig, out_dir / "loss_curves.png")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for h in horizons:
        ax.plot(epochs, [_num(r.get(f"val/rank_ic_{h}d")) for r in history], "o-", label=f"{h}d")
    ax.axhline(0, color="k", lw=0.5)
    _shade(ax, history)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val RankIC")
    ax.legend(title="horizon")
    _save(fig, out_dir / "rank_ic_curves.png")
    return ["loss_curves.png", "rank_ic_curves.png"]


def plot_eval(val: Mapping[str, Any], holdout: Mapping[str, Any], horizons: Sequence[int], out_dir: Path) -> list[str]:
    import numpy as np

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(horizons))
    for i, (name, m) in enumerate((("val", val), ("holdout", holdout))):
        if m:
            ax.bar(x + (i - 0.5) * 0.38, [_num(m.get(f"rank_ic_{h}d")) for h in horizons], 0.38, label=name)
    ax.set_xticks(x, [f"{h}d" for h in horizons])
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel("mean daily RankIC (best weights)")
    ax.legend()
    _save(fig, out_dir / "rank_ic_by_horizon.png")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, m in (("val", val), ("holdout", holdout)):
        daily = (m or {}).get("daily") or {}
        r = daily.get("ls_return_1d")
        if r:
            ax.plot(np.asarray(daily["date"], dtype="datetime64[D]"),
                    np.cumsum(np.nan_to_num(np.asarray(r, dtype=float))), label=name)
    ax.set_ylabel("cumulative long-short return (1d, top/bottom 20%)")
    ax.legend()
    fig.autofmt_xdate()
    _save(fig, out_dir / "cumulative_long_short.png")
    return ["rank_ic_by_horizon.png", "cumulative_long_short.png"]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if not math.isfinite(v) else f"{v:.4f}"
    return "" if v is None else str(v)


def write_report(run_dir: str | Path, history: Sequence[Mapping[str, Any]], val: Mapping[str, Any],
                 holdout: Mapping[str, Any], best: Mapping[str, Any], cfg: Config) -> Path:
    """Write report.md (+ PNGs) into ``run_dir``; returns the report path."""
    run_dir = Path(run_dir)
    horizons = tuple(cfg.horizons)
    pngs = plot_curves(history, horizons, run_dir) if history else []
    pngs += plot_eval(val, holdout, horizons, run_dir)
    keys = ("rank_ic", "ic", "icir", "sharpe", "hit_rate", "max_drawdown", "turnover")
    lines = [
        "# Training report", "",
        f"config sha256 `{cfg.sha256()[:16]}`; best epoch {best.get('epoch')} (phase "
        f"{best.get('phase')}, blocks {best.get('blocks')}) by {best.get('monitor')} = "
        f"{_fmt(best.get('value'))}", "",
        "## Best weights", "",
        "| window | " + " | ".join(f"{k}_{h}d" for k in ("rank_ic", "sharpe") for h in horizons)
        + " | jpx_sharpe | n_days |",
        "|---" * (2 + 2 * len(horizons) + 1) + "|",
    ]
    for name, m in (("val", val), ("holdout", holdout)):
        if m:
            lines.append(f"| {name} | " + " | ".join(_fmt(m.get(f"{k}_{h}d")) for k in ("rank_ic", "sharpe")
                                                      for h in horizons)
                         + f" | {_fmt(m.get('jpx_sharpe'))} | {m.get('n_days')} |")
    lines += ["", "### Holdout detail", "", "| metric | " + " | ".join(f"{h}d" for h in horizons) + " |",
              "|---" * (1 + len(horizons)) + "|"]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_fmt((holdout or {}).get(f"{k}_{h}d")) for h in horizons) + " |")
    lines += ["", "## Epochs", "",
              "| epoch | phase | train loss | val loss | val RankIC 1d | val RankIC 5d | lr | stock-days/s | grad norm | NaN steps |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in history:
        lines.append(" | ".join([f"| {r['epoch']}", str(r["phase"])] + [_fmt(r.get(k)) for k in (
            "train/loss", "val/loss", "val/rank_ic_1d", "val/rank_ic_5d", "lr", "samples_per_s",
            "grad_norm")] + [str(r.get("nan_steps", 0))]) + " |")
    lines += ["", "## Plots", ""] + [f"![{p[:-4]}]({p})" for p in pngs] + [""]
    return atomic_write_text(run_dir / "report.md", "\n".join(lines))
