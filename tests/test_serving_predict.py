"""`atft predict` / serving.predict + serving.signals on a tiny trained champion (file://)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import torch

from atft_core.config import apply_overrides, load_config

pytestmark = pytest.mark.slow  # trains a tiny model (~40 s) and runs the CLI

TINY = ["train.max_train_batches_per_epoch=2", "data.synthetic.n_days=160",
        "data.synthetic.n_stocks=24",
        "train.phases=[{name: a, epochs: 1, blocks: {gat: true, fan: false}}]"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny trained run, published and promoted in a file:// registry; quotes in a store."""
    from atft_core.data.store import write_store
    from atft_core.data.synthetic import generate_market
    from atft_core.features import build_features
    from atft_core.registry import Registry
    from atft_core.train.api import train_run

    root = tmp_path_factory.mktemp("served")
    cfg = apply_overrides(load_config("test"), TINY)
    quotes = generate_market(cfg.data.synthetic, tuple(cfg.horizons)).quotes
    write_store(quotes, root / "store")
    feats = build_features(quotes, cfg)
    res = train_run(cfg, feats, root / "runs" / "r1", resume=False, write_report=False)
    reg = Registry(f"file://{root / 'registry'}")
    reg.publish(res.run_dir, "r1")
    reg.promote("r1", reason="test", actor="test")
    day = feats.get_column("Date").max()
    return {"root": root, "cfg": cfg, "quotes": quotes, "feats": feats, "reg": reg, "day": day,
            "run_dir": res.run_dir}


def test_drift_reference_is_published_with_the_run(served):
    m, _ = served["reg"].read_manifest("r1")
    names = {f.name for f in m.files}
    assert "drift_reference.json" in names
    ref = json.loads((served["run_dir"] / "drift_reference.json").read_text())
    from atft_core.features import FEATURE_COLUMNS

    assert sorted(ref["features"]) == sorted(FEATURE_COLUMNS)
    assert sorted(ref["prediction"]) == sorted(f"pred_{h}d" for h in served["cfg"].horizons)


def test_predict_day_equals_full_history_prediction(served):
    """The day window gives exactly the predictions a panel over the whole history gives."""
    from atft_core.dataset import build_panel
    from atft_core.serving.predict import predict_day
    from atft_core.train.api import load_model, predict_window

    cfg, day = served["cfg"], served["day"]
    sig = predict_day(served["reg"], day, served["quotes"])
    model, mcfg, _ = load_model(served["run_dir"])
    full = predict_window(model, build_panel(served["feats"], mcfg), mcfg, [day]).frame()
    H = tuple(cfg.horizons)
    n_usable = served["feats"].filter((pl.col("Date") == day)
                                      & (pl.col("history_days") >= cfg.features.min_history)).height
    assert sig.frame.height == n_usable == full.height
    assert sig.frame.columns == ["Date", "Code", *[f"pred_{h}d" for h in H], *[f"rank_{h}d" for h in H]]
    joined = sig.frame.join(full, on=["Date", "Code"], suffix="_full")
    for h in H:
        np.testing.assert_array_equal(joined[f"pred_{h}d"].to_numpy(), joined[f"pred_{h}d_full"].to_numpy())
        # rank 1 = highest prediction; a permutation of 1..n
        r = sig.frame.sort(f"rank_{h}d")
        assert r[f"rank_{h}d"].to_list() == list(range(1, sig.frame.height + 1))
        assert np.all(np.diff(r[f"pred_{h}d"].to_numpy()) <= 0)
    assert sig.run_id == "r1" and sig.manifest_sha256 == served["reg"].get_alias().manifest_sha256
    assert sig.features.height == n_usable


