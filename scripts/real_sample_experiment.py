"""Real-sample experiment (issue #4): train on 2013-2017, evaluate out of sample on 2018-2019.

A local experiment, not a test: it reads a real quotes file (e.g. the JPX top-1000 sample) and
compares the ATFT-GAT-FAN model with simple baselines and a shuffled-label control, all scored by
:func:`atft_core.evaluate.evaluate_predictions` on the same evaluation dates and stock-days.

Steps:
1. ``atft_core.data.ingest.ingest`` the file into a canonical store (``--store``).
2. ``validate_quotes`` on the data window; its ``bad_ticks`` are the ``mask`` of
   ``build_features`` (treated as gaps).
3. Panel once; splits from ``make_splits`` with ``holdout`` = every labelled day from
   ``--eval-start`` on, so val (and its purge + embargo gap) sits at the end of the training years
   and no training or val label reaches into the evaluation window.
4. Model: Trainer (demo phases, small CPU settings) -> best weights -> ``predict_window`` on
   ``--eval-start .. data end``.
5. Baselines on the model's evaluation rows (same Date, Code, targets): 1-day reversal
   (pred = -ret_1d) and 20-day low volatility (pred = -vol_20d), every horizon column the same.
6. Shuffled-label control: same model and steps, trained on a panel whose targets (y, y_raw, mask)
   are permuted across the stocks of each day; evaluated on the real targets (RankIC ~ 0 expected).

Prints a table and writes ``results.json`` (+ the predictions parquet files) under ``--out``.

Usage::

    nice -n 19 .venv/bin/python scripts/real_sample_experiment.py \
        --data /work/shared/data/jpx_daily_2013_2019_top1000.parquet --out var/experiments/jpx
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from atft_core.config import Config, from_dict, load_config
from atft_core.data.ingest import ingest
from atft_core.data.store import scan_store
from atft_core.dataset import Panel, make_splits
from atft_core.evaluate import evaluate_predictions
from atft_core.features import build_features
from atft_core.train.api import as_panel, build_model, load_model, predict_window
from atft_core.train.checkpoint import atomic_write_text
from atft_core.train.loop import Trainer
from atft_core.validation import validate_quotes

LEAKAGE_RANK_IC_1D = 0.10  # a daily RankIC above this on real equities means look-ahead, not skill
TABLE_KEYS = ("rank_ic_1d", "rank_ic_5d", "sharpe_1d", "jpx_sharpe", "n_days")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="quotes file or folder accepted by atft ingest")
    p.add_argument("--store", default=None, help="canonical store to ingest into (default OUT/store)")
    p.add_argument("--train-end", default="2017-12-29", help="last day of the training years")
    p.add_argument("--eval-start", default="2018-01-04", help="first evaluated day")
    p.add_argument("--data-end", default="2019-12-30", help="last day read from the store")
    p.add_argument("--config", default="demo", help="base config (phases/model sizes from it)")
    p.add_argument("--phases", default="baseline,graph,finetune",
                   help="comma list of the base config's phases to run, in order")
    p.add_argument("--epochs", type=int, default=1, help="epochs per phase")
    p.add_argument("--max-batches-per-epoch", type=int, default=40)
    p.add_argument("--days-per-batch", type=int, default=4)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--val-days", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--skip-control", action="store_true", help="no shuffled-label control run")
    p.add_argument("--out", required=True, help="output folder (results.json, runs, predictions)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- data
def load_data(args: argparse.Namespace, out: Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Ingest -> validate (bad ticks) -> features with the bad ticks masked."""
    store = Path(args.store) if args.store else out / "store"
    t0 = time.perf_counter()
    summary = ingest(args.data, store)
    quotes = scan_store(store, end=args.data_end).collect()
    report = validate_quotes(quotes, end=args.data_end)
    bad = report.bad_ticks.select("Date", "Code")
    info = {
        "store": str(store), "rows": summary.rows, "codes": summary.codes,
        "first_date": str(quotes["Date"].min()), "last_date": str(quotes["Date"].max()),
        "validation_success": report.success, "bad_ticks": len(bad),
        "bad_tick_examples": report.bad_ticks.head(9).with_columns(pl.col("Date").cast(pl.String)).to_dicts(),
    }
    print(f"data: {summary.rows} rows, {summary.codes} codes, {info['first_date']}..{info['last_date']}; "
          f"validation success={report.success}, {len(bad)} bad ticks masked")
    return quotes, {**info, "bad_mask": bad, "load_s": time.perf_counter() - t0}


