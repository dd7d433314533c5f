"""``atft registry gc``: remove what interrupted publishes left behind.

A publish uploads the data files of ``runs/{id}/`` first and the manifest last, so a publish that
dies midway leaves files (and, on file://, ``.tmp-*`` files; on S3, unfinished multipart uploads)
but no manifest. Such a run is an *orphan*. GC lists orphans and, with ``apply``, removes them.

Never removed: a run with a manifest; a run that any alias record or alias history entry names
(current, previous, or on a rollback stack); a run with anything written within ``older_than_s``
(a publish may be in flight -- the default of one day is the safety margin: a publish that
resumes after GC decided could otherwise lose its files). The manifest is re-checked right
before a run's files are deleted, and again after; a manifest that appears in between is
reported (that publish must be retried), never hidden.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from atft_core.registry.errors import IntegrityError, InvalidNameError, RegistryError
from atft_core.registry.names import check_run_id
from atft_core.registry.records import AliasRecord
from atft_core.registry.store import ListedObject

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``12h``, ``1d``, ``2w`` -> seconds; ValueError otherwise."""
    m = _DURATION_RE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"duration {text!r}: expected a number with an optional unit s/m/h/d/w "
                         "(e.g. 1d, 12h)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


@dataclass(frozen=True)
class OrphanRun:
    run_id: str
    keys: tuple[str, ...]
    leftovers: tuple[str, ...]
    bytes: int
    newest: str  # ISO time of the most recent write under runs/{id}/

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "keys": list(self.keys), "leftovers": list(self.leftovers),
                "bytes": self.bytes, "newest": self.newest}


@dataclass
class GcReport:
    uri: str
    older_than_s: float
    applied: bool
    orphans: list[OrphanRun] = field(default_factory=list)  # would be / were removed
    too_young: list[str] = field(default_factory=list)  # orphans written within older_than_s
    protected: list[str] = field(default_factory=list)  # no manifest, but an alias names them
    published: int = 0
    removed: list[str] = field(default_factory=list)
    raced: list[str] = field(default_factory=list)  # a manifest appeared while removing

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "dry_run": not self.applied, "older_than_s": self.older_than_s,
                "orphans": [o.to_dict() for o in self.orphans], "too_young": self.too_young,
                "protected": self.protected, "published_runs_kept": self.published,
                "removed": self.removed, "raced_with_publish": self.raced}


def named_by_aliases(reg: Any) -> set[str]:
    """Every run id an alias record or alias-history entry refers to."""
    names: set[str] = set()
    for key in reg.store.list_keys("aliases"):
        if not key.endswith(".json"):
            continue
        data, _ = reg.store.get_bytes(key)
        try:
            names |= AliasRecord.from_bytes(data, key).named_runs()
        except IntegrityError:
            # a record we cannot read may name anything: refuse rather than guess
            raise RegistryError(f"gc: cannot read alias record {reg.uri}/{key}; fix or remove "
                                "it first (gc never deletes what an alias might name)") from None
    return names


def _group(objects: list[ListedObject]) -> dict[str, list[ListedObject]]:
    runs: dict[str, list[ListedObject]] = {}
    for o in objects:
        parts = o.key.split("/")
        if len(parts) >= 3 and parts[0] == "runs":
            try:
                runs.setdefault(check_run_id(parts[1]), []).append(o)
            except InvalidNameError:
                continue  # not a key the registry wrote
    return runs


def collect_garbage(reg: Any, older_than_s: float = 86400.0, apply: bool = False,
                    now: float | None = None) -> GcReport:
    if not older_than_s >= 0:
        raise RegistryError(f"gc: older-than must be >= 0 s, got {older_than_s}")
    now = time.time() if now is None else now
    report = GcReport(reg.uri, older_than_s, apply)
    files = _group(reg.store.list_info("runs"))
    leftovers = _group(reg.store.list_leftovers("runs"))
    protected = named_by_aliases(reg)
    for run_id in sorted(set(files) | set(leftovers)):
        objs, left = files.get(run_id, []), leftovers.get(run_id, [])
        if any(o.key == f"runs/{run_id}/manifest.json" for o in objs):
            report.published += 1
            continue
        if run_id in protected:
            report.protected.append(run_id)
            continue
        newest = max(o.modified for o in objs + left)
        if now - newest < older_than_s:
            report.too_young.append(run_id)
            continue
        report.orphans.append(OrphanRun(
            run_id, tuple(o.key for o in objs), tuple(o.key for o in left),
            sum(o.size for o in objs), datetime.fromtimestamp(newest, UTC).isoformat()))
    if apply:
        by_id = {o.run_id: (files.get(o.run_id, []), leftovers.get(o.run_id, []))
                 for o in report.orphans}
        for orphan in report.orphans:
            _remove(reg, orphan.run_id, *by_id[orphan.run_id], report)
    return report


def _remove(reg: Any, run_id: str, objs: list[ListedObject], left: list[ListedObject],
            report: GcReport) -> None:
    manifest_key = f"runs/{run_id}/manifest.json"
    if reg.store.head(manifest_key) is not None:
        report.raced.append(run_id)  # published since the listing: not an orphan any more
        return
    for o in objs:
        reg.store.delete(o.key)
    for o in left:
        reg.store.remove_leftover(o)
    if reg.store.head(manifest_key) is not None:
        report.raced.append(run_id)
    report.removed.append(run_id)
