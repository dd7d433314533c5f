"""Baseline ladder (issue 13): ridge vs an independent solver, fitted on the train rows only
(leakage test), factors and ridge on the model's own rows, the gate's ladder rule and the ridge
fallback published as champion and scored through load_scorer."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from atft_core.baselines import (
    factor_frame,
    fit_ridge,
    load_scorer,
    predict_panel,
    read_ridge,
    run_family,
    run_ladder,
    solve_ridge,
    write_ridge_run,
)
from atft_core.config import Config, GateConfig, apply_overrides
from atft_core.data.synthetic import generate_market
from atft_core.dataset import build_panel, make_splits
from atft_core.features import build_features
from atft_core.gate import decide

CFG = apply_overrides(Config(), [
    "data.synthetic.n_stocks=40", "data.synthetic.n_days=160", "data.synthetic.signal=own",
    "data.synthetic.seed=5", "split.val_days=15", "split.holdout_days=15", "dataset.lookback=8",
    "graph.corr_window=20", "graph.k=4", "features.min_history=10", "model.hidden_size=16",
    "model.vsn_hidden=8", "model.vsn_feature_dim=4", "model.attn_heads=2", "model.gat_heads=2",
    "train.precision=fp32",
])


@pytest.fixture(scope="module")
def feats() -> pl.DataFrame:
    return build_features(generate_market(CFG.data.synthetic, CFG.horizons).quotes, CFG)


@pytest.fixture(scope="module")
def panel(feats):
    return build_panel(feats, CFG)


@pytest.fixture(scope="module")
def splits(panel):
    return make_splits(list(panel.dates), CFG)


# --------------------------------------------------------------------------- ridge
def test_solve_ridge_equals_augmented_least_squares():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 6))
    y = x @ rng.standard_normal((6, 2)) + 0.3 + rng.standard_normal((300, 2))
    mask = rng.random((300, 2)) > 0.2
    coef, icpt = solve_ridge(x, y, mask, alpha=7.0)
    for j in range(2):
        m = mask[:, j]
        # reference: ridge = least squares on [X 1; sqrt(a) I 0] (intercept unpenalised)
        xa = np.concatenate([x[m], np.ones((m.sum(), 1))], 1)
        aug = np.concatenate([xa, np.concatenate([np.sqrt(7.0) * np.eye(6), np.zeros((6, 1))], 1)])
        b = np.linalg.lstsq(aug, np.concatenate([y[m, j], np.zeros(6)]), rcond=None)[0]
        np.testing.assert_allclose(coef[:, j], b[:6], rtol=1e-9, atol=1e-10)
        assert icpt[j] == pytest.approx(b[6], rel=1e-9, abs=1e-10)
    with pytest.raises(ValueError, match="labelled training rows"):
        solve_ridge(x[:5], y[:5], mask[:5], 1.0)


def _perturbed(panel, dates, seed: int):
    """Panel whose features AND targets on ``dates`` are replaced by noise."""
    t = torch.from_numpy(panel.date_index(dates))
    g = torch.Generator().manual_seed(seed)
    x, y, yr = panel.x.clone(), panel.y.clone(), panel.y_raw.clone()
    x[:, t] = torch.randn(x[:, t].shape, generator=g)
    y[:, t] = torch.randn(y[:, t].shape, generator=g)
    yr[:, t] = torch.randn(yr[:, t].shape, generator=g) * 0.05
    return dataclasses.replace(panel, x=x, y=y, y_raw=yr, graph_cache={})


@pytest.mark.slow
def test_ladder_fit_ignores_holdout_rows_but_not_train_rows(panel, splits):
    """Leakage test: the ridge sees exactly the train rows (alpha from val)."""
    a = fit_ridge(panel, splits.train, splits.val, CFG.gate.ridge_alphas)
    b = fit_ridge(_perturbed(panel, splits.holdout, 1), splits.train, splits.val, CFG.gate.ridge_alphas)
    np.testing.assert_array_equal(a.coef, b.coef)
    np.testing.assert_array_equal(a.intercept, b.intercept)
    assert a.alpha == b.alpha and a.n_train_rows == b.n_train_rows > 0
    c = fit_ridge(_perturbed(panel, splits.train[:10], 2), splits.train, splits.val, (a.alpha,))
    assert np.abs(c.coef - a.coef).max() > 1e-4  # the test can fail: train rows do matter
    # the reported number of rows is the usable labelled 1d rows of the train dates
    t = panel.date_index(splits.train)
    assert a.n_train_rows == int(panel.mask[:, t, 0].sum())


@pytest.mark.slow
def test_alpha_is_the_val_argmax(panel, splits):
    from atft_core.evaluate import daily_metrics

    alphas = (0.01, 100.0, 1e6)
    r = fit_ridge(panel, splits.train, splits.val, alphas)
    scores = {}
    for a in alphas:
        m = fit_ridge(panel, splits.train, splits.val, (a,))
        scores[a] = daily_metrics(predict_panel(m, panel, splits.val), (1,))["rank_ic_1d"].mean()
    assert r.alpha == max(scores, key=scores.get)
    assert r.val_rank_ic_1d == pytest.approx(scores[r.alpha])


@pytest.mark.slow
def test_ladder_scores_the_models_rows(panel, splits, feats):
    """Ridge/factor frames hold exactly the rows (Date, Code, y) of the model's predictions."""
    from atft_core.train.api import build_model, predict_window

    model = build_model(CFG, len(panel.feature_names))
    mframe = predict_window(model, panel, CFG, splits.holdout, "cpu").frame()
    lad = run_ladder(panel, splits.train, splits.val, splits.holdout, CFG)
    assert set(lad.evaluations) == {"ridge", "reversal_1d", "low_vol_20d"}
    keys = ["Date", "Code", *(f"y_{h}d" for h in CFG.horizons)]
    for name, frame in lad.frames.items():
        assert frame.select(keys).equals(mframe.select(keys)), name
        assert lad.evaluations[name]["n_days"] == len(splits.holdout)
    # factor = minus the feature of that stock-day (from the features frame, independently)
    rev = factor_frame(panel, splits.holdout, "ret_1d", -1.0)
    ref = rev.join(feats.select("Date", "Code", "ret_1d"), on=["Date", "Code"], how="left")
    np.testing.assert_allclose(ref["pred_1d"].to_numpy(),
                               -ref["ret_1d"].fill_null(0.0).to_numpy(), rtol=1e-6, atol=1e-6)
    # the ridge learns the planted "own" signal: clearly positive out of sample
    assert lad.evaluations["ridge"]["rank_ic_1d"] > 0.0
    s = lad.summary()
    assert s["best"] in lad.evaluations and s["ridge_alpha"] in CFG.gate.ridge_alphas


