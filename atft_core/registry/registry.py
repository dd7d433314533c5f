"""Model registry: immutable published runs + a ``champion`` alias moved by compare-and-swap.

Layout under the root (``file://`` or ``s3://``, same semantics, see :mod:`.store`)::

    runs/{run_id}/model.safetensors config.yaml metrics.json [metrics.jsonl report.md *.png]
    runs/{run_id}/manifest.json          written LAST, create-only: its presence = published
    aliases/{alias}.json                 {"run_id","manifest_sha256","promoted_at","previous",...}
    aliases/history/{ts}-{run_id}.json   append-only log of alias moves (create-only)

Decisions (SPEC is silent):
* A run is published iff its manifest exists. Data files go first; a publish interrupted
  half-way leaves no manifest, and a retry reuses files already there when their size and
  sha256 match (anything else under that run id is a conflict: run ids are never reused).
* ``previous`` is the run id the alias pointed to before. ``rollback()`` with no target walks
  the promotion stack (``rollback_stack``: a promotion pushes the run it replaces, a rollback
  pops), so repeated rollbacks go further back instead of toggling. Each record also carries
  ``seq`` (1, 2, ...), ``action``, ``reason``, ``actor``, ``txn`` and optionally the gate decision.
* Before its first write to a backend the registry probes that the backend enforces
  create-only writes and compare-and-swap (:mod:`.selfcheck`) and refuses to write otherwise.
* ``publish`` refuses a run directory whose config.yaml, metrics.json and weights metadata
  disagree (a run mixed from two trainings; :mod:`.runcheck`).
* History: the promoter writes the history entry after winning the CAS, and every promoter
  first (re)writes the entry of the alias state it read, so a crash between the CAS and the
  history write is repaired by the next move -- the log never loses a move.
* Promotion verifies every file of the candidate against its manifest before moving the
  alias, so the alias only ever points to a complete verified manifest.
* Loading copies files to a fresh local directory while hashing them and only returns after
  every sha256 and size matched; weights are read with safetensors only (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from atft_core.progress import byte_progress
from atft_core.registry.errors import (
    AliasConflictError,
    AlreadyExistsError,
    IntegrityError,
    InvalidNameError,
    NotFoundError,
    PreconditionError,
    PublishError,
    RegistryError,
)
from atft_core.registry.gc import GcReport, collect_garbage
from atft_core.registry.names import (
    REQUIRED_FILES,
    check_alias,
    check_run_id,
    is_publishable_file,
)
from atft_core.registry.records import (  # records live there; re-exported for old imports
    ALIAS_FORMAT,  # noqa: F401
    MANIFEST_FORMAT,  # noqa: F401
    MAX_ROLLBACK_DEPTH,
    AliasRecord,
    Manifest,
    RunFile,
)
from atft_core.registry.runcheck import check_run_agrees, read_weights_metadata
from atft_core.registry.selfcheck import BackendCheck, ensure_safe_backend
from atft_core.registry.selfcheck import probe as probe_backend
from atft_core.registry.store import MB, FileStore, ObjectStore, S3Store, new_txn_id, open_store

log = logging.getLogger("atft.registry")

WEIGHTS_FILE = "model.safetensors"


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _Any()  # ``expect=ANY``: move the alias whatever it points to now


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class PublishResult:
    manifest: Manifest
    manifest_sha256: str
    uploaded: tuple[str, ...]
    reused: tuple[str, ...]
    already_published: bool


@dataclass(frozen=True)
class LoadedRun:
    """A run copied to ``path`` with every file verified against ``manifest``."""

    run_id: str
    path: Path
    manifest: Manifest
    manifest_sha256: str
    verified: bool = True

    def state_dict(self) -> dict[str, Any]:
        """Weights as ``{name: torch.Tensor}`` via safetensors (never pickle / torch.load)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(self.path / WEIGHTS_FILE))
        except (SafetensorError, ValueError, OSError) as err:
            raise IntegrityError(f"run {self.run_id}: {WEIGHTS_FILE} is not valid safetensors: "
                                 f"{err}") from None

    def metrics(self) -> dict[str, Any]:
        return json.loads((self.path / "metrics.json").read_text())

    def config_yaml(self) -> str:
        return (self.path / "config.yaml").read_text()


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    published: bool
    created_at: str | None
    aliases: tuple[str, ...] = field(default_factory=tuple)


