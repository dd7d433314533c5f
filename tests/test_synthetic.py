"""Synthetic market: determinism, realism invariants, and the planted signal's exact oracle."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy.stats import spearmanr

from atft_core.calendar import trading_days_from
from atft_core.cli import main
from atft_core.config import SyntheticConfig
from atft_core.data.schema import CANONICAL_SCHEMA, check_schema
from atft_core.data.store import read_quotes
from atft_core.data.synthetic import (
    SECTOR33_CODES,
    _causal_filter,
    _spearman_daily,
    generate_market,
    load_oracle,
    oracle_kernel,
    signal_kernel,
)

HORIZONS = (1, 5, 10, 20)


@pytest.fixture(scope="module")
def own():
    return generate_market(SyntheticConfig(), HORIZONS)  # defaults: 300 x 500, signal own


@pytest.fixture(scope="module")
def neighbour():
    return generate_market(SyntheticConfig(signal="neighbour"), HORIZONS)


# --------------------------------------------------------------------------- math pieces
@pytest.mark.parametrize("kind", ["own", "neighbour"])
@pytest.mark.parametrize("h", HORIZONS)
def test_oracle_kernel_matches_definition(kind, h):
    """oracle_h(t) = sum_{s=t+2}^{t+1+h} (part of mu[s] from drivers realised by t), slow loop."""
    rng = np.random.default_rng(1)
    k = signal_kernel(kind)
    assert k[0] == k[1] == 0.0 and np.isclose((k**2).sum(), 1.0)
    t_len, n = 60, 3
    d = rng.standard_normal((t_len, n))
    fast = _causal_filter(d, oracle_kernel(k, h))
    slow = np.zeros((t_len, n))
    for t in range(t_len):
        for s in range(t + 2, t + 2 + h):
            for lag in range(2, len(k)):
                if s - lag <= t and s - lag >= 0:
                    slow[t] += k[lag] * d[s - lag]
    np.testing.assert_allclose(fast, slow, atol=1e-12)


def test_spearman_daily_matches_scipy():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((7, 40))
    b = a * 0.3 + rng.standard_normal((7, 40))
    a[rng.random(a.shape) < 0.2] = np.nan
    b[rng.random(b.shape) < 0.1] = np.nan
    b[3, :35] = np.nan  # fewer than 10 valid pairs: day skipped
    a[1, :12] = 0.0  # ties (stocks without peers have a zero oracle): average ranks
    b[5] = np.round(b[5])
    ref = []
    for i in range(7):
        ok = np.isfinite(a[i]) & np.isfinite(b[i])
        if ok.sum() >= 10:
            ref.append(spearmanr(a[i, ok], b[i, ok]).statistic)
    assert len(ref) == 6
    assert _spearman_daily(a, b) == pytest.approx(np.mean(ref), abs=1e-12)


# --------------------------------------------------------------------------- panel invariants
def test_seeded_determinism():
    cfg = SyntheticConfig(n_stocks=40, n_days=80, n_clusters=5, n_sectors=4, seed=11)
    a, b = generate_market(cfg), generate_market(cfg)
    assert a.quotes.equals(b.quotes) and a.oracle.equals(b.oracle)
    assert a.oracle_rank_ic == b.oracle_rank_ic and a.cluster == b.cluster
    c = generate_market(cfg.model_copy(update={"seed": 12}))
    assert not np.allclose(c.quotes["Close"].head(40).to_numpy(), a.quotes["Close"].head(40).to_numpy())


def test_schema_keys_codes_sectors_clusters(own):
    q = own.quotes
    check_schema(q.schema)
    assert q.schema == pl.Schema(CANONICAL_SCHEMA)
    assert q.null_count().sum_horizontal().item() == 0
    assert q.select(pl.struct("Date", "Code").is_unique().all()).item()
    assert q.equals(q.sort("Date", "Code"))
    codes = q["Code"].unique()
    assert codes.len() == 300 and codes.str.contains(r"^\d{4}$").all()
    assert set(q["Sector33Code"].unique()) <= set(SECTOR33_CODES)
    assert q["Sector33Code"].n_unique() == 10
    assert (q.group_by("Code").agg(pl.col("Sector33Code").n_unique())["Sector33Code"] == 1).all()
    assert set(own.cluster) == set(codes) and len(set(own.cluster.values())) == 30
    # hidden clusters are not sectors: clusters span several sectors
    sec = dict(q.select("Code", "Sector33Code").unique().iter_rows())
    spans = [len({sec[c] for c, k in own.cluster.items() if k == cl}) for cl in range(30)]
    assert np.median(spans) >= 3
    assert own.oracle.select("Date", "Code").equals(q.select("Date", "Code"))
    assert own.oracle.columns == ["Date", "Code", *(f"oracle_{h}d" for h in HORIZONS)]


def test_ohlc_volume_turnover_consistent(own):
    q = own.quotes
    assert q.select((pl.col("Low") <= pl.min_horizontal("Open", "Close")).all()).item()
    assert q.select((pl.col("High") >= pl.max_horizontal("Open", "Close")).all()).item()
    assert q.select((pl.col("Low") > 0).all()).item()
    assert q.select(((pl.col("Volume") > 0) & (pl.col("Volume") % 100 == 0)).all()).item()
    assert q.select((pl.col("TurnoverValue") >= pl.col("Low") * pl.col("Volume") * (1 - 1e-12)).all()).item()
    assert q.select((pl.col("TurnoverValue") <= pl.col("High") * pl.col("Volume") * (1 + 1e-12)).all()).item()
    r = q.sort("Code", "Date").with_columns(
        (pl.col("Close") / pl.col("Close").shift().over("Code") - 1).alias("r"),
        (pl.col("Volume").log() - pl.col("Volume").log().mean().over("Code")).alias("lv"))
    assert r["r"].abs().max() < 0.5  # below the validator's bad-tick threshold
    kurt = r.select(pl.col("r").kurtosis()).item()
    assert kurt > 1.0  # fat tails (Fisher excess kurtosis; a normal has 0)
    assert r.select(pl.corr(pl.col("r").abs(), "lv")).item() > 0.1  # volume rises with |return|
    # volatility clustering: |r| is autocorrelated within stocks
    ac = r.with_columns(pl.col("r").abs().shift().over("Code").alias("prev")).select(
        pl.corr(pl.col("r").abs(), "prev")).item()
    assert ac > 0.05


def test_calendar_days_listings_delistings_suspensions(own):
    q = own.quotes
    days = trading_days_from("2018-01-04", 500)
    assert q["Date"].unique().sort().to_list() == days
    span = q.group_by("Code").agg(
        pl.col("Date").min().alias("first"), pl.col("Date").max().alias("last"), pl.len().alias("n"))
    listed_late = span.filter(pl.col("first") > days[0]).height
    delisted = span.filter(pl.col("last") < days[-1]).height
    # listing_fraction 0.05 of 300 = 15 each; a suspension on the first/last day can add one
    assert 15 <= listed_late <= 18 and 15 <= delisted <= 18
    idx = {d: i for i, d in enumerate(days)}
    span = span.with_columns(
        (pl.col("last").replace_strict(idx) - pl.col("first").replace_strict(idx) + 1 - pl.col("n")).alias("gaps"))
    missing = span["gaps"].sum()
    assert 0.0005 < missing / q.height < 0.01  # suspensions around missing_rate 0.002
    assert (span.filter(pl.col("gaps") > 0).height) > 10
    assert (span["n"] >= 60 - 10).all()


# --------------------------------------------------------------------------- signal / oracle
def _realised(m, h: int) -> pl.DataFrame:
    """y_h(t) = Close(t+1+h)/Close(t+1) - 1 on the trading-day index (null when unknown)."""
    days = m.quotes["Date"].unique().sort()
    idx = pl.DataFrame({"Date": days, "i": np.arange(len(days))})
    q = m.quotes.select("Date", "Code", "Close").join(idx, on="Date")
    c1 = q.select("Code", (pl.col("i") - 1).alias("i"), pl.col("Close").alias("c1"))
    c2 = q.select("Code", (pl.col("i") - 1 - h).alias("i"), pl.col("Close").alias("c2"))
    out = q.join(c1, on=["Code", "i"], how="left").join(c2, on=["Code", "i"], how="left")
    return out.select("Date", "Code", (pl.col("c2") / pl.col("c1") - 1).alias("y"))


@pytest.mark.parametrize("h", [1, 5])
def test_oracle_rank_ic_recomputed_with_scipy(own, h):
    df = _realised(own, h).join(own.oracle, on=["Date", "Code"]).drop_nulls("y")
    ics = []
    for _, g in df.group_by("Date"):
        if g.height >= 10:
            ics.append(spearmanr(g[f"oracle_{h}d"], g["y"]).statistic)
    assert own.oracle_rank_ic[h] == pytest.approx(np.mean(ics), abs=1e-9)


def test_oracle_rank_ic_band_and_shuffle(own, neighbour):
    assert 0.10 <= own.oracle_rank_ic[1] <= 0.25
    assert all(own.oracle_rank_ic[h] > 0.1 for h in HORIZONS)  # every horizon carries signal
    assert 0.10 <= neighbour.oracle_rank_ic[1] <= 0.25
    assert all(neighbour.oracle_rank_ic[h] > 0.03 for h in HORIZONS)
    # a within-day shuffled oracle has no skill
    df = _realised(own, 1).join(own.oracle, on=["Date", "Code"]).drop_nulls("y")
    shuffled = df.with_columns(pl.col("oracle_1d").shuffle(seed=0).over("Date"))
    ics = shuffled.group_by("Date").agg(pl.corr("oracle_1d", "y", method="spearman"))["oracle_1d"]
    assert abs(ics.mean()) < 0.02


@pytest.mark.parametrize("kind", ["own", "neighbour"])
def test_oracle_is_the_conditional_mean(kind, own, neighbour):
    """Regressing the realised log label on the oracle (day-demeaned, pooled) gives slope ~1:
    the oracle has the planted part's exact scale and sign, not just its rank."""
    m = own if kind == "own" else neighbour
    for h in (1, 5):
        df = _realised(m, h).join(m.oracle, on=["Date", "Code"]).drop_nulls("y").with_columns(
            (pl.col("y") + 1).log().alias("ly"))
        df = df.with_columns(
            (pl.col("ly") - pl.col("ly").mean().over("Date")).alias("ly"),
            (pl.col(f"oracle_{h}d") - pl.col(f"oracle_{h}d").mean().over("Date")).alias("o"))
        slope = df.select((pl.col("o") * pl.col("ly")).sum() / (pl.col("o") ** 2).sum()).item()
        assert 0.8 < slope < 1.2, (kind, h, slope)


