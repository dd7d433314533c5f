"""Splits, the dense per-stock panel and the day-batch loader (SPEC 3.4, 3.5).

Run order: ``build_features`` -> :func:`build_panel` (dense arrays, built once) ->
:func:`make_splits` on ``panel.usable_dates()`` -> :class:`DayBatchLoader` per split.

Decisions:

* **Cross-section.** A stock-day is in its day's cross-section (``panel.usable``) when the stock
  has a real row with a Close that day and at least ``cfg.features.min_history`` real rows up to
  and including it. Targets are masked outside the cross-section.
* **Missing features.** Null features (undefined early in a stock's life, or gaps) become 0 in
  ``panel.x``, i.e. the day's cross-sectional median after the robust z; days without a row are 0
  too. Window steps before the panel's first day are 0.
* **Per-day target normalisation** (training only) is computed once in the panel over each day's
  cross-section: rank-gauss = ``ndtri((rank - 0.5) / n)`` with average ranks for ties, or z =
  (y - mean) / std. Masked entries are 0 in ``y``, NaN in ``y_raw``, False in ``mask``. Nothing is
  fitted across days, so no statistic of a later window leaks into training.
* **Splits.** ``train | gap | val | gap | holdout`` where gap = purge + embargo trading days
  (purge defaults to 1 + max horizon, so no training label overlaps a val day; the embargo adds
  extra distance against slow-decaying serial correlation). The holdout is the most recent days
  whose labels are known for every horizon; the last ``1 + max horizon`` days (labels unknown) are
  ``Splits.unlabelled`` (the inference days).
* **Graphs** are built per day from ``panel.returns`` over the trailing ``cfg.graph.corr_window``
  days ending at t (inclusive) for that day's cross-section, and cached on the panel
  (``panel.graph_cache``; first use builds, later epochs and other loaders reuse). Memory: about
  16 bytes per edge (int32 pair + two float32), ~1.5 MB per day at 4,000 stocks. With
  ``panel.graph_store`` (:mod:`atft_core.graph_store`) a day another process or run built is
  read from disk instead, and each newly built day is stored there.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import Tensor

from atft_core.batch import DayBatch
from atft_core.config import Config, GraphConfig
from atft_core.features import feature_columns, target_columns
from atft_core.graph import build_day_graph, build_day_graphs
from atft_core.ranks import average_ranks  # noqa: F401 (re-exported: atft_core.dataset.average_ranks)


# --------------------------------------------------------------------------- splits
@dataclass(frozen=True)
class Splits:
    """Date lists of the nightly windows (each sorted, pairwise disjoint)."""

    train: list[dt.date]
    val: list[dt.date]
    holdout: list[dt.date]
    unlabelled: list[dt.date]  # the last 1 + max(h) days: some label still unknown
    gap_days: int  # purge + embargo between consecutive windows


def _as_dates(dates) -> list[dt.date]:
    if isinstance(dates, pl.Series):
        dates = dates.to_list()
    elif isinstance(dates, np.ndarray):
        dates = [dt.date.fromisoformat(str(d)[:10]) for d in dates]
    out = sorted(set(dates))
    if out and not isinstance(out[0], dt.date):
        raise TypeError(f"dates must be datetime.date values, got {type(out[0]).__name__}")
    return out


def make_splits(dates: Sequence[dt.date] | pl.Series | np.ndarray, cfg: Config) -> Splits:
    """train | purge+embargo | val | purge+embargo | holdout over consecutive trading days.

    Raises ValueError naming the shortfall when there are not enough days.
    """
    days = _as_dates(dates)
    sc = cfg.split
    horizon_lag = 1 + max(cfg.horizons)
    purge = cfg.purge_days
    if purge < horizon_lag:
        raise ValueError(f"split.purge_days={purge} < 1 + max horizon = {horizon_lag}: labels would overlap")
    gap = purge + sc.embargo_days
    min_train = sc.train_days or 20
    need = min_train + gap + sc.val_days + gap + sc.holdout_days + horizon_lag
    if len(days) < need:
        raise ValueError(
            f"not enough trading days for the splits: have {len(days)}, need {need} "
            f"(train>={min_train} + gap {gap} + val {sc.val_days} + gap {gap} + holdout "
            f"{sc.holdout_days} + {horizon_lag} unlabelled)"
        )
    labelled, unlabelled = days[: len(days) - horizon_lag], days[len(days) - horizon_lag :]
    n = len(labelled)
    h0 = n - sc.holdout_days
    v1 = h0 - gap
    v0 = v1 - sc.val_days
    t1 = v0 - gap
    t0 = 0 if sc.train_days is None else max(0, t1 - sc.train_days)
    return Splits(
        train=labelled[t0:t1], val=labelled[v0:v1], holdout=labelled[h0:], unlabelled=unlabelled,
        gap_days=gap,
    )


# --------------------------------------------------------------------------- panel
@dataclass(frozen=True)
class Panel:
    """Dense per-stock arrays over all dates (S stocks, T dates, F features, H horizons).

    Shapes:
        x:       (S, T, F) float32  robust-z features; 0 where null / no row
        y:       (S, T, H) float32  per-day normalised target; 0 where masked
        y_raw:   (S, T, H) float32  raw executable return; NaN where masked
        mask:    (S, T, H) bool     target known and stock-day in the cross-section
        usable:  (S, T)    bool     stock-day in its day's cross-section
        returns: (S, T)    float32  raw 1-day log return (graph input); NaN where missing
        sector:  (S, T)    int32    sector id that day (index into ``sector_codes``), -1 = unknown
    """

    dates: tuple[dt.date, ...]
    codes: np.ndarray
    feature_names: tuple[str, ...]
    horizons: tuple[int, ...]
    x: Tensor
    y: Tensor
    y_raw: Tensor
    mask: Tensor
    usable: Tensor
    returns: Tensor
    sector: Tensor
    sector_codes: tuple[str, ...]
    # day graphs built so far, keyed by (day index, graph config): shared by every loader on
    # this panel, so neither a new epoch nor a new loader (next phase, val) rebuilds them
    graph_cache: dict = field(default_factory=dict, repr=False, compare=False)
    # day graphs on disk across processes and runs (atft_core.graph_store.GraphStore); None = off
    graph_store: Any = field(default=None, repr=False, compare=False)

    @property
    def num_stocks(self) -> int:
        return int(self.x.shape[0])

    def date_index(self, dates: Sequence[dt.date]) -> np.ndarray:
        """Positions of ``dates`` on the panel's time axis; raises naming unknown dates."""
        pos = {d: i for i, d in enumerate(self.dates)}
        missing = [d for d in dates if d not in pos]
        if missing:
            raise KeyError(f"{len(missing)} date(s) not in the panel, e.g. {missing[:3]}")
        return np.asarray([pos[d] for d in dates], dtype=np.int64)

    def usable_dates(self, min_stocks: int = 2) -> list[dt.date]:
        """Dates whose cross-section has at least ``min_stocks`` stocks."""
        counts = self.usable.sum(0).numpy()
        return [d for d, c in zip(self.dates, counts) if c >= min_stocks]


