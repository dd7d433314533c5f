"""Immutable daily signal files in the registry (issue 11 item 1).

Layout under the registry root (``file://`` or ``s3://``, through the registry's store layer)::

    signals/{D}/{run_id}.parquet          the champion's scores of day D (served)
    signals/{D}/{run_id}.json             its manifest, written LAST: presence = published
    signals/{D}/shadow/{run_id}.parquet   the shadow (newest gate-rejected candidate): never served
    signals/{D}/shadow/{run_id}.json

Every write is create-only (``If-None-Match``; file: link()), so a signal is never overwritten.
Publishing the same bytes again is a no-op; other bytes under the same (D, role, run id) raise
:class:`SignalConflictError` and change nothing. The manifest carries no wall-clock time, so a
re-run of day D writes byte-identical records.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import polars as pl

from atft_core.registry.errors import (
    AlreadyExistsError,
    IntegrityError,
    NotFoundError,
    RegistryError,
)
from atft_core.registry.names import check_run_id
from atft_core.registry.records import canonical_json

ROLES = ("champion", "shadow")
SIGNAL_FORMAT = 1


class SignalConflictError(RegistryError):
    """A signal for this (day, role, run id) exists with other content; nothing was written."""


@dataclass(frozen=True)
class SignalRecord:
    day: dt.date
    role: str
    run_id: str
    key: str  # the parquet's key relative to the registry root
    uri: str  # full location
    sha256: str
    rows: int
    already_published: bool
    manifest: dict[str, Any]


def _base(day: dt.date, role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"signal role must be one of {ROLES}, got {role!r}")
    return f"signals/{day.isoformat()}" + ("/shadow" if role == "shadow" else "")


def signal_keys(day: dt.date, run_id: str, role: str = "champion") -> tuple[str, str]:
    """(parquet key, manifest key) of a signal."""
    base = _base(day, role)
    check_run_id(run_id)
    return f"{base}/{run_id}.parquet", f"{base}/{run_id}.json"


def signal_manifest(signal: Any, role: str, data: bytes) -> dict[str, Any]:
    return {
        "format": SIGNAL_FORMAT,
        "date": signal.day.isoformat(),
        "role": role,
        "run_id": signal.run_id,
        "model_manifest_sha256": signal.manifest_sha256,
        "data_fingerprint": signal.data_fingerprint,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "rows": signal.frame.height,
        "horizons": list(signal.horizons),
        "columns": signal.frame.columns,
    }


def _put_create_only(store: Any, key: str, data: bytes, what: str) -> bool:
    """Create ``key``; True if written, False if the same bytes were already there."""
    try:
        store.put_bytes(key, data, if_none_match=True)
        return True
    except AlreadyExistsError:
        old, _ = store.get_bytes(key)
        if hashlib.sha256(old).digest() != hashlib.sha256(data).digest():
            raise SignalConflictError(
                f"{store.uri}/{key} already exists with other content ({what}); a signal is "
                "never overwritten -- the model or the data differ from the first run of this "
                "day") from None
        return False


def publish_signal(registry: Any, signal: Any, role: str = "champion") -> SignalRecord:
    """Write ``signal`` (a :class:`~atft_core.serving.predict.DaySignal`) create-only, data
    first, manifest last. Idempotent for the same bytes; SignalConflictError otherwise."""
    pkey, mkey = signal_keys(signal.day, signal.run_id, role)
    data = signal.to_parquet_bytes()
    manifest = signal_manifest(signal, role, data)
    mbytes = canonical_json(manifest)
    store = registry.store
    try:
        existing, _ = store.get_bytes(mkey)
    except NotFoundError:
        existing = None
    if existing is not None and existing != mbytes:
        raise SignalConflictError(
            f"{store.uri}/{mkey} already records another signal for {signal.day} by "
            f"{signal.run_id} (sha256 {json.loads(existing).get('sha256')} vs {manifest['sha256']}); "
            "nothing was written")
    registry._before_write()  # the backend must enforce create-only writes
    wrote_data = _put_create_only(store, pkey, data, "signal parquet")
    wrote_manifest = _put_create_only(store, mkey, mbytes, "signal manifest")
    return SignalRecord(day=signal.day, role=role, run_id=signal.run_id, key=pkey,
                        uri=f"{registry.uri.rstrip('/')}/{pkey}", sha256=manifest["sha256"],
                        rows=signal.frame.height, already_published=not (wrote_data or wrote_manifest),
                        manifest=manifest)


def list_signals(registry: Any, role: str = "champion") -> list[tuple[dt.date, str]]:
    """(day, run id) of every published signal of ``role`` (manifest present), by day."""
    out = []
    for key in registry.store.list_keys("signals"):
        parts = key.split("/")
        if role == "champion" and len(parts) == 3 and parts[2].endswith(".json"):
            day, name = parts[1], parts[2]
        elif role == "shadow" and len(parts) == 4 and parts[2] == "shadow" and parts[3].endswith(".json"):
            day, name = parts[1], parts[3]
        else:
            continue
        try:
            out.append((dt.date.fromisoformat(day), name[: -len(".json")]))
        except ValueError:
            continue  # not ours to interpret
    return sorted(out)


def read_signal(registry: Any, day: dt.date, run_id: str, role: str = "champion") -> pl.DataFrame:
    """One published signal, its bytes checked against its manifest's sha256."""
    pkey, mkey = signal_keys(day, run_id, role)
    manifest = json.loads(registry.store.get_bytes(mkey)[0])
    data, _ = registry.store.get_bytes(pkey)
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest["sha256"]:
        raise IntegrityError(f"{registry.uri}/{pkey}: sha256 {digest} != manifest {manifest['sha256']}")
    return pl.read_parquet(io.BytesIO(data)).with_columns(pl.lit(run_id).alias("run_id"))


def read_signals(registry: Any, role: str = "champion", start: dt.date | None = None,
                 end: dt.date | None = None) -> pl.DataFrame | None:
    """Every verified signal of ``role`` with start <= day <= end, concatenated (None if none).
    Several run ids on one day (a champion moved mid-day) keep the last run id in name order."""
    frames = {}
    for day, run_id in list_signals(registry, role):
        if (start and day < start) or (end and day > end):
            continue
        frames[day] = (run_id, read_signal(registry, day, run_id, role))
    if not frames:
        return None
    return pl.concat([f for _, (_, f) in sorted(frames.items())], how="vertical_relaxed")

