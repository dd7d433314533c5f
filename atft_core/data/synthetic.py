"""Seeded synthetic JPX-like market with a planted signal and its exact oracle (SPEC 3.2).

The panel lives on the real XTKS calendar (``trading_days_from(cfg.start, cfg.n_days)``).
Daily log return of stock i on day s::

    r[s, i] = beta_i * M[s] + gamma_i * S[s, sector(i)] + delta_i * C[s, cluster(i)]
              + mu[s, i] + e[s, i]

* ``M``: market factor with GARCH(1,1) volatility and Student-t shocks (df 5).
* ``S``: sector factors (Sector33Code strings, e.g. "3050"); ``C``: hidden correlation clusters,
  assigned independently of sectors (so the clusters are visible in return correlations but are
  NOT the sector), each with its own factor.
* ``e``: idiosyncratic Student-t (df 4) shocks with per-stock GARCH(1,1) volatility (volatility
  clustering), clipped at 6 sd so that no daily return reaches the 50% bad-tick threshold.
* ``mu``: the planted signal, a fixed kernel over PAST drivers ``D`` (lags >= 2)::

      mu[s, i] = c * sum_{lag >= 2} k[lag] * D[s - lag, i]
      k[lag]   = sum_{m + j = lag - 2, 0 <= j < 5, 0 <= m < 10} 0.75 ** m     (then sum k^2 = 1)

  i.e. the 5-day driver sum ending at day u moves the expected return of days u+2, u+3, ...
  with weight decaying 0.75 per day, so every horizon 1/5/10/20 carries signal.
  ``signal="own"``: ``D = e`` (the stock's own idiosyncratic shocks) and ``c < 0``: a short-term
  reversal of the 5-day return relative to market/sector/cluster factors.
  ``signal="neighbour"``: ``D[u, i] = sum_{j in cluster(i), j != i, listed} e[u, j] / sqrt(n_j)``
  (leave-one-out peers' shocks), ``c > 0`` and a short kernel ``k[2] = 1, k[3] = 0.5``
  (normalised): a lead-lag spill-over from peers two and three days later. By the close of t
  none of the drivers in the oracle (``D[t]``, ``D[t-1]``) has reached the stock's own price, so
  the stock's own history does not reveal it; only a graph that finds the cluster peers can.
  ``signal="none"``: ``c = 0``.
  ``c = SIGNAL_GAIN * signal_strength * sd(D)`` in units of the driver's own scale.
  ``regime_change_at`` (a fraction of ``n_days``): from that day on the gain is ``-c`` (the
  reversal becomes a momentum; the neighbour spill-over turns contrarian), for ``atft replay``.
  ``mu[s]`` uses the gain of its own day s, so the oracle below becomes
  ``sum_{j=2}^{h+1} c[t+j] * sum_q k[q+j] D[t-q]`` (:func:`_switched_oracles`), still exact.

Oracle (decision: "planted part" = the sum of ``mu`` over the label window, in log-return units).
The executable label is ``y_h(t) = Close(t+1+h) / Close(t+1) - 1``, whose log equals
``sum_{s=t+2}^{t+1+h} r[s]``. Given information up to the close of t, the future drivers have
mean zero, so the exact conditional mean of the planted part is the contribution of drivers
already realised::

    oracle_h(t) = c * sum_{q >= 0} K_h[q] * D[t - q],     K_h[q] = sum_{j=2}^{h+1} k[q + j]

``oracle_rank_ic`` is the mean over days of the daily Spearman correlation (average ranks)
between ``oracle_h`` and the realised ``y_h`` (stocks with both finite; days with fewer than 10
such stocks skipped). Measured at the default ``signal_strength=0.10`` (defaults otherwise:
300 stocks x 500 days; mean of seeds 0-4, range in brackets):

=========  ===================  ===================  ===================  ===================
signal     1d                   5d                   10d                  20d
=========  ===================  ===================  ===================  ===================
own        0.149 [0.146-0.152]  0.273 [0.267-0.280]  0.279 [0.270-0.289]  0.228 [0.215-0.236]
neighbour  0.168 [0.161-0.182]  0.096 [0.089-0.106]  0.069 [0.062-0.078]  0.048 [0.040-0.057]
=========  ===================  ===================  ===================  ===================

4,000 stocks x 2,500 days: own 0.148/0.273/0.281/0.232, neighbour 0.172/0.097/0.065/0.045.
RankIC@1d scales about linearly with the strength (own: 0.079 at 0.05, 0.284 at 0.20).
Cost at 4,000 x 2,500: 13-23 s of CPU (one core; ~2.9 GB peak RSS), more than half of it the
per-horizon oracle and its RankIC (argsorts of (T, N) arrays).

Quotes: Close = P0 * exp(cumsum r); Open = previous latent close * exp(a * r + noise) (a part of the
day's move happens overnight); High/Low extend max/min(Open, Close) by half-normal wicks scaled by
the day's volatility, so ``Low <= Open, Close <= High`` always. Volume (multiples of 100 shares)
is log-normal around a per-stock level and rises with |idiosyncratic shock| / vol;
TurnoverValue = Volume * (O+H+L+C)/4. Suspensions: runs of 1-5 missing days at ``missing_rate``.
Listings / delistings: ``listing_fraction`` of stocks list after the first day and another
``listing_fraction`` delist before the last day (each alive >= 60 days). The latent price path
runs through suspensions, so the first bar after one shows the accumulated move.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from atft_core.atomic import atomic_write_bytes
from atft_core.calendar import trading_days_from
from atft_core.config import SyntheticConfig
from atft_core.data.schema import CANONICAL_COLUMNS, CANONICAL_SCHEMA
from atft_core.ranks import average_ranks

# TSE 33-sector codes (0050 Fishery ... 9050 Services)
SECTOR33_CODES = (
    "0050", "1050", "2050", "3050", "3100", "3150", "3200", "3250", "3300", "3350", "3400",
    "3450", "3500", "3550", "3600", "3650", "3700", "3750", "3800", "4050", "5050", "5100",
    "5150", "5200", "5250", "6050", "6100", "7050", "7100", "7150", "7200", "8050", "9050",
)
DRIVER_WINDOW = 5  # the signal reacts to 5-day driver sums
DECAY = 0.75  # per-day decay of a driver's effect
DECAY_DAYS = 10
# c = SIGNAL_GAIN * signal_strength * sd(driver); calibrated so that strength 0.10 gives an
# oracle RankIC@1d of ~0.15 for "own" (see module docstring)
SIGNAL_GAIN = 2.0
MIN_ALIVE_DAYS = 60
MIN_IC_STOCKS = 10


@dataclass(frozen=True)
class SyntheticMarket:
    """Quotes, oracle and ground truth of one synthetic market.

    Shapes:
        quotes: rows = listed, non-suspended stock-days; CANONICAL_SCHEMA, sorted (Date, Code).
        oracle: Date, Code, oracle_{h}d for every quotes row (same order).
        oracle_rank_ic: {h: mean daily Spearman(oracle_h, realised y_h)}.
        cluster: {Code: hidden cluster id}.
    """

    quotes: pl.DataFrame
    oracle: pl.DataFrame
    oracle_rank_ic: dict[int, float]
    cluster: dict[str, int]
    horizons: tuple[int, ...]


# --------------------------------------------------------------------------- kernels
def signal_kernel(kind: str = "own") -> np.ndarray:
    """k[lag] for lag = 0..(max lag); k[0] = k[1] = 0; unit L2 norm.

    "own": 5-day driver sums with an effect decaying 0.75/day over 10 days.
    "neighbour": k[2] = 1, k[3] = 0.5 (normalised): a peer's shock moves the stock two and three
    days later, so no driver in the oracle has reached the stock's own price by the close of t.
    """
    if kind == "neighbour":
        k = np.array([0.0, 0.0, 1.0, 0.5])
        return k / np.sqrt((k**2).sum())
    n_lags = 2 + DECAY_DAYS + DRIVER_WINDOW - 1
    k = np.zeros(n_lags)
    for m in range(DECAY_DAYS):
        for j in range(DRIVER_WINDOW):
            k[2 + m + j] += DECAY**m
    return k / np.sqrt((k**2).sum())


def oracle_kernel(k: np.ndarray, h: int) -> np.ndarray:
    """K_h[q] = sum_{j=2}^{h+1} k[q + j] (zero where q + j runs past the kernel)."""
    out = np.zeros(len(k))
    for q in range(len(k)):
        lo, hi = q + 2, min(q + h + 1, len(k) - 1)
        if lo <= hi:
            out[q] = k[lo: hi + 1].sum()
    return out


def _causal_filter(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """y[t] = sum_q kernel[q] * x[t - q] (x before day 0 counts as 0).  x: (T, N)."""
    y = np.zeros_like(x)
    buf = np.empty_like(x)
    t_len = len(x)
    for q, w in enumerate(kernel):
        if w != 0.0 and q < t_len:
            np.multiply(x[: t_len - q], w, out=buf[: t_len - q])
            y[q:] += buf[: t_len - q]
    return y


def _signal_sign(cfg: SyntheticConfig, t_len: int) -> np.ndarray:
    """(T, 1) +1 before the regime change, -1 from day round(regime_change_at * T) on."""
    sign = np.ones((t_len, 1))
    if cfg.regime_change_at is not None:
        sign[int(round(cfg.regime_change_at * t_len)):] = -1.0
    return sign


def _switched_oracles(driver: np.ndarray, k: np.ndarray, c_day: np.ndarray,
                      horizons: tuple[int, ...]) -> dict[int, np.ndarray]:
    """Exact oracles when the gain depends on the day the return happens (regime change).

    ``mu[s] = c[s] * sum_lag k[lag] D[s - lag]``, so the planted part of y_h(t) known at t is
    ``sum_{j=2}^{h+1} c[t+j] * sum_{q>=0} k[q+j] D[t-q]`` (days past the panel keep the last
    gain). With a constant c this is ``c * filter(D, K_h)``, the module docstring's oracle."""
    t_len = len(driver)
    out = {h: np.zeros_like(driver) for h in horizons}
    idx = np.arange(t_len)
    for j in range(2, max(horizons) + 2):
        if j >= len(k):
            break  # k[j:] is empty: the drivers' effect has ended
        part = _causal_filter(driver, k[j:])  # (T, N): sum_q k[q+j] D[t-q]
        gain = c_day[np.minimum(idx + j, t_len - 1)]  # (T, 1): c on day t+j
        for h in horizons:
            if j <= h + 1:
                out[h] += gain * part
    return out