def experiment_config(args: argparse.Namespace, n_eval_labelled: int) -> Config:
    """The base config with the experiment's window, split and small CPU model."""
    base = load_config(args.config)
    phases = {ph.name: ph for ph in base.train.phases}
    wanted = [s.strip() for s in args.phases.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in phases]
    if unknown:
        raise ValueError(f"unknown phase(s) {unknown}; the {args.config} config has {list(phases)}")
    data = base.to_dict()
    data["data"].update(source=None, start=None, end=args.data_end)
    data["split"].update(holdout_days=n_eval_labelled, val_days=args.val_days, train_days=None)
    data["dataset"]["days_per_batch"] = args.days_per_batch
    data["model"]["hidden_size"] = args.hidden
    data["train"].update(seed=args.seed, device="cpu", precision="fp32",
                         max_train_batches_per_epoch=args.max_batches_per_epoch)
    data["train"]["phases"] = [{**phases[w].model_dump(mode="json"), "epochs": args.epochs} for w in wanted]
    return from_dict(data)


def shuffled_panel(panel: Panel, seed: int) -> Panel:
    """Targets permuted across each day's usable stocks (features, graph inputs unchanged)."""
    g = np.random.default_rng(seed)
    y, y_raw, mask = panel.y.clone(), panel.y_raw.clone(), panel.mask.clone()
    usable = panel.usable.numpy()
    for t in range(usable.shape[1]):
        idx = np.flatnonzero(usable[:, t])
        if len(idx) < 2:
            continue
        src = torch.from_numpy(g.permutation(idx))
        dst = torch.from_numpy(idx)
        y[dst, t], y_raw[dst, t], mask[dst, t] = panel.y[src, t], panel.y_raw[src, t], panel.mask[src, t]
    # graphs depend on returns only, so sharing the built-graph cache is correct
    return dataclasses.replace(panel, y=y, y_raw=y_raw, mask=mask)


# --------------------------------------------------------------------------- runs
def train_and_predict(cfg: Config, train_panel: Panel, eval_panel: Panel, splits, eval_dates,
                      run_dir: Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Trainer on ``train_panel`` (train/val of ``splits``) -> best weights -> eval predictions."""
    from atft_core.dataset import DayBatchLoader

    t0 = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    train = DayBatchLoader(train_panel, splits.train, cfg, shuffle=True, seed=cfg.train.seed)
    val = DayBatchLoader(train_panel, splits.val, cfg, shuffle=False)
    model = build_model(cfg, len(train_panel.feature_names))
    fit = Trainer(cfg, model, train, val, run_dir).fit(resume=False)
    train_s = time.perf_counter() - t0
    best, _, meta = load_model(fit.weights_path, cfg)
    preds = predict_window(best, eval_panel, cfg, eval_dates, "cpu").frame()
    info = {
        "train_s": train_s, "total_s": time.perf_counter() - t0, "best_value": fit.best_value,
        "best": fit.best, "global_step": fit.global_step, "nan_steps": fit.nan_steps,
        "history": [{k: r.get(k) for k in ("phase", "epoch", "train/loss", "val/rank_ic_1d",
                                           "val/rank_ic_5d", "train_time_s", "samples_per_s")}
                    for r in fit.history],
    }
    return preds, info


def baseline_frame(preds: pl.DataFrame, features: pl.DataFrame, column: str, horizons) -> pl.DataFrame:
    """pred_{h}d = -feature for every horizon, on the model's (Date, Code, y_*) rows."""
    keys = preds.select("Date", "Code", *(f"y_{h}d" for h in horizons))
    feat = features.select("Date", "Code", (-pl.col(column).cast(pl.Float64)).alias("_p"))
    out = keys.join(feat, on=["Date", "Code"], how="left")
    return out.with_columns(pl.col("_p").alias(f"pred_{h}d") for h in horizons).drop("_p")


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:d}" if isinstance(v, int) else f"{v:+.4f}"


def print_table(results: dict[str, dict[str, Any]]) -> str:
    head = f"{'':34s}" + "".join(f"{k:>12s}" for k in TABLE_KEYS)
    lines = [head, "-" * len(head)]
    for name, m in results.items():
        lines.append(f"{name:34s}" + "".join(f"{_fmt(m.get(k)):>12s}" for k in TABLE_KEYS))
    text = "\n".join(lines)
    print(text)
    return text


