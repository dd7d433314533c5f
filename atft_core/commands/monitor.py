"""`atft monitor`: live metrics of the published signals whose labels are known.

    atft monitor --data QUOTES --as-of D [--config NAME] [--uri REGISTRY] [--history FILE]

Joins the champion and shadow signals in the registry with the executable labels known by D,
prints per (role, horizon) the latest-day, 20-day, 60-day and cumulative figures (RankIC, IC,
long-short, ICIR, hit rate) as JSON, writes the daily history parquet (atomic) and pushes the
``atft_live_*`` gauges (Pushgateway or textfile, per the config's metrics section).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("monitor", help="live RankIC / long-short of published signals")
    p.add_argument("--data", required=True, help="quotes: data store dir or parquet file")
    p.add_argument("--as-of", required=True, help="day D (YYYY-MM-DD): labels known by its close")
    p.add_argument("--config", default="default", help="config name or YAML path")
    p.add_argument("--uri", default=None, help="registry URI (default: config registry.uri)")
    p.add_argument("--history", default=None,
                   help="history parquet (default: {work_root}/atft_score/live_history.parquet)")
    p.add_argument("--no-push", action="store_true", help="do not push metrics")
    p.set_defaults(func=run)


def run(args) -> int:
    from atft_core.commands.predict import registry_from_args
    from atft_core.config import load_config
    from atft_core.observability import MetricsPusher
    from atft_core.registry import RegistryError
    from atft_core.serving.monitor import monitor

    if not Path(args.data).exists():
        print(f"atft monitor: --data {args.data} does not exist", file=sys.stderr)
        return 2
    cfg = load_config(args.config)
    history = Path(args.history or Path(cfg.work_root) / "atft_score" / "live_history.parquet")
    pusher = None if args.no_push else MetricsPusher(cfg.metrics, dag_id="adhoc", task_id="monitor")
    try:
        out = monitor(registry_from_args(args), args.data, args.as_of, cfg, history, pusher=pusher)
    except RegistryError as err:
        print(f"atft monitor: {err}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"atft monitor: {err}", file=sys.stderr)
        return 2
    print(json.dumps(out, default=str))
    return 0