# --------------------------------------------------------------------------- gate rule
def _eval(daily, start=dt.date(2024, 1, 4)) -> dict:
    days = [(start + dt.timedelta(days=i)).isoformat() for i in range(len(daily))]
    return {"rank_ic_1d": float(np.mean(daily)), "sharpe_1d": 1.0, "coverage": 1.0,
            "pred_std_1d": 0.01, "n_days": len(daily),
            "daily": {"date": days, "rank_ic_1d": [float(v) for v in daily]}}


RNG = np.random.default_rng(3)
RIDGE = 0.04 + 0.02 * RNG.standard_normal(60)
LOWVOL = 0.02 + 0.02 * RNG.standard_normal(60)
GCFG = GateConfig(min_rank_ic=0.0, min_sharpe=0.0)


def test_candidate_below_the_ridge_is_rejected_with_the_ladder_in_the_reasons():
    ladder = {"ridge": _eval(RIDGE), "low_vol_20d": _eval(LOWVOL)}
    d = decide(_eval(RIDGE - 0.02), None, GCFG, ladder=ladder)
    assert d.decision == "reject" and d.checks["beats_baselines"] is False
    assert d.best_baseline == "ridge"
    assert any("baseline ridge" in r for r in d.reasons)
    assert any(r.startswith("baseline ladder (mean daily RankIC@1d): ridge") for r in d.reasons)
    assert d.baseline_comparison["mean_shortfall"] == pytest.approx(0.02)
    assert d.baseline_comparison["tolerance"] == GCFG.baseline_margin
    assert set(d.to_dict()["ladder"]) == {"ridge", "low_vol_20d"}
    assert d.fallback is None  # option off by default


def test_candidate_at_or_above_the_ladder_passes_and_rule_can_be_switched_off():
    ladder = {"ridge": _eval(RIDGE), "low_vol_20d": _eval(LOWVOL)}
    ok = decide(_eval(RIDGE + 0.001 * RNG.standard_normal(60)), None, GCFG, ladder=ladder)
    assert ok.decision == "promote" and ok.checks["beats_baselines"] is True
    off = decide(_eval(RIDGE - 0.02), None, GCFG.model_copy(update={"baseline_rule": False}),
                 ladder=ladder)
    assert off.decision == "promote" and "beats_baselines" not in off.checks
    assert off.ladder is not None  # still shown in the record
    # within the margin, not significant: passes (same semantics as the champion rule)
    near = decide(_eval(RIDGE - 0.004 + 0.01 * RNG.standard_normal(60)), None,
                  GCFG.model_copy(update={"baseline_margin": 0.01}), ladder=ladder)
    assert near.baseline_comparison["mean_shortfall"] < 0.01
    assert near.checks["beats_baselines"] is (not near.baseline_comparison["significantly_worse"])