# --------------------------------------------------------------------------- pieces
def _student_t(rng: np.random.Generator, df: float, size) -> np.ndarray:
    """Unit-variance Student-t draws."""
    return rng.standard_t(df, size=size) * np.sqrt((df - 2.0) / df)


def _garch_scale(z: np.ndarray, base_vol: np.ndarray, alpha: float = 0.08,
                 beta: float = 0.90) -> np.ndarray:
    """GARCH(1,1) volatility path for unit shocks z (T, N): sigma^2_t = w + a e^2_{t-1} + b s^2_{t-1}."""
    t_len = z.shape[0]
    omega = base_vol**2 * (1.0 - alpha - beta)
    sig = np.empty_like(z)
    s2 = base_vol**2
    for t in range(t_len):  # loop over days only; every step is vectorised over stocks
        sig[t] = np.sqrt(s2)
        s2 = omega + (alpha * z[t] ** 2 + beta) * s2
    return sig


def _codes(rng: np.random.Generator, n: int) -> list[str]:
    if n <= 8700:
        picks = np.sort(rng.choice(np.arange(1300, 10_000), size=n, replace=False))
        return [str(c) for c in picks]
    picks = np.sort(rng.choice(np.arange(10_000, 100_000), size=n, replace=False))
    return [str(c) for c in picks]


