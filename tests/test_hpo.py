"""Optuna HPO over the real training loop on a tiny synthetic market: shared SQLite study,
ask-and-tell trials, idempotent mapped-task retries, median pruning on val/rank_ic_5d."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml

from atft_core.config import load_config
from atft_core.train import hpo
from atft_core.train.api import as_panel, load_features
from atft_core.train.callbacks import read_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("hpo")
    cfg = load_config("test", [
        "data.synthetic.n_stocks=20", "train.max_train_batches_per_epoch=1", "train.precision=fp32",
        "train.device=cpu", "hpo.hidden_sizes=[8,16]", "hpo.epochs_scale=1.0",
        f"run_root={root}/runs", f"hpo.storage=sqlite:///{root}/db/optuna.db", "hpo.study_name=t",
        "hpo.pruner_startup_trials=2", "hpo.pruner_warmup_epochs=0",
        "train.phases=[{name: baseline, epochs: 1, blocks: {gat: false, fan: false}}, "
        "{name: graph, epochs: 1, blocks: {gat: true, fan: false}, weights: {mse: 0.8, rankic: 0.1}}]",
    ])
    return cfg, as_panel(load_features(cfg), cfg)


def test_trials_share_one_study_and_use_their_params(setup):
    cfg, panel = setup
    s1 = hpo.create_study(cfg)
    s2 = hpo.create_study(cfg)  # load_if_exists: the same study
    assert s1.study_name == s2.study_name == "t"
    results = [hpo.run_trial(cfg, panel, trial_index=i) for i in range(2)]
    assert [r["state"] for r in results] == ["COMPLETE", "COMPLETE"]
    for r in results:
        tcfg = yaml.safe_load((r["run_dir"] and open(f"{r['run_dir']}/config.yaml")).read())
        assert tcfg["train"]["optimizer"]["lr"] == pytest.approx(r["params"]["lr"])
        assert tcfg["model"]["hidden_size"] == r["params"]["hidden_size"]
        hist = read_jsonl(f"{r['run_dir']}/metrics.jsonl")
        assert r["value"] == pytest.approx(max(h["val/rank_ic_5d"] for h in hist))
        # rankic weights scaled by the trial (phase 0 keeps mse only)
        w = tcfg["train"]["phases"][1]["weights"]["rankic"]
        assert w == pytest.approx(0.1 * r["params"]["rankic_scale"])
    summary = hpo.summarise("t", cfg.hpo.storage)
    assert summary["states"] == {"COMPLETE": 2}
    assert summary["best"]["value"] == max(r["value"] for r in results)
    json.dumps(summary)  # XCom-able

    # an Airflow retry of map index 1 returns the finished trial instead of training again
    again = hpo.run_trial(cfg, panel, trial_index=1)
    assert again["number"] == results[1]["number"]
    assert hpo.summarise("t", cfg.hpo.storage)["n_trials"] == 2


def test_median_pruner_stops_a_weak_trial(setup):
    cfg, panel = setup
    cfg = cfg.model_copy(update={"hpo": cfg.hpo.model_copy(update={"study_name": "prune"})})
    study = hpo.create_study(cfg)
    dist = {"lr": optuna.distributions.FloatDistribution(cfg.hpo.lr_min, cfg.hpo.lr_max, log=True)}
    for _ in range(2):  # two finished trials that were perfect at every epoch
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 1e-3}, distributions=dist, value=1.0,
            intermediate_values={e: 1.0 for e in range(1, 9)}))
    r = hpo.run_trial(cfg, panel)
    assert r["state"] == "PRUNED"
    hist = read_jsonl(f"{r['run_dir']}/metrics.jsonl")
    assert len(hist) == 1  # pruned after its first epoch: the graph phase never ran
