"""Validation of every name that becomes part of a storage key.

Run ids, alias names and file names are single path components made of ``[A-Za-z0-9._-]``,
starting with a letter or digit, without ``..``, at most ``MAX_NAME_LEN`` characters. Keys are
built only from validated components, so ``../``, absolute paths, backslashes, NULs, or URL
tricks never reach the file system or S3. Checks run before any write.
"""

from __future__ import annotations

import re

from atft_core.registry.errors import InvalidNameError

MAX_NAME_LEN = 128
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# Files a run may publish: weights (safetensors only), config, metrics, report.
REQUIRED_FILES = ("model.safetensors", "config.yaml", "metrics.json")
OPTIONAL_FILES = ("metrics.jsonl", "report.md", "drift_reference.json")  # drift: atft_core.serving
_OPTIONAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.png")


def check_name(name: object, what: str = "name", max_len: int = MAX_NAME_LEN) -> str:
    """Return ``name`` if it is a safe single key component, else raise InvalidNameError."""
    if not isinstance(name, str):
        raise InvalidNameError(f"{what} must be a string, got {type(name).__name__}")
    if not name:
        raise InvalidNameError(f"{what} is empty")
    if len(name) > max_len:
        raise InvalidNameError(f"{what} {name[:40]!r}... is {len(name)} chars (max {max_len})")
    if ".." in name:
        raise InvalidNameError(f"{what} {name!r} contains '..'")
    if not _NAME_RE.fullmatch(name):
        raise InvalidNameError(
            f"{what} {name!r} must match [A-Za-z0-9][A-Za-z0-9._-]* (no '/', '\\\\', spaces, "
            "absolute paths or other characters)"
        )
    return name


def check_run_id(run_id: object) -> str:
    return check_name(run_id, "run id")


def check_alias(alias: object) -> str:
    return check_name(alias, "alias name", max_len=64)


def is_publishable_file(name: str) -> bool:
    """Whitelist of run files: anything else (pickles, checkpoints, .pt) is never published."""
    return name in REQUIRED_FILES or name in OPTIONAL_FILES or bool(_OPTIONAL_RE.fullmatch(name))


def check_run_file(name: object) -> str:
    check_name(name, "run file name")
    assert isinstance(name, str)
    if not is_publishable_file(name):
        raise InvalidNameError(
            f"run file {name!r} is not publishable (allowed: {REQUIRED_FILES + OPTIONAL_FILES} "
            "and *.png; weights are safetensors only)"
        )
    return name


def check_key_parts(parts: tuple[str, ...]) -> str:
    """Join validated components into a '/'-separated key relative to the registry root."""
    for p in parts:
        check_name(p, "key component")
    return "/".join(parts)