def normalise_targets(y_raw: np.ndarray, mask: np.ndarray, how: str) -> np.ndarray:
    """Per-day (axis 0 = stocks) normalisation of (S, T, H) targets over ``mask``; 0 elsewhere."""
    y = np.where(mask, y_raw, np.nan).astype(np.float64)
    n = mask.sum(0, keepdims=True)  # (1, T, H)
    if how == "rankgauss":
        r = average_ranks(y)  # masked entries rank last and are zeroed below
        u = np.where(mask, (r - 0.5) / np.maximum(n, 1), 0.5)
        out = torch.special.ndtri(torch.from_numpy(u)).numpy()
    elif how == "zscore":
        y0 = np.nan_to_num(y, nan=0.0)
        cnt = np.maximum(n, 1)
        mu = y0.sum(0, keepdims=True) / cnt
        sd = np.sqrt((np.where(mask, y0 - mu, 0.0) ** 2).sum(0, keepdims=True) / cnt)
        out = np.where(sd > 0, (y0 - mu) / np.where(sd > 0, sd, 1.0), 0.0)
    else:
        raise ValueError(f"unknown target normalisation {how!r}; use 'rankgauss' or 'zscore'")
    # a single-stock day has no cross-sectional information: its normalised target is 0
    out = np.where(mask & (n > 1), out, 0.0)
    return np.nan_to_num(out, nan=0.0).astype(np.float32)


