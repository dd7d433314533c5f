"""Features: numbers vs independent references, per-DAY normalisation, point in time, targets."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest

from atft_core.config import Config
from atft_core.data.schema import SchemaError
from atft_core.features import (
    FEATURE_COLUMNS,
    MAD_SCALE,
    build_features,
    build_features_pandas,
)

CFG = Config()


def make_quotes(n_stocks: int = 30, n_days: int = 140, seed: int = 0, missing: float = 0.02) -> pl.DataFrame:
    """Random-walk market with a common factor, gaps, a late listing, a delisting, null sectors."""
    rng = np.random.default_rng(seed)
    dates = [dt.date(2021, 1, 4) + dt.timedelta(days=i) for i in range(n_days)]
    codes = [f"{1300 + i}" for i in range(n_stocks)]
    r = rng.standard_t(4, (n_stocks, n_days)) * 0.015 + rng.normal(0, 0.01, (1, n_days))
    close = 100 * np.exp(np.cumsum(r, axis=1))
    present = rng.random((n_stocks, n_days)) > missing
    present[0, :40] = False  # listed late
    present[1, -25:] = False  # delisted
    s, t = np.nonzero(present)
    c = close[s, t]
    hi = c * (1 + rng.uniform(0, 0.04, len(s)))
    lo = c * (1 - rng.uniform(0, 0.04, len(s)))
    return pl.DataFrame(
        {
            "Date": [dates[i] for i in t],
            "Code": [codes[i] for i in s],
            "Open": c * (1 + rng.normal(0, 0.005, len(s))),
            "High": hi,
            "Low": lo,
            "Close": c,
            "Volume": rng.lognormal(10, 1, len(s)),
            "Sector33Code": [None if i % 7 == 0 else str(i % 4) for i in s],
        }
    ).sort("Date", "Code")


@pytest.fixture(scope="module")
def quotes() -> pl.DataFrame:
    return make_quotes()


@pytest.fixture(scope="module")
def feats(quotes) -> pl.DataFrame:
    return build_features(quotes, CFG)


def assert_per_day_normalised(df: pl.DataFrame, min_history: int, min_frac: float = 0.9) -> None:
    """The defining property of a per-DAY robust z: on each day, over the usable rows, every
    feature has median 0, 1.4826*MAD = 1 and a non-zero spread. Raises AssertionError naming the
    feature otherwise (a per-stock z, or a constant feature, fails here)."""
    u = df.filter(pl.col("history_days") >= min_history)
    for f in FEATURE_COLUMNS:
        stats = (
            u.group_by("Date")
            .agg(
                pl.col(f).median().alias("med"),
                (pl.col(f).abs().median() * MAD_SCALE).alias("scale"),
                pl.col(f).std().alias("std"),
                pl.col(f).count().alias("n"),
            )
            .filter(pl.col("n") >= 10)
        )
        assert stats.height > 0, f"{f}: no day with 10 defined values"
        ok = (
            (stats["med"].abs() < 1e-5) & ((stats["scale"] - 1).abs() < 1e-3) & (stats["std"] > 0.1)
        )
        frac = ok.mean()
        assert frac >= min_frac, f"{f}: only {frac:.2f} of days look per-day robust-z normalised"


def test_polars_equals_pandas_reference(quotes):
    mask = quotes.select("Date", "Code").sample(5, seed=3)
    a = build_features(quotes, CFG, mask=mask)
    b = pl.from_pandas(build_features_pandas(quotes, CFG, mask=mask))
    assert a.height == b.height == quotes.height - 5
    assert a["Code"].to_list() == b["Code"].to_list()
    assert a["Date"].to_list() == [d.date() if hasattr(d, "date") else d for d in b["Date"].to_list()]
    for c in [*FEATURE_COLUMNS, "y_1d", "y_5d", "y_10d", "y_20d", "ret_1d_raw"]:
        x = a[c].cast(pl.Float64).to_numpy()
        y = b[c].cast(pl.Float64).to_numpy()
        assert np.array_equal(np.isnan(x), np.isnan(y)), f"{c}: null pattern differs"
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, equal_nan=True, err_msg=c)


def test_flat_prices_and_volumes_match_pandas(quotes):
    """Windows where every value is the same (a suspended-looking flat close, a constant volume,
    gaps inside the flat stretch, a price step across a gap): the std is exactly 0 as in pandas,
    so rsi / volume_z are null and vol_*d is 0 there, not round-off noise."""
    dates = sorted(quotes["Date"].unique().to_list())
    d = pl.col("Date")
    flat = (d >= dates[30]) & (d <= dates[75])
    step = (d >= dates[80]) & (d <= dates[120])
    q = quotes.with_columns(
        pl.when((pl.col("Code") == "1303") & flat).then(50.0)
        .when((pl.col("Code") == "1306") & step).then(pl.when(d <= dates[89]).then(40.0).otherwise(41.0))
        .otherwise(pl.col("Close")).alias("Close"),
        pl.when(pl.col("Code").is_in(["1304", "1306"]) & flat).then(1e5)
        .otherwise(pl.col("Volume")).alias("Volume"),
    ).with_columns(pl.max_horizontal("High", "Close").alias("High"),
                   pl.min_horizontal("Low", "Close").alias("Low"))
    gaps = pl.col("Code").is_in(["1303", "1306"]) & d.is_in([dates[50], dates[51], dates[90]])
    q = q.filter(~gaps)
    a = build_features(q, CFG)
    b = pl.from_pandas(build_features_pandas(q, CFG))
    for c in [*FEATURE_COLUMNS, "ret_1d_raw"]:
        x = a[c].cast(pl.Float64).to_numpy()
        y = b[c].cast(pl.Float64).to_numpy()
        assert np.array_equal(np.isnan(x), np.isnan(y)), f"{c}: null pattern differs"
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, equal_nan=True, err_msg=c)
    mid = a.filter((pl.col("Code") == "1303") & (pl.col("Date") == dates[70]))
    assert mid["rsi_14"].is_null().all() and mid["ret_1d_raw"].to_list() == [0.0]
    vol_flat = a.filter(pl.col("Date") == dates[70])
    assert vol_flat.filter(pl.col("Code").is_in(["1304", "1306"]))["volume_z"].is_null().all()
    # after the step across the gap the 14-day window holds a move: rsi is defined
    after = a.filter((pl.col("Code") == "1306") & (pl.col("Date") == dates[95]))
    assert after["rsi_14"].is_not_null().all()


def test_robust_z_equals_numpy_reference(quotes, feats):
    """ret_5d and vol_20d recomputed with numpy loops over a dense close matrix."""
    dates = sorted(quotes["Date"].unique().to_list())
    codes = sorted(quotes["Code"].unique().to_list())
    ti = {d: i for i, d in enumerate(dates)}
    si = {c: i for i, c in enumerate(codes)}
    close = np.full((len(codes), len(dates)), np.nan)
    for d, c, v in quotes.select("Date", "Code", "Close").iter_rows():
        close[si[c], ti[d]] = v
    present = np.isfinite(close)
    lc = np.log(close)
    # forward fill inside the listing span
    for s in range(len(codes)):
        for t in range(1, len(dates)):
            if np.isnan(lc[s, t]) and not np.isnan(lc[s, t - 1]):
                lc[s, t] = lc[s, t - 1]
    ret5 = np.full_like(lc, np.nan)
    ret5[:, 5:] = lc[:, 5:] - lc[:, :-5]
    ret1 = np.full_like(lc, np.nan)
    ret1[:, 1:] = lc[:, 1:] - lc[:, :-1]
    ret1[~present] = np.nan
    vol20 = np.full_like(lc, np.nan)
    for s in range(len(codes)):
        for t in range(len(dates)):
            w = ret1[s, max(0, t - 19) : t + 1]
            w = w[np.isfinite(w)]
            if len(w) >= 10:
                vol20[s, t] = np.std(w, ddof=1)
    hist = np.cumsum(present, axis=1)
    got = {(d, c): (r5, v20) for d, c, r5, v20 in feats.select("Date", "Code", "ret_5d", "vol_20d").iter_rows()}
    for raw, k in ((ret5, 0), (vol20, 1)):
        for t in range(len(dates)):
            rows = present[:, t]
            vals = raw[rows, t]
            usable = hist[rows, t] >= CFG.features.min_history
            vu = vals[usable & np.isfinite(vals)]
            if len(vu) < 5:
                continue
            med = np.median(vu)
            scale = np.median(np.abs(vu - med)) * 1.4826
            for s in np.nonzero(rows)[0]:
                expect = np.clip((raw[s, t] - med) / scale, -CFG.features.clip, CFG.features.clip)
                g = got[(dates[t], codes[s])][k]
                if np.isnan(expect):
                    assert g is None
                else:
                    assert g == pytest.approx(expect, abs=2e-5), (dates[t], codes[s], k)


def test_every_feature_is_cross_sectionally_normalised(feats):
    assert_per_day_normalised(feats, CFG.features.min_history)
    # and no feature is constant over the stocks of a day (the all-zero-features bug)
    late = feats.filter(pl.col("history_days") >= 60)
    for f in FEATURE_COLUMNS:
        std = late.group_by("Date").agg(pl.col(f).std())[f]
        assert (std > 0.1).mean() > 0.95, f


def test_per_stock_zscore_would_be_caught(feats):
    """Two wrong implementations: z over one stock-day slice (all zeros, the gogooku3 bug) and a
    per-stock time-series z. The invariant check must reject both."""
    slice_z = feats.with_columns([pl.lit(0.0, pl.Float32).alias(f) for f in FEATURE_COLUMNS])
    with pytest.raises(AssertionError):
        assert_per_day_normalised(slice_z, CFG.features.min_history)
    ts_z = feats.with_columns(
        [((pl.col(f) - pl.col(f).mean()) / pl.col(f).std()).over("Code").alias(f) for f in FEATURE_COLUMNS]
    )
    with pytest.raises(AssertionError):
        assert_per_day_normalised(ts_z, CFG.features.min_history)


def test_point_in_time_features_targets_change(quotes, feats):
    dates = sorted(quotes["Date"].unique().to_list())
    cut = dates[90]
    rng = np.random.default_rng(1)
    future = quotes["Date"] > cut
    shock = np.where(future.to_numpy(), rng.uniform(0.5, 1.5, quotes.height), 1.0)
    perturbed = quotes.with_columns(
        [(pl.col(c) * shock).alias(c) for c in ("Open", "High", "Low", "Close")]
        + [(pl.col("Volume") * shock**3).alias("Volume")]
    ).filter(~((pl.col("Date") > cut) & (pl.col("Code") == "1305")))  # a stock vanishes later
    g = build_features(perturbed, CFG)
    past_a = feats.filter(pl.col("Date") <= cut)
    past_b = g.filter(pl.col("Date") <= cut)
    assert past_a.select("Date", "Code", *FEATURE_COLUMNS, "ret_1d_raw").equals(
        past_b.select("Date", "Code", *FEATURE_COLUMNS, "ret_1d_raw")
    )
    # labels at the cut look past it, so they must change
    ya = past_a.filter(pl.col("Date") == cut)["y_5d"].to_numpy()
    yb = past_b.filter(pl.col("Date") == cut)["y_5d"].to_numpy()
    assert np.mean(np.nan_to_num(ya) != np.nan_to_num(yb)) > 0.9


def test_targets_exact_and_null_not_zero(quotes, feats):
    dates = sorted(quotes["Date"].unique().to_list())
    close = {(d, c): v for d, c, v in quotes.select("Date", "Code", "Close").iter_rows()}
    rows = feats.select("Date", "Code", *[f"y_{h}d" for h in CFG.horizons]).iter_rows()
    pos = {d: i for i, d in enumerate(dates)}
    n_null = 0
    for d, c, *ys in rows:
        for h, y in zip(CFG.horizons, ys):
            t = pos[d]
            a = close.get((dates[t + 1], c)) if t + 1 < len(dates) else None
            b = close.get((dates[t + 1 + h], c)) if t + 1 + h < len(dates) else None
            if a is None or b is None:
                assert y is None, (d, c, h)
                n_null += 1
            else:
                assert y == pytest.approx(b / a - 1, rel=1e-12)
    assert n_null > 0
    # the delisted stock's last rows have null labels, never 0
    last = feats.filter(pl.col("Code") == "1301").tail(1)
    assert last["y_1d"].is_null().all()


def test_bad_tick_mask_is_a_gap(quotes):
    dates = sorted(quotes["Date"].unique().to_list())
    d_bad = dates[70]
    code = "1310"
    bad = quotes.with_columns(
        pl.when((pl.col("Date") == d_bad) & (pl.col("Code") == code))
        .then(pl.col("Close") * 100)
        .otherwise(pl.col("Close"))
        .alias("Close")
    )
    mask = pl.DataFrame({"Date": [d_bad], "Code": [code]})
    clean = build_features(quotes.filter(~((pl.col("Date") == d_bad) & (pl.col("Code") == code))), CFG)
    masked = build_features(bad, CFG, mask=mask)
    assert masked.filter((pl.col("Date") == d_bad) & (pl.col("Code") == code)).height == 0
    assert masked.equals(clean)
    # the label at t = d_bad - 1 needs Close(d_bad): null
    prev = masked.filter((pl.col("Date") == dates[69]) & (pl.col("Code") == code))
    assert prev["y_1d"].is_null().all()


def test_bad_input_errors(quotes):
    with pytest.raises(SchemaError, match="Close"):
        build_features(quotes.drop("Close"), CFG)
    with pytest.raises(ValueError, match="mask frame lacks"):
        build_features(quotes, CFG, mask=pl.DataFrame({"Date": [dt.date(2021, 1, 4)]}))


def test_missing_turnover_and_sector_columns(quotes):
    df = build_features(quotes.drop("Sector33Code"), CFG)
    assert df["Sector33Code"].is_null().all()
    # with no sectors the stock's peer group is the market: relative-to-sector = ret - market mean,
    # which the per-day z turns back into ret
    np.testing.assert_allclose(df["rel_sec_5d"].to_numpy(), df["ret_5d"].to_numpy(), atol=1e-5, equal_nan=True)
    assert math.isfinite(float(df["turnover_z"].drop_nulls().std()))


def test_sector_is_not_back_filled(quotes):
    """A sector first reported on day 60 must not be used for earlier days (market fallback)."""
    dates = sorted(quotes["Date"].unique().to_list())
    late = quotes.with_columns(
        pl.when((pl.col("Code") == "1302") & (pl.col("Date") < dates[60]))
        .then(None)
        .otherwise(pl.col("Sector33Code"))
        .alias("Sector33Code")
    )
    never = quotes.with_columns(
        pl.when(pl.col("Code") == "1302").then(None).otherwise(pl.col("Sector33Code")).alias("Sector33Code")
    )
    df = build_features(late, CFG)
    ref = build_features(never, CFG)
    early = pl.col("Date") < dates[60]
    mine = pl.col("Code") == "1302"
    assert df.filter(early & mine)["Sector33Code"].is_null().all()
    assert df.filter(~early & mine)["Sector33Code"].is_not_null().all()
    # identical data up to day 59 -> identical features up to day 59
    assert df.filter(early).select(FEATURE_COLUMNS).equals(ref.filter(early).select(FEATURE_COLUMNS))
    assert not df.filter(~early).select(FEATURE_COLUMNS).equals(ref.filter(~early).select(FEATURE_COLUMNS))


def test_no_feature_duplicates_another_after_the_per_day_z(quotes):
    """rel_mkt_{n}d was ret_{n}d again after the per-day z (issue 15 item 6): no pair of feature
    columns may be equal (or exactly negated) over the usable rows."""
    df = build_features(quotes, CFG).filter(pl.col("history_days") >= CFG.features.min_history)
    assert not any(c.startswith("rel_mkt_") for c in FEATURE_COLUMNS)
    x = df.select(FEATURE_COLUMNS).fill_null(0.0).to_numpy().astype(np.float64)
    for i in range(x.shape[1]):
        for j in range(i + 1, x.shape[1]):
            gap = min(np.abs(x[:, i] - x[:, j]).max(), np.abs(x[:, i] + x[:, j]).max())
            assert gap > 1e-3, (FEATURE_COLUMNS[i], FEATURE_COLUMNS[j], gap)


# --------------------------------------------------------------------------- optional extras
def _cfg_with_extras(names=None):
    from atft_core.config import apply_overrides
    from atft_core.features import EXTRA_FEATURES

    names = EXTRA_FEATURES if names is None else names
    return apply_overrides(CFG, [f"features.extra=[{','.join(names)}]"])


def test_extras_are_off_by_default(feats):
    from atft_core.features import feature_columns

    assert feature_columns(CFG) == FEATURE_COLUMNS and len(FEATURE_COLUMNS) == 22
    assert "extra" not in CFG.to_dict()["features"]  # default configs keep their sha256
    assert [c for c in feats.columns if c in FEATURE_COLUMNS] == list(FEATURE_COLUMNS)
    assert not any(c.startswith(("ret_overnight", "ret_intraday", "resid_", "turnover_ratio"))
                   for c in feats.columns)


def test_extras_polars_equals_pandas_reference(quotes):
    from atft_core.features import EXTRA_FEATURES, feature_columns

    cfg = _cfg_with_extras()
    assert feature_columns(cfg) == FEATURE_COLUMNS + EXTRA_FEATURES
    mask = quotes.select("Date", "Code").sample(5, seed=4)
    a = build_features(quotes, cfg, mask=mask)
    b = pl.from_pandas(build_features_pandas(quotes, cfg, mask=mask))
    assert a.columns == b.columns and a.height == b.height
    for c in feature_columns(cfg):
        x = a[c].cast(pl.Float64).to_numpy()
        y = b[c].cast(pl.Float64).to_numpy()
        assert np.array_equal(np.isnan(x), np.isnan(y)), f"{c}: null pattern differs"
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, equal_nan=True, err_msg=c)
    # the defaults are untouched by the extras
    base = build_features(quotes, CFG, mask=mask)
    assert a.select(base.columns).equals(base)
    # extras are per-day robust z like the rest, and not a copy of another column
    u = a.filter(pl.col("history_days") >= CFG.features.min_history)
    for f in EXTRA_FEATURES:
        stats = u.group_by("Date").agg(pl.col(f).median().alias("med"), pl.col(f).std().alias("sd"))
        assert (stats["med"].abs() < 1e-5).mean() > 0.9 and (stats["sd"] > 0.1).mean() > 0.9, f
        for g in feature_columns(cfg):
            if g != f:
                assert (u[f] - u[g]).abs().max() > 1e-3, (f, g)


def test_extra_definitions_against_numpy(quotes):
    """ret_overnight_1d + ret_intraday_1d = ret_1d before the z (so their raw values, rebuilt here
    from the dense close/open matrices, must z-score to what build_features gives)."""
    cfg = _cfg_with_extras(["ret_overnight_1d", "ret_intraday_1d", "ret_overnight_5d"])
    got = build_features(quotes, cfg)
    dates = sorted(quotes["Date"].unique().to_list())
    codes = sorted(quotes["Code"].unique().to_list())
    ti = {d: i for i, d in enumerate(dates)}
    si = {c: i for i, c in enumerate(codes)}
    close = np.full((len(codes), len(dates)), np.nan)
    opn = np.full_like(close, np.nan)
    for d, c, o, v in quotes.select("Date", "Code", "Open", "Close").iter_rows():
        close[si[c], ti[d]], opn[si[c], ti[d]] = v, o
    present = np.isfinite(close)
    prev = np.full_like(close, np.nan)  # last close strictly before t (spans gaps)
    for s in range(len(codes)):
        last = np.nan
        for t in range(len(dates)):
            prev[s, t] = last
            if present[s, t]:
                last = close[s, t]
    over = np.where(present, np.log(opn / prev), np.nan)
    lc = np.log(np.where(present, close, np.nan))
    hist = np.cumsum(present, axis=1)
    # the 5-day overnight sum where ret_5d exists (a close at or before t-5)
    has5 = np.zeros_like(present)
    has5[:, 5:] = np.maximum.accumulate(present, axis=1)[:, :-5]
    over5 = np.full_like(close, np.nan)
    for s in range(len(codes)):
        for t in range(len(dates)):
            if present[s, t] and has5[s, t]:
                over5[s, t] = np.nansum(over[s, max(0, t - 4): t + 1])
    t = 100
    rows = present[:, t]
    for name, raw in (("ret_overnight_1d", over), ("ret_intraday_1d", lc - np.log(opn)),
                      ("ret_overnight_5d", over5)):
        v = raw[rows, t]
        u = v[(hist[rows, t] >= cfg.features.min_history) & np.isfinite(v)]
        med = np.median(u)
        z = np.clip((v - med) / (np.median(np.abs(u - med)) * MAD_SCALE), -5, 5)
        day = got.filter(pl.col("Date") == dates[t]).sort("Code")
        assert day["Code"].to_list() == [codes[i] for i in np.nonzero(rows)[0]]
        np.testing.assert_allclose(day[name].to_numpy(), z, atol=2e-5, err_msg=name)


def test_extras_are_point_in_time(quotes):
    from atft_core.features import feature_columns

    cfg = _cfg_with_extras()
    cut = sorted(quotes["Date"].unique().to_list())[90]
    rng = np.random.default_rng(2)
    shock = np.where((quotes["Date"] > cut).to_numpy(), rng.uniform(0.5, 1.5, quotes.height), 1.0)
    perturbed = quotes.with_columns(
        [(pl.col(c) * shock).alias(c) for c in ("Open", "High", "Low", "Close")]
        + [(pl.col("Volume") * shock**3).alias("Volume")]
    ).filter(~((pl.col("Date") > cut) & (pl.col("Code") == "1306")))
    cols = ["Date", "Code", *feature_columns(cfg)]
    a = build_features(quotes, cfg).filter(pl.col("Date") <= cut).select(cols)
    b = build_features(perturbed, cfg).filter(pl.col("Date") <= cut).select(cols)
    assert a.equals(b)
    # and cutting the data off at the cut gives the same past as well
    c = build_features(quotes.filter(pl.col("Date") <= cut), cfg).select(cols)
    assert a.equals(c)


def test_unknown_extra_feature_is_one_config_error():
    from atft_core.config import ConfigError, load_config

    with pytest.raises(ConfigError) as err:
        load_config("default", ["features.extra=[ret_overnight_1d,ret_overnite_5d]"])
    msg = str(err.value)
    assert "features.extra" in msg and "'ret_overnite_5d'" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="listed twice"):
        load_config("default", ["features.extra=[resid_ret_1d,resid_ret_1d]"])