def test_publish_idempotent_conflict_and_cli_same_bytes(served, tmp_path):
    from atft_core.serving.predict import predict_day
    from atft_core.serving.signals import SignalConflictError, publish_signal, read_signals

    reg, day = served["reg"], served["day"]
    sig = predict_day(reg, day, served["quotes"])
    rec = publish_signal(reg, sig)
    path = served["root"] / "registry" / "signals" / day.isoformat() / "r1.parquet"
    assert rec.key == f"signals/{day}/r1.parquet" and path.is_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == rec.sha256
    again = publish_signal(reg, predict_day(reg, day, served["quotes"]))
    assert again.already_published and again.sha256 == rec.sha256
    other = type(sig)(**{**sig.__dict__, "frame": sig.frame.with_columns(pl.col("pred_1d") + 1.0)})
    with pytest.raises(SignalConflictError):
        publish_signal(reg, other)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == rec.sha256  # untouched
    shadow = publish_signal(reg, sig, role="shadow")
    assert shadow.key == f"signals/{day}/shadow/r1.parquet"
    back = read_signals(reg, "champion")
    assert back.drop("run_id").equals(sig.frame)

    # by hand: atft predict on the same champion and data -> the same bytes
    out = tmp_path / "hand.parquet"
    # same intra-op thread count as this process: float reductions (hence the bytes) depend on it
    env = dict(os.environ, ATFT_REGISTRY=reg.uri, OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.run([sys.executable, "-m", "atft_core.cli", "predict", "--config", "test",
                           "--data", str(served["root"] / "store"), "--date", str(day),
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_bytes() == path.read_bytes()
    assert json.loads(proc.stdout)["sha256"] == rec.sha256
    # --out never overwrites
    proc = subprocess.run([sys.executable, "-m", "atft_core.cli", "predict", "--data",
                           str(served["root"] / "store"), "--date", str(day), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("atft predict: ") and "exists" in proc.stderr


def test_tampered_champion_is_refused_and_nothing_published(served, tmp_path):
    import shutil

    from atft_core.registry import IntegrityError, Registry
    from atft_core.serving.predict import predict_day

    # a copy of the registry whose champion weights were altered after publication
    root = tmp_path / "reg"
    shutil.copytree(served["root"] / "registry", root)
    w = root / "runs" / "r1" / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    os.chmod(w, 0o644)
    w.write_bytes(bytes(data))
    reg = Registry(f"file://{root}")
    prev_day = served["feats"].get_column("Date").unique().sort()[-2]
    with pytest.raises(IntegrityError, match="model.safetensors"):
        predict_day(reg, prev_day, served["quotes"])
    proc = subprocess.run([sys.executable, "-m", "atft_core.cli", "predict", "--uri", reg.uri,
                           "--data", str(served["root"] / "store"), "--date", str(prev_day),
                           "--publish"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "verification failed" in proc.stderr
    assert not (root / "signals" / prev_day.isoformat()).exists()


def test_bad_day_is_one_line(served):
    proc = subprocess.run([sys.executable, "-m", "atft_core.cli", "predict", "--uri",
                           served["reg"].uri, "--data", str(served["root"] / "store"),
                           "--date", "2001-01-05"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("atft predict: no quotes for 2001-01-05")


def test_register_shadow_publishes_rejected_run_without_touching_champion(served, tmp_path):
    import shutil

    from atft_core.registry import Registry
    from atft_core.serving.predict import predict_day
    from atft_core.serving.shadow import register_shadow

    reg = Registry(f"file://{tmp_path / 'reg'}")
    shutil.copytree(served["root"] / "registry", tmp_path / "reg", dirs_exist_ok=True)
    rejected = tmp_path / "runs" / "20240508-rej"
    shutil.copytree(served["run_dir"], rejected, ignore=shutil.ignore_patterns("checkpoints"))
    summary = {"run_id": "20240508-rej", "run_dir": str(rejected), "reasons": ["worse than champion"]}
    assert register_shadow(reg, summary, actor="test") == {"run_id": "20240508-rej", "moved": True}
    assert register_shadow(reg, summary, actor="test")["moved"] is False
    assert reg.get_alias("champion").run_id == "r1"
    rec = reg.get_alias("shadow")
    assert rec.run_id == "20240508-rej" and "worse than champion" in rec.reason
    sig = predict_day(reg, served["day"], served["quotes"], alias="shadow")
    assert sig.run_id == "20240508-rej"


def test_champion_trained_with_extra_features_is_served_with_them(tmp_path):
    """features.extra reaches the model's input width, the checkpoint's config and serving: the
    served day equals the full-history prediction, and the weights refuse a default config."""
    from atft_core.baselines.scorer import load_scorer
    from atft_core.data.synthetic import generate_market
    from atft_core.dataset import build_panel
    from atft_core.features import FEATURE_COLUMNS, build_features
    from atft_core.registry import Registry
    from atft_core.serving.predict import predict_day
    from atft_core.train.api import load_model, predict_window, train_run

    extras = ("ret_overnight_1d", "turnover_ratio_5_60", "resid_ret_5d")
    base = apply_overrides(load_config("test"), TINY)
    cfg = apply_overrides(base, [f"features.extra=[{','.join(extras)}]"])
    quotes = generate_market(cfg.data.synthetic, tuple(cfg.horizons)).quotes
    feats = build_features(quotes, cfg)
    res = train_run(cfg, feats, tmp_path / "runs" / "x1", resume=False, write_report=False)
    model, mcfg, _ = load_model(res.run_dir)
    assert mcfg.features.extra == extras
    assert model.n_features == len(FEATURE_COLUMNS) + len(extras) == 25
    assert load_scorer(res.run_dir).feature_names == FEATURE_COLUMNS + extras
    ref = json.loads((res.run_dir / "drift_reference.json").read_text())
    assert sorted(ref["features"]) == sorted(FEATURE_COLUMNS + extras)
    with pytest.raises(ValueError, match="does not match the config's model"):
        load_model(res.run_dir / "model.safetensors", cfg=base)  # 22 inputs: refused

    reg = Registry(f"file://{tmp_path / 'registry'}")
    reg.publish(res.run_dir, "x1")
    reg.promote("x1", reason="test", actor="test")
    day = feats.get_column("Date").max()
    sig = predict_day(reg, day, quotes)  # builds features with the champion's own config
    full = predict_window(model, build_panel(feats, mcfg), mcfg, [day]).frame()
    joined = sig.frame.join(full, on=["Date", "Code"], suffix="_full")
    assert joined.height == full.height > 0
    for h in cfg.horizons:
        np.testing.assert_array_equal(joined[f"pred_{h}d"].to_numpy(), joined[f"pred_{h}d_full"].to_numpy())
