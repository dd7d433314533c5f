"""`atft bench train`: stock-days/s of full training steps (data loading included) with the
DayBatchLoader path vs a naive per-sample ``torch.utils.data.Dataset`` (one stock-day per
``__getitem__``, collated into day batches, day graphs rebuilt per batch) over the same model,
loss and optimizer. Prints both figures and their ratio, and the loader reading its day graphs from
a graph store (atft_core.graph_store: what a later process, e.g. the next night, does), and the
cold per-day cost split into graph build and the rest for both loaders (they share the graph
builder, which bounds their ratio); asserts nothing.
"""

from __future__ import annotations


def register(sub) -> None:
    from atft_core.cli import add_config_args, bench_subparsers

    p = bench_subparsers(sub).add_parser("train", help="training throughput vs a naive per-sample loader")
    add_config_args(p)
    p.add_argument("--batches", type=int, default=8, help="timed training steps per path")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--default-heap", action="store_true",
                   help="leave glibc's allocator as it is (the trainer keeps freed memory: atft_core.heap)")
    p.set_defaults(func=_run)


def naive_loader(panel, dates, cfg):
    """The per-sample baseline: a map-style Dataset of stock-days and a day-grouping sampler."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    from atft_core.batch import DayBatch
    from atft_core.dataset import day_graph

    lookback = cfg.dataset.lookback
    t_days = [int(t) for t in panel.date_index(dates)]
    items, day_rows = [], []
    for t in t_days:
        stocks = torch.nonzero(panel.usable[:, t]).squeeze(1).tolist()
        if len(stocks) < 2:
            continue
        day_rows.append(list(range(len(items), len(items) + len(stocks))))
        items += [(s, t) for s in stocks]

    class StockDays(Dataset):
        def __len__(self):
            return len(items)

        def __getitem__(self, i):
            s, t = items[i]
            x = panel.x[s, max(0, t - lookback + 1): t + 1]  # (<=L, F)
            if x.shape[0] < lookback:
                x = torch.cat([x.new_zeros(lookback - x.shape[0], x.shape[1]), x])
            return {"s": s, "t": t, "x": x, "y": panel.y[s, t], "y_raw": panel.y_raw[s, t],
                    "mask": panel.mask[s, t]}

    k = cfg.dataset.days_per_batch
    batches = [sum(day_rows[i:i + k], []) for i in range(0, len(day_rows), k)]

    def collate(rows):
        days: dict[int, list] = {}
        for r in rows:
            days.setdefault(r["t"], []).append(r)
        xs, ys, yr, ms, eis, eas, ptr, dts, codes = [], [], [], [], [], [], [0], [], []
        for t, rs in sorted(days.items()):
            stocks = torch.tensor([r["s"] for r in rs])
            ei, ea = day_graph(panel, stocks, t, cfg.graph)
            eis.append(ei + ptr[-1])
            eas.append(ea)
            xs += [r["x"] for r in rs]
            ys += [r["y"] for r in rs]
            yr += [r["y_raw"] for r in rs]
            ms += [r["mask"] for r in rs]
            ptr.append(ptr[-1] + len(rs))
            dts.append(panel.dates[t])
            codes += [panel.codes[r["s"]] for r in rs]
        import numpy as np

        return DayBatch(x=torch.stack(xs), y=torch.stack(ys), y_raw=torch.stack(yr), mask=torch.stack(ms),
                        edge_index=torch.cat(eis, 1), edge_attr=torch.cat(eas), day_ptr=torch.tensor(ptr),
                        dates=dts, codes=np.asarray(codes))

    return DataLoader(StockDays(), batch_sampler=batches, collate_fn=collate, num_workers=0)


def _run(args) -> int:
    import dataclasses
    import tempfile
    import time

    import torch

    from atft_core.config import load_config
    from atft_core.dataset import DayBatchLoader, day_graph, make_splits
    from atft_core.graph_store import GraphStore
    from atft_core.heap import heap_mode
    from atft_core.losses import compute_loss
    from atft_core.train.api import as_panel, build_model, load_features
    from atft_core.train.gpu_stats import StepTimes
    from atft_core.train.predict import autocast_ctx

    if args.threads:
        torch.set_num_threads(args.threads)
    heap = heap_mode(args.default_heap)
    cfg = load_config(args.config, args.overrides)
    panel = as_panel(load_features(cfg), cfg)
    dates = make_splits(list(panel.dates), cfg).train
    phase = cfg.train.phases[-1]  # all blocks on, every loss term
    device = torch.device("cpu")

    def measure(loader, n: int) -> tuple[float, int, float]:
        """stock-days/s of n full steps (loading included) and the share of step time spent
        waiting for the next batch (StepTimes, the trainer's own breakdown)."""
        torch.manual_seed(0)
        model = build_model(cfg, len(panel.feature_names))
        model.set_blocks(phase.blocks)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.optimizer.lr)
        done, rows = 0, 0
        t0 = time.perf_counter()
        times = StepTimes()
        for batch in loader:  # data loading inside the timed region
            times.batch_ready()
            with autocast_ctx(device, cfg.train.precision):
                pred = model(batch.x, batch.edge_index, batch.edge_attr)
            loss, _ = compute_loss(pred.float(), batch, phase.weights, cfg.loss, tuple(cfg.horizons))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            times.step_done()
            rows += batch.num_stock_days
            done += 1
            if done >= n:
                break
        share = times.data_wait_s / max(times.data_wait_s + times.compute_s, 1e-12)
        return rows / (time.perf_counter() - t0), rows, share

    def load_only(loader, n: int, per_day: list | None = None) -> float:
        """stock-days/s of loading n batches; appends ms per day to ``per_day`` if given."""
        rows, days, t0 = 0, 0, time.perf_counter()
        for i, batch in enumerate(loader):
            rows += batch.num_stock_days
            days += len(batch.dates)
            if i + 1 >= n:
                break
        sec = time.perf_counter() - t0
        if per_day is not None:
            per_day.append(1e3 * sec / days)
        return rows / sec

    def graph_ms_per_day(t_days: list[int]) -> tuple[float, float]:
        """The graph build alone for these days: batched as the DayBatchLoader's first pass builds
        them, and one day at a time as the naive loader's collate does (ms per day)."""
        loader = DayBatchLoader(panel, dates, cfg, shuffle=False, cache_graphs=False)
        k = cfg.dataset.days_per_batch
        t0 = time.perf_counter()
        for i in range(0, len(t_days), k):
            loader._build_graphs(t_days[i:i + k])
        batched = time.perf_counter() - t0
        t0 = time.perf_counter()
        for t in t_days:
            day_graph(panel, loader.stocks_of(t), t, cfg.graph)
        return 1e3 * batched / len(t_days), 1e3 * (time.perf_counter() - t0) / len(t_days)

    # warm-up, untimed and uncached: the first steps of a process pay one-time costs (thread
    # pools, oneDNN primitives) that would otherwise be charged to whichever path runs first
    measure(DayBatchLoader(panel, dates, cfg, shuffle=False, cache_graphs=False), 2)
    ours_loader = DayBatchLoader(panel, dates, cfg, shuffle=False)
    ours_cold, n1, wait_cold = measure(ours_loader, args.batches)
    ours_warm, _, wait_warm = measure(ours_loader, args.batches)  # day graphs cached after the first pass
    naive, n2, wait_naive = measure(naive_loader(panel, dates, cfg), args.batches)
    n_load = 4 * args.batches
    panel.graph_cache.clear()  # cold: the timed steps above cached their days' graphs
    ms_day: list[float] = []  # cold ms per day: ours, naive
    load_ours = load_only(DayBatchLoader(panel, dates, cfg, shuffle=False), n_load, ms_day)
    load_warm = load_only(DayBatchLoader(panel, dates, cfg, shuffle=False), n_load)  # graphs now cached
    load_naive = load_only(naive_loader(panel, dates, cfg), n_load, ms_day)
    first_days = [int(t) for t in DayBatchLoader(panel, dates, cfg).t_index[: n_load * cfg.dataset.days_per_batch]]
    g_ours, g_naive = graph_ms_per_day(first_days)
    with tempfile.TemporaryDirectory() as tmp:  # a later process: graphs on disk, none in memory
        load_only(DayBatchLoader(dataclasses.replace(panel, graph_cache={}, graph_store=GraphStore(tmp)),
                                 dates, cfg, shuffle=False), n_load)
        stored = dataclasses.replace(panel, graph_cache={}, graph_store=GraphStore(tmp))
        load_store = load_only(DayBatchLoader(stored, dates, cfg, shuffle=False), n_load)
        store_stats = stored.graph_store.stats
    print(f"atft bench train: config={args.config} precision={cfg.train.precision} "
          f"hidden={cfg.model.hidden_size} days/batch={cfg.dataset.days_per_batch} "
          f"batches={args.batches} threads={torch.get_num_threads()} heap={heap}")
    print(f"  DayBatchLoader, first pass : {ours_cold:10.1f} stock-days/s ({n1} stock-days), "
          f"data wait {wait_cold:.1%} of step time")
    print(f"  DayBatchLoader, cached     : {ours_warm:10.1f} stock-days/s, data wait {wait_warm:.1%} of step time")
    print(f"  naive per-sample Dataset   : {naive:10.1f} stock-days/s ({n2} stock-days), "
          f"data wait {wait_naive:.1%} of step time")
    print(f"  ratio (ours first pass / naive) = {ours_cold / naive:.2f}x; cached / naive = {ours_warm / naive:.2f}x")
    print(f"  data loading only ({n_load} batches, cold): DayBatchLoader {load_ours:.0f} vs naive "
          f"{load_naive:.0f} stock-days/s = {load_ours / load_naive:.2f}x")
    rest_ours, rest_naive = ms_day[0] - g_ours, ms_day[1] - g_naive
    print(f"  cold, per day: DayBatchLoader {ms_day[0]:.2f} ms = graph build {g_ours:.2f} + the rest "
          f"{rest_ours:.2f}; naive {ms_day[1]:.2f} ms = graph build {g_naive:.2f} + the rest {rest_naive:.2f}")
    print(f"    (both build graphs with graph.build_day_graphs, ours {cfg.dataset.days_per_batch} days a pass: "
          f"with free graphs the ratio would be at most {rest_naive / max(rest_ours, 1e-9):.1f}x)")
    print(f"  data loading only, day graphs cached (epochs after the first): {load_warm:.0f} stock-days/s "
          f"= {load_warm / load_naive:.2f}x the naive loader (which rebuilds them every batch)")
    print(f"  data loading only, day graphs read from the graph store (a new process, e.g. the next "
          f"night): {load_store:.0f} stock-days/s = {load_store / load_naive:.2f}x naive, "
          f"{load_store / load_ours:.2f}x building them ({store_stats['hits']} days read)")
    return 0
