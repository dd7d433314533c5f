"""Baseline ladder and model families (issue 13): ridge + factors scored like the candidate, the
ridge's run-directory artifact, and ``load_scorer`` -- the one scoring entry point of every family."""

from atft_core.baselines.ladder import FACTORS, Ladder, candidate_ladder, factor_frame, run_ladder
from atft_core.baselines.ridge import (
           RIDGE_FAMILY,
           RidgeModel,
           fit_ridge,
           predict_panel,
           read_ridge,
           solve_ridge,
           write_ridge_run,
)
from atft_core.baselines.scorer import FAMILIES, Scorer, evaluate_ridge_run, load_scorer, run_family

__all__ = ["FACTORS", "FAMILIES", "RIDGE_FAMILY", "Ladder", "RidgeModel", "Scorer", "candidate_ladder", "evaluate_ridge_run", "factor_frame",
           "fit_ridge", "load_scorer", "predict_panel", "read_ridge", "run_family", "run_ladder",
           "solve_ridge", "write_ridge_run"]