# --------------------------------------------------------------------------- ridge as champion
@pytest.mark.slow
def test_fallback_ridge_published_as_champion_and_scored_through_load_scorer(panel, splits, feats,
                                                                             tmp_path):
    from atft_core.evaluate import evaluate_predictions
    from atft_core.registry import Registry

    lad = run_ladder(panel, splits.train, splits.val, splits.holdout, CFG)
    ridge_eval = lad.evaluations["ridge"]
    weak = dict(ridge_eval, rank_ic_1d=ridge_eval["rank_ic_1d"] - 0.05,
                daily=dict(ridge_eval["daily"], rank_ic_1d=[
                    v - 0.05 for v in ridge_eval["daily"]["rank_ic_1d"]]))
    gcfg = GCFG.model_copy(update={"promote_baseline_if_better": True})
    d = decide(weak, None, gcfg, ladder={"ridge": ridge_eval})
    assert d.decision == "reject" and d.fallback["baseline"] == "ridge"
    assert d.fallback["decision"] == "promote", d.fallback
    # a ridge that another baseline beats is not served either (never worse than the ladder)
    better = dict(ridge_eval, daily=dict(ridge_eval["daily"], rank_ic_1d=[
        v + 0.05 for v in ridge_eval["daily"]["rank_ic_1d"]]))
    d2 = decide(weak, None, gcfg, ladder={"ridge": ridge_eval, "low_vol_20d": better})
    assert d2.fallback["decision"] == "reject"
    assert any("baseline low_vol_20d" in r for r in d2.fallback["reasons"])

    run_dir = write_ridge_run(lad.ridge, CFG, tmp_path / "ridge-run")
    assert run_family(run_dir) == "ridge"
    back = read_ridge(run_dir)
    np.testing.assert_array_equal(back.coef, lad.ridge.coef)
    with pytest.raises(ValueError, match="not empty"):
        write_ridge_run(lad.ridge, CFG, run_dir)
    reg = Registry(f"file://{tmp_path / 'registry'}", cache_dir=tmp_path / "cache")
    reg.publish(run_dir, "ridge-001")
    reg.promote("ridge-001", reason="ridge fallback", actor="test", gate=d.to_dict())
    scorer = load_scorer(reg.load_champion())
    assert scorer.family == "ridge" and scorer.horizons == tuple(CFG.horizons)
    got = scorer(feats, splits.holdout)
    want = lad.frames["ridge"].select(got.columns)
    assert got.sort("Date", "Code").equals(want.sort("Date", "Code"))
    # default: the serving day only
    last = scorer(feats)
    assert last["Date"].unique().to_list() == [panel.dates[-1]] and last.height > 0
    # same numbers as the ladder's evaluation when joined with the realised targets
    ev = evaluate_predictions(got.join(lad.frames["ridge"].select(
        "Date", "Code", *(f"y_{h}d" for h in CFG.horizons)), on=["Date", "Code"]), CFG.horizons)
    assert ev["rank_ic_1d"] == pytest.approx(ridge_eval["rank_ic_1d"])
    with pytest.raises(ValueError, match="lacks the model's feature"):
        scorer(feats.drop("ret_1d"))
    # the pipeline scores a ridge champion on the holdout like any champion
    from atft_core.baselines import evaluate_ridge_run

    again = evaluate_ridge_run(reg.load_champion().path, feats, CFG)
    assert again["rank_ic_1d"] == pytest.approx(ridge_eval["rank_ic_1d"])
    assert again["daily"]["date"] == ridge_eval["daily"]["date"]
    # atft predict serves a ridge champion through the same entry point (signals, ranks)
    from atft_core.serving.predict import predict_day

    quotes = generate_market(CFG.data.synthetic, CFG.horizons).quotes
    day = panel.dates[-1]
    signal = predict_day(reg, day, quotes)
    served = signal.frame.sort("Code")
    direct = scorer(feats, [day]).sort("Code")
    assert served["Code"].to_list() == direct["Code"].cast(pl.String).to_list()
    for h in CFG.horizons:
        np.testing.assert_allclose(served[f"pred_{h}d"].to_numpy(), direct[f"pred_{h}d"].to_numpy(),
                                   rtol=1e-6, atol=1e-9)
        assert sorted(served[f"rank_{h}d"].to_list()) == list(range(1, served.height + 1))