def build_panel(features: pl.DataFrame, cfg: Config) -> Panel:
    """Long feature frame (``build_features`` output) -> dense :class:`Panel`."""
    columns = feature_columns(cfg)
    need = {"Date", "Code", "Sector33Code", "history_days", "ret_1d_raw", *columns,
            *target_columns(cfg.horizons)}
    missing = sorted(need - set(features.columns))
    if missing:
        raise ValueError(f"features frame lacks column(s) {missing}; build it with build_features")
    if features.is_empty():
        raise ValueError("features frame is empty")
    idx = features.select(
        (pl.col("Date").rank("dense") - 1).alias("t"), (pl.col("Code").rank("dense") - 1).alias("s")
    )
    s_idx = idx.get_column("s").to_numpy().astype(np.int64)
    t_idx = idx.get_column("t").to_numpy().astype(np.int64)
    dates = features.get_column("Date").unique().sort()
    codes = features.get_column("Code").unique().sort()
    S, T, F, H = len(codes), len(dates), len(columns), len(cfg.horizons)
    if np.bincount(s_idx * T + t_idx, minlength=S * T).max() > 1:
        raise ValueError("features frame has duplicate (Date, Code) rows")
    f = features

    x = np.zeros((S, T, F), dtype=np.float32)
    x[s_idx, t_idx] = np.nan_to_num(f.select(columns).to_numpy().astype(np.float32), nan=0.0)
    usable = np.zeros((S, T), dtype=bool)
    usable[s_idx, t_idx] = f.get_column("history_days").to_numpy() >= cfg.features.min_history
    y_raw = np.full((S, T, H), np.nan, dtype=np.float32)
    y_raw[s_idx, t_idx] = f.select(target_columns(cfg.horizons)).to_numpy().astype(np.float32)
    mask = np.isfinite(y_raw) & usable[:, :, None]
    y_raw = np.where(mask, y_raw, np.nan).astype(np.float32)
    y = normalise_targets(y_raw, mask, cfg.dataset.target_norm)
    returns = np.full((S, T), np.nan, dtype=np.float32)
    returns[s_idx, t_idx] = f.get_column("ret_1d_raw").to_numpy().astype(np.float32)

    # sector of each stock-day as known that day (features forward-fill it point in time)
    sector_col = f.get_column("Sector33Code")
    sector_codes = tuple(sorted(sector_col.drop_nulls().unique().to_list()))
    sid = pl.Series("sid", range(len(sector_codes)), dtype=pl.Int32)
    ids = sector_col.replace_strict(pl.Series(sector_codes, dtype=pl.String), sid, default=-1)
    sector = np.full((S, T), -1, dtype=np.int32)
    sector[s_idx, t_idx] = ids.to_numpy()

    return Panel(
        dates=tuple(dates.to_list()),
        codes=codes.to_numpy().astype(str),
        feature_names=columns,
        horizons=tuple(cfg.horizons),
        x=torch.from_numpy(x),
        y=torch.from_numpy(y),
        y_raw=torch.from_numpy(y_raw),
        mask=torch.from_numpy(mask),
        usable=torch.from_numpy(usable),
        returns=torch.from_numpy(returns),
        sector=torch.from_numpy(sector),
        sector_codes=sector_codes,
    )


# --------------------------------------------------------------------------- loader
def gather_windows(x: Tensor, stock: Tensor, t: Tensor, lookback: int) -> Tensor:
    """Index-gather of lookback windows ending at t (inclusive); steps before day 0 are 0.

    Shapes: x (S, T, F), stock (N,), t (N,) -> (N, L, F).
    """
    s_, t_, f = x.shape
    steps = t[:, None] + torch.arange(1 - lookback, 1)[None, :]  # (N, L)
    valid = steps >= 0
    rows = (stock[:, None] * t_ + steps.clamp(min=0)).reshape(-1)  # (N * L,) rows of x as (S*T, F)
    # index_select on the flat (S*T, F) view: 2x an advanced x[stock, steps] gather (issue 15)
    w = x.reshape(s_ * t_, f).index_select(0, rows).view(len(stock), lookback, f)  # (N, L, F)
    if not bool(valid.all()):
        w = w * valid[:, :, None]
    return w


