"""Graph gain on the neighbour market: phase 1 (no graph) vs phase 1 + graph phase, same steps.

Both arms use the same data, seed, config and total number of optimiser steps; the only
difference is that the second arm switches the GAT on after the baseline phase. Prints val and
holdout RankIC@1d of the best weights of each arm and the oracle's RankIC@1d.

    .venv/bin/python scripts/graph_gain.py [--config graph_gain] [--steps 25] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from atft_core.config import Config, PhaseConfig, load_config
from atft_core.data.synthetic import generate_market
from atft_core.features import build_features
from atft_core.train.api import train_run


def no_graph_arm(cfg: Config) -> Config:
    """The same config with every phase's GAT off, merged into one baseline phase of the same
    total epochs (so both arms take the same number of steps)."""
    first = cfg.train.phases[0]
    total = sum(p.epochs for p in cfg.train.phases)
    phase = PhaseConfig(name=first.name, epochs=total, blocks=first.blocks.model_copy(update={"gat": False}),
                        weights=first.weights, lr_scale=first.lr_scale)
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"phases": (phase,)})})


def run_arms(cfg: Config) -> dict:
    """Train both arms on one features frame; returns {arm: {val, holdout, seconds}, oracle_1d}."""
    market = generate_market(cfg.data.synthetic, horizons=cfg.horizons)
    features = build_features(market.quotes, cfg)
    out: dict = {"oracle_1d": float(market.oracle_rank_ic[1])}
    for arm, arm_cfg in (("phase1_only", no_graph_arm(cfg)), ("phase1_then_graph", cfg)):
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as run_dir:
            res = train_run(arm_cfg, features, run_dir, resume=False, write_report=False)
        out[arm] = {
            "val_rank_ic_1d": float(res.best_metrics["rank_ic_1d"]),
            "holdout_rank_ic_1d": float(res.holdout_metrics["rank_ic_1d"]),
            "best": {"phase": res.best.get("phase"), "epoch": res.best.get("epoch")},
            "global_step": res.global_step,
            "seconds": round(time.perf_counter() - t0, 1),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="graph_gain")
    ap.add_argument("--set", action="append", default=[], help="config override key=value")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.set)
    print(json.dumps(run_arms(cfg), indent=2))


if __name__ == "__main__":
    main()
