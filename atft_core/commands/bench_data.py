"""`atft bench features`: feature-build time (polars vs pandas), peak memory, loader throughput.

1. A synthetic market of ``--stocks`` x ``--days`` (default 4,000 x 2,500 trading days) is
   generated and written to a temporary parquet file.
2. ``build_features`` (the production path, a dense numpy grid since issue 15; still labelled
   "polars": polars reads and writes the frames) and ``build_features_pandas`` (the
   straightforward pandas groupby/rolling version of the same features) each run in their own
   subprocess, which reports the wall time, its CPU seconds (user + system: the figure a loaded
   machine stretches least) and its peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``,
   measured after reading the input and after the build; tracemalloc does not see polars' or
   numpy's allocations). Sequential subprocesses keep one implementation's memory out of the
   other's figure.
3. The two outputs are compared on ``--check-stocks`` codes (max |diff| over all feature and
   target columns, and equal null patterns).
4. The panel is built from the polars output and a DayBatchLoader iterates ``--loader-days``
   days twice: the first pass builds the day graphs (stock-days/s incl. graphs), the second
   reads them from the cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def register(sub) -> None:
    from atft_core.cli import add_config_args, bench_subparsers

    p = bench_subparsers(sub).add_parser(
        "features", help="polars vs pandas feature build, peak memory, DayBatchLoader stock-days/s"
    )
    add_config_args(p)
    p.add_argument("--stocks", type=int, default=4000)
    p.add_argument("--days", type=int, default=2500, help="trading days")
    p.add_argument("--start", default="2010-01-04", help="first calendar day of the market")
    p.add_argument("--skip-pandas", action="store_true", help="time polars only")
    p.add_argument("--check-stocks", type=int, default=200, help="codes compared polars vs pandas")
    p.add_argument("--loader-days", type=int, default=64, help="days the loader benchmark reads")
    p.add_argument("--workdir", default=None, help="keep the temporary parquet files here")
    p.set_defaults(func=_run)


def _maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _cpu_s() -> float:
    """user + system CPU seconds of this process (a loaded machine stretches the wall time)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _worker(impl: str, src: str, dst: str, cfg_path: str) -> None:
    """Subprocess body: read quotes, build features with one implementation, report JSON."""
    import polars as pl

    from atft_core.config import config_from_yaml_text
    from atft_core.features import build_features, build_features_pandas

    cfg = config_from_yaml_text(Path(cfg_path).read_text())
    quotes = pl.read_parquet(src)
    if impl == "pandas":
        quotes = quotes.to_pandas()
    rss_in = _maxrss_mb()
    cpu0, t0 = _cpu_s(), time.perf_counter()
    out = build_features(quotes, cfg) if impl == "polars" else build_features_pandas(quotes, cfg)
    sec, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    rss_out = _maxrss_mb()
    rows = len(out)
    if impl == "pandas":
        out = pl.from_pandas(out)
    out.write_parquet(dst)
    print(json.dumps({"impl": impl, "seconds": sec, "cpu_seconds": cpu, "rows": rows, "rss_input_mb": rss_in,
                      "rss_peak_mb": rss_out}))