@pytest.mark.slow
def test_candidate_ladder_uses_the_trainers_windows_and_writes_a_publishable_ridge(feats, panel,
                                                                                   splits, tmp_path):
    from atft_core.baselines import candidate_ladder
    from atft_core.registry import Registry
    from atft_core.train.api import window_dates

    out = candidate_ladder(feats, CFG, ridge_dir=tmp_path / "ridge")
    hold = window_dates(panel, CFG, "holdout")  # what evaluate_run_dir scores the candidate on
    assert out["evaluations"]["ridge"]["daily"]["date"] == [d.isoformat() for d in hold]
    assert out["window"]["train"] == [str(splits.train[0]), str(splits.train[-1])]
    ref = fit_ridge(panel, splits.train, splits.val, CFG.gate.ridge_alphas)
    np.testing.assert_array_equal(read_ridge(tmp_path / "ridge").coef, ref.coef)
    reg = Registry(f"file://{tmp_path / 'reg'}", cache_dir=tmp_path / "cache")
    res = reg.publish(tmp_path / "ridge", "r1")  # runcheck accepts the ridge run dir
    assert {f.name for f in res.manifest.files} == {"config.yaml", "metrics.json", "model.safetensors"}


@pytest.mark.slow
def test_load_scorer_atft_family_equals_predict_window(panel, splits, feats, tmp_path):
    """The same entry point serves the deep model: family "atft" (no family field = atft)."""
    from atft_core.atomic import atomic_write_text
    from atft_core.train.api import build_model, predict_window
    from atft_core.train.checkpoint import save_weights
    from atft_core.train.phases import blocks_dict

    torch.manual_seed(0)
    model = build_model(CFG, len(panel.feature_names)).eval()
    blocks = CFG.train.phases[1].blocks
    model.set_blocks(blocks)
    run = tmp_path / "atft-run"
    run.mkdir()
    atomic_write_text(run / "config.yaml", CFG.to_yaml())
    save_weights(run / "model.safetensors", model.state_dict(),
                 {"config_sha256": CFG.sha256(), "epoch": 0, "value": 0.0,
                  "blocks": blocks_dict(blocks)})
    assert run_family(run) == "atft"
    scorer = load_scorer(run)
    assert scorer.family == "atft" and scorer.horizons == tuple(CFG.horizons)
    got = scorer(feats, splits.holdout[:3])
    want = predict_window(model, panel, CFG, splits.holdout[:3], "cpu").frame()
    assert got.columns == ["Date", "Code", *(f"pred_{h}d" for h in CFG.horizons)]
    assert got.equals(want.select(got.columns))
    with pytest.raises(ValueError, match="not in the features frame"):
        scorer(feats, [dt.date(1999, 1, 4)])


@pytest.mark.slow
def test_nightly_pipeline_rejects_a_weak_candidate_and_serves_the_ridge(tmp_path, monkeypatch):
    """The DAG's task functions in order: an (lr 1e-7, untrained) candidate loses to the ladder,
    the decision shows the ladder, the ridge passes the same gate, is published and becomes
    champion, and load_scorer serves it."""
    from atft_core import pipeline
    from atft_core.registry import Registry

    for k in ("ATFT_REGISTRY", "ATFT_PUSHGATEWAY_URL", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)
    ctx = {"dag_id": "atft_retrain", "run_id": "manual__2024-05-07T12:00:00+00:00",
           "as_of": "2024-05-07", "conf": None,
           "params": {"config": "test", "lr": 1e-7, "min_rank_ic": 0.0, "min_sharpe": -100.0,
                      "overrides": ["gate.baseline_rule=true", "gate.promote_baseline_if_better=true",
                                    "train.max_train_batches_per_epoch=1", "train.phases.2.epochs=0",
                                    "train.phases.3.epochs=0"]}}
    fresh = pipeline.check_fresh_data(ctx)
    validated = pipeline.validate_data(ctx, fresh)
    feats = pipeline.build_features(ctx, validated)
    trained = pipeline.train_candidate(ctx, feats)
    evaluation = pipeline.evaluate_holdout(ctx, trained)
    full = json.loads(Path(evaluation["evaluation_path"]).read_text())
    assert set(full["ladder"]) == {"ridge", "reversal_1d", "low_vol_20d"}
    decision = pipeline.gate(ctx, evaluation)
    assert decision["decision"] == "reject" and decision["publish"] == "ridge", decision
    record = json.loads(Path(decision["decision_path"]).read_text())
    assert record["checks"]["beats_baselines"] is False and record["fallback"]["decision"] == "promote"
    assert any(r.startswith("baseline ladder (mean daily RankIC@1d)") for r in record["reasons"])
    published = pipeline.publish(ctx, trained, decision)
    assert published["run_id"] == f"{trained['run_id']}-ridge"
    reg = Registry("file://var/registry", cache_dir=tmp_path / "cache")
    assert reg.get_alias("champion").run_id == published["run_id"]
    # the run summary names the ridge as the champion now (it named the previous one)
    summary = pipeline.retrain_summary(trained, evaluation, decision, published)
    assert summary["decision"] == "reject" and summary["champion_run_id"] == published["run_id"]
    scorer = load_scorer(reg.load_champion())
    assert scorer.family == "ridge"
    frame = pl.read_parquet(Path(evaluation["evaluation_path"]).parent / "features.parquet")
    assert scorer(frame).height > 0
