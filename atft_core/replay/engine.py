"""The replay loop: retrain every N trading days, gate, serve the champion in between.

Every step calls what the nightly DAG calls: ``features.build_features`` on the quotes up to the
retrain day, ``train.api.train_run`` into a normal run directory, ``pipeline.tasks.score_on_holdout``
(the nightly's one holdout scoring) on that day's data for the candidate AND the current champion
(the same dates), ``gate.decide`` on the two dicts. Serving uses
``train.api.load_model`` + ``predict_window`` on the day's cross-section; scoring is
:mod:`atft_core.replay.scoring` (``evaluate.daily_metrics``).

Decisions (the issue is silent):
* **Time.** The retrain of day D runs after D's close on the quotes up to D, so a label
  y_h(t) = Close(t+1+h)/Close(t+1)-1 enters training only when t+1+h <= D (``build_features``
  leaves it null otherwise, and ``make_splits`` purges/embargoes as nightly). The champion after
  D's gate serves D's signal (the score DAG runs after the retrain) and every day until the
  next retrain day. Retrain days are the first serving day and every ``every``-th trading day
  after it.
* **Bootstrap.** The three deep policies start from the same model, the first candidate (a
  registry is seeded by a first promotion). Its no-champion gate decision is recorded in the
  timeline; a first candidate the thresholds would reject is marked so, and still served, so the
  policies are compared on the same days from the first one.
* **Sharing.** The policy and "always promote" train the same candidate on the same day (same
  config, same data), so each retrain day trains ONE run, used by both; "never retrain" serves
  the first run. Each served model predicts only the days some policy serves it, once.
* **No registry, no synthetic-data refusal.** Champions live in the replay state, not in a
  registry, so ``gate.decide``'s verdict is final (the registry-side refusal of synthetic-data
  models is a deployment rule for real promotions). No GX validation per retrain (the quotes are
  history; validate them once with ``atft validate``): nothing is masked as a bad tick.
* **Resume.** ``replay_state.json`` is rewritten atomically after every retrain day. A rerun
  with the same inputs (quotes bytes, window, every, config) skips the recorded days; an
  unfinished retrain resumes its own run dir's checkpoint (``train_run(resume=True)``); served
  predictions are cached per model. Other inputs in the same --out are refused.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from atft_core.atomic import atomic_write_bytes, atomic_write_text
from atft_core.config import Config

log = logging.getLogger("atft.replay")

POLICIES = ("policy", "never_retrain", "always_promote", "reversal_1d", "low_vol_20d")
DEEP_POLICIES = POLICIES[:3]
STATE_FILE = "replay_state.json"
STATE_FORMAT = 1
# what a replay writes into --out; anything else there is not ours
OUT_ENTRIES = frozenset({STATE_FILE, "config.yaml", "runs", "serve", "report.md", "replay.png",
                         "daily.parquet", "live_metrics.parquet", "summary.json", "graph_store"})


class ReplayError(ValueError):
    """The replay cannot run with these inputs (the message names the problem)."""


@dataclass(frozen=True)
class ReplayResult:
    """What a replay produced (also on disk under ``out_dir``).

    Fields:
        state: the replay state (inputs, retrain days, one record per retrain with the gate).
        served: policy -> predictions frame (Date, Code, pred_{h}d, y_{h}d) on the serving days.
        daily: one row per (policy, Date): evaluate.daily_metrics columns.
        live: Date, policy, horizon, window, value: the rolling mean RankIC known at Date.
        summary: policy -> evaluate_predictions headline (no daily lists) + replay counts.
        report: the Markdown report path.
    """

    out_dir: Path
    state: dict[str, Any]
    served: dict[str, pl.DataFrame]
    daily: pl.DataFrame
    live: pl.DataFrame
    summary: dict[str, dict[str, Any]]
    report: Path


# --------------------------------------------------------------------------- inputs & state
def data_sha256(source: str | Path) -> str:
    """sha256 over the bytes of the parquet files a scan of ``source`` reads (resume check)."""
    from atft_core.data.store import store_files

    h = hashlib.sha256()
    for f in store_files(source):
        h.update(str(Path(f).relative_to(Path(source)) if Path(source).is_dir() else Path(f).name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _check_out_dir(out: Path) -> dict[str, Any] | None:
    """The existing state, or None for a fresh replay; refuses a dir with files not ours."""
    if out.exists() and not out.is_dir():
        raise ReplayError(f"--out {out} is a file, not a directory")
    if not out.exists():
        return None
    entries = sorted(p.name for p in out.iterdir())
    foreign = [n for n in entries if n not in OUT_ENTRIES and not n.startswith(".")]
    if foreign:
        raise ReplayError(f"--out {out} holds files atft replay did not write ({', '.join(foreign[:5])});"
                          " pick an empty or new directory (nothing was changed)")
    state_path = out / STATE_FILE
    if not state_path.exists():
        if entries:
            raise ReplayError(f"--out {out} has replay files but no {STATE_FILE}; pick a new directory")
        return None
    try:
        state = json.loads(state_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReplayError(f"{state_path} is not a replay state ({err}); pick a new --out") from None
    if state.get("format") != STATE_FORMAT:
        raise ReplayError(f"{state_path} has format {state.get('format')!r}, expected {STATE_FORMAT}")
    return state


def _write_state(out: Path, state: dict[str, Any]) -> None:
    atomic_write_text(out / STATE_FILE, json.dumps(state, indent=1, sort_keys=False))


def _headline(m: dict[str, Any] | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {k: v for k, v in m.items() if not isinstance(v, list | dict)}


# --------------------------------------------------------------------------- the loop
def retrain_days(serving_days: list[dt.date], every: int) -> list[dt.date]:
    """The first serving day and every ``every``-th trading day after it."""
    return serving_days[::every]


def run_replay(cfg: Config, data: str | Path, start: str | dt.date, end: str | dt.date, every: int,
               out: str | Path, *, progress: bool = True) -> ReplayResult:
    """Replay the nightly policy over ``[start, end]`` (see the module docstring).

    Args:
        cfg: the config every candidate is trained with (also the gate's thresholds).
        data: canonical quotes (a parquet file or a store directory); read from ``cfg.data.start``.
        start, end: the serving window (inclusive; trading days present in the data).
        every: retrain every N trading days (N >= 1).
        out: output directory (state, run dirs, served predictions, report).
    Raises ReplayError (bad inputs, nothing written) or what train_run raises.
    """
    from atft_core.data.store import read_quotes

    if every < 1:
        raise ReplayError(f"--every must be >= 1 trading day, got {every}")
    start_d, end_d = _date(start, "--start"), _date(end, "--end")
    if start_d > end_d:
        raise ReplayError(f"--start {start_d} is after --end {end_d}")
    out = Path(out)
    state = _check_out_dir(out)
    quotes = read_quotes(data, start=cfg.data.start)
    if quotes.is_empty():
        raise ReplayError(f"no quotes in {data}" + (f" from {cfg.data.start}" if cfg.data.start else ""))
    market_days = quotes.get_column("Date").unique().sort().to_list()
    serving = [d for d in market_days if start_d <= d <= end_d]
    if not serving:
        raise ReplayError(f"no trading day of {data} lies in [{start_d}, {end_d}] "
                          f"(the data covers {market_days[0]} .. {market_days[-1]})")
    days = retrain_days(serving, every)
    _check_history(cfg, market_days, days[0])
    inputs = {"data": str(data), "data_sha256": data_sha256(data), "start": str(start_d),
              "end": str(end_d), "every": every, "config_sha256": cfg.sha256()}
    if state is None:
        state = {"format": STATE_FORMAT, "inputs": inputs, "serving_days": [str(d) for d in serving],
                 "retrain_days": [str(d) for d in days], "retrains": [], "seconds": 0.0}
    elif state["inputs"] != inputs:
        diff = sorted(k for k in inputs if state["inputs"].get(k) != inputs[k])
        raise ReplayError(f"--out {out} holds a replay of other inputs (differs in {', '.join(diff)});"
                          " pick a new --out, or rerun with the same inputs to resume")
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs").mkdir(exist_ok=True)
    atomic_write_text(out / "config.yaml", cfg.to_yaml())
    _write_state(out, state)

    done = {r["day"] for r in state["retrains"]}
    todo = [d for d in days if str(d) not in done]
    bar = _progress(len(days), "retrain days", progress, initial=len(days) - len(todo))
    for day in todo:
        t0 = time.perf_counter()
        record = _retrain_day(cfg, quotes, day, out, state)
        record["seconds"] = round(time.perf_counter() - t0, 1)
        state["retrains"].append(record)
        state["seconds"] = round(state.get("seconds", 0.0) + record["seconds"], 1)
        _write_state(out, state)
        bar.update(1)
        bar.set_postfix_str(f"{day} {record['gate']['decision']}")
    bar.close()

    from atft_core.replay.report import write_report
    from atft_core.replay.scoring import score_policies

    served = serve_policies(cfg, quotes, state, out, progress=progress)
    daily, live, summary = score_policies(served, cfg.horizons, state)
    atomic_write_bytes(out / "daily.parquet", lambda fh: daily.write_parquet(fh))
    atomic_write_bytes(out / "live_metrics.parquet", lambda fh: live.write_parquet(fh))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    report = write_report(out, state, daily, live, summary, cfg.horizons)
    return ReplayResult(out_dir=out, state=state, served=served, daily=daily, live=live,
                        summary=summary, report=report)


def _check_history(cfg: Config, market_days: list[dt.date], first: dt.date) -> None:
    """The first retrain day needs the nightly splits' history (checked before any write)."""
    from atft_core.dataset import make_splits

    try:
        make_splits([d for d in market_days if d <= first], cfg)
    except ValueError as err:
        raise ReplayError(f"the first retrain day {first}: {err}; start later or load more "
                          "history (data.start)") from None


def _date(x: str | dt.date, flag: str) -> dt.date:
    if isinstance(x, dt.date):
        return x
    try:
        return dt.date.fromisoformat(str(x))
    except ValueError:
        raise ReplayError(f"{flag} {x!r} is not an ISO date (YYYY-MM-DD)") from None


def _progress(total: int, desc: str, enabled: bool, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="day", disable=not enabled,
                dynamic_ncols=True)


def run_id_for(cfg: Config, day: dt.date) -> str:
    return f"replay-{day:%Y%m%d}-{cfg.sha256()[:8]}"


def _retrain_day(cfg: Config, quotes: pl.DataFrame, day: dt.date, out: Path,
                 state: dict[str, Any]) -> dict[str, Any]:
    """Train day ``day``'s candidate, gate it against the policy's champion, move champions."""
    from atft_core.features import build_features
    from atft_core.gate import decide
    from atft_core.pipeline.run_context import RunContext
    from atft_core.pipeline.tasks import score_on_holdout
    from atft_core.train.api import train_run

    frame = build_features(quotes.filter(pl.col("Date") <= day), cfg)  # the nightly's window
    run_id = run_id_for(cfg, day)
    run_dir = out / "runs" / run_id
    try:
        # one store for the replay's retrains: each adds its new days' graphs, rebuilds none
        result = train_run(cfg, frame, run_dir, resume=True, evaluate_holdout=False,
                           graph_store=out / "graph_store")
    except ValueError as err:
        raise ReplayError(f"retrain on {day}: {err}") from None
    # the nightly's one holdout scoring, for the candidate and the champion on the same dates
    rc = RunContext(dag_id="atft_replay", run_id=run_id, as_of=day, config=cfg)
    candidate = score_on_holdout(run_dir, frame, rc, graph_store=out / "graph_store")
    previous = state["retrains"][-1]["champion_after"] if state["retrains"] else None
    champion_eval, unavailable = None, None
    if previous is not None:
        champ_dir = out / "runs" / previous["policy"]
        try:
            champion_eval = score_on_holdout(champ_dir, frame, rc, graph_store=out / "graph_store")
        except ValueError as err:  # as the pipeline: an unevaluable champion is recorded
            unavailable = f"champion {previous['policy']} cannot be evaluated on this data: {err}"
    decision = decide(candidate, champion_eval, cfg.gate, champion_unavailable=unavailable)
    record_gate = decision.to_dict()
    if previous is None:  # bootstrap: every deep policy starts from the first candidate
        after = {p: run_id for p in DEEP_POLICIES}
        bootstrap = True
    else:
        after = {"policy": run_id if decision.promote else previous["policy"],
                 "never_retrain": previous["never_retrain"], "always_promote": run_id}
        bootstrap = False
    return {
        "day": str(day), "run_id": run_id, "run_dir": str(run_dir.relative_to(out)),
        "train_seconds": round(result.train_seconds, 1), "resumed_from": result.resumed_from,
        "candidate": _headline(candidate), "champion": _headline(champion_eval),
        "champion_before": previous, "champion_after": after, "bootstrap": bootstrap,
        "gate": {k: record_gate[k] for k in ("decision", "reasons", "checks", "comparison",
                                             "champion_unavailable")},
    }


# --------------------------------------------------------------------------- serving
def champion_by_day(state: dict[str, Any], policy: str) -> dict[dt.date, str]:
    """Serving day -> run id the deep ``policy`` served that day (the champion after the gate of
    the latest retrain day <= it)."""
    changes = [(dt.date.fromisoformat(r["day"]), r["champion_after"][policy]) for r in state["retrains"]]
    out: dict[dt.date, str] = {}
    j = -1
    for d in (dt.date.fromisoformat(s) for s in state["serving_days"]):
        while j + 1 < len(changes) and changes[j + 1][0] <= d:
            j += 1
        if j >= 0:
            out[d] = changes[j][1]
    return out


def serve_policies(cfg: Config, quotes: pl.DataFrame, state: dict[str, Any], out: Path,
                   progress: bool = True) -> dict[str, pl.DataFrame]:
    """Predictions frame per policy on the serving days: the deep policies' champions (each model
    predicts the union of the days it is served, once, cached under ``out/serve``) and the two
    factors on the same rows."""
    from atft_core.features import build_features
    from atft_core.replay.factors import factor_predictions
    from atft_core.train.api import as_panel

    assign = {p: champion_by_day(state, p) for p in DEEP_POLICIES}
    needed: dict[str, set[dt.date]] = {}
    for p in DEEP_POLICIES:
        for d, run in assign[p].items():
            needed.setdefault(run, set()).add(d)
    full = build_features(quotes, cfg)  # point in time: a feature row of t uses rows <= t only
    panel = None
    (out / "serve").mkdir(exist_ok=True)
    preds: dict[str, pl.DataFrame] = {}
    bar = _progress(len(needed), "serving models", progress)
    for run, days in sorted(needed.items()):
        days_sorted = sorted(days)
        path = out / "serve" / f"{run}-{_days_key(days_sorted)}.parquet"
        if path.exists():
            preds[run] = pl.read_parquet(path)
        else:
            panel = panel if panel is not None else as_panel(full, cfg)
            frame = _predict_days(out / "runs" / run, panel, days_sorted)
            atomic_write_bytes(path, lambda fh, f=frame: f.write_parquet(fh))
            preds[run] = frame
        bar.update(1)
    bar.close()
    served: dict[str, pl.DataFrame] = {}
    for p in DEEP_POLICIES:
        key = pl.DataFrame({"Date": list(assign[p]), "_run": list(assign[p].values())},
                           schema={"Date": pl.Date, "_run": pl.String})
        parts = [preds[run].join(key.filter(pl.col("_run") == run).select("Date"), on="Date")
                 for run in sorted(set(assign[p].values()))]
        served[p] = pl.concat(parts).sort("Date", "Code")
    rows = served["policy"].select("Date", "Code", *[f"y_{h}d" for h in cfg.horizons])
    served.update(factor_predictions(full, rows, cfg.horizons))
    return served


def _days_key(days: list[dt.date]) -> str:
    blob = ",".join(str(d) for d in days).encode()
    return f"{days[0]:%Y%m%d}-{days[-1]:%Y%m%d}-{hashlib.sha256(blob).hexdigest()[:8]}"


def _predict_days(run_dir: Path, panel, days: list[dt.date]) -> pl.DataFrame:
    from atft_core.train.api import load_model, predict_window
    from atft_core.train.loop import resolve_device

    model, model_cfg, _ = load_model(run_dir)
    device = resolve_device(model_cfg.train.device)
    usable = set(panel.usable_dates())
    days = [d for d in days if d in usable]
    return predict_window(model, panel, model_cfg, days, device).frame()