def _alive_mask(rng: np.random.Generator, t_len: int, n: int, frac: float) -> np.ndarray:
    """(T, N) bool: listed; ``frac`` of stocks list late, another ``frac`` delist early."""
    first = np.zeros(n, dtype=np.int64)
    last = np.full(n, t_len - 1, dtype=np.int64)
    n_events = int(round(frac * n))
    span = t_len - MIN_ALIVE_DAYS
    if n_events and span > 2:
        perm = rng.permutation(n)
        lst, dls = perm[:n_events], perm[n_events: 2 * n_events]
        first[lst] = rng.integers(1, span, size=len(lst))
        last[dls] = rng.integers(MIN_ALIVE_DAYS, t_len - 1, size=len(dls))
        # a stock both late-listed and early-delisted cannot happen (disjoint draws); keep >= 60 days
        last = np.maximum(last, np.minimum(first + MIN_ALIVE_DAYS - 1, t_len - 1))
    days = np.arange(t_len)[:, None]
    return (days >= first[None, :]) & (days <= last[None, :])


def _suspensions(rng: np.random.Generator, shape, rate: float) -> np.ndarray:
    """(T, N) bool missing stock-days: runs of 1-5 days (mean 3) at overall ``rate``."""
    if rate <= 0:
        return np.zeros(shape, dtype=bool)
    starts = rng.random(shape) < rate / 3.0
    length = rng.integers(1, 6, size=shape)
    missing = np.zeros(shape, dtype=bool)
    for lag in range(5):
        hit = starts & (length > lag)
        missing[lag:] |= hit[: shape[0] - lag] if lag else hit
    return missing


