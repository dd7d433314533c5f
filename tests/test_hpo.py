"""Optuna HPO over the real training loop on a tiny synthetic market: shared SQLite study,
ask-and-tell trials, idempotent mapped-task retries, median pruning on val/rank_ic_5d; workers in
separate processes with a SIGKILLed one whose trial another retries; the best trial as a config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from atft_core.config import ConfigError, load_config
from atft_core.train import hpo
from atft_core.train.api import as_panel, load_features
from atft_core.train.callbacks import read_jsonl

ROOT = str(Path(__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("hpo")
    cfg = load_config("test", [
        "data.synthetic.n_stocks=20", "train.max_train_batches_per_epoch=1", "train.precision=fp32",
        "train.device=cpu", "hpo.hidden_sizes=[8,16]", "hpo.epochs_scale=1.0",
        f"run_root={root}/runs", f"work_root={root}/work", f"hpo.storage=sqlite:///{root}/db/optuna.db",
        "hpo.study_name=t",
        "hpo.pruner_startup_trials=2", "hpo.pruner_warmup_epochs=0",
        "train.phases=[{name: baseline, epochs: 1, blocks: {gat: false, fan: false}}, "
        "{name: graph, epochs: 1, blocks: {gat: true, fan: false}, weights: {mse: 0.8, rankic: 0.1}}]",
    ])
    return cfg, as_panel(load_features(cfg), cfg)


@pytest.mark.slow
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


@pytest.mark.slow
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


# --------------------------------------------------------------------------- best trial -> config
def _study_with_trials(tmp_path, values):
    cfg = load_config("test", [f"hpo.storage=sqlite:///{tmp_path}/db/o.db", "hpo.study_name=b",
                               f"run_root={tmp_path}/runs"])
    study = hpo.create_study(cfg)
    dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    for i, v in enumerate(values):
        lr = 1e-4 * (i + 1)
        study.add_trial(optuna.trial.create_trial(
            params={"lr": lr}, distributions=dist, value=v,
            state=optuna.trial.TrialState.COMPLETE if v is not None else optuna.trial.TrialState.FAIL,
            user_attrs={"overrides": {"train.optimizer.lr": lr, "model.hidden_size": 8 * (i + 1)}}))
    return cfg, study


def test_best_trial_becomes_a_config_that_names_it(tmp_path):
    cfg, _ = _study_with_trials(tmp_path, [0.01, 0.05, None, 0.03])
    best = hpo.best_trial_overrides(cfg.hpo.storage, "b")
    assert (best["trial"], best["value"]) == (1, 0.05)
    assert best["overrides"] == {"train.optimizer.lr": pytest.approx(2e-4), "model.hidden_size": 16}
    path = hpo.write_best_overrides(cfg.hpo.storage, "b", hpo.best_params_path(cfg, "b"))
    assert path == tmp_path / "runs" / "hpo" / "b" / "best_params.yaml"
    assert yaml.safe_load(path.read_text())["trial"] == 1
    base = load_config("test", [f"hpo.use_best_from={path}"])
    resolved = hpo.resolve_config(base)
    assert resolved.hpo.applied_trial == "b#1"
    assert resolved.train.optimizer.lr == pytest.approx(2e-4) and resolved.model.hidden_size == 16
    assert "applied_trial: b#1" in resolved.to_yaml()  # what the run's config.yaml / manifest carry
    assert resolved.sha256() != base.sha256()
    assert hpo.resolve_config(load_config("test")) == load_config("test")  # unset: unchanged


def test_bad_best_params_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        hpo.resolve_config(load_config("test", [f"hpo.use_best_from={tmp_path}/missing.yaml"]))
    bad = tmp_path / "bad.yaml"
    bad.write_text("trial: 3\noverrides: {gate.min_sharpe: -10}\n")
    with pytest.raises(ConfigError, match=r"outside train/model/loss: \['gate.min_sharpe'\]"):
        hpo.resolve_config(load_config("test", [f"hpo.use_best_from={bad}"]))
    bad.write_text("just text")
    with pytest.raises(ConfigError, match="not a best_params.yaml"):
        hpo.resolve_config(load_config("test", [f"hpo.use_best_from={bad}"]))
    cfg, _ = _study_with_trials(tmp_path, [None])
    with pytest.raises(LookupError, match="no completed trial"):
        hpo.best_trial_overrides(cfg.hpo.storage, "b")
    with pytest.raises(ConfigError, match="not a database URL"):
        hpo.make_storage(cfg, "optuna.db")


def test_summarise_publishes_the_best_config_the_next_retrain_trains_with(tmp_path, monkeypatch):
    """The HPO DAG's summarise -> ``{run_root}/hpo/{study_name}.latest.yaml``; a retrain whose config
    says ``hpo.use_best_from: latest`` (the default config does) trains with the best trial's
    overrides, and its training config (the run's config.yaml, hashed by the manifest) names it."""
    from atft_core import pipeline
    from atft_core.config import model_config

    monkeypatch.chdir(tmp_path)
    cfg, _ = _study_with_trials(tmp_path, [0.01, 0.05, None, 0.03])
    over = [f"hpo.storage={cfg.hpo.storage}", "hpo.study_name=b", f"run_root={tmp_path}/runs"]
    ctx = {"dag_id": "atft_hpo", "run_id": "r1", "as_of": "2024-05-07",
           "params": {"config": "test", "overrides": over}}
    # no HPO result yet: "latest" trains the config as given
    before = pipeline.task_config({**ctx, "params": {**ctx["params"], "overrides": [*over, "hpo.use_best_from=latest"]}})
    assert before.hpo.applied_trial is None and before.model.hidden_size == load_config("test").model.hidden_size
    out = pipeline.hpo_summarise(ctx, {"study_name": "b", "storage": cfg.hpo.storage}, [])
    best = out["best_config"]
    assert best["best"] == "b#1" and best["value"] == 0.05
    latest = Path(best["latest"])
    assert latest.parent == tmp_path / "runs" / "hpo" / "latest"
    assert latest.read_text() == Path(best["best_params"]).read_text()
    assert json.loads((pipeline.work_dir(ctx) / "hpo_summary.json").read_text())["best_config"]["best"] == "b#1"
    retrain = {"dag_id": "atft_retrain", "run_id": "r2", "as_of": "2024-05-07",
               "params": {"config": "test", "overrides": [*over, "hpo.use_best_from=latest"]}}
    rcfg = pipeline.task_config(retrain)
    assert rcfg.hpo.applied_trial == "b#1" and rcfg.model.hidden_size == 16
    # the pointer is keyed by the base config: another base (a manual lr) trains as given
    other = pipeline.task_config({**retrain, "params": {**retrain["params"], "lr": 0.005}})
    assert other.hpo.applied_trial is None and other.train.optimizer.lr == 0.005
    assert rcfg.train.optimizer.lr == pytest.approx(2e-4)
    trained = model_config(rcfg)  # what train_run saves as config.yaml
    assert trained.hpo.applied_trial == "b#1" and trained.hpo.use_best_from is None
    assert "applied_trial: b#1" in trained.to_yaml()
    # a study with no completed trial leaves the pointer as it was
    cfg2, _ = _study_with_trials(tmp_path / "z", [None])
    out2 = hpo.publish_best(pipeline.RunContext.build(ctx).base_config, cfg2.hpo.storage, "b")
    assert out2["best"] is None and yaml.safe_load(latest.read_text())["trial"] == 1


# --------------------------------------------------------------------------- workers + SIGKILL
@pytest.mark.slow
def test_killed_workers_trial_is_retried_by_the_other(tmp_path):
    """Two `atft hpo` workers share one SQLite study (RDB storage with heartbeat, the production
    kind). B starts while A trains trial 0; A is SIGKILLed mid-trial; B runs trial 1, waits for
    trial 0 to go stale, retries it (same parameters) and so fills the study to 2 finished trials;
    every trial is accounted for; the best trial becomes the retrain config."""
    storage = f"sqlite:///{tmp_path}/db/optuna.db"
    over = ["data.synthetic.n_stocks=20", "train.max_train_batches_per_epoch=1", "train.device=cpu",
            "hpo.hidden_sizes=[8,16]", f"run_root={tmp_path}/runs", f"work_root={tmp_path}/work",
            "hpo.heartbeat_s=1", "hpo.grace_s=5",
            "hpo.pruner_startup_trials=10",
            "train.phases=[{name: baseline, epochs: 3, blocks: {gat: false, fan: false}}]"]
    cmd = [sys.executable, "-m", "atft_core.cli", "hpo", "--config", "test", "--study", "w", "--storage", storage,
           "--trials", "2", *over]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}  # two workers on a small box
    trial0 = tmp_path / "runs" / "hpo" / "w" / "trial_0000" / "checkpoints"
    a = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    b = None
    try:
        deadline = time.monotonic() + 300
        while not (trial0 / "epoch_0001.pt").exists() and a.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (trial0 / "epoch_0001.pt").exists() and a.poll() is None, a.communicate(timeout=30)
        b = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        a.send_signal(signal.SIGKILL)  # mid-trial: 1 of its 3 epochs done
        a.wait(timeout=30)
        b_out, b_err = b.communicate(timeout=600)
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    assert a.returncode == -signal.SIGKILL
    assert b.returncode == 0, b_err[-3000:]
    assert not (trial0 / "epoch_0003.pt").exists()  # trial 0 really died mid-trial

    summary = hpo.summarise("w", storage)
    states = {t["number"]: t["state"] for t in summary["trials"]}
    assert states == {0: "FAIL", 1: "COMPLETE", 2: "COMPLETE"}
    retry = [t for t in summary["trials"] if t["retried_from"] == 0]
    assert len(retry) == 1 and retry[0]["state"] in ("COMPLETE", "PRUNED")
    assert retry[0]["params"] == summary["trials"][0]["params"]  # the same trial, run again
    # the workers share {work_root}/graph_store: B's trials read the day graphs A had built
    stores = [json.loads((tmp_path / "runs" / "hpo" / "w" / f"trial_{n:04d}" / "metrics.json").read_text())
              ["graph_store"] for n in (1, 2)]
    assert all(g["root"] == f"{tmp_path}/work/graph_store" and g["hits"] > 0 and g["bad"] == 0 for g in stores)
    out = json.loads(b_out[b_out.index("{\n"):])  # the summary B printed last
    assert out["states"] == summary["states"]
    best_path = Path(out["best_params_path"])
    resolved = hpo.resolve_config(load_config("test", [*over, f"hpo.use_best_from={best_path}"]))
    assert resolved.hpo.applied_trial == f"w#{summary['best']['number']}"
    assert resolved.train.optimizer.lr == pytest.approx(summary["best"]["params"]["lr"])
    assert resolved.model.hidden_size == summary["best"]["params"]["hidden_size"]
