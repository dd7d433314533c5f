"""`atft demo`: the main job. Runs the nightly ``atft_retrain`` DAG end to end with Airflow
(``airflow dags test`` on a SQLite metadata DB) on embedded defaults, twice: the first run trains
and (if it clears the gate) becomes champion; the second, with another seed, is gated against it.

The ``gpu`` pool the train task needs is imported from ``include/airflow/pools.json`` first
(``airflow pools import``): without it the task would never leave "scheduled" in a real Airflow.

Embedded defaults: synthetic market, ``file://var/registry``, textfile metrics in var/metrics,
CPU. ``ATFT_REGISTRY=s3://...`` + ``AWS_ENDPOINT_URL`` and ``ATFT_PUSHGATEWAY_URL`` switch the same
run to S3 and the Pushgateway.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
POOLS_FILE = REPO / "include" / "airflow" / "pools.json"


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the atft_retrain DAG end to end (twice) with Airflow")
    p.add_argument("--config", default="demo", help="config name for the DAG's Params")
    p.add_argument("--runs", type=int, default=2, help="how many DAG runs (seeds 0, 1, ...)")
    p.add_argument("--date", default=None, help="day of the last run (default: the latest JPX trading day)")
    p.add_argument("--data-source", default=None,
                   help="quotes store / parquet, or 'jquants': fetch the window from J-Quants into "
                        "--store first (needs JQUANTS_API_KEY); default: the synthetic market")
    p.add_argument("--store", default="var/data/quotes", help="store for --data-source jquants")
    p.add_argument("--airflow-home", default="var/airflow")
    p.set_defaults(func=run_demo)


def airflow_env(airflow_home: str | Path) -> dict[str, str]:
    """Environment for a local Airflow on SQLite with this repo's dags/ and plugins/."""
    home = Path(airflow_home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": env.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING"),
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "plugins"), env.get("PYTHONPATH")) if p),
    })
    return env


