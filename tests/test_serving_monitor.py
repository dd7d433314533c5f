"""Live metrics (atft_core.serving.monitor): oracle signals on a synthetic market score exactly
what atft_core.evaluate reports on the same days; rolling stats against numpy; the monitor end to
end on a file:// registry with the gauges in the textfile."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from atft_core.config import apply_overrides, load_config


@pytest.fixture(scope="module")
def market():
    from atft_core.data.synthetic import generate_market
    from atft_core.features import build_features

    cfg = apply_overrides(load_config("test"), ["data.synthetic.n_days=120"])
    m = generate_market(cfg.data.synthetic, tuple(cfg.horizons))
    feats = build_features(m.quotes, cfg)
    H = tuple(cfg.horizons)
    signals = m.oracle.select("Date", "Code", *[pl.col(f"oracle_{h}d").alias(f"pred_{h}d") for h in H])
    labels = feats.select("Date", "Code", *[f"y_{h}d" for h in H])
    return cfg, m, signals, labels


def test_live_rank_ic_of_oracle_equals_evaluate_exactly(market):
    from atft_core.evaluate import evaluate_predictions
    from atft_core.serving.monitor import live_metrics

    cfg, _m, signals, labels = market
    H = tuple(cfg.horizons)
    days = signals.get_column("Date").unique().sort()[40:90]  # a stretch of "served" days
    sig = signals.filter(pl.col("Date").is_in(days.implode()))
    live = live_metrics(sig, labels, H)
    frame = sig.join(labels, on=["Date", "Code"], how="inner")
    ev = evaluate_predictions(frame, H)
    d1 = live.filter(pl.col("horizon") == 1).sort("Date")
    ev_days = [dt.date.fromisoformat(s) for s in ev["daily"]["date"]]
    ev_ric = [x for x in ev["daily"]["rank_ic_1d"]]
    keep = [i for i, x in enumerate(ev_ric) if x is not None]
    assert d1.get_column("Date").to_list() == [ev_days[i] for i in keep]
    assert d1.get_column("rank_ic").to_list() == [ev_ric[i] for i in keep]  # exact, day by day
    assert d1.height == 50 and d1["rank_ic"].mean() > 0.05  # the oracle does predict
    for h in H:
        r = live.filter(pl.col("horizon") == h)["rank_ic"].to_numpy()
        assert float(np.mean(r)) == pytest.approx(ev[f"rank_ic_{h}d"], rel=1e-12)
        hits = live.filter(pl.col("horizon") == h).select(pl.col("hits").sum() / pl.col("hit_n").sum()).item()
        assert hits == pytest.approx(ev[f"hit_rate_{h}d"], rel=1e-12)


def test_labels_not_yet_known_are_left_out(market):
    from atft_core.serving.monitor import live_metrics

    cfg, _m, signals, labels = market
    last = signals.get_column("Date").max()
    live = live_metrics(signals.filter(pl.col("Date") == last), labels, tuple(cfg.horizons))
    assert live.height == 0  # y_h(last) needs Close(last+1+h): not in the data


def test_rolling_matches_numpy(market):
    from atft_core.serving.monitor import live_metrics, rolling

    cfg, _m, signals, labels = market
    live = live_metrics(signals, labels, (1,)).with_columns(pl.lit("champion").alias("role"))
    rows = {r["window"]: r for r in rolling(live, (20, 60))}
    r = live.sort("Date")["rank_ic"].to_numpy()
    ls = live.sort("Date")["ls_return"].to_numpy()
    for w in (20, 60):
        assert rows[f"{w}d"]["rank_ic"] == pytest.approx(r[-w:].mean(), rel=1e-12)
        assert rows[f"{w}d"]["icir"] == pytest.approx(r[-w:].mean() / r[-w:].std(ddof=1), rel=1e-12)
        assert rows[f"{w}d"]["days"] == w
    assert rows["1d"]["rank_ic"] == r[-1]
    assert rows["cum"]["ls_cum"] == pytest.approx(ls.sum(), rel=1e-12)


def test_monitor_end_to_end_file_registry(market, tmp_path):
    from atft_core.observability import MetricsPusher
    from atft_core.registry import Registry
    from atft_core.serving.monitor import monitor
    from atft_core.serving.predict import DaySignal, rank_frame
    from atft_core.serving.signals import publish_signal

    cfg, m, signals, labels = market
    cfg = apply_overrides(cfg, [f"metrics.textfile_dir={tmp_path / 'prom'}", "metrics.pushgateway_url=null"])
    H = tuple(cfg.horizons)
    reg = Registry(f"file://{tmp_path / 'registry'}")
    days = signals.get_column("Date").unique().sort()[60:100].to_list()
    for d in days:
        f = rank_frame(signals.filter(pl.col("Date") == d), H)
        publish_signal(reg, DaySignal(day=d, run_id="oracle", horizons=H, frame=f, data_fingerprint="x"))
        shadow = f.with_columns([pl.col(f"pred_{h}d") * -1 for h in H])  # anti-oracle
        publish_signal(reg, DaySignal(day=d, run_id="anti", horizons=H, frame=rank_frame(shadow, H),
                                      data_fingerprint="x"), role="shadow")
    as_of = signals.get_column("Date").max()
    pusher = MetricsPusher(cfg.metrics, dag_id="atft_score", task_id="monitor")
    out = monitor(reg, m.quotes, as_of, cfg, tmp_path / "hist.parquet", pusher=pusher)
    hist = pl.read_parquet(tmp_path / "hist.parquet")
    assert set(hist["role"].unique()) == {"champion", "shadow"} and out["rows"] == hist.height
    s = {(r["role"], r["horizon"], r["window"]): r for r in out["summary"]}
    assert s[("champion", 1, "20d")]["rank_ic"] > 0.05 > -0.05 > s[("shadow", 1, "20d")]["rank_ic"]
    assert s[("champion", 1, "20d")]["rank_ic"] == pytest.approx(-s[("shadow", 1, "20d")]["rank_ic"])
    text = "".join(p.read_text() for p in (tmp_path / "prom").glob("*.prom"))
    assert 'atft_live_rank_ic{dag_id="atft_score",horizon="1d",role="champion",task_id="monitor",window="20d"}' in text
    assert "atft_live_signal_age_sessions" in text


def test_monitor_cli(market, tmp_path, capsys):
    import json

    from atft_core.cli import main
    from atft_core.data.store import write_store
    from atft_core.registry import Registry
    from atft_core.serving.predict import DaySignal, rank_frame
    from atft_core.serving.signals import publish_signal

    cfg, m, signals, _labels = market
    H = tuple(cfg.horizons)
    write_store(m.quotes, tmp_path / "store")
    reg = Registry(f"file://{tmp_path / 'registry'}")
    days = signals.get_column("Date").unique().sort()[70:80].to_list()
    for d in days:
        f = rank_frame(signals.filter(pl.col("Date") == d), H)
        publish_signal(reg, DaySignal(day=d, run_id="oracle", horizons=H, frame=f, data_fingerprint="x"))
    as_of = str(signals.get_column("Date").max())
    hist = tmp_path / "h.parquet"
    rc = main(["monitor", "--config", "test", "--uri", reg.uri, "--data", str(tmp_path / "store"),
               "--as-of", as_of, "--history", str(hist), "--no-push"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["rows"] == pl.read_parquet(hist).height == 10 * len(H)
    assert out["latest_signal"]["champion"] == str(days[-1]) and out["latest_signal"]["shadow"] is None
    rc = main(["monitor", "--uri", reg.uri, "--data", str(tmp_path / "nope"), "--as-of", as_of])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("atft monitor: --data") and err.count("\n") == 1


def test_demo_prints_signal_locations_and_live_metrics(market, tmp_path, monkeypatch, capsys):
    """`atft demo`'s closing lines: where day D's signals are, then live metrics once labels exist."""
    from atft_core.commands.demo import _print_signal
    from atft_core.registry import Registry
    from atft_core.serving.monitor import monitor
    from atft_core.serving.predict import DaySignal, rank_frame
    from atft_core.serving.signals import publish_signal

    cfg, m, signals, _labels = market
    H = tuple(cfg.horizons)
    cfg = apply_overrides(cfg, [f"work_root={tmp_path / 'work'}"])
    reg = Registry(f"file://{tmp_path / 'registry'}")
    monkeypatch.setenv("ATFT_REGISTRY", reg.uri)
    days = signals.get_column("Date").unique().sort().to_list()
    d = days[-1]
    for day in (days[-1], days[-30]):
        f = rank_frame(signals.filter(pl.col("Date") == day), H)
        publish_signal(reg, DaySignal(day=day, run_id="r1", horizons=H, frame=f, data_fingerprint="x"))
    _print_signal(cfg, str(d))
    out = capsys.readouterr().out
    assert f"champion signal of {d}: {reg.uri}/signals/{d}/r1.parquet" in out
    assert f"shadow signal of {d}: none" in out and "live metrics: no history yet" in out
    monitor(reg, m.quotes, d, cfg, tmp_path / "work" / "atft_score" / "live_history.parquet")
    _print_signal(cfg, str(d))
    out = capsys.readouterr().out
    assert "live champion 1d 20d: RankIC=" in out and "over 1 days" in out
