"""atft replay: the nightly policy on history (issue 11 item 5) and its pieces.

Fast tests check the regime-change market's exact oracle, the live rolling mean, the factor
baselines and the serving assignment against slow obvious references, and the input refusals.
The slow test replays a synthetic market whose signal flips halfway: the policy recovers, "never
retrain" decays, and promtool fires the live-RankIC alert on the replay's own series.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from bin_helpers import require_binary

from atft_core.cli import main
from atft_core.config import ConfigError, SyntheticConfig, load_config
from atft_core.data.store import write_store
from atft_core.data.synthetic import generate_market
from atft_core.evaluate import evaluate_predictions
from atft_core.replay import ReplayError, run_replay
from atft_core.replay.alerts import find_rule, promtool_test_doc, write_promtool_test
from atft_core.replay.engine import DEEP_POLICIES, POLICIES, champion_by_day, retrain_days
from atft_core.replay.factors import factor_signals
from atft_core.replay.scoring import live_rolling_mean

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "include" / "prometheus" / "rules" / "atft_alerts.yml"
LIVE_ALERT = "ATFTLiveRankICLow"

# the replay test market: 100 stocks x 300 days, a strong 'own' signal that flips sign at day 150
MARKET = ["data.synthetic.n_stocks=100", "data.synthetic.n_days=300",
          "data.synthetic.regime_change_at=0.5", "data.synthetic.signal_strength=0.2",
          "data.synthetic.seed=5"]
TINY = ["features.horizons=[1,5]", "loss.horizon_weights={1: 1.0, 5: 0.8}",
        "split.train_days=40", "split.val_days=10", "split.holdout_days=10", "split.embargo_days=1",
        "dataset.lookback=10", "graph.corr_window=10",
        "train.phases=[{name: baseline, epochs: 2, blocks: {gat: false, fan: false}, weights: {mse: 1.0}}]"]
FIRST_SERVED, EVERY, CHANGE = 100, 40, 150


# --------------------------------------------------------------------------- regime change
def test_regime_change_flips_the_planted_signal_and_keeps_the_oracle_exact():
    base = SyntheticConfig(n_stocks=60, n_days=200, seed=2)
    a = generate_market(base, (1, 5, 20))
    b = generate_market(base.model_copy(update={"regime_change_at": 0.5}), (1, 5, 20))
    days = a.oracle["Date"].unique().sort().to_list()
    change = days[100]
    d = a.oracle["Date"]
    # before the change the two markets are the same market (bytes of the quotes)
    assert a.quotes.filter(pl.col("Date") < change).equals(b.quotes.filter(pl.col("Date") < change))
    assert not a.quotes.equals(b.quotes)
    for h in (1, 5, 20):
        oa, ob = a.oracle[f"oracle_{h}d"].to_numpy(), b.oracle[f"oracle_{h}d"].to_numpy()
        # the label window of t (days t+2..t+1+h) lies wholly before / after the change
        before = (d < days[100 - h - 1]).to_numpy()
        after = (d >= change).to_numpy()
        np.testing.assert_allclose(ob[before], oa[before], rtol=0, atol=1e-15)
        np.testing.assert_allclose(ob[after], -oa[after], rtol=0, atol=1e-15)
        # straddling days mix both gains: neither equal nor opposite
        mid = ((d >= days[100 - h - 1]) & (d < change)).to_numpy()
        if h > 1:
            assert np.nanmax(np.abs(ob[mid] - oa[mid])) > 0 and np.nanmax(np.abs(ob[mid] + oa[mid])) > 0
        assert b.oracle_rank_ic[h] > 0.1  # the oracle still predicts the realised labels


def test_regime_change_at_is_validated():
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match="regime_change_at"):
            load_config("test", [f"data.synthetic.regime_change_at={bad}"])


# --------------------------------------------------------------------------- pieces
def _live_reference(values, h, window):
    out = []
    for t in range(len(values)):
        known = [values[s] for s in range(len(values)) if s + 1 + h <= t and math.isfinite(values[s])]
        out.append(sum(known[-window:]) / len(known[-window:]) if known else math.nan)
    return np.array(out)


def test_live_rolling_mean_is_what_a_monitor_knew_that_day():
    rng = np.random.default_rng(0)
    v = rng.normal(size=90)
    v[[3, 17, 40, 41]] = np.nan
    for h, w in ((1, 20), (5, 20), (5, 60), (20, 7)):
        got = live_rolling_mean(v, h, w)
        np.testing.assert_allclose(got, _live_reference(v, h, w), rtol=1e-12, equal_nan=True)
    # nothing is known before the first label matures (day 0's 1d label at the close of day 2)
    assert np.isnan(live_rolling_mean(v, 1, 20)[:2]).all() and np.isfinite(live_rolling_mean(v, 1, 20)[2])


def test_factor_signals_against_numpy():
    rng = np.random.default_rng(1)
    dates = [dt.date(2020, 1, 1) + dt.timedelta(days=i) for i in range(40)]
    rows = []
    for code in ("1301", "7203"):
        for i, d in enumerate(dates):
            if code == "7203" and i in (5, 6):
                continue  # a gap: the stock has no row those days
            rows.append({"Date": d, "Code": code, "ret_1d_raw": float(rng.normal(0, 0.02))})
    feats = pl.DataFrame(rows, schema={"Date": pl.Date, "Code": pl.String, "ret_1d_raw": pl.Float32})
    got = factor_signals(feats).sort("Code", "Date")
    for code in ("1301", "7203"):
        r = feats.filter(pl.col("Code") == code)["ret_1d_raw"].cast(pl.Float64).to_numpy()
        g = got.filter(pl.col("Code") == code)
        np.testing.assert_allclose(g["reversal_1d"].to_numpy(), -r)
        ref = [(-np.std(r[max(0, i - 19): i + 1], ddof=1) if i + 1 >= 10 else np.nan) for i in range(len(r))]
        np.testing.assert_allclose(g["low_vol_20d"].cast(pl.Float64).fill_null(np.nan).to_numpy(), ref,
                                   rtol=1e-9, equal_nan=True)


def test_champion_by_day_serves_the_champion_after_each_gate():
    serving = [str(dt.date(2020, 3, 1) + dt.timedelta(days=i)) for i in range(7)]
    state = {"serving_days": serving, "retrains": [
        {"day": serving[0], "champion_after": {"policy": "A", "never_retrain": "A", "always_promote": "A"}},
        {"day": serving[3], "champion_after": {"policy": "A", "never_retrain": "A", "always_promote": "B"}},
        {"day": serving[5], "champion_after": {"policy": "C", "never_retrain": "A", "always_promote": "C"}},
    ]}
    got = {p: "".join(champion_by_day(state, p)[dt.date.fromisoformat(d)] for d in serving)
           for p in DEEP_POLICIES}
    assert got == {"policy": "AAAAACC", "never_retrain": "AAAAAAA", "always_promote": "AAABBCC"}
    assert retrain_days(list(range(10)), 4) == [0, 4, 8]


@pytest.fixture(scope="module")
def market_dir(tmp_path_factory):
    cfg = load_config("test", MARKET + TINY)
    m = generate_market(cfg.data.synthetic, cfg.horizons)
    root = tmp_path_factory.mktemp("replay-market")
    write_store(m.quotes, root / "quotes")
    days = m.quotes["Date"].unique().sort().to_list()
    return root / "quotes", days, m


def test_input_errors_are_one_line_and_touch_nothing(market_dir, tmp_path, capsys):
    quotes, days, _ = market_dir
    base = ["replay", "--config", "test", "--data", str(quotes), "--every", "5"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    cases = [
        (["--start", "2019-13-01", "--end", "2020-01-01", "--out", str(tmp_path / "a")], "not an ISO date"),
        (["--start", str(days[-1]), "--end", str(days[0]), "--out", str(tmp_path / "b")], "is after --end"),
        (["--start", "1990-01-01", "--end", "1990-02-01", "--out", str(tmp_path / "c")], "no trading day"),
        (["--start", str(days[5]), "--end", str(days[9]), "--out", str(foreign)], "did not write"),
        (["--start", str(days[5]), "--end", str(days[9]), "--out", str(tmp_path / "d")], "not enough trading days for the splits"),
    ]
    for extra, needle in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("atft replay: ") and needle in err[0], err
    assert main(base[:-1] + ["0", "--start", str(days[5]), "--end", str(days[9]), "--out",
                             str(tmp_path / "e")]) == 2
    assert "--every must be >= 1" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert not any((tmp_path / n).exists() for n in "abcde")


# --------------------------------------------------------------------------- the replay (slow)
@pytest.fixture(scope="module")
def replay(market_dir, tmp_path_factory):
    quotes, days, _ = market_dir
    cfg = load_config("test", MARKET + TINY)
    out = tmp_path_factory.mktemp("replay") / "out"
    res = run_replay(cfg, quotes, days[FIRST_SERVED], days[-1], EVERY, out, progress=False)
    return cfg, res, days


def _mean_rank_ic(res, policy, lo, hi, h=1):
    d = res.daily.filter((pl.col("policy") == policy) & pl.col("Date").is_between(lo, hi))
    return float(d[f"rank_ic_{h}d"].drop_nulls().mean())


@pytest.mark.slow
def test_policy_recovers_after_the_regime_change_while_never_retrain_decays(replay):
    cfg, res, days = replay
    state = res.state
    assert [r["day"] for r in state["retrains"]] == [str(d) for d in days[FIRST_SERVED::EVERY]]
    # one training per retrain day, shared by the policy and always-promote
    runs = sorted(p.name for p in (res.out_dir / "runs").iterdir())
    assert runs == sorted(r["run_id"] for r in state["retrains"])
    # before the change the policy serves the first model, which earns the old regime
    before = (days[FIRST_SERVED], days[CHANGE - 1])
    for p in ("policy", "never_retrain"):
        assert _mean_rank_ic(res, p, *before, h=1) > 0 and _mean_rank_ic(res, p, *before, h=5) > 0, p
    # the last 60 days: the first model bets the wrong way, the policy's champion the right way
    # (measured: never retrain -0.17 / -0.30, policy 0.18 / 0.32 at 1d / 5d; oracle 0.28 / 0.45)
    late = (days[-60], days[-1])
    never_late = [_mean_rank_ic(res, "never_retrain", *late, h=h) for h in (1, 5)]
    policy_late = [_mean_rank_ic(res, "policy", *late, h=h) for h in (1, 5)]
    assert never_late[0] < -0.1 and never_late[1] < -0.15, never_late
    assert policy_late[0] > 0.1 and policy_late[1] > 0.15, policy_late
    assert res.summary["policy"]["cum_ls_return_1d"] > res.summary["never_retrain"]["cum_ls_return_1d"]
    promoted_after = [r for r in state["retrains"][1:]
                      if r["gate"]["decision"] == "promote" and r["day"] > str(days[CHANGE])]
    assert promoted_after, [(r["day"], r["gate"]["reasons"]) for r in state["retrains"]]
    # a rejected candidate stays out of the policy's serving, always-promote serves it
    for r in state["retrains"][1:]:
        assert (r["champion_after"]["policy"] == r["run_id"]) == (r["gate"]["decision"] == "promote")
        assert r["champion_after"]["always_promote"] == r["run_id"]
        assert r["champion_after"]["never_retrain"] == state["retrains"][0]["run_id"]
    # every policy is scored on the same rows, and the summary is the evaluation module's
    keys = res.served["policy"].select("Date", "Code")
    assert set(res.served) == set(POLICIES)
    for p, frame in res.served.items():
        assert frame.select("Date", "Code").equals(keys), p
        ev = evaluate_predictions(frame, cfg.horizons)
        assert res.summary[p]["rank_ic_1d"] == ev["rank_ic_1d"] and res.summary[p]["sharpe_1d"] == ev["sharpe_1d"]
    assert keys["Date"].unique().sort().to_list() == days[FIRST_SERVED:]
    # the report
    md = (res.out_dir / "report.md").read_text()
    assert "never retrain" in md and "20-day low volatility" in md and "bootstrap" in md
    assert (res.out_dir / "replay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((res.out_dir / "summary.json").read_text())["policy"]["retrains"] == len(state["retrains"])


def _rules_with_live_alert(tmp_path: Path) -> Path:
    """The repository's rules when they have the live-RankIC alert (serve branch), else a copy of
    that rule (same expression, duration, labels, annotations) until it lands on main."""
    try:
        find_rule(RULES, LIVE_ALERT)
        return RULES
    except KeyError:
        rule = {"alert": LIVE_ALERT,
                "expr": 'atft_live_rank_ic{role="champion",horizon="1d",window="20d"} < 0',
                "for": "3d", "labels": {"severity": "warning"},
                "annotations": {"summary": "Live 20-day RankIC@1d of the champion's signal is "
                                           "{{ $value }} (< 0) for 3 days"}}
        path = tmp_path / "live_rules.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "atft-live", "rules": [rule]}]}))
        return path


def _promtool(doc: dict, tmp_path: Path, name: str) -> subprocess.CompletedProcess:
    exe = require_binary("promtool")
    test = write_promtool_test(tmp_path / name, doc)
    return subprocess.run([exe, "test", "rules", str(test)], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_live_rank_ic_alert_fires_on_the_replays_decay(replay, tmp_path):
    _, res, days = replay
    rules = _rules_with_live_alert(tmp_path)
    labels = {"job": "atft", "dag_id": "atft_score", "task_id": "monitor", "role": "champion",
              "horizon": "1d", "window": "20d"}

    def series(policy):
        s = res.live.filter((pl.col("policy") == policy) & (pl.col("horizon") == "1d")
                            & (pl.col("window") == "20d")).sort("Date")
        return s["value"].to_list()

    never, policy = series("never_retrain"), series("policy")
    serving = days[FIRST_SERVED:]
    change = serving.index(days[CHANGE])
    # where to look: the first day never-retrain's live mean has been < 0 for 4 days in a row
    # (promtool decides whether the rule fires there, on the replay's own series)
    neg = [v is not None and v < 0 for v in never]
    decay = next(i for i in range(change, len(neg)) if all(neg[i - 3: i + 1]))
    before = change - 1
    assert never[before] is not None and never[before] > 0
    doc = promtool_test_doc(rules, LIVE_ALERT, "atft_live_rank_ic", labels, never,
                            [(before, False), (decay, True), (len(never) - 1, True)])
    r = _promtool(doc, tmp_path, "never.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    # the same rule is quiet at the end on the policy's series (it recovered) ...
    assert policy[-1] is not None and policy[-1] > 0
    doc = promtool_test_doc(rules, LIVE_ALERT, "atft_live_rank_ic", labels, policy,
                            [(before, False), (len(policy) - 1, False)])
    r = _promtool(doc, tmp_path, "policy.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    # ... and the check can fail: claiming the end of never-retrain's decay is quiet is refused
    doc = promtool_test_doc(rules, LIVE_ALERT, "atft_live_rank_ic", labels, never,
                            [(len(never) - 1, False)])
    r = _promtool(doc, tmp_path, "wrong.yml")
    assert r.returncode != 0 and LIVE_ALERT in r.stdout + r.stderr


@pytest.mark.slow
def test_a_resumed_replay_skips_finished_retrains_and_gives_the_same_result(replay, market_dir, tmp_path):
    cfg, res, days = replay
    quotes = market_dir[0]
    out = tmp_path / "out"
    shutil.copytree(res.out_dir, out)
    # as if killed during the last retrain: its record is not in the state, its run dir is gone,
    # the served predictions were never written
    state = json.loads((out / "replay_state.json").read_text())
    last = state["retrains"].pop()
    (out / "replay_state.json").write_text(json.dumps(state))
    shutil.rmtree(out / last["run_dir"])
    shutil.rmtree(out / "serve")
    kept = {r["run_id"]: (out / r["run_dir"] / "model.safetensors").stat().st_mtime_ns
            for r in state["retrains"]}
    again = run_replay(cfg, quotes, days[FIRST_SERVED], days[-1], EVERY, out, progress=False)
    assert {r["run_id"]: (out / r["run_dir"] / "model.safetensors").stat().st_mtime_ns
            for r in again.state["retrains"][:-1]} == kept  # finished retrains were skipped
    def decisions(s):  # everything but the timings
        return [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds")}
                for r in s["retrains"]]

    assert decisions(again.state) == decisions(res.state)
    assert again.daily.equals(res.daily)
    # other inputs into the same --out are refused
    with pytest.raises(ReplayError, match="other inputs"):
        run_replay(cfg, quotes, days[FIRST_SERVED], days[-1], EVERY + 1, out, progress=False)


def test_a_retrain_sees_only_matured_labels_and_serving_features_are_point_in_time(market_dir):
    """The retrain of day D builds features from the quotes up to D (as the nightly): a label
    y_h(t) is there only when t+1+h <= D; the serving frame (all quotes) has the same features."""
    from atft_core.features import FEATURE_COLUMNS, build_features

    quotes_dir, days, m = market_dir
    cfg = load_config("test", MARKET + TINY)
    d_idx = 150
    cut = build_features(m.quotes.filter(pl.col("Date") <= days[d_idx]), cfg)
    full = build_features(m.quotes, cfg)
    pos = {d: i for i, d in enumerate(days)}
    t = cut["Date"].map_elements(pos.get, return_dtype=pl.Int64)
    for h in cfg.horizons:
        known = cut[f"y_{h}d"].is_not_null()
        assert (t.filter(known) + 1 + h <= d_idx).all()  # nothing from after D
        assert known.filter(t + 1 + h <= d_idx - 5).mean() > 0.95  # matured labels are there
    same = full.filter(pl.col("Date") <= days[d_idx]).select("Date", "Code", *FEATURE_COLUMNS)
    assert same.equals(cut.select("Date", "Code", *FEATURE_COLUMNS))
