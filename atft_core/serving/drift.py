"""Population stability index (PSI) of a day's cross-section against the training window.

``PSI = sum_b (a_b - e_b) * ln(a_b / e_b)`` over the bins ``b`` of a reference fixed at training
time (deciles of the training window: :func:`decile_reference`), ``e_b`` = the reference's share
of each bin, ``a_b`` = the day's share. Common reading: < 0.1 stable, 0.1-0.25 moderate, > 0.25
a shift worth acting on (the ``ATFTFeatureDrift`` alert).

Decisions:
* A few lines of numpy rather than evidently / nannyml. ``pip install --dry-run -c
  requirements/lock-py311.txt evidently`` (0.7.23) resolves beside Airflow 3.3's pins, but adds 25
  packages for this one formula (litestar, nltk, statsmodels, scikit-learn, plotly, Faker, and
  iterative-telemetry, which reports usage over the network), and both libraries compute PSI by
  re-binning a reference *frame* on each call, while serving needs bin edges fixed at training
  time and stored with the model (a few hundred bytes instead of the training window).
* Bins are ``(-inf, e1], (e1, e2], ..., (e_k, inf)`` with the duplicate edges of heavily tied
  features (clipped z-scores, zero-filled nulls) dropped, and the reference fractions are counted
  on those bins (not assumed 0.1), so identical distributions give PSI 0 exactly.
* An empty bin's share is floored at :data:`PSI_EPS` (ln 0 is undefined); non-finite values are
  ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

PSI_EPS = 1e-4
DECILES = tuple(np.linspace(0.1, 0.9, 9).round(10))
PSI_ALERT = 0.25


@dataclass(frozen=True)
class BinReference:
    """Bin edges (ascending, unique) and the reference share of each of the len(edges)+1 bins."""

    edges: tuple[float, ...]
    fractions: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.fractions) != len(self.edges) + 1:
            raise ValueError(f"{len(self.edges)} edges need {len(self.edges) + 1} fractions, "
                             f"got {len(self.fractions)}")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError("bin edges must be strictly ascending")

    def to_dict(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "fractions": list(self.fractions)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BinReference:
        return cls(tuple(float(x) for x in d["edges"]), tuple(float(x) for x in d["fractions"]))


def _finite(values: Any) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def bin_shares(edges: tuple[float, ...] | np.ndarray, values: Any) -> np.ndarray:
    """Share of finite ``values`` in each bin ``(-inf, e1], ..., (e_k, inf)``."""
    v = _finite(values)
    if v.size == 0:
        raise ValueError("no finite values to bin")
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), v, side="left")
    return np.bincount(idx, minlength=len(edges) + 1) / v.size


def decile_reference(values: Any, quantiles: tuple[float, ...] = DECILES) -> BinReference:
    """Reference bins from training-window values: their deciles and the shares they hold."""
    v = _finite(values)
    if v.size == 0:
        raise ValueError("no finite values for a reference")
    edges = np.unique(np.quantile(v, quantiles))
    return BinReference(tuple(float(e) for e in edges), tuple(float(s) for s in bin_shares(edges, v)))


def psi(reference: BinReference, actual: Any) -> float:
    """PSI of ``actual`` values against ``reference`` (0 = same shares per bin)."""
    a = np.maximum(bin_shares(reference.edges, actual), PSI_EPS)
    e = np.maximum(np.asarray(reference.fractions, dtype=np.float64), PSI_EPS)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_samples(expected: Any, actual: Any) -> float:
    """PSI of ``actual`` against deciles of ``expected`` (both raw samples)."""
    return psi(decile_reference(expected), actual)


def feature_psi(reference: Mapping[str, BinReference], frame: Any) -> dict[str, float]:
    """PSI per feature of a day's frame (columns named as in ``reference``); missing -> error."""
    missing = [k for k in reference if k not in frame.columns]
    if missing:
        raise ValueError(f"drift: the day's frame lacks feature column(s) {missing[:5]}")
    return {k: psi(ref, frame.get_column(k).to_numpy()) for k, ref in reference.items()}


REFERENCE_FILE = "drift_reference.json"


def training_reference(x: np.ndarray, feature_names: tuple[str, ...],
                       predictions: Mapping[str, np.ndarray], window: Mapping[str, Any]) -> dict[str, Any]:
    """The ``drift_reference.json`` payload: deciles of every feature over the training window's
    usable stock-days (``x`` (N, F), as the model saw them) and of the predictions per horizon."""
    if x.ndim != 2 or x.shape[1] != len(feature_names):
        raise ValueError(f"x has shape {x.shape}, expected (N, {len(feature_names)})")
    return {
        "format": 1,
        "features": {n: decile_reference(x[:, j]).to_dict() for j, n in enumerate(feature_names)},
        "prediction": {k: decile_reference(v).to_dict() for k, v in predictions.items()},
        "window": dict(window),
    }


def load_reference(payload: Mapping[str, Any]) -> tuple[dict[str, BinReference], dict[str, BinReference]]:
    """(feature references, prediction references) from a ``drift_reference.json`` payload."""
    feats = {k: BinReference.from_dict(v) for k, v in payload["features"].items()}
    preds = {k: BinReference.from_dict(v) for k, v in payload.get("prediction", {}).items()}
    return feats, preds


def day_drift(signal: Any) -> dict[str, Any]:
    """PSI of a :class:`~atft_core.serving.predict.DaySignal`'s features and predictions against
    the reference stored with its model; ``{"skipped": why}`` for a model trained before it."""
    if signal.drift_reference is None:
        return {"skipped": f"run {signal.run_id} has no {REFERENCE_FILE} (trained before drift "
                           "references were stored)"}
    feats, preds = load_reference(signal.drift_reference)
    fpsi = feature_psi(feats, signal.features)
    ppsi = {k: psi(ref, signal.frame.get_column(k).to_numpy())
            for k, ref in preds.items() if k in signal.frame.columns}
    return {"feature_psi": fpsi, "prediction_psi": ppsi,
            "features_over_alert": sorted(k for k, v in fpsi.items() if v > PSI_ALERT)}

