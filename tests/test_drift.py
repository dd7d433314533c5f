"""PSI (atft_core.serving.drift) against a slow, obvious reference implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from atft_core.serving.drift import (
    PSI_EPS,
    BinReference,
    decile_reference,
    psi,
    psi_samples,
)


def slow_psi(expected: list[float], actual: list[float]) -> float:
    """Textbook PSI: deciles of `expected` (numpy's default linear quantiles), duplicates
    dropped, bins (-inf, e1], (e1, e2], ..., (ek, inf), shares floored at PSI_EPS."""
    xs = sorted(expected)
    n = len(xs)
    edges = []
    for q in [i / 10 for i in range(1, 10)]:
        pos = q * (n - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, n - 1)
        e = xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
        if not edges or e > edges[-1]:
            edges.append(e)

    def shares(values: list[float]) -> list[float]:
        counts = [0] * (len(edges) + 1)
        for v in values:
            b = 0
            while b < len(edges) and v > edges[b]:
                b += 1
            counts[b] += 1
        return [c / len(values) for c in counts]

    total = 0.0
    for e, a in zip(shares(expected), shares(actual)):
        e, a = max(e, PSI_EPS), max(a, PSI_EPS)
        total += (a - e) * math.log(a / e)
    return total


def test_identical_distribution_is_zero():
    x = np.random.default_rng(0).normal(size=5000)
    assert psi_samples(x, x) == 0.0
    ref = decile_reference(x)
    assert len(ref.edges) == 9 and sum(ref.fractions) == pytest.approx(1.0)
    assert psi(ref, x.copy()[::-1]) == 0.0  # order does not matter


def test_shifted_distribution_is_large_and_same_distribution_small():
    rng = np.random.default_rng(1)
    train = rng.normal(size=20000)
    same = rng.normal(size=3000)
    shifted = rng.normal(loc=1.0, size=3000)
    assert psi_samples(train, same) < 0.02
    assert psi_samples(train, shifted) > 0.25
    assert psi_samples(train, rng.normal(scale=2.0, size=3000)) > 0.25


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_slow_reference(seed):
    rng = np.random.default_rng(seed)
    expected = rng.standard_t(4, size=997)
    actual = rng.standard_t(4, size=503) * 1.3 + 0.2
    assert psi_samples(expected, actual) == pytest.approx(slow_psi(list(expected), list(actual)),
                                                          rel=1e-12, abs=1e-15)


def test_ties_and_empty_bins_match_reference():
    rng = np.random.default_rng(3)
    # heavily tied like a clipped z-score with nulls filled by 0
    expected = np.concatenate([np.zeros(400), np.full(100, 5.0), rng.normal(size=500)])
    actual = np.concatenate([np.full(300, 5.0), rng.normal(size=200)])
    ref = decile_reference(expected)
    assert len(ref.edges) < 9  # duplicates dropped
    assert psi(ref, actual) == pytest.approx(slow_psi(list(expected), list(actual)), rel=1e-12)
    assert psi(ref, actual) > 0.25


def test_non_finite_ignored_and_bad_reference_refused():
    x = np.random.default_rng(4).normal(size=1000)
    assert psi_samples(x, np.concatenate([x, [np.nan, np.inf]])) == 0.0
    with pytest.raises(ValueError, match="no finite"):
        psi_samples(x, [np.nan])
    with pytest.raises(ValueError, match="fractions"):
        BinReference((0.0, 1.0), (0.5, 0.5))
    with pytest.raises(ValueError, match="ascending"):
        BinReference((1.0, 0.0), (0.3, 0.3, 0.4))
    assert BinReference.from_dict(decile_reference(x).to_dict()) == decile_reference(x)
