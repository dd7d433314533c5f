"""Dense (day x stock) numpy engine behind :func:`atft_core.features.build_features`.

Why a dense grid and not polars ``.over("Code")`` windows: the long-format version spent most of
its time on joins (dense grid, market / sector means, per-day median joins), on a dozen
``over()`` passes and on the final ``sort("Date", "Code")`` (issue 15 item 6: 10.4 s vs pandas
23.9 s on 1,000 x 2,500; this grid: 1.6-1.9 s vs pandas 22-24 s, 12.8-13.8x wall, 8.4-9.0x
CPU seconds, and 7.9-9.2 s for 4,000 x 2,500; ``atft bench features`` on 2 cores shared with
another job, which stretches the 2-thread grid more than single-threaded pandas). On a (T days,
S stocks) C-ordered array a shift is a row slice, a per-stock rolling window is a difference of
two cumulative-sum rows, a cross-sectional statistic is a row reduction, and the real stock-days
in row-major order are already sorted by (Date, Code).
The semantics are those documented in :mod:`atft_core.features`; the pandas reference there is the
independent check.

Exactness rules kept here (tests compare against the pandas reference and require bit-identical
features for the past when later rows change or are cut off):

* Every sum that reaches a feature is accumulated *sequentially* (``np.cumsum`` along time, or
  along the stocks of one day, ``np.bincount`` in (day, stock) order), so a value at t depends on
  rows <= t only and not on how many stocks/days the frame has (pairwise ``sum`` would change its
  blocking with S).
* Rolling sums are ``cumsum[t] - cumsum[t-n]`` of values centred on the stock's *first* value
  (point in time; keeps the cumulative sums small, so the difference loses no digits).
* A window whose values are all equal has a standard deviation of exactly 0, as in pandas, so
  ``x / std`` is inf -> null instead of noise / 1e-17. The test is pandas' own (the run of equal
  consecutive values is as long as the window's count), done with integer counts of value
  changes (:meth:`Rolling.constant`); RSI's "no move in the window" is a constant window of 0.

Speed notes: a (T, S) float64 array is 20 MB per 1,000 stocks, and memory the build touches for
the first time costs system time (page faults), so a block writes each feature into its column
as soon as it is known, and the same-day combinations of stored columns (momentum, sector
relative, residual returns) are computed inside the per-day z instead of stored.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl

NAN = np.nan


@dataclass
class Grid:
    """Canonical quotes scattered onto a (T, S) grid: T market dates x S codes (both sorted)."""

    dates: pl.Series
    codes: pl.Series
    sectors: pl.Series  # sorted distinct sector codes; ``sector`` indexes it (-1 = null)
    present: np.ndarray  # (T, S) bool: a real (clean, unmasked) stock-day
    close: np.ndarray  # (T, S) float64, NaN where not present
    open: np.ndarray | None  # only loaded when a feature needs it
    high: np.ndarray
    low: np.ndarray
    volume: np.ndarray
    turnover: np.ndarray
    sector: np.ndarray  # (T, S) int32, forward-filled within the stock, -1 = null


def load_grid(clean: pl.DataFrame, dates: pl.Series, with_open: bool = True) -> Grid:
    """``clean``: the cleaned quotes (any order); ``dates``: the sorted market dates."""
    codes = clean["Code"].unique().sort()
    T, S = len(dates), len(codes)
    t = dates.search_sorted(clean["Date"]).to_numpy().astype(np.int64)
    code_col = clean["Code"]
    s = (codes.search_sorted(code_col) if codes.null_count() else _positions(codes, code_col))
    s = s.to_numpy().astype(np.int64)
    flat = t * S + s
    present = np.zeros(T * S, bool)
    present[flat] = True

    def dense(values: pl.Series) -> np.ndarray:
        a = np.full(T * S, NAN)
        a[flat] = values.cast(pl.Float64).to_numpy()
        return a.reshape(T, S)

    tv = clean.select(pl.col("TurnoverValue").fill_null(pl.col("Close") * pl.col("Volume")))
    sec_col = clean["Sector33Code"]
    sectors = sec_col.drop_nulls().unique().sort()
    sec = np.full(T * S, -1, np.int32)
    sec[flat] = _positions(sectors, sec_col).cast(pl.Int32).fill_null(-1).to_numpy()
    sec = sec.reshape(T, S)
    # forward fill only: a sector learnt later must not leak backwards (null -> market)
    idx = _ffill_index(sec >= 0)
    sec = sec[np.maximum(idx, 0), np.arange(S)]
    sec[idx < 0] = -1  # before the first known sector: null
    return Grid(
        dates=dates, codes=codes, sectors=sectors, present=present.reshape(T, S),
        close=dense(clean["Close"]), open=dense(clean["Open"]) if with_open else None, high=dense(clean["High"]),
        low=dense(clean["Low"]), volume=dense(clean["Volume"]), turnover=dense(tv.to_series()),
        sector=sec,
    )


def _positions(categories: pl.Series, values: pl.Series) -> pl.Series:
    """Index of each string of ``values`` in ``categories`` (sorted, distinct, no null; a null
    value stays null).

    A cast to an Enum of the categories is a hash lookup per row; ``search_sorted`` on strings
    (a binary search of string compares) took a third of the grid load."""
    return values.cast(pl.Enum(categories)).to_physical()


# --------------------------------------------------------------------------- time-axis helpers
def _ffill_index(valid: np.ndarray) -> np.ndarray:
    """(T, S) row index of the last valid row <= t per column, -1 where none yet."""
    idx = np.where(valid, np.arange(valid.shape[0])[:, None], -1)
    np.maximum.accumulate(idx, axis=0, out=idx)
    return idx


def ffill(x: np.ndarray) -> np.ndarray:
    """The last non-NaN value at or before t per column (NaN before the first)."""
    x = np.ascontiguousarray(x)
    T, S = x.shape
    itype = np.int32 if T * S < 2**31 else np.int64
    # flat index of the cell itself where valid: increasing down a column, so a running max
    # along time is the last valid cell, and one ``take`` gathers it (cheaper than 2-D indexing)
    idx = np.where(np.isnan(x), itype(-1), np.arange(T * S, dtype=itype).reshape(T, S))
    np.maximum.accumulate(idx, axis=0, out=idx)
    out = np.take(x.reshape(-1), idx, mode="clip")
    np.copyto(out, NAN, where=idx < 0)
    return out


def shift(x: np.ndarray, n: int) -> np.ndarray:
    """Value n rows earlier (n > 0) or -n rows later (n < 0); NaN beyond the grid."""
    out = np.full_like(x, NAN)
    if n > 0:
        out[n:] = x[:-n]
    elif n < 0:
        out[:n] = x[-n:]
    else:
        out[:] = x
    return out


def lead(x: np.ndarray, cells: np.ndarray, n: int) -> np.ndarray:
    """``shift(x, -n)`` at the flat (row-major) indices ``cells`` only: NaN beyond the grid."""
    T, S = x.shape
    out = np.take(x.reshape(-1), cells + n * S, mode="clip")
    out[cells >= (T - n) * S] = NAN
    return out


def _window_diff(cs: np.ndarray, n: int) -> np.ndarray:
    """Sum over the trailing window of n rows from a cumulative sum along time."""
    out = np.empty_like(cs)
    out[:n] = cs[:n]
    np.subtract(cs[n:], cs[:-n], out=out[n:])
    return out


def min_samples(window: int) -> int:
    """Rolling statistics need at least half the window (and 2 points for a std)."""
    return max(2, math.ceil(window / 2))


class Rolling:
    """Trailing-window moments of one (T, S) series with NaN = missing (pandas/polars semantics:
    the window is n rows, a statistic needs ``min_periods`` non-missing values in it).

    ``like``: a Rolling over a series with the same missing cells; its counts (and the index of
    each stock's first value) are shared instead of recomputed."""

    def __init__(self, x: np.ndarray, like: Rolling | None = None):
        self.x = x
        if like is None:
            self.missing = np.isnan(x)
            self.ok = ~self.missing
            self.first = np.argmax(self.ok, axis=0)
            self.cnt = np.cumsum(self.ok, axis=0, dtype=np.int32)
            self._counts: dict[int, np.ndarray] = {}
        else:
            self.missing, self.ok, self.first = like.missing, like.ok, like.first
            self.cnt, self._counts = like.cnt, like._counts
        base = x[self.first, np.arange(x.shape[1])]
        self.base = np.where(np.isnan(base), 0.0, base)  # the stock's first value (point in time)
        xc = np.subtract(x, self.base)
        np.copyto(xc, 0.0, where=self.missing)
        self.xc = xc
        self.cs = np.cumsum(xc, axis=0)
        self._sums: dict[int, np.ndarray] = {}
        self._cs2 = None
        self._filled = None
        self._last_change = None

    def count(self, n: int) -> np.ndarray:
        if n not in self._counts:
            self._counts[n] = _window_diff(self.cnt, n)
        return self._counts[n]

    def _sum_c(self, n: int) -> np.ndarray:
        """Window sum of the values centred on the stock's first value."""
        if n not in self._sums:
            self._sums[n] = _window_diff(self.cs, n)
        return self._sums[n]

    def mean(self, n: int, minp: int | None = None) -> np.ndarray:
        k = self.count(n)
        with np.errstate(invalid="ignore", divide="ignore"):
            m = np.divide(self._sum_c(n), k)
        m += self.base
        m[k < (minp or min_samples(n))] = NAN
        return m

    def sum(self, n: int, minp: int) -> np.ndarray:
        k = self.count(n)
        s = _window_diff(self.cs, n) + k * self.base
        s[k < minp] = NAN
        return s

    def std(self, n: int, minp: int | None = None) -> np.ndarray:
        if self._cs2 is None:
            self._cs2 = np.cumsum(np.multiply(self.xc, self.xc), axis=0)
        k = self.count(n).astype(np.float64)
        s1 = self._sum_c(n)
        with np.errstate(invalid="ignore", divide="ignore"):
            var = s1 * s1
            var /= k
            np.subtract(_window_diff(self._cs2, n), var, out=var)
            var /= k - 1
        np.maximum(var, 0.0, out=var)
        var[self.constant(n)] = 0.0  # all values equal: exactly 0, as pandas
        out = np.sqrt(var, out=var)
        out[k < (minp or min_samples(n))] = NAN
        return out

    def constant(self, n: int) -> np.ndarray:
        """True where every non-missing value in the trailing window of n rows is the same.

        pandas' test (a run of equal consecutive values as long as the window's count): the
        values in the window are the stock's non-missing values number cnt[t-n] .. cnt[t]-1, so
        they are all equal when the last change of value came at or before number cnt[t-n]."""
        if self._last_change is None:
            x, ok = self.x, self.ok
            prev = self.filled()
            change = ok.copy()
            with np.errstate(invalid="ignore"):
                change[1:] &= x[1:] != prev[:-1]  # no earlier value (NaN) counts as a change
            last = np.where(change, self.cnt - 1, np.int32(-1))  # values before the change
            np.maximum.accumulate(last, axis=0, out=last)
            self._last_change = last
        return self._last_change <= self.cnt - self.count(n)

    def filled(self) -> np.ndarray:
        """The last non-missing value at or before t (NaN before the first)."""
        if self._filled is None:
            self._filled = ffill(self.x)
        return self._filled

    def all_zero(self, n: int) -> np.ndarray:
        """True where the window's non-missing values are all exactly 0 (undefined where the
        window has none: every statistic is null there)."""
        return self.constant(n) & (self.filled() == 0)


# --------------------------------------------------------------------------- cross-section
def row_sum(x: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Per-day sum over ``ok`` cells, accumulated in stock order (independent of S)."""
    return np.cumsum(np.where(ok, x, 0.0), axis=1)[:, -1] if x.shape[1] else np.zeros(x.shape[0])


def day_mean(x: np.ndarray, ok: np.ndarray) -> np.ndarray:
    n = ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, row_sum(x, ok) / n, NAN)


def peer_mean(x: np.ndarray, ok: np.ndarray, sector: np.ndarray, n_sectors: int) -> np.ndarray:
    """(T, S): the same-day mean of x over the stock's sector (market where the sector is null)."""
    T, S = x.shape
    mkt = np.broadcast_to(day_mean(x, ok)[:, None], x.shape)
    sel = ok & (sector >= 0)
    key = (np.arange(T, dtype=np.int64)[:, None] * max(n_sectors, 1) + sector)
    k = key[sel]
    tot = np.bincount(k, weights=x[sel], minlength=T * max(n_sectors, 1))
    cnt = np.bincount(k, minlength=T * max(n_sectors, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        sec_mean = (tot / cnt)[np.maximum(key, 0)]
    return np.where(sector >= 0, sec_mean, mkt)


# --------------------------------------------------------------------------- robust z
def _row_median(w: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Per-row median of a padded row (see :func:`robust_z`) with n real values; NaN if n == 0.

    The median's two candidates sit at positions W/2-1 and W/2 whatever n is, so one
    partition at W/2 serves every row; the lower one is the maximum left of it. ``w`` is
    partitioned in place (a scratch copy of the pads)."""
    hi = w.shape[1] // 2
    w.partition(hi, axis=1)
    upper, lower = w[:, hi], w[:, :hi].max(axis=1)
    with np.errstate(invalid="ignore"):  # n == 0: -inf + inf, replaced below
        med = np.where(n % 2 == 0, (lower.astype(np.float64) + upper) / 2, lower)
    med[n == 0] = NAN
    return med


def day_std(v: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Per-row sample std (ddof=1) of the ``ok`` cells, sequential sums."""
    n = ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = row_sum(v, ok) / n
        d = v - mean[:, None]
        return np.where(n > 1, np.sqrt(row_sum(d * d, ok) / (n - 1)), NAN)


class _Pads:
    """The padding of :func:`robust_z` for one mask of usable cells (rows, S): the k cells of a
    row that do not enter the statistics hold floor(k/2) times -inf and the rest +inf (the row
    padded to an even width W), which puts every row's median at positions W/2-1 and W/2 whatever
    its count. Many features share a mask on a day block, so the pads are built once per mask."""

    def __init__(self, ok: np.ndarray):
        rows, S = ok.shape
        W = S + (S % 2)
        self.n = ok.sum(axis=1)
        neg = np.cumsum(~ok, axis=1, dtype=np.int32) <= ((W - self.n) // 2)[:, None]
        self.f64 = np.full((rows, W), np.inf)  # a padding column is +inf: its rank is the row's last
        np.copyto(self.f64[:, :S], -np.inf, where=neg)
        self.f32 = self.f64.astype(np.float32)
        self.off = np.ones((rows, W), bool)  # the cells that hold a pad
        np.logical_not(ok, out=self.off[:, :S])


def robust_z(x: np.ndarray, present: np.ndarray, usable: np.ndarray, clip: float,
             mad_scale: float, eps: float, out: np.ndarray,
             pads: dict[bytes, _Pads] | None = None, cells: np.ndarray | None = None) -> None:
    """Per-day robust z of one (rows, S) feature block, written for the present cells (row-major)
    into the float32 ``out``; non-finite inputs are null (NaN).

    Median and MAD per row come from one ``np.partition`` each over the row padded by
    :class:`_Pads` (``pads`` caches them by mask over the calls of one block; ``cells``: the flat
    indices of ``present``). The median is exact (float64); the MAD is selected among float32
    deviations, which changes the scale by at most one float32 rounding (the output is float32)."""
    rows, S = x.shape
    valid = present & np.isfinite(x)
    ok = valid & usable
    key = np.packbits(ok).tobytes()
    pad = pads.get(key) if pads is not None else None
    if pad is None:
        pad = _Pads(ok)
        if pads is not None:
            pads[key] = pad
    n = pad.n
    w = pad.f64.copy()
    np.copyto(w[:, :S], x, where=ok)
    med = _row_median(w, n)
    del w
    dev = np.empty((rows, S))
    with np.errstate(invalid="ignore"):
        np.subtract(x, med[:, None], out=dev)
    # |dev| into every cell, then the pads over it: a masked ufunc that casts is ~3x slower
    w32 = np.empty(pad.f32.shape, np.float32)
    np.abs(dev, out=w32[:, :S], casting="same_kind")
    np.copyto(w32, pad.f32, where=pad.off)
    mad = _row_median(w32, n) * mad_scale
    del w32
    scale = np.where(mad > eps, mad, NAN)
    need = ~(mad > eps)
    if need.any():  # the MAD is ~0 on these days: the day's std is the scale (if it is not ~0)
        sd = day_std(x[need], ok[need])
        scale[need] = np.where(sd > eps, sd, NAN)
    z = np.empty((rows, S), np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        np.divide(dev, scale[:, None], out=dev)
    np.clip(dev, -clip, clip, out=z, casting="same_kind")
    z[np.isnan(scale)] = 0.0  # no spread that day: every stock sits at the median
    np.copyto(z, NAN, where=~valid)
    if cells is None:
        out[:] = z[present]
    else:
        np.take(z.reshape(-1), cells, out=out)


def robust_z_all(raw: dict[str, np.ndarray | Callable[[slice], np.ndarray]], present: np.ndarray,
                 usable: np.ndarray, clip: float, mad_scale: float, eps: float) -> dict[str, np.ndarray]:
    """:func:`robust_z` of every column, day block by day block -> present cells, row-major.
    A column is a (T, S) array or a function giving its rows for a day block."""
    start = np.concatenate([[0], np.cumsum(present.sum(axis=1))])
    out = {f: np.empty(start[-1], np.float32) for f in raw}

    def block(rows: slice) -> None:
        p, u, cells = present[rows], usable[rows], slice(start[rows.start], start[rows.stop])
        flat = np.flatnonzero(p)
        pads: dict[bytes, _Pads] = {}
        for f, x in raw.items():
            x = x(rows) if callable(x) else x[rows]
            robust_z(x, p, u, clip, mad_scale, eps, out[f][cells], pads, flat)

    by_day(block, *present.shape)
    return out


# --------------------------------------------------------------------------- blocks
BLOCK_BYTES = 1 << 21  # one float64 block of ~2 MiB: a step's temporaries stay in cache


def _threads() -> int:
    return max(1, pl.thread_pool_size())  # polars' thread budget (POLARS_MAX_THREADS)


def by_stock(fn, T: int, S: int) -> None:
    """Call ``fn(slice of stocks)`` over blocks of whole stock histories (numpy releases the GIL
    in its kernels, so the blocks run on :func:`_threads` threads)."""
    w = max(8, BLOCK_BYTES // (8 * max(T, 1)))
    _run(fn, [slice(i, min(i + w, S)) for i in range(0, S, w)])


def by_day(fn, T: int, S: int) -> None:
    """Call ``fn(slice of days)`` over blocks of whole days (cross-sections)."""
    h = max(1, BLOCK_BYTES // (8 * max(S, 1)))
    _run(fn, [slice(i, min(i + h, T)) for i in range(0, T, h)])


def _run(fn, blocks: list[slice]) -> None:
    if _threads() == 1 or len(blocks) == 1:
        for b in blocks:
            fn(b)
        return
    with ThreadPoolExecutor(min(_threads(), max(len(blocks), 1))) as pool:
        for _ in pool.map(fn, blocks):  # re-raises a block's exception
            pass
