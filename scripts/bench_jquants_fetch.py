"""rows/s of the J-Quants fetch path (`atft fetch jquants`) against the local V2 test server.

    .venv/bin/python scripts/bench_jquants_fetch.py [--codes 4000] [--days 20] [--page-size 1000]

Prints figures only (no asserts): total rows/s of fetch_range into a fresh local store, and the
split of one day into HTTP+JSON (the package's paging + DataFrame), mapping, and the atomic write.
The server is tests/jquants_server.py in this process (127.0.0.1, free port), so the figure is the
client-side cost, not J-Quants' network latency.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--codes", type=int, default=4000)
    ap.add_argument("--days", type=int, default=20)
    ap.add_argument("--page-size", type=int, default=1000)
    args = ap.parse_args()

    from jquants_server import API_KEY, Market, serve

    from atft_core import calendar
    from atft_core.data import jquants
    from atft_core.data.store import write_day

    days = calendar.trading_days_from("2024-01-04", args.days)
    codes = list(dict.fromkeys(f"{1000 + j}0" for j in range(args.codes)))
    os.environ["HOME"] = tempfile.mkdtemp()
    with serve(Market(codes=codes, days=days), page_size=args.page_size) as srv, \
            tempfile.TemporaryDirectory() as tmp:
        feed = jquants.JQuantsFeed(API_KEY, url=srv.url)
        s = jquants.fetch_range(feed, days[0], days[-1], f"{tmp}/store", progress=False)
        print(f"fetch_range: {s.rows:,} rows, {s.fetched} days, {s.seconds:.2f} s -> "
              f"{s.rows / s.seconds:,.0f} rows/s ({len(srv.requests)} requests)")
        day = days[0]
        t0 = time.perf_counter()
        bars = feed.client.get_eq_bars_daily(date_yyyymmdd=day.isoformat())
        master = feed.client.get_eq_master(date=day.isoformat())
        t1 = time.perf_counter()
        frame = jquants.to_canonical(bars, master, day)
        t2 = time.perf_counter()
        write_day(frame, f"{tmp}/store2", day)
        t3 = time.perf_counter()
        total = t3 - t0
        print(f"one day ({frame.height:,} rows): HTTP+JSON+pandas {t1 - t0:.3f} s "
              f"({(t1 - t0) / total:.0%}), mapping {t2 - t1:.3f} s ({(t2 - t1) / total:.0%}), "
              f"atomic write {t3 - t2:.3f} s ({(t3 - t2) / total:.0%})")


if __name__ == "__main__":
    main()
