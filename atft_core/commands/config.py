"""`atft config show`: print the resolved config (YAML) after overrides."""

from __future__ import annotations


def register(sub) -> None:
    from atft_core.cli import add_config_args

    p = sub.add_parser("config", help="print the resolved config")
    add_config_args(p)
    p.set_defaults(func=_show)


def _show(args) -> int:
    from atft_core.config import load_config

    cfg = load_config(args.config, args.overrides)
    print(cfg.to_yaml(), end="")
    print(f"# sha256: {cfg.sha256()}")
    return 0
