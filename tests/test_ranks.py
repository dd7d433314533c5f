"""One average-rank implementation (atft_core.ranks) serves targets, the synthetic oracle and
the trainer's quick metrics; checked against scipy.stats.rankdata with ties and NaNs."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata, spearmanr

from atft_core import ranks


def test_average_ranks_equal_scipy_along_any_axis_with_ties_and_nans():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 6, size=(7, 9, 3)).astype(np.float64)  # many ties
    for axis in (0, 1, 2, -1):
        np.testing.assert_array_equal(ranks.average_ranks(x, axis=axis), rankdata(x, axis=axis))
    x[rng.random(x.shape) < 0.2] = np.nan
    got = ranks.average_ranks(x, axis=1)
    ok = np.isfinite(x)
    np.testing.assert_array_equal(got[ok], rankdata(x, axis=1, nan_policy="omit")[ok])
    # NaNs rank after every number: within each row the valid ranks are exactly those of the subset
    n_valid = ok.sum(axis=1)
    assert (np.where(ok, got, 0).max(axis=1) <= n_valid).all()
    assert ranks.average_ranks(np.empty((0, 3))).shape == (0, 3)


def test_every_numpy_ranker_is_the_one_implementation():
    from atft_core import dataset
    from atft_core.data import synthetic

    assert dataset.average_ranks is ranks.average_ranks
    rng = np.random.default_rng(2)
    x = rng.standard_normal((30, 50))
    x[:, :10] = 0.0  # a tie block in every row
    valid = rng.random(x.shape) > 0.1
    r = synthetic._row_ranks(x, valid)
    assert r.dtype == np.float32
    for i in range(x.shape[0]):
        np.testing.assert_array_equal(r[i, valid[i]], rankdata(x[i, valid[i]]))
    # the synthetic oracle's daily Spearman against scipy's, on the same rows
    y = x + rng.standard_normal(x.shape)
    y[~valid] = np.nan
    want = np.mean([spearmanr(x[i, valid[i]], y[i, valid[i]])[0] for i in range(x.shape[0])])
    assert abs(synthetic._spearman_daily(x, y) - want) < 1e-6
