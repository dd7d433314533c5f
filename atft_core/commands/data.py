"""`atft ingest SRC --out STORE` and `atft synth --out STORE`: fill a canonical quotes store."""

from __future__ import annotations


def register(sub) -> None:
    from atft_core.cli import add_config_args

    p = sub.add_parser("ingest", help="convert yfinance CSVs / J-Quants exports into the quotes store")
    p.add_argument("src", help="source file or directory")
    p.add_argument("--out", required=True,
                   help="store folder or s3://bucket/prefix; rows are merged by (Date, Code)")
    p.add_argument("--format", default="auto", choices=["auto", "yfinance", "jquants", "canonical"])
    p.add_argument("--replace", action="store_true",
                   help="make SRC the whole of every day it covers (prints the stored rows removed)")
    p.set_defaults(func=_ingest)

    p = sub.add_parser("synth", help="generate the synthetic market (data.synthetic) into a store")
    p.add_argument("--out", required=True, help="store directory; the oracle is written inside it")
    add_config_args(p)
    p.set_defaults(func=_synth)


def _ingest(args) -> int:
    import sys

    from atft_core.data.ingest import IngestError, ingest
    from atft_core.data.schema import SchemaError
    from atft_core.data.store import StoreError

    try:
        summary = ingest(args.src, args.out, args.format, replace=args.replace)
    except (IngestError, SchemaError, StoreError) as err:
        print(f"atft ingest: {err}", file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    return 0


def _synth(args) -> int:
    import time

    from atft_core.config import load_config
    from atft_core.data.synthetic import generate_market, save_market

    cfg = load_config(args.config, args.overrides)
    scfg = cfg.data.synthetic
    t0 = time.perf_counter()
    market = generate_market(scfg, cfg.horizons)
    t_gen = time.perf_counter() - t0
    save_market(market, args.out, scfg)
    q = market.quotes
    print(f"synthetic market: {scfg.n_stocks} stocks x {scfg.n_days} days, signal={scfg.signal} "
          f"strength={scfg.signal_strength} seed={scfg.seed}")
    print(f"rows: {q.height:,}  dates: {q['Date'].min()} .. {q['Date'].max()}")
    print(f"generated in {t_gen:.2f} s; written in {time.perf_counter() - t0 - t_gen:.2f} s to {args.out}")
    print("oracle RankIC: " + "  ".join(f"{h}d={v:.4f}" for h, v in market.oracle_rank_ic.items()))
    return 0
