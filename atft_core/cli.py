"""`atft` command line: subcommands are discovered from :mod:`atft_core.commands`.

Failures a user can act on (config errors, disk full, read-only paths, missing files, corrupt
checkpoints, a run or Data Docs dir that is not atft's) end as one ``atft CMD: ...`` line on
stderr (exit 2: bad input, 1: the machine), see :func:`explain_error`; anything else is a bug
and keeps its traceback. ``ATFT_TRACEBACK=1`` shows the traceback for the explained ones too.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
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
    except Exception as err:  # noqa: BLE001 - known failures become one line, the rest re-raise
        known = explain_error(err)
        if known is None or os.environ.get("ATFT_TRACEBACK"):  # ATFT_TRACEBACK=1: debug
            raise
        message, code = known
        print(f"atft {_command_name(args)}: {message}", file=sys.stderr)
        return code


# errnos that mean "the input path is wrong" (exit 2) rather than "the machine failed" (exit 1)
_INPUT_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR}


def _command_name(args: argparse.Namespace) -> str:
    parts = [args.command] + [v for k, v in vars(args).items()
                              if k.endswith(("_cmd", "_area", "_op")) and isinstance(v, str)]
    return " ".join(p for p in parts if p)


def explain_error(err: BaseException) -> tuple[str, int] | None:
    """(one-line message, exit code) for failures a user can act on; None: a bug, re-raise.

    Disk full (ENOSPC), read-only or unwritable paths and missing files are explained wherever
    they happen (ingest, train, publish, ...); so are unusable checkpoints / weights files and a
    run dir that is not ours. Exit 2 for bad input, 1 for a machine/environment failure."""
    if isinstance(err, OSError) and err.errno is not None:
        where = err.filename or "the target"
        if err.errno == errno.ENOSPC:
            return f"no space left on the device holding {where} (disk full); free space and rerun", 1
        if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return f"cannot write {where}: {err.strerror} (read-only or not permitted)", 1
        if err.errno in _INPUT_ERRNOS:
            return f"{err.strerror}: {where}", 2
        return f"{err.strerror or err}: {where}", 1
    for module, name in _INPUT_ERRORS:
        # a class whose module was never imported cannot have been raised: no import needed
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(err, cls):
            return str(err), 2
    return None


# input errors raised deep inside a command (exit 2, message as is)
_INPUT_ERRORS = (
    ("atft_core.train.checkpoint", "CheckpointError"),  # corrupt/truncated/foreign checkpoint
    ("atft_core.train.api", "RunDirError"),  # run dir holding files atft did not write
    ("atft_core.validation.runner", "DocsDirError"),  # Data Docs folder that is not ours
)


if __name__ == "__main__":
    sys.exit(main())
