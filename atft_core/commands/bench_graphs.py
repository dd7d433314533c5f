"""`atft bench graphs`: per-day cost of a day graph built (graph.build_day_graphs, batched as the
loader batches) vs read from the graph store (hash of the inputs + read + decode), at several
stock counts, over factor-model returns (bench model's day: 33 sectors). Prints ms per day, the
ratio, edges per stock and stored bytes per day; asserts nothing.
"""

from __future__ import annotations


def register(sub) -> None:
    from atft_core.cli import add_config_args, bench_subparsers

    p = bench_subparsers(sub).add_parser("graphs", help="day graph build vs graph-store read, per stock count")
    add_config_args(p)
    p.add_argument("--sizes", default="190,1000,4000", help="comma list of stocks per day")
    p.add_argument("--days", type=int, default=8, help="days per size (distinct windows)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    import os
    import tempfile
    import time

    import torch

    from atft_core.commands.bench_model import factor_returns
    from atft_core.config import load_config
    from atft_core.dataset import GRAPH_PASS_ELEMENTS
    from atft_core.graph import build_day_graphs
    from atft_core.graph_store import GraphStore, graph_key

    if args.threads:
        torch.set_num_threads(args.threads)
    g = load_config(args.config, args.overrides).graph
    print(f"atft bench graphs: k={g.k} corr_window={g.corr_window} min_abs_corr={g.min_abs_corr} "
          f"sector_edges={g.sector_edges} max_sector_neighbours={g.max_sector_neighbours} "
          f"days={args.days} threads={torch.get_num_threads()}")
    print(f"{'stocks':>7} {'build ms/day':>13} {'store ms/day':>13} {'ratio':>7} {'edges/stock':>12} {'KB/day':>8}")
    for n in (int(s) for s in args.sizes.split(",")):
        days = [factor_returns(n, g.corr_window, seed=s) for s in range(args.days)]
        per_pass = max(1, GRAPH_PASS_ELEMENTS // (n * n))  # as DayBatchLoader passes them
        build_day_graphs([days[0][0]], [days[0][1]], g)  # warm-up
        t0 = time.perf_counter()
        built = []
        for i in range(0, len(days), per_pass):
            chunk = days[i:i + per_pass]
            built += build_day_graphs([r for r, _ in chunk], [s for _, s in chunk], g)
        t_build = (time.perf_counter() - t0) / len(days)
        with tempfile.TemporaryDirectory() as tmp:
            store = GraphStore(tmp)
            for (r, s), (ei, ea) in zip(days, built):
                store.put(graph_key(r, s, g), ei, ea, n=n)
            t0 = time.perf_counter()
            got = [store.get(graph_key(r, s, g), s) for r, s in days]
            t_read = (time.perf_counter() - t0) / len(days)
            size = sum(os.path.getsize(p) for p in store.root.glob("*/*.graph")) / len(days)
        if any(x is None or not torch.equal(x[0], b[0]) or not torch.equal(x[1], b[1]) for x, b in zip(got, built)):
            print(f"  {n} stocks: a stored graph differs from the built one")
            return 1
        edges = sum(b[0].shape[1] for b in built) / (n * len(days))
        print(f"{n:>7} {t_build * 1e3:>13.2f} {t_read * 1e3:>13.2f} {t_build / t_read:>6.1f}x {edges:>12.1f} "
              f"{size / 1e3:>8.0f}")
    return 0