def graph_inputs(panel: Panel, stocks: Tensor, t: int, cfg: GraphConfig) -> tuple[Tensor, Tensor]:
    """The day graph's inputs for day index t: trailing returns (N, W) up to t, sectors (N,)."""
    t0 = max(0, t - cfg.corr_window + 1)
    return panel.returns[stocks, t0 : t + 1], panel.sector[stocks, t].to(torch.int64)


def day_graph(panel: Panel, stocks: Tensor, t: int, cfg: GraphConfig) -> tuple[Tensor, Tensor]:
    """Graph of day index t over the given stocks (node i = stocks[i]); data up to t only."""
    return build_day_graph(*graph_inputs(panel, stocks, t, cfg), cfg)


# One batched graph pass holds ~20 bytes of (D, N, N) temporaries per entry: 4M entries ~ 80 MB
# (4 days of 1,000 stocks at a time; one day of 4,000 stocks is 16M, built alone).
GRAPH_PASS_ELEMENTS = 4_000_000


class DayBatchLoader:
    """Iterable of :class:`DayBatch` over the given dates, ``days_per_batch`` days each.

    Days with fewer than 2 stocks in the cross-section are dropped at construction. With
    ``shuffle`` the day order is a permutation seeded by ``seed + epoch`` (call ``set_epoch``);
    without it days come in date order. Days inside a batch are in date order.
    """

    def __init__(
        self,
        panel: Panel,
        dates: Sequence[dt.date],
        cfg: Config,
        shuffle: bool = False,
        seed: int = 0,
        cache_graphs: bool = True,
    ) -> None:
        self.panel = panel
        self.cfg = cfg
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.lookback = cfg.dataset.lookback
        self.days_per_batch = cfg.dataset.days_per_batch
        t_all = panel.date_index(list(dates))
        counts = panel.usable[:, torch.from_numpy(t_all)].sum(0) if len(t_all) else torch.zeros(0)
        self.t_index = np.sort(t_all[(counts >= 2).numpy()]) if len(t_all) else t_all
        self._stocks: dict[int, Tensor] = {}
        self.cache_graphs = cache_graphs

    def __len__(self) -> int:
        return math.ceil(len(self.t_index) / self.days_per_batch)

    @property
    def num_days(self) -> int:
        return len(self.t_index)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def day_order(self) -> np.ndarray:
        if not self.shuffle:
            return self.t_index
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return self.t_index[torch.randperm(len(self.t_index), generator=g).numpy()]

    def __iter__(self) -> Iterator[DayBatch]:
        order = self.day_order()
        for i in range(0, len(order), self.days_per_batch):
            yield self.make_batch(np.sort(order[i : i + self.days_per_batch]))

    def stocks_of(self, t: int) -> Tensor:
        s = self._stocks.get(t)
        if s is None:
            s = torch.nonzero(self.panel.usable[:, t]).squeeze(1)
            self._stocks[t] = s
        return s

    def _cached_graph(self, t: int) -> tuple[Tensor, Tensor]:
        ei, ea = self.panel.graph_cache[(t, self.cfg.graph)]
        return ei.to(torch.int64), ea

    def _build_graphs(self, t_days: Sequence[int]) -> dict[int, tuple[Tensor, Tensor]]:
        """Graphs of these days in batched passes (graph.build_day_graphs) of at most
        ``GRAPH_PASS_ELEMENTS`` day x stock x stock entries each (one day if a day alone is more).
        Batches of days, not single days, because one pass's fixed cost is ~1 ms; not more days
        than a batch needs, because beyond ~4 days of 200 stocks a day costs no less (measured)."""
        g = self.cfg.graph
        built: dict[int, tuple[Tensor, Tensor]] = {}
        store, keys = self.panel.graph_store, {}
        if store is not None:  # days another process or run already built: read, not rebuilt
            from atft_core.graph_store import graph_key

            missing = []
            for t in map(int, t_days):
                returns, sectors = graph_inputs(self.panel, self.stocks_of(t), t, g)
                keys[t] = graph_key(returns, sectors, g)
                got = store.get(keys[t], sectors)
                if got is None:
                    missing.append(t)
                else:
                    built[t] = got
            t_days = missing

        def build(chunk: list[int]) -> None:
            wins, secs = zip(*(graph_inputs(self.panel, self.stocks_of(u), u, g) for u in chunk))
            built.update(zip(chunk, build_day_graphs(list(wins), list(secs), g)))

        chunk: list[int] = []
        widest = 0  # stocks of the chunk's largest day
        for t in map(int, t_days):
            n = len(self.stocks_of(t))
            if chunk and (len(chunk) + 1) * max(widest, n) ** 2 > GRAPH_PASS_ELEMENTS:
                build(chunk)
                chunk, widest = [], 0
            chunk.append(t)
            widest = max(widest, n)
        if chunk:
            build(chunk)
        if store is not None:
            for t in map(int, t_days):
                store.put(keys[t], *built[t], n=len(self.stocks_of(t)))
        if self.cache_graphs:
            for t, (ei, ea) in built.items():
                self.panel.graph_cache[(t, g)] = (ei.to(torch.int32), ea)  # int32 halves the cache
        return built

    def make_batch(self, t_days: Sequence[int]) -> DayBatch:
        p = self.panel
        g = self.cfg.graph
        built = self._build_graphs([int(t) for t in t_days if (int(t), g) not in p.graph_cache])
        stocks = [self.stocks_of(int(t)) for t in t_days]
        sizes = torch.tensor([len(s) for s in stocks], dtype=torch.int64)
        day_ptr = torch.zeros(len(stocks) + 1, dtype=torch.int64)
        day_ptr[1:] = torch.cumsum(sizes, 0)
        s = torch.cat(stocks)  # (N,)
        t = torch.repeat_interleave(torch.as_tensor(np.asarray(t_days, dtype=np.int64)), sizes)  # (N,)
        graphs = [built[int(td)] if int(td) in built else self._cached_graph(int(td)) for td in t_days]
        edge_index = torch.cat([g[0] + day_ptr[k] for k, g in enumerate(graphs)], dim=1)
        edge_attr = torch.cat([g[1] for g in graphs], dim=0)
        return DayBatch(
            x=gather_windows(p.x, s, t, self.lookback),
            y=p.y[s, t],
            y_raw=p.y_raw[s, t],
            mask=p.mask[s, t],
            edge_index=edge_index,
            edge_attr=edge_attr,
            day_ptr=day_ptr,
            dates=[p.dates[int(td)] for td in t_days],
            codes=p.codes[s.numpy()],
        )


