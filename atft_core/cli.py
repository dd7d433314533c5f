"""`atft` command line: subcommands are discovered from :mod:`atft_core.commands`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from atft_core import __version__, commands
from atft_core.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atft", description="ATFT-GAT-FAN retraining toolkit")
    parser.add_argument("--version", action="version", version=f"atft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{mod.name}").register(sub)
    return parser


def add_config_args(p: argparse.ArgumentParser) -> None:
    """The shared ``--config NAME|PATH`` and trailing ``key.path=value`` overrides."""
    p.add_argument("--config", default="default", help="config name in include/configs or a YAML path")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")


def bench_subparsers(sub) -> argparse._SubParsersAction:
    """The shared ``atft bench AREA`` group (created by whichever bench module registers first)."""
    bench = sub.choices.get("bench")
    if bench is None:
        bench = sub.add_parser("bench", help="benchmarks that print figures (no timed asserts)")
    for action in bench._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return bench.add_subparsers(dest="bench_area", metavar="AREA")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        print(f"atft: config error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
