"""`atft replay`: the nightly retrain-and-gate policy simulated on history (atft_core.replay).

    atft replay --data QUOTES --start D0 --end D1 --every N --out DIR [--config NAME] [key=value ...]

Prints the summary table's numbers as JSON and the report path. Rerunning the same command after a
kill resumes (finished retrain days are skipped). Bad inputs (dates, --every, an --out holding
other files or another replay, too few days before --start for the splits) end as one
``atft replay: ...`` line, exit 2.
"""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    from atft_core.cli import add_config_args

    p = sub.add_parser("replay", help="simulate the retrain + gate policy on history vs baselines")
    add_config_args(p)
    p.add_argument("--data", required=True, help="canonical quotes: a parquet file or a store dir")
    p.add_argument("--start", required=True, help="first serving day (YYYY-MM-DD)")
    p.add_argument("--end", required=True, help="last serving day (YYYY-MM-DD)")
    p.add_argument("--every", type=int, required=True, help="retrain every N trading days")
    p.add_argument("--out", required=True, help="output dir (state, run dirs, report); reuse to resume")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=_replay)


def _replay(args) -> int:
    import logging

    from atft_core.config import load_config
    from atft_core.data.schema import SchemaError
    from atft_core.data.store import StoreError
    from atft_core.replay import ReplayError, run_replay

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.overrides)
    try:
        res = run_replay(cfg, args.data, args.start, args.end, args.every, args.out,
                         progress=args.progress)
    except (ReplayError, StoreError, SchemaError) as err:
        print(f"atft replay: {err}", file=sys.stderr)
        return 2
    keys = ("rank_ic_1d", "rank_ic_5d", "sharpe_1d", "cum_ls_return_1d", "max_drawdown_1d",
            "n_days_1d", "retrains", "promotions")
    table = {p: {k: s.get(k) for k in keys} for p, s in res.summary.items()}
    print(json.dumps({"report": str(res.report), "seconds_training": res.state.get("seconds"),
                      "policies": table}, indent=2, default=str))
    return 0
