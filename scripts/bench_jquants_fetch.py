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


def _serve_in_child(codes, days, page_size, url_q, stop) -> None:
    from jquants_server import Market, serve

    with serve(Market(codes=codes, days=days), page_size=page_size) as srv:
        url_q.put(srv.url)
        stop.wait(600)  # bounded: the parent sets it, or the child ends after 10 minutes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--codes", type=int, default=4000)
    ap.add_argument("--days", type=int, default=20)
    ap.add_argument("--page-size", type=int, default=1000)
    args = ap.parse_args()

    import multiprocessing as mp

    from jquants_server import API_KEY

    from atft_core import calendar
    from atft_core.data import jquants
    from atft_core.data.store import write_day

    days = calendar.trading_days_from("2024-01-04", args.days)
    codes = [f"{1000 + j}0" for j in range(args.codes)]
    os.environ["HOME"] = tempfile.mkdtemp()  # no ~/.jquants-api config file is read
    # the server in its own process: its JSON encoding does not share this process's GIL
    url_q, stop = mp.Queue(), mp.Event()
    child = mp.Process(target=_serve_in_child, args=(codes, days, args.page_size, url_q, stop))
    child.start()
    try:
        url = url_q.get(timeout=60)
        with tempfile.TemporaryDirectory() as tmp:
            feed = jquants.JQuantsFeed(API_KEY, url=url)
            s = jquants.fetch_range(feed, days[0], days[-1], f"{tmp}/store", progress=False)
            print(f"fetch_range: {s.rows:,} rows, {s.fetched} days, {s.seconds:.2f} s -> "
                  f"{s.rows / s.seconds:,.0f} rows/s")
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
            print(f"one day ({frame.height:,} rows): HTTP+JSON+pandas (incl. server) {t1 - t0:.3f} s "
                  f"({(t1 - t0) / total:.0%}), mapping {t2 - t1:.3f} s ({(t2 - t1) / total:.0%}), "
                  f"atomic write {t3 - t2:.3f} s ({(t3 - t2) / total:.0%})")
    finally:
        stop.set()
        child.join(timeout=10)
        if child.is_alive():
            child.terminate()  # by PID, this child only


if __name__ == "__main__":
    main()