def code_version() -> dict[str, Any]:
    """``atft_core.__version__`` and the git sha of the checkout (None outside git)."""
    from atft_core import __version__

    sha = os.environ.get("ATFT_GIT_SHA")
    if not sha:
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                 capture_output=True, text=True, timeout=5, check=False)
            sha = out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            sha = None
    return {"atft_core": __version__, "git_sha": sha or None}


def _hash_copy(src_key: str, store: ObjectStore, dest: Path, verify: bool) -> tuple[int, str]:
    """Fetch ``src_key`` to ``dest``; return (size, sha256 or '' when not verifying)."""
    if isinstance(store, FileStore):
        # local: copy and hash in one pass
        h = hashlib.sha256()
        size = 0
        try:
            with open(store.root / src_key, "rb") as s, open(dest, "wb") as d:
                while block := s.read(4 * MB):
                    d.write(block)
                    size += len(block)
                    if verify:
                        h.update(block)
        except FileNotFoundError:
            raise NotFoundError(f"{store.uri}/{src_key} not found") from None
        return size, h.hexdigest() if verify else ""
    store.download(src_key, dest)
    size = dest.stat().st_size
    if not verify:
        return size, ""
    h = hashlib.sha256()
    with open(dest, "rb") as f:
        while block := f.read(4 * MB):
            h.update(block)
    return size, h.hexdigest()


