"""`atft experiment`: the real-data protocol of issue 13 (replaces scripts/real_sample_experiment.py).

    atft experiment --data QUOTES --train-end D --eval-start E --data-end F [--seeds 3]
                    [--config real_cpu] [--out DIR] [--skip-control] [key=value ...]

Ingest -> validate (bad ticks masked) -> features (cached in OUT) -> panel -> explicit-window
splits (atft_core.experiment) -> the baseline ladder (ridge on the train rows, alpha on val;
1d reversal, 20d low vol) -> the model for each seed -> the seeds' rank ensemble -> a shuffled-
label control -> ``results.json`` + ``report.md`` + plots in OUT. Progress goes to the log
(stage timings; the trainer logs batches with stock-days/s and ETA, and every epoch).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("atft.experiment")
TABLE_KEYS = ("rank_ic_1d", "rank_ic_tstat_1d", "rank_ic_5d", "rank_ic_tstat_5d", "sharpe_1d",
              "jpx_sharpe", "n_days")


def register(sub) -> None:
    from atft_core.cli import add_config_args

    p = sub.add_parser("experiment", help="real-data protocol: ladder, model over seeds, control")
    add_config_args(p)
    p.add_argument("--data", required=True, help="quotes file or folder accepted by atft ingest")
    p.add_argument("--train-end", required=True, help="last day of the training years (ISO)")
    p.add_argument("--eval-start", required=True, help="first evaluated day (ISO)")
    p.add_argument("--data-end", required=True, help="last day read from the data (ISO)")
    p.add_argument("--seeds", type=int, default=3, help="model seeds (>= 1; the issue asks >= 3)")
    p.add_argument("--out", default=None, help="output folder (default var/experiments/{config})")
    p.add_argument("--skip-control", action="store_true", help="no shuffled-label control run")
    p.add_argument("--eval-every", type=int, default=1,
                   help="score every Nth labelled eval day only (all models on the same days; "
                        "a CPU budget option, 1 = every day)")
    p.add_argument("--ladder-only", action="store_true",
                   help="only the baseline ladder (no model, no control): a quick reference")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.set_defaults(func=_run)

    c = sub.add_parser("experiment-combine",
                       help="merge the seed runs of experiment dirs with the same data/splits")
    c.add_argument("out", help="experiment dir to complete (its results.json is rewritten)")
    c.add_argument("extra", nargs="+", help="experiment dirs holding more seeds (preds_seed*.parquet)")
    c.set_defaults(func=_combine)


def _date(s: str, flag: str) -> dt.date:
    try:
        return dt.date.fromisoformat(s)
    except ValueError:
        raise ValueError(f"{flag} {s!r} is not an ISO date (YYYY-MM-DD)") from None


def _run(args) -> int:
    try:
        return run_experiment(args)
    except ValueError as err:
        print(f"atft experiment: {err}", file=sys.stderr)
        return 2


def _load(args, cfg, out: Path):
    """Quotes -> validated -> features (cached as OUT/features.parquet keyed by the inputs)."""
    import polars as pl

    from atft_core.data.ingest import ingest
    from atft_core.data.store import scan_store
    from atft_core.features import build_features
    from atft_core.validation import validate_quotes

    data = Path(args.data)
    if not data.exists():
        raise ValueError(f"--data {data} does not exist")
    import hashlib

    import atft_core.features as features_mod

    code = hashlib.sha256(Path(features_mod.__file__).read_bytes()).hexdigest()  # feature code version
    key = json.dumps({"data": str(data.resolve()), "size": data.stat().st_size, "end": args.data_end,
                      "features_code": code,
                      "features": cfg.features.model_dump(mode="json"),
                      "horizons": list(cfg.horizons)}, sort_keys=True)
    cache, cache_key = out / "features.parquet", out / "features.key.json"
    if cache.exists() and cache_key.exists() and cache_key.read_text() == key:
        log.info("features: reusing %s", cache)
        return pl.read_parquet(cache), {"cached": True}
    t0 = time.perf_counter()
    summary = ingest(str(data), out / "store")
    quotes = scan_store(out / "store", end=args.data_end).collect()
    report = validate_quotes(quotes, end=args.data_end)
    bad = report.bad_ticks.select("Date", "Code")
    log.info("data: %d rows, %d codes, %s..%s; validation success=%s, %d bad ticks masked (%.0fs)",
             summary.rows, summary.codes, quotes["Date"].min(), quotes["Date"].max(),
             report.success, len(bad), time.perf_counter() - t0)
    t1 = time.perf_counter()
    feats = build_features(quotes, cfg, mask=bad)
    log.info("features: %d rows x %d columns (%.0fs)", feats.height, feats.width, time.perf_counter() - t1)
    from atft_core.atomic import atomic_write_bytes, atomic_write_text

    atomic_write_bytes(cache, lambda fh: feats.write_parquet(fh))
    atomic_write_text(cache_key, key)
    return feats, {"cached": False, "rows": summary.rows, "codes": summary.codes,
                   "validation_success": report.success, "bad_ticks": len(bad)}


def run_experiment(args) -> int:
    import torch

    from atft_core.baselines import run_ladder
    from atft_core.commands.train import _logging
    from atft_core.config import apply_overrides, load_config
    from atft_core.evaluate import evaluate_predictions
    from atft_core.experiment import (
        experiment_splits,
        mean_std,
        rank_ensemble,
        shuffled_panel,
        train_and_predict,
    )
    from atft_core.train.api import as_panel

    _logging()
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO floods the log
    train_end = _date(args.train_end, "--train-end")
    eval_start = _date(args.eval_start, "--eval-start")
    data_end = _date(args.data_end, "--data-end")
    if not eval_start <= data_end:
        raise ValueError(f"--eval-start {eval_start} is after --data-end {data_end}")
    if args.eval_every < 1:
        raise ValueError(f"--eval-every must be >= 1, got {args.eval_every}")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    cfg = load_config(args.config, args.overrides)
    cfg = apply_overrides(cfg, {"data.source": None, "data.end": str(data_end), "train.device": "cpu"})
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or f"var/experiments/{args.config}")
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    walls: dict[str, float] = {}

    feats, data_info = _load(args, cfg, out)
    walls["data+features"] = time.perf_counter() - t_all
    t0 = time.perf_counter()
    panel = as_panel(feats, cfg)
    splits = experiment_splits(list(panel.dates), train_end, eval_start, cfg)
    if args.eval_every > 1:
        splits = dataclasses.replace(splits, holdout=splits.holdout[::args.eval_every])
    walls["panel"] = time.perf_counter() - t0
    split_info = {w: [str(getattr(splits, w)[0]), str(getattr(splits, w)[-1]), len(getattr(splits, w))]
                  for w in ("train", "val", "holdout")} | {"gap_days": splits.gap_days}
    log.info("panel: %d stocks x %d days x %d features; splits %s", panel.num_stocks,
             len(panel.dates), len(panel.feature_names), split_info)
    horizons = tuple(cfg.horizons)
    results: dict[str, dict[str, Any]] = {}
    runs: dict[str, Any] = {}

    t0 = time.perf_counter()
    ladder = run_ladder(panel, splits.train, splits.val, splits.holdout, cfg)
    walls["ladder"] = time.perf_counter() - t0
    for name, ev in ladder.evaluations.items():
        results[f"baseline: {name}"] = ev
    runs["ladder"] = ladder.summary()
    log.info("ladder (%.0fs): %s", walls["ladder"], {n: e.get("rank_ic_1d") for n, e in ladder.evaluations.items()})

    if args.ladder_only:
        _write(out, args, cfg, data_info, split_info, runs, results, walls,
               time.perf_counter() - t_all, partial=False)
        return 0
    seed_frames = []

    def control() -> None:
        log.info("shuffled-label control: training")
        t0 = time.perf_counter()
        sp = shuffled_panel(panel, seed=cfg.train.seed + 1000)
        cpreds, runs["control"] = train_and_predict(cfg, sp, panel, splits, out / "run_control")
        walls["control"] = time.perf_counter() - t0
        cpreds.write_parquet(out / "preds_control.parquet")
        results["control: shuffled labels"] = evaluate_predictions(cpreds, horizons)
        log.info("control: holdout RankIC@1d %s (%.0fs)", results["control: shuffled labels"].get(
            "rank_ic_1d"), walls["control"])

    for i in range(args.seeds):
        seed = cfg.train.seed + i
        scfg = apply_overrides(cfg, {"train.seed": seed})
        log.info("model seed %d (%d/%d): training", seed, i + 1, args.seeds)
        t0 = time.perf_counter()
        preds, runs[f"seed_{seed}"] = train_and_predict(scfg, panel, panel, splits, out / f"run_seed{seed}")
        walls[f"model seed {seed}"] = time.perf_counter() - t0
        preds.write_parquet(out / f"preds_seed{seed}.parquet")
        results[f"ATFT seed {seed}"] = evaluate_predictions(preds, horizons)
        seed_frames.append(preds)
        log.info("model seed %d: holdout RankIC@1d %s (%.0fs)", seed,
                 results[f"ATFT seed {seed}"].get("rank_ic_1d"), walls[f"model seed {seed}"])
        if i == 0 and not args.skip_control:
            control()  # right after the first seed: a cut-short run still has its control
        _write(out, args, cfg, data_info, split_info, runs, results, walls, time.perf_counter() - t_all,
               partial=True)
    if len(seed_frames) > 1:
        results["ATFT seed ensemble"] = evaluate_predictions(rank_ensemble(seed_frames, horizons), horizons)
    seed_keys = [k for k in results if k.startswith("ATFT seed ") and k != "ATFT seed ensemble"]
    summary = {k: mean_std([results[s].get(k) for s in seed_keys]) for k in TABLE_KEYS}
    _write(out, args, cfg, data_info, split_info, runs, results, walls, time.perf_counter() - t_all,
           partial=False, seed_summary=summary)
    return 0


def _fmt(v: Any, spec: str = "+.4f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:d}" if isinstance(v, int) else format(v, spec)


def table_markdown(results: dict[str, dict[str, Any]], seed_summary: dict | None) -> str:
    head = "| model | " + " | ".join(TABLE_KEYS) + " |"
    lines = [head, "|" + "---|" * (len(TABLE_KEYS) + 1)]
    if seed_summary:
        cells = []
        for k in TABLE_KEYS:
            m, s = seed_summary[k]
            cells.append(f"{_fmt(m)} ± {_fmt(s, '.4f')}" if k != "n_days" else _fmt(m, '.0f'))
        lines.append("| **ATFT mean ± std over seeds** | " + " | ".join(cells) + " |")
    for name, m in results.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k)) for k in TABLE_KEYS) + " |")
    return "\n".join(lines)


def _plots(out: Path, results: dict[str, dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from atft_core.atomic import atomic_write_bytes

    written = []
    for key, title, fname in (("rank_ic_1d", "cumulative daily RankIC@1d", "cum_rank_ic_1d.png"),
                              ("jpx_spread", "cumulative JPX daily spread return", "cum_jpx_spread.png")):
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for name, m in results.items():
            daily = m.get("daily") or {}
            vals = np.asarray([np.nan if v is None else v for v in daily.get(key, [])], dtype=float)
            if len(vals):
                dates = np.asarray(daily["date"], dtype="datetime64[D]")
                ax.plot(dates, np.nancumsum(vals), label=name, lw=1.2)
        ax.set_title(title)
        ax.axhline(0, color="grey", lw=0.5)
        ax.legend(fontsize=7)
        fig.tight_layout()
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        atomic_write_bytes(out / fname, buf.getvalue())
        written.append(fname)
    return written


def _write(out: Path, args, cfg, data_info, split_info, runs, results, walls, total_s: float,
           partial: bool, seed_summary: dict | None = None) -> None:
    from atft_core.atomic import atomic_write_text
    from atft_core.experiment import LEAKAGE_RANK_IC_1D
    from atft_core.jsonsafe import json_safe

    leaks = [n for n, m in results.items() if (m.get("rank_ic_1d") or 0) > LEAKAGE_RANK_IC_1D]
    table = table_markdown(results, seed_summary)
    plots = _plots(out, results) if not partial else []
    payload = {
        "partial": partial, "settings": {k: v for k, v in vars(args).items() if k != "func"},
        "data": data_info, "splits": split_info, "config": cfg.to_dict(), "runs": runs,
        "seed_summary": seed_summary, "leakage_suspected": leaks,
        "wall_s": walls | {"total": total_s},
        "results": {k: {kk: vv for kk, vv in v.items() if kk != "daily"} for k, v in results.items()},
        "daily": {k: v.get("daily") for k, v in results.items()},
    }
    atomic_write_text(out / "results.json", json.dumps(json_safe(payload), indent=1, default=str))
    md = [f"# atft experiment ({'partial' if partial else 'complete'})", "",
          f"data `{args.data}`; config `{args.config}`; splits {split_info}", "",
          f"ladder: {runs.get('ladder')}", "", table, ""]
    if leaks:
        md += [f"**WARNING**: RankIC@1d > {LEAKAGE_RANK_IC_1D} for {leaks}: on real equities this "
               "is look-ahead leakage until proven otherwise.", ""]
    md += ["wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in (walls | {"total": total_s}).items()), ""]
    md += [f"![{p}]({p})" for p in plots]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    print(table)
    log.info("wrote %s and %s (%.0fs so far)", out / "results.json", out / "report.md", total_s)


def _combine(args) -> int:
    """Seeds run in parallel processes (a loaded machine) -> one table: same splits and config
    but the seed, checked; seed results re-evaluated from the predictions files."""
    import argparse

    import polars as pl

    from atft_core.commands.train import _logging
    from atft_core.config import from_dict
    from atft_core.evaluate import evaluate_predictions
    from atft_core.experiment import mean_std, rank_ensemble

    _logging()
    out = Path(args.out)
    try:
        base = json.loads((out / "results.json").read_text())
        extras = [(Path(d), json.loads((Path(d) / "results.json").read_text())) for d in args.extra]
    except (OSError, ValueError) as err:
        print(f"atft experiment-combine: cannot read results.json: {err}", file=sys.stderr)
        return 2

    def flat(d: dict, prefix: str = "") -> dict:
        out_ = {}
        for k, v in d.items():
            out_.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out_

    # same splits and the same value for every config key both know (but the seed); keys only
    # one side has (fields added by a code update between the runs) are listed in the report
    notes = []
    fb = flat(base["config"])
    for d, e in extras:
        fe = flat(e["config"])
        diff = sorted(k for k in set(fb) & set(fe) if k != "train.seed" and fb[k] != fe[k])
        if e["splits"] != base["splits"] or diff:
            print(f"atft experiment-combine: {d} has other splits or config than {out} "
                  f"({diff[:5] or 'splits'})", file=sys.stderr)
            return 2
        only = sorted(set(fb) ^ set(fe))
        if only:
            notes.append(f"{d}: config keys only one side has (code version differs): {only}")
    cfg = from_dict(base["config"])
    horizons = tuple(cfg.horizons)
    results = {k: dict(v, daily=base["daily"].get(k)) for k, v in base["results"].items()
               if not k.startswith("ATFT seed")}
    frames = {}
    for d in [out] + [d for d, _ in extras]:
        for f in sorted(d.glob("preds_seed*.parquet")):
            seed = int(f.stem.removeprefix("preds_seed"))
            if seed in frames:
                print(f"atft experiment-combine: seed {seed} appears twice ({f})", file=sys.stderr)
                return 2
            frames[seed] = pl.read_parquet(f)
    seed_results = {f"ATFT seed {s}": evaluate_predictions(frames[s], horizons) for s in sorted(frames)}
    results = seed_results | results
    if len(frames) > 1:
        results["ATFT seed ensemble"] = evaluate_predictions(
            rank_ensemble([frames[s] for s in sorted(frames)], horizons), horizons)
    summary = {k: mean_std([seed_results[s].get(k) for s in seed_results]) for k in TABLE_KEYS}
    runs = base["runs"] | {k: v for _, e in extras for k, v in e["runs"].items() if k.startswith("seed_")}
    walls = base["wall_s"] | {f"{d.name}: {k}": v for d, e in extras for k, v in e["wall_s"].items()}
    total = walls.pop("total", 0.0)
    runs["combine_notes"] = notes
    settings = argparse.Namespace(**base["settings"])
    _write(out, settings, cfg, base["data"], base["splits"], runs, results, walls, total,
           partial=False, seed_summary=summary)
    return 0