def _row_ranks(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """1-based average ranks of x within each row over ``valid`` entries (others: arbitrary).

    atft_core.ranks.average_ranks (ties averaged: Spearman's definition); float32 holds ranks
    (and the centred products below) exactly up to ~4,000 stocks a day.  (T, N)
    """
    return average_ranks(np.where(valid, x, np.nan), axis=1).astype(np.float32)


def _spearman_daily(pred: np.ndarray, real: np.ndarray, min_n: int = MIN_IC_STOCKS) -> float:
    """Mean over rows of the Spearman correlation on entries finite in both.  (T, N) arrays."""
    valid = np.isfinite(pred) & np.isfinite(real)
    n = valid.sum(axis=1, keepdims=True)
    mid = ((n + 1) / 2).astype(np.float32)  # mean of average ranks 1..n, ties or not
    a = np.where(valid, _row_ranks(pred, valid) - mid, np.float32(0))
    b = np.where(valid, _row_ranks(real, valid) - mid, np.float32(0))

    def dot(u, v):
        return np.einsum("ij,ij->i", u, v, dtype=np.float64)

    with np.errstate(invalid="ignore", divide="ignore"):
        ic = dot(a, b) / np.sqrt(dot(a, a) * dot(b, b))
    ok = (n[:, 0] >= min_n) & np.isfinite(ic)
    return float(ic[ok].mean()) if ok.any() else 0.0


# --------------------------------------------------------------------------- generator
def generate_market(cfg: SyntheticConfig, horizons: tuple[int, ...] = (1, 5, 10, 20)) -> SyntheticMarket:
    """Generate the synthetic market described in the module docstring.

    Args:
        cfg: size, calendar start, sectors/clusters, signal kind and strength, missing/listing rates.
        horizons: label horizons h (trading days) for ``oracle_{h}d`` and ``oracle_rank_ic``.
    """
    if not horizons or any(h < 1 for h in horizons):
        raise ValueError(f"horizons must be positive, got {horizons}")
    rng = np.random.default_rng(cfg.seed)
    t_len, n = cfg.n_days, cfg.n_stocks
    dates = trading_days_from(cfg.start, t_len)

    # ---- cross-section: codes, sectors, hidden clusters, loadings
    codes = _codes(rng, n)
    sector_codes = np.array(sorted(rng.choice(SECTOR33_CODES, size=cfg.n_sectors, replace=False)))
    sector_w = rng.dirichlet(np.full(cfg.n_sectors, 2.0))
    sector = rng.choice(cfg.n_sectors, size=n, p=sector_w)  # (N,)
    cluster = rng.integers(0, cfg.n_clusters, size=n)  # (N,) independent of sector
    beta = np.clip(rng.normal(1.0, 0.3, n), 0.2, 2.0)
    gamma = rng.uniform(0.5, 1.5, n)
    delta = rng.uniform(0.7, 1.3, n)
    idio_vol = np.exp(rng.normal(np.log(0.015), 0.3, n))  # daily, median 1.5%

    # ---- factors (T, .)
    m_shock = _student_t(rng, 5.0, (t_len, 1))
    market = 0.0002 + np.clip(m_shock, -6, 6) * _garch_scale(m_shock, np.array([0.010]))  # (T, 1)
    sec_f = _student_t(rng, 5.0, (t_len, cfg.n_sectors)) * 0.005  # (T, S)
    clu_f = _student_t(rng, 5.0, (t_len, cfg.n_clusters)) * 0.009  # (T, C)

    # ---- idiosyncratic shocks with GARCH vol (T, N)
    z = _student_t(rng, 4.0, (t_len, n))
    vol = _garch_scale(np.minimum(np.abs(z), 6.0), idio_vol)
    e = np.clip(z, -6.0, 6.0) * vol
    del z

    alive = _alive_mask(rng, t_len, n, cfg.listing_fraction)
    quoted = alive & ~_suspensions(rng, (t_len, n), cfg.missing_rate)

    # ---- planted signal
    k = signal_kernel(cfg.signal)
    if cfg.signal == "none" or cfg.signal_strength == 0.0:
        driver, c = None, 0.0
    elif cfg.signal == "own":
        driver, c = e, -SIGNAL_GAIN * cfg.signal_strength
    else:  # neighbour: leave-one-out sum of listed cluster peers' shocks, ~unit-scale per peer
        e_alive = np.where(alive, e, 0.0)
        onehot = np.zeros((n, cfg.n_clusters))
        onehot[np.arange(n), cluster] = 1.0
        peer_sum = (e_alive @ onehot)[:, cluster] - e_alive  # (T, N)
        peer_n = (alive.astype(np.float64) @ onehot)[:, cluster] - alive
        driver = peer_sum / np.sqrt(np.maximum(peer_n, 1.0))
        c = SIGNAL_GAIN * cfg.signal_strength
        del e_alive, peer_sum, peer_n
    c_day = _signal_sign(cfg, t_len) * c  # (T, 1): c, or -c from the regime change on
    mu = c_day * _causal_filter(driver, k) if driver is not None else np.zeros((t_len, n))

    r = beta * market + gamma * sec_f[:, sector] + delta * clu_f[:, cluster] + mu + e
    r = np.clip(r, -0.4, 0.4)
    del mu

    # ---- prices and bars (latent path runs through suspensions / unlisted days)
    p0 = np.exp(rng.normal(np.log(1500.0), 1.0, n))
    log_close = np.log(p0) + np.cumsum(r, axis=0)
    close = np.exp(log_close)
    prev_close = np.vstack([p0[None, :], close[:-1]])
    overnight = rng.uniform(0.2, 0.5, n) * r + rng.normal(0.0, 0.002, (t_len, n))
    open_ = prev_close * np.exp(overnight)
    wick = 0.5 * vol
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 1.0, (t_len, n))) * wick)
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 1.0, (t_len, n))) * wick)
    base_lv = rng.normal(np.log(2e5), 1.0, n)
    log_v = base_lv + 0.5 * np.abs(e) / vol + rng.normal(0.0, 0.35, (t_len, n))
    volume = np.maximum(np.round(np.exp(log_v) / 100.0), 1.0) * 100.0
    turnover = volume * (open_ + high + low + close) / 4.0
    del prev_close, overnight, log_v

    # ---- oracle (T, N) per horizon, and realised labels from the quoted closes
    obs_close = np.where(quoted, close, np.nan)
    oracle = {}
    rank_ic = {}
    switched = _switched_oracles(driver, k, c_day, horizons) if (
        driver is not None and cfg.regime_change_at is not None) else None
    for h in horizons:
        if switched is not None:
            o = switched[h]
        else:
            o = c * _causal_filter(driver, oracle_kernel(k, h)) if driver is not None else np.zeros((t_len, n))
        o = np.where(quoted, o, np.nan)
        y = np.full((t_len, n), np.nan)
        if t_len > h + 1:
            y[: t_len - 1 - h] = obs_close[1 + h:] / obs_close[1: t_len - h] - 1.0
        rank_ic[h] = _spearman_daily(o, y) if driver is not None else 0.0
        oracle[h] = o
    del driver

    # ---- long frames (rows = quoted stock-days, order (Date, Code))
    ti, ni = np.nonzero(quoted)  # row-major = arr[quoted] order: by day, then stock (codes sorted)
    date_arr = np.array(dates, dtype="datetime64[D]")[ti]
    code_s = pl.Series("Code", codes, dtype=pl.String)[ni]
    sector_s = pl.Series("Sector33Code", list(sector_codes), dtype=pl.String)[sector[ni]]
    quotes = pl.DataFrame({
        "Date": pl.Series("Date", date_arr, dtype=pl.Date),
        "Code": code_s,
        "Open": open_[quoted], "High": high[quoted], "Low": low[quoted], "Close": close[quoted],
        "Volume": volume[quoted], "TurnoverValue": turnover[quoted],
        "AdjustmentFactor": np.ones(len(ti)),
        "Sector33Code": sector_s,
    }, schema=CANONICAL_SCHEMA).select(CANONICAL_COLUMNS)
    oracle_df = pl.DataFrame({
        "Date": quotes["Date"], "Code": quotes["Code"],
        **{f"oracle_{h}d": oracle[h][quoted] for h in horizons},
    })
    return SyntheticMarket(
        quotes=quotes,
        oracle=oracle_df,
        oracle_rank_ic={h: rank_ic[h] for h in horizons},
        cluster={codes[i]: int(cluster[i]) for i in range(n)},
        horizons=tuple(horizons),
    )