def _own_and_peer_corr(m) -> tuple[float, float]:
    """Mean daily corr of oracle_1d with the stock's own 5-day market-relative log return and
    with the leave-one-out mean of its hidden-cluster peers' same quantity."""
    q = m.quotes.sort("Code", "Date").with_columns(pl.col("Close").log().diff().over("Code").alias("r"))
    q = q.with_columns((pl.col("r") - pl.col("r").mean().over("Date")).alias("rr"))
    q = q.with_columns(pl.col("rr").rolling_sum(5).over("Code").alias("own5"))
    cl = pl.DataFrame({"Code": list(m.cluster), "cl": list(m.cluster.values())})
    q = q.join(cl, on="Code").drop_nulls("own5").with_columns(
        pl.col("own5").sum().over("Date", "cl").alias("s"), pl.len().over("Date", "cl").alias("n"))
    q = q.filter(pl.col("n") > 2).with_columns(((pl.col("s") - pl.col("own5")) / (pl.col("n") - 1)).alias("peer5"))
    q = q.join(m.oracle, on=["Date", "Code"])
    c = q.group_by("Date").agg(pl.corr("oracle_1d", "own5").alias("own"), pl.corr("oracle_1d", "peer5").alias("peer"))
    return c["own"].mean(), c["peer"].mean()


