"""Phased trainer (SPEC 6): one loop for every phase and every HPO trial, atomic self-describing
checkpoints with exact resume, NaN guard, plateau LR, predictions, reports and Optuna HPO.

Public entry points live in :mod:`atft_core.train.api` (``train_run``, ``evaluate_checkpoint``)
and :mod:`atft_core.train.hpo` (``create_study``, ``run_trial``); heavy modules are imported lazily.
"""
