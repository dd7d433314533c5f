"""Does this storage backend keep the registry's promises? (``atft registry check``)

The registry's guarantees rest on two server-side checks: create-only writes (``If-None-Match:
*``; run files and history are immutable) and compare-and-swap (``If-Match``; the champion
alias). A server that ignores those headers answers 200 and silently overwrites -- old
SeaweedFS, some gateways, a proxy that drops headers -- and every test against moto still
passes. So before its first write to a backend, a :class:`~atft_core.registry.Registry` probes
it in a scratch prefix it owns (``selfcheck/{random}/``) and removes the probe objects after:

1. create-only: put-if-absent twice; the second must be refused and the first content kept;
2. compare-and-swap: write v1, CAS v1->v2 with v1's ETag (must pass), CAS again with the now
   stale v1 ETag (must be refused, v2 kept).

The result is cached per process and backend. A failing backend makes publish / promote /
rollback refuse with one line naming the server and what it failed, unless the config sets
``registry.allow_unsafe_backend: true``. The probe is sequential: it proves the server evaluates
the headers, not that it does so atomically under concurrency (see the README on the stack's
S3 server for that evidence).
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from atft_core.registry.errors import (
    AlreadyExistsError,
    PreconditionError,
    RegistryError,
    UnsafeBackendError,
)
from atft_core.registry.store import new_txn_id

SCRATCH_PREFIX = "selfcheck"


@dataclass(frozen=True)
class BackendCheck:
    uri: str
    server: str
    create_only: bool
    compare_and_swap: bool
    problems: tuple[str, ...] = ()
    cleanup_errors: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.create_only and self.compare_and_swap

    def line(self) -> str:
        if self.ok:
            return (f"{self.uri} ({self.server}) enforces create-only writes (If-None-Match: *) "
                    "and compare-and-swap (If-Match)")
        return (f"{self.uri} ({self.server}) does not enforce "
                + " and ".join(self.problems)
                + "; refusing to write (registry.allow_unsafe_backend: true accepts it)")

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "server": self.server, "ok": self.ok,
                "create_only": self.create_only, "compare_and_swap": self.compare_and_swap,
                "problems": list(self.problems), "cleanup_errors": list(self.cleanup_errors)}


def probe(store: Any) -> BackendCheck:
    """Run both probes against ``store`` (uncached). Transport errors propagate."""
    scratch = f"{SCRATCH_PREFIX}/{new_txn_id()}"
    problems: list[str] = []
    try:
        create_only = _probe_create_only(store, f"{scratch}/create-only", problems)
        cas = _probe_cas(store, f"{scratch}/cas", problems)
    finally:
        cleanup_errors = _cleanup(store, scratch)
    return BackendCheck(store.uri, store.describe(), create_only, cas, tuple(problems),
                        tuple(cleanup_errors))


def _probe_create_only(store: Any, key: str, problems: list[str]) -> bool:
    store.put_bytes(key, b"first", if_none_match=True)
    try:
        store.put_bytes(key, b"second", if_none_match=True)
    except AlreadyExistsError:
        accepted = False
    else:
        accepted = True
    data, _ = store.get_bytes(key)
    if accepted or data != b"first":
        problems.append("create-only writes (a second If-None-Match: * PUT to an existing key "
                        f"was {'accepted' if accepted else 'refused'} and the object now holds "
                        f"{data[:16]!r}, expected b'first')")
        return False
    return True


def _probe_cas(store: Any, key: str, problems: list[str]) -> bool:
    etag_v1 = store.put_bytes(key, b"v1")
    try:
        store.put_bytes(key, b"v2", if_match=etag_v1)
    except PreconditionError:
        problems.append("compare-and-swap (an If-Match PUT with the current ETag was refused)")
        return False
    try:
        store.put_bytes(key, b"v3", if_match=etag_v1)
    except PreconditionError:
        accepted = False
    else:
        accepted = True
    data, _ = store.get_bytes(key)
    if accepted or data != b"v2":
        problems.append("compare-and-swap (an If-Match PUT with a stale ETag was "
                        f"{'accepted' if accepted else 'refused'} and the object now holds "
                        f"{data[:16]!r}, expected b'v2')")
        return False
    return True


def _cleanup(store: Any, scratch: str) -> list[str]:
    errors = []
    try:
        keys = store.list_keys(scratch)
    except RegistryError as err:
        return [f"listing {scratch}: {err}"]
    for key in keys:
        try:
            store.delete(key)
        except RegistryError as err:
            errors.append(f"deleting {key}: {err}")
    return errors


# ------------------------------------------------------------------ cached gate before writes
_CACHE: dict[tuple[int, str, str], BackendCheck] = {}
_CACHE_LOCK = threading.Lock()
_WARNED: set[tuple[int, str, str]] = set()


def _cache_key(store: Any) -> tuple[int, str, str]:
    return (os.getpid(), store.uri, store.describe())


def cached_check(store: Any) -> BackendCheck:
    key = _cache_key(store)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    result = probe(store)
    with _CACHE_LOCK:
        _CACHE.setdefault(key, result)
    return result


def ensure_safe_backend(store: Any, allow_unsafe: bool) -> BackendCheck:
    """Probe once per process and backend; raise UnsafeBackendError unless it passed (or the
    config accepts an unsafe backend, which prints one warning line per process)."""
    result = cached_check(store)
    if result.ok:
        return result
    if not allow_unsafe:
        raise UnsafeBackendError(result.line())
    key = _cache_key(store)
    if key not in _WARNED:
        _WARNED.add(key)
        print(f"atft registry: WARNING {result.line().split('; refusing')[0]}; "
              "registry.allow_unsafe_backend is true, writing anyway", file=sys.stderr)
    return result


def forget_cached_checks() -> None:
    """Tests: start from a clean cache."""
    with _CACHE_LOCK:
        _CACHE.clear()
        _WARNED.clear()
