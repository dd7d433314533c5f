"""`atft fetch jquants --start --end --out STORE`: the J-Quants V2 daily feed into the store."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("fetch", help="fetch daily quotes from a market data feed into the store")
    feeds = p.add_subparsers(dest="feed", metavar="FEED")
    j = feeds.add_parser("jquants", help="J-Quants API V2 (key: JQUANTS_API_KEY; URL: JQUANTS_API_URL)")
    j.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
    j.add_argument("--end", required=True, help="last day, YYYY-MM-DD (inclusive)")
    j.add_argument("--out", required=True, help="store folder or s3://bucket/prefix")
    j.add_argument("--refetch", action="store_true", help="fetch days already complete in the store")
    j.add_argument("--deadline", type=float, default=120.0,
                   help="total seconds for one day's request series, retries included (default 120)")
    j.add_argument("--no-progress", action="store_true", help="no progress bar")
    j.set_defaults(func=_fetch_jquants)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(p) -> int:
    p.print_help()
    return 2


def _fetch_jquants(args) -> int:
    import datetime as dt
    import sys

    from atft_core.data.jquants import (
        JQuantsError,
        JQuantsFeed,
        MissingKey,
        fetch_range,
        resolve_api_key,
    )
    from atft_core.data.store import StoreError

    try:
        start, end = dt.date.fromisoformat(args.start), dt.date.fromisoformat(args.end)
    except ValueError as err:
        print(f"atft fetch: --start/--end: {err}", file=sys.stderr)
        return 2
    if start > end:
        print(f"atft fetch: --start {start} is after --end {end}", file=sys.stderr)
        return 2
    if not 0 < args.deadline <= 3600:
        print("atft fetch: --deadline must be in (0, 3600] seconds", file=sys.stderr)
        return 2
    try:
        feed = JQuantsFeed(resolve_api_key(), deadline_s=args.deadline)
        summary = fetch_range(feed, start, end, args.out, refetch=args.refetch,
                              progress=not args.no_progress)
    except MissingKey as err:  # configuration the user has to give: a usage error
        print(f"atft fetch: {err}", file=sys.stderr)
        return 2
    except (JQuantsError, StoreError) as err:
        print(f"atft fetch: {err}", file=sys.stderr)
        return 1
    except ValueError as err:  # calendar range
        print(f"atft fetch: {err}", file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    return 0
