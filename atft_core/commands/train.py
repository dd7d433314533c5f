"""`atft train`, `atft evaluate`, `atft hpo`: the phased trainer from the command line.

    atft train [--config NAME] [--run-dir DIR] [--resume/--no-resume] [--nproc N] [key=value ...]
    atft evaluate (--run-dir DIR | --weights FILE --config NAME) [--window holdout|val|START:END]
    atft hpo [--config NAME] [--trials N] [--study NAME] [--storage URL] [key=value ...]

Data always comes from cfg.data (synthetic market, or a parquet source in [start, end]).
Input problems found while running (too few days for the splits, a window without dates, weights
that do not fit the config) are ValueErrors with a message naming the problem: printed as one
``atft train: ...`` line, exit 2. Disk/permission/checkpoint failures are explained by atft_core.cli.
"""

from __future__ import annotations

import json
import logging
import sys


def register(sub) -> None:
    from atft_core.cli import add_config_args

    p = sub.add_parser("train", help="train a candidate (phased trainer, resumable)")
    add_config_args(p)
    p.add_argument("--run-dir", default=None, help="output dir (default: {run_root}/{config sha[:12]})")
    p.add_argument("--resume", dest="resume", action="store_true", default=True,
                   help="continue from the run dir's last checkpoint (default)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start from scratch (an earlier run in the run dir is moved to DIR.prev-TIME)")
    p.add_argument("--nproc", type=int, default=None,
                   help="processes (torch.distributed via the torchrun launcher; NCCL on GPUs, gloo on "
                        "CPU; default train.nproc). The run resumes with any N")
    p.set_defaults(func=_input_errors(_train, "train"))

    e = sub.add_parser("evaluate", help="evaluate saved weights on a window -> metrics JSON")
    add_config_args(e)
    e.add_argument("--run-dir", default=None, help="run dir with model.safetensors + config.yaml")
    e.add_argument("--weights", default=None, help="a safetensors file (with --config)")
    e.add_argument("--window", default="holdout", help="holdout | val | START:END (ISO dates)")
    e.add_argument("--out", default=None, help="write the metrics JSON here (default: stdout)")
    e.add_argument("--predictions", default=None, help="also write the predictions parquet here")
    e.set_defaults(func=_input_errors(_evaluate, "evaluate"))

    h = sub.add_parser("hpo", help="Optuna TPE + median pruning over the same train loop")
    add_config_args(h)
    h.add_argument("--trials", type=int, default=None,
                   help="finished trials the study should hold; any number of `atft hpo` workers on the "
                        "same --storage share the work (default hpo.n_trials)")
    h.add_argument("--study", default=None, help="study name (default hpo.study_name)")
    h.add_argument("--storage", default=None, help="Optuna storage URL (default hpo.storage)")
    h.set_defaults(func=_input_errors(_hpo, "hpo"))


def _input_errors(func, name: str):
    """Run ``func``; a ValueError (bad data/window/weights for this config) -> one line, exit 2."""
    import functools

    from atft_core.config import ConfigError

    @functools.wraps(func)
    def run(args) -> int:
        try:
            return func(args)
        except ConfigError:
            raise  # cli.main prints config errors
        except ValueError as err:
            print(f"atft {name}: {err}", file=sys.stderr)
            return 2

    return run


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def _train(args) -> int:
    from pathlib import Path

    from atft_core.config import load_config
    from atft_core.graph_store import store_dir
    from atft_core.train import ddp, hpo
    from atft_core.train.api import load_features, train_run

    _logging()
    cfg = hpo.resolve_config(load_config(args.config, args.overrides))
    nproc = cfg.train.nproc if args.nproc is None else args.nproc
    ddp.check_settings(cfg, nproc)  # ValueError -> one line, exit 2 (_input_errors)
    run_dir = Path(args.run_dir) if args.run_dir else Path(cfg.run_root) / ddp.identity_sha256(cfg)[:12]
    graphs = store_dir(cfg)  # day graphs shared with earlier runs and the other ranks
    if ddp.launched_by_torchrun():  # `torchrun ... -m atft_core.cli train`: this process is one rank
        summary = ddp.train_as_rank(cfg, run_dir, args.resume, graph_store=graphs)
        if summary is not None:
            print(json.dumps(summary, indent=2, default=str))
        return 0
    if nproc > 1:
        try:
            summary = ddp.launch_train(cfg, run_dir, nproc, resume=args.resume, graph_store=graphs)
        except ddp.LaunchError as err:
            print(f"atft train: {err}", file=sys.stderr)
            return 1
    else:
        cfg = ddp.without_nproc(cfg)
        summary = ddp.run_summary(train_run(cfg, load_features(cfg), run_dir, resume=args.resume,
                                            graph_store=graphs))
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _evaluate(args) -> int:
    from pathlib import Path

    from atft_core.config import config_from_yaml_text, load_config
    from atft_core.train.api import evaluate_checkpoint, load_features

    _logging()
    if bool(args.run_dir) == bool(args.weights):
        print("atft evaluate: give exactly one of --run-dir or --weights", file=sys.stderr)
        return 2
    if args.run_dir:
        model_cfg = config_from_yaml_text((Path(args.run_dir) / "config.yaml").read_text())
        target = args.run_dir
    else:
        model_cfg = load_config(args.config, args.overrides)
        target = args.weights
    # the data window: the run's own config unless overrides/--config say otherwise
    data_cfg = load_config(args.config, args.overrides) if (args.overrides or args.config != "default") else model_cfg
    feats = load_features(data_cfg)
    out = evaluate_checkpoint(target, feats, window=args.window, cfg=model_cfg, split_cfg=data_cfg,
                              predictions_path=args.predictions)
    text = json.dumps(out, indent=2, default=str)
    if args.out:
        from atft_core.train.checkpoint import atomic_write_text

        atomic_write_text(args.out, text)
    else:
        print(text)
    return 0


def _hpo(args) -> int:
    from atft_core.config import load_config
    from atft_core.train import hpo
    from atft_core.train.api import load_features

    _logging()
    cfg = load_config(args.config, args.overrides)
    storage = args.storage or cfg.hpo.storage
    if args.trials is not None and args.trials < 1:
        print(f"atft hpo: --trials must be >= 1, got {args.trials}", file=sys.stderr)
        return 2
    study = hpo.create_study(cfg, study_name=args.study, storage=storage)
    feats = load_features(cfg)
    for r in hpo.run_worker(cfg, feats, study_name=study.study_name, storage=storage, n_trials=args.trials):
        print(json.dumps(r, default=str))
    summary = hpo.summarise(study.study_name, storage)
    if summary["best"] is not None:
        summary["best_params_path"] = str(hpo.write_best_overrides(
            storage, study.study_name, hpo.best_params_path(cfg, study.study_name)))
    print(json.dumps(summary, indent=2, default=str))
    return 0
