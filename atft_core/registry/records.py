"""The registry's stored records: a run's ``manifest.json`` and an alias record.

Both serialise to canonical JSON (sorted keys, no NaN) so the sha256 of the bytes identifies a
version. Readers accept records written before a field existed (missing optional fields take
their defaults) and ignore fields they do not know.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from atft_core.registry.errors import IntegrityError, NotFoundError
from atft_core.registry.names import REQUIRED_FILES, check_run_file, check_run_id

MANIFEST_FORMAT = "atft-run-manifest/1"
ALIAS_FORMAT = "atft-alias/1"
# Bound on the rollback stack an alias record carries (one entry per promotion still on it):
# years of daily promotions fit; the oldest entries are dropped first.
MAX_ROLLBACK_DEPTH = 512


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, indent=1, allow_nan=False).encode() + b"\n"


@dataclass(frozen=True)
class RunFile:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What a published run contains; ``sha256`` of its canonical JSON identifies the version."""

    run_id: str
    created_at: str
    files: tuple[RunFile, ...]
    data_fingerprint: str | None
    config_sha256: str
    code_version: Mapping[str, Any]
    format: str = MANIFEST_FORMAT

    def to_bytes(self) -> bytes:
        d = asdict(self)
        d["files"] = [asdict(f) for f in self.files]
        d["code_version"] = dict(self.code_version)
        return canonical_json(d)

    def content_key(self) -> tuple:
        """What must be equal for two publishes of the same run id to be 'the same run'."""
        return (self.run_id, self.files, self.data_fingerprint, self.config_sha256)

    def file(self, name: str) -> RunFile:
        for f in self.files:
            if f.name == name:
                return f
        raise NotFoundError(f"run {self.run_id}: manifest lists no {name}")

    @classmethod
    def from_bytes(cls, data: bytes, run_id: str) -> Manifest:
        try:
            d = json.loads(data)
            if d.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format {d.get('format')!r} != {MANIFEST_FORMAT!r}")
            files = tuple(RunFile(check_run_file(f["name"]), int(f["size"]), str(f["sha256"]))
                          for f in d["files"])
            m = cls(run_id=str(d["run_id"]), created_at=str(d["created_at"]), files=files,
                    data_fingerprint=d.get("data_fingerprint"),
                    config_sha256=str(d["config_sha256"]),
                    code_version=dict(d.get("code_version") or {}))
        except (ValueError, KeyError, TypeError) as err:
            raise IntegrityError(f"run {run_id}: malformed manifest.json: {err}") from None
        if m.run_id != run_id:
            raise IntegrityError(f"manifest of run {run_id} names run {m.run_id!r}")
        names = [f.name for f in files]
        if len(set(names)) != len(names) or any(r not in names for r in REQUIRED_FILES):
            raise IntegrityError(f"run {run_id}: manifest must list {REQUIRED_FILES} once each")
        if any(len(f.sha256) != 64 or f.size < 0 for f in files):
            raise IntegrityError(f"run {run_id}: manifest has a bad sha256/size entry")
        return m


@dataclass(frozen=True)
class AliasRecord:
    """One state of an alias (``aliases/{alias}.json``; every state is also kept in history).

    ``previous`` is the run the alias pointed to just before this move. ``rollback_stack`` holds
    the runs a plain rollback walks back through, most recent last: a promotion pushes the run
    it replaces, a rollback pops. So after A->B->C->D, rollbacks give C, then B, then A (never a
    toggle between the last two). ``None`` means a record written before the field existed.
    """

    alias: str
    run_id: str
    manifest_sha256: str
    promoted_at: str
    previous: str | None
    seq: int
    action: str  # "promote" | "rollback"
    reason: str
    actor: str
    txn: str
    gate: Mapping[str, Any] | None = None
    rollback_stack: tuple[str, ...] | None = None
    format: str = ALIAS_FORMAT

    def __post_init__(self) -> None:
        if self.rollback_stack is not None and not isinstance(self.rollback_stack, tuple):
            object.__setattr__(self, "rollback_stack", tuple(self.rollback_stack))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gate"] = dict(self.gate) if self.gate is not None else None
        d["rollback_stack"] = (list(self.rollback_stack) if self.rollback_stack is not None
                               else None)
        return d

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> AliasRecord:
        try:
            d = json.loads(data)
            rec = cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
            for rid in rec.rollback_stack or ():
                check_run_id(rid)
        except (ValueError, TypeError, KeyError) as err:
            raise IntegrityError(f"{where}: malformed alias record: {err}") from None
        return rec

    def named_runs(self) -> set[str]:
        """Every run id this record refers to (gc keeps all of them)."""
        out = {self.run_id}
        if self.previous:
            out.add(self.previous)
        out.update(self.rollback_stack or ())
        return out

    def history_name(self) -> str:
        ts = datetime.fromisoformat(self.promoted_at).strftime("%Y%m%dT%H%M%S.%fZ")
        return f"{ts}-{self.run_id}.json"