def _spawn(impl: str, src: Path, dst: Path, cfg_path: Path) -> dict:
    cmd = [sys.executable, "-m", "atft_core.commands.bench_data", "_worker", impl, str(src),
           str(dst), str(cfg_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"atft bench features: {impl} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _compare(a, b, codes, cfg) -> tuple[float, bool]:
    import numpy as np
    import polars as pl

    from atft_core.features import feature_columns

    a = a.filter(pl.col("Code").is_in(codes)).sort("Date", "Code")
    b = b.filter(pl.col("Code").is_in(codes)).sort("Date", "Code")
    if a.height != b.height or a["Code"].to_list() != b["Code"].to_list():
        return float("inf"), False
    worst, same_nulls = 0.0, True
    cols = [*feature_columns(cfg), *[c for c in a.columns if c.startswith("y_")]]
    for c in cols:
        x = a[c].cast(pl.Float64).to_numpy()
        y = b[c].cast(pl.Float64).to_numpy()
        same_nulls &= bool(np.array_equal(np.isnan(x), np.isnan(y)))
        d = np.abs(x - y)
        if np.isfinite(d).any():
            worst = max(worst, float(np.nanmax(d)))
    return worst, same_nulls


def _run(args) -> int:
    import numpy as np
    import polars as pl

    from atft_core.config import SyntheticConfig, load_config
    from atft_core.data.synthetic import generate_market

    cfg = load_config(args.config, args.overrides)
    tmp_ctx = tempfile.TemporaryDirectory(prefix="atft-bench-features-") if args.workdir is None else None
    work = Path(args.workdir or tmp_ctx.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        syn = SyntheticConfig(n_stocks=args.stocks, n_days=args.days, start=args.start, seed=0)
        market = generate_market(syn, cfg.horizons)
        src, cfg_path = work / "quotes.parquet", work / "config.yaml"
        market.quotes.write_parquet(src)
        cfg_path.write_text(cfg.to_yaml())
        n_rows = market.quotes.height
        del market
        print(f"market: {args.stocks} stocks x {args.days} trading days = {n_rows:,} stock-day rows "
              f"(generated in {time.perf_counter() - t0:.1f} s); cpus={os.cpu_count()} "
              f"POLARS_MAX_THREADS={os.environ.get('POLARS_MAX_THREADS', 'default')}")

        res = {"polars": _spawn("polars", src, work / "f_polars.parquet", cfg_path)}
        if not args.skip_pandas:
            res["pandas"] = _spawn("pandas", src, work / "f_pandas.parquet", cfg_path)
        print(f"{'impl':<8} {'build s':>9} {'cpu s':>8} {'rows/s':>12} {'RSS after input MB':>19} "
              f"{'peak RSS MB':>12}")
        for r in res.values():
            print(f"{r['impl']:<8} {r['seconds']:>9.2f} {r['cpu_seconds']:>8.2f} "
                  f"{r['rows'] / r['seconds']:>12,.0f} {r['rss_input_mb']:>19,.0f} {r['rss_peak_mb']:>12,.0f}")
        fp = pl.read_parquet(work / "f_polars.parquet")
        if "pandas" in res:
            print(f"pandas / polars time ratio: {res['pandas']['seconds'] / res['polars']['seconds']:.1f}x "
                  f"(cpu {res['pandas']['cpu_seconds'] / res['polars']['cpu_seconds']:.1f}x); "
                  f"peak RSS ratio: {res['pandas']['rss_peak_mb'] / res['polars']['rss_peak_mb']:.2f}x")
            codes = sorted(fp["Code"].unique().to_list())[: args.check_stocks]
            worst, nulls = _compare(fp, pl.read_parquet(work / "f_pandas.parquet"), codes, cfg)
            print(f"agreement on {len(codes)} codes: max |polars - pandas| = {worst:.2e}, "
                  f"same null pattern: {nulls}")
        _bench_loader(fp, cfg, args.loader_days)
        del np
    finally:
        if tmp_ctx is not None:
            tmp_ctx.cleanup()
    return 0


def _bench_loader(features, cfg, n_days: int) -> None:
    import torch

    from atft_core.dataset import DayBatchLoader, build_panel

    t0 = time.perf_counter()
    panel = build_panel(features, cfg)
    t_panel = time.perf_counter() - t0
    print(f"panel: x {tuple(panel.x.shape)} float32 = {panel.x.numel() * 4 / 2**30:.2f} GiB, "
          f"built in {t_panel:.1f} s")
    days = panel.usable_dates()[-n_days:]
    loader = DayBatchLoader(panel, days, cfg, shuffle=True, seed=0)
    print(f"loader: {loader.num_days} days, {cfg.dataset.days_per_batch} days/batch, "
          f"lookback {cfg.dataset.lookback}, k={cfg.graph.k}, corr_window={cfg.graph.corr_window}, "
          f"torch threads {torch.get_num_threads()}")
    for label in ("first epoch (builds graphs)", "second epoch (cached graphs)"):
        loader.set_epoch(0)
        t0 = time.perf_counter()
        n, edges = 0, 0
        for b in loader:
            n += b.num_stock_days
            edges += b.edge_index.shape[1]
        sec = time.perf_counter() - t0
        print(f"  {label}: {n:,} stock-days in {sec:.2f} s = {n / sec:,.0f} stock-days/s "
              f"({edges / max(loader.num_days, 1):,.0f} edges/day)")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "_worker":
        _worker(*sys.argv[2:])
    else:
        raise SystemExit("usage: python -m atft_core.commands.bench_data _worker IMPL SRC DST CONFIG")
