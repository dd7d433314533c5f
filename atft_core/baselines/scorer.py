"""One scoring entry point for every model family (contract in docs/CONTRACTS.md).

``load_scorer(run_dir | LoadedRun) -> Scorer``; ``scorer(features, dates=None)`` returns
``Date, Code, pred_{h}d`` for the usable stock-days of ``dates`` (default: the frame's last date,
the serving day). The family comes from the weights' safetensors metadata (``family``; absent =
``"atft"``, the trainer's runs predate the field).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

FAMILIES = ("atft", "ridge")


def run_family(run_dir: str | Path) -> str:
    """``"atft"`` | ``"ridge"`` of a run directory (ValueError for anything else)."""
    from safetensors import SafetensorError, safe_open

    path = Path(run_dir) / "model.safetensors"
    if not path.is_file():
        raise ValueError(f"{run_dir} holds no model.safetensors")
    try:
        with safe_open(str(path), framework="np") as f:
            raw = (f.metadata() or {}).get("family")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a valid safetensors file: {err}") from None
    family = json.loads(raw) if raw is not None else "atft"
    if family not in FAMILIES:
        raise ValueError(f"{path}: unknown model family {family!r}; known: {list(FAMILIES)}")
    return family


@dataclass
class Scorer:
    """Callable ``(features, dates=None) -> predictions frame`` of one run (see module doc)."""

    family: str
    horizons: tuple[int, ...]
    feature_names: tuple[str, ...]
    run_dir: Path
    _model: Any
    _cfg: Any

    def __call__(self, features: pl.DataFrame, dates: Sequence[dt.date] | None = None) -> pl.DataFrame:
        from atft_core.train.api import as_panel

        missing = [c for c in self.feature_names if c not in features.columns]
        if missing:
            raise ValueError(f"features frame lacks the model's feature column(s) {missing[:5]}")
        panel = as_panel(features, self._cfg)
        if tuple(panel.feature_names) != self.feature_names:
            raise ValueError("the features frame's feature set differs from the model's")
        want = [panel.dates[-1]] if dates is None else sorted(set(dates))
        unknown = [d for d in want if d not in set(panel.dates)]
        if unknown:
            raise ValueError(f"{len(unknown)} date(s) not in the features frame, e.g. {unknown[:3]}")
        if self.family == "ridge":
            from atft_core.baselines.ridge import predict_panel

            frame = predict_panel(self._model, panel, want)
        else:
            from atft_core.train.api import predict_window

            frame = predict_window(self._model, panel, self._cfg, want, "cpu").frame()
        return frame.select("Date", "Code", *(f"pred_{h}d" for h in self.horizons))


def load_scorer(source: Any) -> Scorer:
    """Scorer of a run directory (str | Path) or a ``registry.LoadedRun`` (its ``.path``)."""
    from atft_core.config import config_from_yaml_text

    run_dir = Path(getattr(source, "path", source))
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir} is not a run directory")
    family = run_family(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"{run_dir} holds no config.yaml")
    cfg = config_from_yaml_text((run_dir / "config.yaml").read_text())
    if family == "ridge":
        from atft_core.baselines.ridge import read_ridge

        model = read_ridge(run_dir)
        return Scorer("ridge", model.horizons, model.feature_names, run_dir, model, cfg)
    from atft_core.features import feature_columns
    from atft_core.train.api import load_model

    model, cfg, _ = load_model(run_dir)
    return Scorer("atft", tuple(cfg.horizons), feature_columns(cfg), run_dir, model, cfg)


def evaluate_ridge_run(run_dir: str | Path, frame: pl.DataFrame, split_cfg) -> dict[str, Any]:
    """A ridge run's ``evaluate_predictions`` dict on ``split_cfg``'s holdout of ``frame`` (the
    window ``evaluate_run_dir`` uses for the deep family)."""
    from atft_core.baselines.ridge import predict_panel, read_ridge
    from atft_core.config import config_from_yaml_text
    from atft_core.evaluate import evaluate_predictions
    from atft_core.train.api import as_panel, window_dates

    run_dir = Path(run_dir)
    model = read_ridge(run_dir)
    panel = as_panel(frame, config_from_yaml_text((run_dir / "config.yaml").read_text()))
    dates = window_dates(panel, split_cfg, "holdout")
    out = evaluate_predictions(predict_panel(model, panel, dates), model.horizons)
    out["window"] = {"name": "holdout", "start": str(dates[0]), "end": str(dates[-1]),
                     "n_days": len(dates)}
    out["weights_meta"] = {"family": "ridge", "alpha": model.alpha}
    return out