def write_results(out: Path, args, data_info, split_info, cfg: Config, runs, results,
                  features_s: float, panel_s: float, total_s: float, partial: bool) -> None:
    """Print the table and write results.json (also after the model run, marked partial)."""
    print()
    table = print_table(results)
    ric = results["ATFT-GAT-FAN"].get("rank_ic_1d")
    leak = ric is not None and ric > LEAKAGE_RANK_IC_1D
    if leak:
        print(f"WARNING: model RankIC@1d {ric:.4f} > {LEAKAGE_RANK_IC_1D}: on real equities this "
              "means look-ahead leakage, not skill")
    print(f"runtime so far {total_s:.0f}s")
    payload = {
        "partial": partial, "settings": vars(args), "data": data_info, "splits": split_info,
        "config": cfg.to_dict(), "runs": runs, "table": table, "leakage_suspected": leak,
        "runtime_s": {"total": total_s, "features": features_s, "panel": panel_s},
        "results": {k: {kk: vv for kk, vv in v.items() if kk != "daily"} for k, v in results.items()},
        "daily": {k: v.get("daily") for k, v in results.items()},
    }
    atomic_write_text(out / "results.json", json.dumps(payload, indent=2, default=str))
    print(f"wrote {out / 'results.json'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    quotes, data_info = load_data(args, out)
    bad_mask = data_info.pop("bad_mask")
    base_cfg = load_config(args.config)
    t0 = time.perf_counter()
    features = build_features(quotes, base_cfg, mask=bad_mask)
    features_s = time.perf_counter() - t0

    # the split: holdout = labelled days >= eval_start (labelled = all but the last 1 + max h)
    eval_start = dt.date.fromisoformat(args.eval_start)
    train_end = dt.date.fromisoformat(args.train_end)
    probe = experiment_config(args, n_eval_labelled=5)
    t0 = time.perf_counter()
    panel = as_panel(features, probe)
    panel_s = time.perf_counter() - t0
    lag = 1 + max(probe.horizons)
    labelled = list(panel.dates[: len(panel.dates) - lag])
    cfg = experiment_config(args, n_eval_labelled=sum(d >= eval_start for d in labelled))
    splits = make_splits(list(panel.dates), cfg)
    if splits.holdout[0] < eval_start or splits.val[-1] > train_end:
        raise RuntimeError(f"split does not respect the window: val ends {splits.val[-1]}, "
                           f"holdout starts {splits.holdout[0]}")
    eval_dates = [d for d in panel.dates if d >= eval_start]
    split_info = {
        "train": [str(splits.train[0]), str(splits.train[-1]), len(splits.train)],
        "val": [str(splits.val[0]), str(splits.val[-1]), len(splits.val)],
        "gap_days": splits.gap_days,
        "eval": [str(eval_dates[0]), str(eval_dates[-1]), len(eval_dates)],
    }
    print(f"panel: {panel.num_stocks} stocks x {len(panel.dates)} days x {len(panel.feature_names)} "
          f"features (features {features_s:.0f}s, panel {panel_s:.0f}s); splits {split_info}")

    horizons = tuple(cfg.horizons)
    results: dict[str, dict[str, Any]] = {}
    runs: dict[str, Any] = {}

    preds, runs["model"] = train_and_predict(cfg, panel, panel, splits, eval_dates, out / "run_model")
    preds.write_parquet(out / "preds_model.parquet")
    results["ATFT-GAT-FAN"] = evaluate_predictions(preds, horizons)
    print(f"model: trained in {runs['model']['train_s']:.0f}s; eval RankIC@1d "
          f"{results['ATFT-GAT-FAN']['rank_ic_1d']}")

    for name, col in (("baseline: 1d reversal (-ret_1d)", "ret_1d"),
                      ("baseline: 20d low vol (-vol_20d)", "vol_20d")):
        results[name] = evaluate_predictions(baseline_frame(preds, features, col, horizons), horizons)

    write_results(out, args, data_info, split_info, cfg, runs, results, features_s, panel_s,
                  time.perf_counter() - t_all, partial=not args.skip_control)
    if not args.skip_control:
        sp = shuffled_panel(panel, seed=args.seed + 1)
        cpreds, runs["shuffled_control"] = train_and_predict(cfg, sp, panel, splits, eval_dates,
                                                             out / "run_shuffled")
        cpreds.write_parquet(out / "preds_shuffled.parquet")
        results["control: shuffled labels"] = evaluate_predictions(cpreds, horizons)

    write_results(out, args, data_info, split_info, cfg, runs, results, features_s, panel_s,
                  time.perf_counter() - t_all, partial=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