class Registry:
    """One interface over ``file://`` and ``s3://`` roots.

    Args:
        uri: ``file://var/registry`` (relative to CWD), ``file:///abs`` or ``s3://bucket/prefix``.
        cache_dir: where loaded runs are copied (default: the system temp dir).
        allow_unsafe_backend: write even if the backend fails the self-check (not advised).
        **store_kwargs: passed to the backend (endpoint_url, multipart sizes, lock_timeout_s,
            deadline_s).
    """

    def __init__(self, uri: str = "file://var/registry", *, cache_dir: str | Path | None = None,
                 allow_unsafe_backend: bool = False, **store_kwargs: Any) -> None:
        self.store: FileStore | S3Store = open_store(uri, **store_kwargs)
        self.uri = self.store.uri
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.allow_unsafe_backend = allow_unsafe_backend

    @classmethod
    def from_config(cls, cfg: Any) -> Registry:
        """From a RegistryConfig (or a full Config)."""
        reg = getattr(cfg, "registry", cfg)
        kwargs: dict[str, Any] = {}
        if isinstance(reg.uri, str) and reg.uri.startswith("s3://"):
            if getattr(reg, "endpoint_url", None):
                kwargs["endpoint_url"] = reg.endpoint_url
            kwargs["multipart_threshold_mb"] = reg.multipart_threshold_mb
            kwargs["deadline_s"] = getattr(reg, "s3_deadline_s", 60.0)
        else:
            kwargs["lock_timeout_s"] = reg.lock_timeout_s
        return cls(reg.uri, cache_dir=reg.cache_dir,
                   allow_unsafe_backend=getattr(reg, "allow_unsafe_backend", False), **kwargs)

    # ----------------------------------------------------------------- backend self-check
    def check_backend(self) -> BackendCheck:
        """Probe create-only writes and compare-and-swap now (uncached; ``atft registry check``)."""
        return probe_backend(self.store)

    def _before_write(self) -> None:
        ensure_safe_backend(self.store, self.allow_unsafe_backend)

    # ----------------------------------------------------------------- keys
    @staticmethod
    def _run_key(run_id: str, name: str) -> str:
        return f"runs/{check_run_id(run_id)}/{name}"

    @staticmethod
    def _alias_key(alias: str) -> str:
        return f"aliases/{check_alias(alias)}.json"

    # ----------------------------------------------------------------- publish
    def publish(self, run_dir: str | Path, run_id: str | None = None, *,
                data_fingerprint: str | None = None, progress: bool | None = None) -> PublishResult:
        """Publish ``run_dir`` as immutable version ``run_id`` (default: the directory name).

        ``progress``: a byte bar (True), log lines (False) or a bar only on a terminal (None).

        Raises:
            InvalidNameError: unsafe run id (before any write).
            PublishError: missing/invalid files, or the run id exists with other content.
        """
        run_dir = Path(run_dir)
        run_id = check_run_id(run_id if run_id is not None else run_dir.name)
        if not run_dir.is_dir():
            raise PublishError(f"run directory {run_dir} does not exist")
        missing = [n for n in REQUIRED_FILES if not (run_dir / n).is_file()]
        if missing:
            raise PublishError(f"run directory {run_dir} lacks {missing}")
        names = sorted(p.name for p in run_dir.iterdir()
                       if p.is_file() and is_publishable_file(p.name))
        links = [n for n in names if (run_dir / n).is_symlink()]
        if links:
            raise PublishError(f"run directory {run_dir}: refusing symlinks {links}")
        weights_meta = read_weights_metadata(run_dir / WEIGHTS_FILE)
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text())
        except ValueError as err:
            raise PublishError(f"{run_dir}/metrics.json is not JSON: {err}") from None
        config_sha = self._config_sha256(run_dir / "config.yaml")
        check_run_agrees(run_dir, config_sha, metrics, weights_meta)
        if data_fingerprint is None and isinstance(metrics, dict):
            fp = metrics.get("data_fingerprint")
            data_fingerprint = str(fp) if fp is not None else None
        files = []
        for n in names:
            p = run_dir / n
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while block := f.read(4 * MB):
                    h.update(block)
            files.append(RunFile(n, p.stat().st_size, h.hexdigest()))
        manifest = Manifest(run_id=run_id, created_at=_now().isoformat(), files=tuple(files),
                            data_fingerprint=data_fingerprint, config_sha256=config_sha,
                            code_version=code_version())

        existing = self._try_manifest(run_id)
        if existing is not None:
            return self._same_or_conflict(existing, manifest)

        self._before_write()
        uploaded, reused = [], []
        total = sum(f.size for f in files)
        with byte_progress(total, f"publish {run_id} -> {self.uri}", logger=log,
                           interactive=progress) as on_bytes:
            for f in files:
                self._put_one(run_id, run_dir, f, on_bytes, uploaded, reused)
        data = manifest.to_bytes()
        try:
            self.store.put_bytes(self._run_key(run_id, "manifest.json"), data, if_none_match=True)
        except AlreadyExistsError:
            existing = self._try_manifest(run_id)
            assert existing is not None
            return self._same_or_conflict(existing, manifest)
        return PublishResult(manifest, hashlib.sha256(data).hexdigest(), tuple(uploaded),
                             tuple(reused), already_published=False)

    def _put_one(self, run_id: str, run_dir: Path, f: RunFile, on_bytes, uploaded: list[str],
                 reused: list[str]) -> None:
        """Upload one run file create-only; an existing identical object (a publish that died
        before its manifest) is reused, a different one refused."""
        key = self._run_key(run_id, f.name)
        try:
            self.store.put_file(key, run_dir / f.name, sha256=f.sha256, on_bytes=on_bytes)
            uploaded.append(f.name)
        except AlreadyExistsError:
            info = self.store.head(key)
            if info is None or info.size != f.size or info.metadata.get("sha256") != f.sha256:
                raise PublishError(
                    f"run {run_id}: {f.name} already exists in {self.uri} with different "
                    "content; run ids are immutable -- publish under a new run id") from None
            on_bytes(f.size)
            reused.append(f.name)

    @staticmethod
    def _config_sha256(path: Path) -> str:
        from atft_core.config import ConfigError, config_from_yaml_text

        try:
            return config_from_yaml_text(path.read_text()).sha256()
        except ConfigError as err:
            raise PublishError(f"{path}: {err}") from None

    def _same_or_conflict(self, existing: tuple[Manifest, str], new: Manifest) -> PublishResult:
        m, sha = existing
        if m.content_key() != new.content_key():
            raise PublishError(f"run {new.run_id} is already published in {self.uri} with "
                               "different content; run ids are immutable")
        return PublishResult(m, sha, (), tuple(f.name for f in m.files), already_published=True)

    # ----------------------------------------------------------------- manifests / loading
    def _try_manifest(self, run_id: str) -> tuple[Manifest, str] | None:
        try:
            return self.read_manifest(run_id)
        except NotFoundError:
            return None

    def read_manifest(self, run_id: str) -> tuple[Manifest, str]:
        """(manifest, sha256 of its bytes); NotFoundError if the run is not published."""
        m, sha, _ = self._manifest_with_bytes(run_id)
        return m, sha

    def _manifest_with_bytes(self, run_id: str) -> tuple[Manifest, str, bytes]:
        try:
            data, _ = self.store.get_bytes(self._run_key(run_id, "manifest.json"))
        except NotFoundError:
            raise NotFoundError(f"run {run_id} is not published in {self.uri} "
                                "(no manifest.json)") from None
        return Manifest.from_bytes(data, run_id), hashlib.sha256(data).hexdigest(), data

    def load_run(self, run_id: str, dest: str | Path | None = None, *,
                 expected_manifest_sha256: str | None = None, verify: bool = True) -> LoadedRun:
        """Copy run files to ``dest`` (default: a fresh temp dir), verifying sha256 and size of
        every file before returning. ``verify=False`` exists only to measure the overhead.

        Raises:
            NotFoundError: unpublished run; IntegrityError: a file or the manifest mismatches
            (the partially copied directory is removed).
        """
        check_run_id(run_id)
        manifest, msha, manifest_bytes = self._manifest_with_bytes(run_id)
        if expected_manifest_sha256 is not None and msha != expected_manifest_sha256:
            raise IntegrityError(f"run {run_id}: manifest.json sha256 {msha} != "
                                 f"{expected_manifest_sha256} recorded by the alias")
        if dest is None:
            if self.cache_dir:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
            out = Path(tempfile.mkdtemp(prefix=f"atft-{run_id}-", dir=self.cache_dir))
        else:
            out = Path(dest)
            if out.exists() and any(out.iterdir()):
                raise RegistryError(f"load destination {out} is not empty")
            out.mkdir(parents=True, exist_ok=True)
        try:
            for f in manifest.files:
                part = out / f".{f.name}.part"
                try:
                    size, digest = _hash_copy(self._run_key(run_id, f.name), self.store, part,
                                              verify)
                except NotFoundError:
                    raise IntegrityError(f"run {run_id}: manifest lists {f.name} but the object "
                                         "is missing") from None
                if size != f.size:
                    raise IntegrityError(f"run {run_id}: {f.name} is {size} bytes, manifest says "
                                         f"{f.size} (truncated or replaced)")
                if verify and digest != f.sha256:
                    raise IntegrityError(f"run {run_id}: {f.name} sha256 {digest} != manifest "
                                         f"{f.sha256} (corrupted or replaced)")
                os.replace(part, out / f.name)
            (out / "manifest.json").write_bytes(manifest_bytes)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        return LoadedRun(run_id, out, manifest, msha, verified=verify)

    def verify_run(self, run_id: str, expected_manifest_sha256: str | None = None) -> Manifest:
        """Download and check every file of a run; raises IntegrityError on any mismatch."""
        loaded = self.load_run(run_id, expected_manifest_sha256=expected_manifest_sha256)
        shutil.rmtree(loaded.path, ignore_errors=True)
        return loaded.manifest

    def load_champion(self, alias: str = "champion", dest: str | Path | None = None) -> LoadedRun:
        """Follow alias -> manifest (sha256 pinned by the alias) -> verified files."""
        rec = self.get_alias(alias)
        if rec is None:
            raise NotFoundError(f"alias {alias!r} is not set in {self.uri}")
        return self.load_run(rec.run_id, dest, expected_manifest_sha256=rec.manifest_sha256)

    # ----------------------------------------------------------------- aliases
    def _read_alias(self, alias: str) -> tuple[AliasRecord | None, str | None]:
        key = self._alias_key(alias)
        try:
            data, etag = self.store.get_bytes(key)
        except NotFoundError:
            return None, None
        return AliasRecord.from_bytes(data, f"{self.uri}/{key}"), etag

    def get_alias(self, alias: str = "champion") -> AliasRecord | None:
        return self._read_alias(alias)[0]

    def _ensure_history(self, rec: AliasRecord) -> None:
        key = f"aliases/history/{rec.history_name()}"
        try:
            self.store.put_bytes(key, rec.to_bytes(), if_none_match=True)
        except AlreadyExistsError:
            data, _ = self.store.get_bytes(key)
            if AliasRecord.from_bytes(data, key) != rec:
                raise IntegrityError(f"history entry {key} exists with other content") from None

    def _move(self, alias: str, run_id: str, *, action: str, reason: str, actor: str,
              expect: Any, gate: Mapping[str, Any] | None, verify: bool,
              max_attempts: int = 64) -> AliasRecord:
        check_alias(alias)
        check_run_id(run_id)
        if not reason or not actor:
            raise RegistryError(f"{action} needs a non-empty reason and actor")
        if verify:  # the alias must only ever point to a complete, verified run
            loaded = self.load_run(run_id)
            shutil.rmtree(loaded.path, ignore_errors=True)
            msha = loaded.manifest_sha256
        else:
            _, msha = self.read_manifest(run_id)
        self._before_write()
        key = self._alias_key(alias)
        delay = 0.002
        for _ in range(max_attempts):
            cur, etag = self._read_alias(alias)
            cur_id = cur.run_id if cur else None
            if expect is not ANY and cur_id != expect:
                raise AliasConflictError(f"alias {alias!r} points to {cur_id!r}, expected "
                                         f"{expect!r}; someone moved it first")
            if cur is not None:
                self._ensure_history(cur)  # repair a crash between a CAS and its history write
            rec = AliasRecord(alias=alias, run_id=run_id, manifest_sha256=msha,
                              promoted_at=_now().isoformat(), previous=cur_id,
                              seq=(cur.seq + 1) if cur else 1, action=action, reason=reason,
                              actor=actor, txn=new_txn_id(),
                              gate=dict(gate) if gate is not None else None,
                              rollback_stack=self._stack_after(cur, action, run_id))
            try:
                if etag is None:
                    self.store.put_bytes(key, rec.to_bytes(), if_none_match=True)
                else:
                    self.store.put_bytes(key, rec.to_bytes(), if_match=etag)
            except (PreconditionError, AlreadyExistsError):
                now, _ = self._read_alias(alias)
                if now is not None and now.txn == rec.txn:
                    pass  # our write landed; a retried request saw its own result
                elif expect is not ANY:
                    raise AliasConflictError(
                        f"alias {alias!r} moved to {now.run_id if now else None!r} while "
                        f"{action} of {run_id} was in flight") from None
                else:
                    time.sleep(delay)
                    delay = min(delay * 2, 0.2)
                    continue
            self._ensure_history(rec)
            return rec
        raise AliasConflictError(f"alias {alias!r}: gave up after {max_attempts} CAS attempts")

    def promote(self, run_id: str, *, reason: str, actor: str, alias: str = "champion",
                expect: Any = ANY, gate: Mapping[str, Any] | None = None,
                verify: bool = True) -> AliasRecord:
        """Point ``alias`` at a published, verified run.

        Args:
            expect: run id the alias must point to now (None = unset), e.g. the champion the gate
                compared against; the move is a single CAS and raises AliasConflictError if
                someone else moved the alias. ``ANY`` (default) retries the CAS until it lands.
            gate: the gate decision (JSON-able) recorded in the alias and history.
        """
        return self._move(alias, run_id, action="promote", reason=reason, actor=actor,
                          expect=expect, gate=gate, verify=verify)

    def rollback(self, to: str | None = None, *, reason: str, actor: str,
                 alias: str = "champion") -> AliasRecord:
        """Move ``alias`` one step back on its promotion stack (or to run ``to``).

        After promotions A->B->C->D, rollbacks give C, then B, then A; a rollback when nothing
        is left below refuses. ``to`` found on the stack pops down to it; any other ``to`` is
        pushed like a promotion (a later plain rollback returns to where it started). A CAS
        against the state it read, so a concurrent move makes it fail instead of undoing the
        wrong thing. The returned record's ``previous`` -> ``run_id`` says where it went."""
        check_alias(alias)
        if to is not None:
            check_run_id(to)
        cur = self.get_alias(alias)
        if cur is None:
            raise NotFoundError(f"alias {alias!r} is not set; nothing to roll back")
        if to is None:
            stack = self.rollback_stack(alias, cur)
            if not stack:
                raise RegistryError(f"alias {alias!r} points to {cur.run_id}, the oldest run on "
                                    "its promotion stack; nothing earlier to roll back to")
            to = stack[-1]
        return self._move(alias, to, action="rollback", reason=reason, actor=actor,
                          expect=cur.run_id, gate=None, verify=True)

    def rollback_stack(self, alias: str = "champion",
                       cur: AliasRecord | None = None) -> tuple[str, ...]:
        """Runs a plain rollback walks back through, most recent last."""
        cur = self.get_alias(alias) if cur is None else cur
        if cur is None:
            return ()
        if cur.rollback_stack is not None:
            return cur.rollback_stack
        # a record written before rollback_stack existed: replay the alias history
        stack: tuple[str, ...] = ()
        prev: AliasRecord | None = None
        for rec in [*self.history(alias), cur]:
            if prev is not None and rec.seq <= prev.seq:
                continue
            stack = self._stack_after_replay(prev, rec, stack)
            prev = rec
        return stack

    @staticmethod
    def _push_or_pop(stack: tuple[str, ...], cur_id: str | None, action: str,
                     run_id: str) -> tuple[str, ...]:
        if action == "rollback" and run_id in stack:
            i = len(stack) - 1 - stack[::-1].index(run_id)
            return stack[:i]
        if cur_id is None or cur_id == run_id:
            return stack
        return (*stack, cur_id)[-MAX_ROLLBACK_DEPTH:]

    def _stack_after(self, cur: AliasRecord | None, action: str, run_id: str) -> tuple[str, ...]:
        stack = self.rollback_stack(cur.alias, cur) if cur is not None else ()
        return self._push_or_pop(stack, cur.run_id if cur else None, action, run_id)

    def _stack_after_replay(self, prev: AliasRecord | None, rec: AliasRecord,
                            stack: tuple[str, ...]) -> tuple[str, ...]:
        if rec.rollback_stack is not None:
            return rec.rollback_stack
        return self._push_or_pop(stack, prev.run_id if prev else None, rec.action, rec.run_id)

    def history(self, alias: str = "champion") -> list[AliasRecord]:
        """Alias moves in order (by ``seq``)."""
        check_alias(alias)
        out = []
        for key in self.store.list_keys("aliases/history"):
            data, _ = self.store.get_bytes(key)
            rec = AliasRecord.from_bytes(data, key)
            if rec.alias == alias:
                out.append(rec)
        return sorted(out, key=lambda r: r.seq)

    def gc(self, older_than_s: float = 86400.0, apply: bool = False) -> GcReport:
        """Orphan runs (files, no manifest) older than ``older_than_s``; removed if ``apply``."""
        return collect_garbage(self, older_than_s, apply)

    def list_runs(self) -> list[RunSummary]:
        runs: dict[str, bool] = {}
        for key in self.store.list_keys("runs"):
            parts = key.split("/")
            if len(parts) == 3:
                runs[parts[1]] = runs.get(parts[1], False) or parts[2] == "manifest.json"
        aliases: dict[str, list[str]] = {}
        for key in self.store.list_keys("aliases"):
            parts = key.split("/")
            if len(parts) == 2 and parts[1].endswith(".json"):
                try:
                    rec = self.get_alias(parts[1][: -len(".json")])
                except InvalidNameError:
                    continue  # a foreign object in aliases/: not ours to interpret
                if rec is not None:
                    aliases.setdefault(rec.run_id, []).append(rec.alias)
        out = []
        for run_id, published in sorted(runs.items()):
            created = self.read_manifest(run_id)[0].created_at if published else None
            out.append(RunSummary(run_id, published, created, tuple(aliases.get(run_id, ()))))
        return out

    def show(self, alias: str = "champion") -> dict[str, Any]:
        """Alias record + the manifest it points to (JSON-able)."""
        rec = self.get_alias(alias)
        if rec is None:
            return {"alias": alias, "set": False, "uri": self.uri}
        manifest, msha = self.read_manifest(rec.run_id)
        return {"alias": alias, "set": True, "uri": self.uri, "record": rec.to_dict(),
                "manifest_sha256_matches": msha == rec.manifest_sha256,
                "manifest": json.loads(manifest.to_bytes())}


def load_run(uri: str, run_id: str, dest: str | Path | None = None) -> LoadedRun:
    """Verified local copy of a published run (``.path``, ``.state_dict()``)."""
    return Registry(uri).load_run(run_id, dest)


def load_champion(uri: str, alias: str = "champion", dest: str | Path | None = None) -> LoadedRun:
    """alias -> manifest (sha256 pinned by the alias) -> verified local copy of the run."""
    return Registry(uri).load_champion(alias, dest)