def test_own_signal_is_a_reversal_of_own_returns(own):
    c_own, c_peer = _own_and_peer_corr(own)
    assert c_own < -0.3
    assert abs(c_peer) < 0.05


def test_neighbour_signal_needs_the_cluster_peers(neighbour):
    c_own, c_peer = _own_and_peer_corr(neighbour)
    assert abs(c_own) < 0.05
    assert c_peer > 0.2


def test_no_signal():
    m = generate_market(SyntheticConfig(n_stocks=30, n_days=70, n_clusters=3, signal="none"))
    assert m.oracle_rank_ic == {h: 0.0 for h in HORIZONS}
    assert m.oracle.select(pl.all().exclude("Date", "Code").abs().max()).max_horizontal().item() == 0.0


def test_cli_synth_writes_store_and_oracle(tmp_path, capsys):
    out = tmp_path / "store"
    rc = main(["synth", "--out", str(out), "data.synthetic.n_stocks=30", "data.synthetic.n_days=80",
               "data.synthetic.n_clusters=4", "data.synthetic.seed=5"])
    assert rc == 0
    assert "oracle RankIC: 1d=" in capsys.readouterr().out
    m = generate_market(SyntheticConfig(n_stocks=30, n_days=80, n_clusters=4, seed=5), HORIZONS)
    assert read_quotes(out).equals(m.quotes)
    oracle, meta = load_oracle(out)
    assert oracle.equals(m.oracle)
    assert meta["cluster"] == m.cluster
    assert {int(h): v for h, v in meta["oracle_rank_ic"].items()} == m.oracle_rank_ic