# --------------------------------------------------------------------------- persistence
ORACLE_FILE = "_oracle.parquet"  # '_' prefix: never read as quotes by scan_store
META_FILE = "_synthetic.json"


def save_market(market: SyntheticMarket, root: str | Path, cfg: SyntheticConfig | None = None) -> list[Path]:
    """Write the quotes into the store ``root`` and the oracle + ground truth next to them
    (``root/_oracle.parquet``, ``root/_synthetic.json``). Returns the files written."""
    from atft_core.data.store import write_store

    root = Path(root)
    written = write_store(market.quotes, root)
    oracle_path, meta_path = root / ORACLE_FILE, root / META_FILE
    atomic_write_bytes(oracle_path, lambda fh: market.oracle.write_parquet(fh, compression="zstd"))
    meta = {
        "horizons": list(market.horizons),
        "oracle_rank_ic": {str(h): v for h, v in market.oracle_rank_ic.items()},
        "cluster": market.cluster,
        "config": cfg.model_dump(mode="json") if cfg is not None else None,
    }
    atomic_write_bytes(meta_path, lambda fh: fh.write(json.dumps(meta, indent=1).encode()))
    return [*written, oracle_path, meta_path]


def load_oracle(root: str | Path) -> tuple[pl.DataFrame, dict]:
    """The oracle frame and the metadata written by :func:`save_market`."""
    root = Path(root)
    path = root / ORACLE_FILE
    if not path.exists():
        raise FileNotFoundError(f"no synthetic oracle at {path} (written by `atft synth`)")
    meta = json.loads((root / META_FILE).read_text())
    return pl.read_parquet(path), meta