def _airflow(args: list[str], env: dict[str, str], log_path: Path) -> int:
    exe = Path(sys.executable).with_name("airflow")
    with log_path.open("a") as log:
        log.write(f"\n$ airflow {' '.join(args)}\n")
        log.flush()
        return subprocess.call([str(exe), *args], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def run_demo(args) -> int:
    from atft_core import calendar
    from atft_core.config import load_config

    env = airflow_env(args.airflow_home)
    log_path = Path(args.airflow_home).resolve() / "demo.log"
    print(f"atft demo: Airflow home {env['AIRFLOW_HOME']} (log: {log_path})")
    t0 = time.perf_counter()
    if _airflow(["db", "migrate"], env, log_path) != 0:
        print(f"airflow db migrate failed; see {log_path}", file=sys.stderr)
        return 1
    if _airflow(["pools", "import", str(POOLS_FILE)], env, log_path) != 0:
        print(f"airflow pools import {POOLS_FILE} failed; see {log_path}", file=sys.stderr)
        return 1
    last = calendar.latest_expected_trading_day(args.date or dt.datetime.now(calendar.ZONE).date().isoformat())
    # consecutive nightly runs: run i is the i-th of the last `runs` trading days (oldest first)
    days = [calendar.add_trading_days(last, i - args.runs + 1).isoformat() for i in range(args.runs)]
    cfg = load_config(args.config)
    if args.data_source == "jquants":  # real market data: fetch the window (resumable), then use it
        from atft_core.data.jquants import JQuantsError, JQuantsFeed, fetch_range, resolve_api_key

        start = calendar.add_trading_days(last, -(cfg.data.synthetic.n_days - 1))
        try:
            summary = fetch_range(JQuantsFeed(resolve_api_key()), start, last, args.store)
        except (JQuantsError, ValueError) as err:
            print(f"atft demo: {err}", file=sys.stderr)
            return 1
        print("\n".join(summary.lines()))
        args.data_source = args.store
    rc = 0
    for i, day in enumerate(days):
        conf = {"config": args.config, "seed": i, "actor": "atft demo"}
        if args.data_source:
            conf["data_source"] = args.data_source
            conf["data_end"] = day
        t, started = time.perf_counter(), time.time()
        print(f"\n== run {i + 1}/{args.runs}: airflow dags test atft_retrain {day} (seed {i}) ...", flush=True)
        code = _airflow(["dags", "test", "atft_retrain", f"{day}T12:00:00+00:00", "--conf", json.dumps(conf)],
                        env, log_path)
        print(f"   finished in {time.perf_counter() - t:.0f} s, exit code {code}")
        rc = rc or code
        _print_outcome(cfg, day, started)
    # the champion at work: day D's signal (atft_score: score champion + shadow, monitor)
    conf = {"config": args.config}
    if args.data_source:
        conf |= {"data_source": args.data_source, "data_end": days[-1]}
    t = time.perf_counter()
    print(f"\n== airflow dags test atft_score {days[-1]} ...", flush=True)
    code = _airflow(["dags", "test", "atft_score", f"{days[-1]}T12:00:00+00:00", "--conf", json.dumps(conf)],
                    env, log_path)
    print(f"   finished in {time.perf_counter() - t:.0f} s, exit code {code}")
    rc = rc or code
    _print_signal(cfg, days[-1])
    print(f"\natft demo: done in {time.perf_counter() - t0:.0f} s")
    return rc


def _print_outcome(cfg, day: str, started: float) -> None:
    from atft_core import calendar

    # each DAG run has its own work dir under the day: {day}/{dag run id}.{model identity}
    day_dir = Path(cfg.work_root) / "atft_retrain" / str(calendar.latest_expected_trading_day(day))
    ours = sorted((p for p in day_dir.glob("*/run_context.json") if p.stat().st_mtime >= started - 1),
                  key=lambda p: p.stat().st_mtime)
    if not ours:
        print(f"   no run of this demo under {day_dir} (the run stopped early; see the log)")
        return
    wd = ours[-1].parent
    decision_path = wd / "gate_decision.json"
    if not decision_path.exists():
        print(f"   no gate decision in {wd} (the run stopped earlier; see the log)")
        return
    d = json.loads(decision_path.read_text())
    print(f"   gate: {d['decision'].upper()}" + ("  (forced)" if d.get("forced") else ""))
    checks = ", ".join(f"{k}={'pass' if v else 'n/a' if v is None else 'FAIL'}"
                       for k, v in (d.get("checks") or {}).items())
    print(f"     checks: {checks}")
    for who in ("candidate", "champion"):
        m = d.get(who)
        if m:
            nums = ", ".join(f"{k}={m[k]:.4f}" for k in ("rank_ic_1d", "sharpe_1d") if m.get(k) is not None)
            print(f"     {who}: {nums}" + (f" ({d.get('champion_run_id')})" if who == "champion" else ""))
    if d.get("comparison"):
        c = d["comparison"]
        print("     paired test: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                             for k, v in c.items() if not isinstance(v, list | dict)))
    for r in d.get("reasons", []):
        print(f"     - {r}")
    fb = d.get("fallback")
    if isinstance(fb, dict) and fb.get("baseline"):
        print(f"   fallback: baseline {fb['baseline']} -> {str(fb.get('decision', '?')).upper()}"
              + "".join(f"\n     - {r}" for r in fb.get("reasons") or []))
    summary = wd / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        for k in ("run_dir", "report", "published_uri", "champion_run_id"):
            if s.get(k):
                print(f"   {k}: {s[k]}")
        if s.get("holdout"):
            keys = ("rank_ic_1d", "rank_ic_5d", "sharpe_1d", "jpx_sharpe")
            print("   holdout: " + ", ".join(f"{k}={s['holdout'][k]:.4f}" for k in keys if k in s["holdout"]))
    print(f"   metrics textfile dir: {cfg.metrics.textfile_dir}; work dir: {wd}")


def _print_signal(cfg, day: str) -> None:
    """Where the day's champion (and shadow) signal went, and the live metrics once labels exist."""
    from atft_core import calendar
    from atft_core.registry import Registry
    from atft_core.serving.signals import list_signals

    d = calendar.latest_expected_trading_day(day)
    try:
        reg = Registry(os.environ.get("ATFT_REGISTRY") or cfg.registry.uri)
        for role in ("champion", "shadow"):
            found = [r for dd, r in list_signals(reg, role) if dd == d]
            sub = "/shadow" if role == "shadow" else ""
            print(f"   {role} signal of {d}: " + (", ".join(f"{reg.uri}/signals/{d}{sub}/{r}.parquet"
                                                          for r in found) or "none"))
    except Exception as err:  # noqa: BLE001 -- the demo's report must not hide the run's outcome
        print(f"   signals: cannot list ({err})")
    hist = Path(cfg.work_root) / "atft_score" / "live_history.parquet"
    if not hist.exists():
        print("   live metrics: no history yet")
        return
    import polars as pl

    from atft_core.serving.monitor import rolling

    h = pl.read_parquet(hist)
    if h.is_empty():
        nxt = calendar.add_trading_days(d, 2)
        print(f"   live metrics: no label has matured yet (the 1-day label of {d} needs the close of {nxt})")
        return
    for r in rolling(h):
        if r["window"] in ("20d", "cum"):
            print(f"   live {r['role']} {r['horizon']}d {r['window']}: RankIC={r['rank_ic']:.4f} "
                  f"long-short={r.get('ls_cum', r['ls_return']):.4f} over {int(r['days'])} days")