# --------------------------------------------------------------------------- evaluation helper
def predictions_frame(batch: DayBatch, pred: Tensor, horizons: Sequence[int]) -> pl.DataFrame:
    """One row per stock-day of the batch: Date, Code, ``pred_{h}d``, ``y_{h}d`` (raw, null where
    masked). Shapes: pred (N, H)."""
    horizons = tuple(horizons)
    if pred.shape != (batch.num_stock_days, len(horizons)):
        raise ValueError(
            f"pred has shape {tuple(pred.shape)}, expected ({batch.num_stock_days}, {len(horizons)})"
        )
    day = batch.day_index().cpu().numpy()
    pr = pred.detach().float().cpu().numpy()
    yr = batch.y_raw.detach().float().cpu().numpy()
    cols: dict[str, object] = {
        "Date": pl.Series("Date", [batch.dates[k] for k in day], dtype=pl.Date),
        "Code": pl.Series("Code", batch.codes.astype(str), dtype=pl.String),
    }
    for j, h in enumerate(horizons):
        cols[f"pred_{h}d"] = pl.Series(pr[:, j], dtype=pl.Float64)
    for j, h in enumerate(horizons):
        cols[f"y_{h}d"] = pl.Series(yr[:, j], dtype=pl.Float64, nan_to_null=True)
    return pl.DataFrame(cols)
