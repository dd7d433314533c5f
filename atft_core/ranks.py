"""One average-rank implementation for every numpy caller (targets, synthetic oracle, metrics).

``average_ranks(x, axis)``: 1-based ranks along ``axis`` with ties sharing their mean rank
(scipy.stats.rankdata's 'average' method, i.e. Spearman's definition), vectorised over the other
axes: one stable argsort plus two running scans that find each tie group's first and last
position. NaNs rank after every number and never tie with each other, so ranking over a subset
is ``average_ranks(np.where(valid, x, np.nan))``: the valid entries get exactly the ranks 1..n of
the subset and the caller masks the rest. (Polars frames use polars' own ``rank("average")``;
the differentiable training ranks live in atft_core.losses.)
"""

from __future__ import annotations

import numpy as np


def average_ranks(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Average ranks (float64, 1-based) of ``x`` along ``axis``; NaNs last. Same shape as ``x``."""
    y = np.moveaxis(np.asarray(x, dtype=np.float64), axis, 0)
    n = y.shape[0]
    if n == 0:
        return np.moveaxis(np.empty(y.shape, dtype=np.float64), 0, axis)
    order = np.argsort(y, axis=0, kind="stable")
    s = np.take_along_axis(y, order, axis=0)
    pos = np.broadcast_to(np.arange(n).reshape((n,) + (1,) * (y.ndim - 1)), y.shape)
    differs = s[1:] != s[:-1]  # NaN != NaN: NaNs never tie
    edge = np.ones((1,) + y.shape[1:], dtype=bool)
    is_first = np.concatenate([edge, differs], axis=0)
    is_last = np.concatenate([differs, edge], axis=0)
    first = np.maximum.accumulate(np.where(is_first, pos, 0), axis=0)
    last = np.flip(np.minimum.accumulate(np.flip(np.where(is_last, pos, n), 0), axis=0), 0)
    ranks = np.empty(y.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=0)
    return np.moveaxis(ranks, 0, axis)
