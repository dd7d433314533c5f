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
* ``previous`` is the run id the alias pointed to before; ``rollback()`` with no target goes
  there. Each record also carries ``seq`` (1, 2, ...), ``action``, ``reason``, ``actor``, ``txn``
  and optionally the gate decision.
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
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
from atft_core.registry.names import (
    REQUIRED_FILES,
    check_alias,
    check_run_file,
    check_run_id,
    is_publishable_file,
)
from atft_core.registry.store import MB, FileStore, ObjectStore, S3Store, new_txn_id, open_store

MANIFEST_FORMAT = "atft-run-manifest/1"
ALIAS_FORMAT = "atft-alias/1"
WEIGHTS_FILE = "model.safetensors"


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _Any()  # ``expect=ANY``: move the alias whatever it points to now


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, indent=1, allow_nan=False).encode() + b"\n"


def _now() -> datetime:
    return datetime.now(UTC)


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
        return _canonical(d)

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
class PublishResult:
    manifest: Manifest
    manifest_sha256: str
    uploaded: tuple[str, ...]
    reused: tuple[str, ...]
    already_published: bool


@dataclass(frozen=True)
class AliasRecord:
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
    format: str = ALIAS_FORMAT

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gate"] = dict(self.gate) if self.gate is not None else None
        return d

    def to_bytes(self) -> bytes:
        return _canonical(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> AliasRecord:
        try:
            d = json.loads(data)
            return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        except (ValueError, TypeError, KeyError) as err:
            raise IntegrityError(f"{where}: malformed alias record: {err}") from None

    def history_name(self) -> str:
        ts = datetime.fromisoformat(self.promoted_at).strftime("%Y%m%dT%H%M%S.%fZ")
        return f"{ts}-{self.run_id}.json"


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
        **store_kwargs: passed to the backend (endpoint_url, multipart sizes, lock_timeout_s).
    """

    def __init__(self, uri: str = "file://var/registry", *, cache_dir: str | Path | None = None,
                 **store_kwargs: Any) -> None:
        self.store: FileStore | S3Store = open_store(uri, **store_kwargs)
        self.uri = self.store.uri
        self.cache_dir = Path(cache_dir) if cache_dir else None

    @classmethod
    def from_config(cls, cfg: Any) -> Registry:
        """From a RegistryConfig (or a full Config)."""
        reg = getattr(cfg, "registry", cfg)
        kwargs: dict[str, Any] = {}
        if isinstance(reg.uri, str) and reg.uri.startswith("s3://"):
            if getattr(reg, "endpoint_url", None):
                kwargs["endpoint_url"] = reg.endpoint_url
            kwargs["multipart_threshold_mb"] = reg.multipart_threshold_mb
        else:
            kwargs["lock_timeout_s"] = reg.lock_timeout_s
        return cls(reg.uri, cache_dir=reg.cache_dir, **kwargs)

    # ----------------------------------------------------------------- keys
    @staticmethod
    def _run_key(run_id: str, name: str) -> str:
        return f"runs/{check_run_id(run_id)}/{name}"

    @staticmethod
    def _alias_key(alias: str) -> str:
        return f"aliases/{check_alias(alias)}.json"

    # ----------------------------------------------------------------- publish
    def publish(self, run_dir: str | Path, run_id: str | None = None, *,
                data_fingerprint: str | None = None) -> PublishResult:
        """Publish ``run_dir`` as immutable version ``run_id`` (default: the directory name).

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
        self._check_weights(run_dir / WEIGHTS_FILE)
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text())
        except ValueError as err:
            raise PublishError(f"{run_dir}/metrics.json is not JSON: {err}") from None
        config_sha = self._config_sha256(run_dir / "config.yaml")
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

        uploaded, reused = [], []
        for f in files:
            key = self._run_key(run_id, f.name)
            try:
                self.store.put_file(key, run_dir / f.name, sha256=f.sha256)
                uploaded.append(f.name)
            except AlreadyExistsError:
                info = self.store.head(key)
                if info is None or info.size != f.size or info.metadata.get("sha256") != f.sha256:
                    raise PublishError(
                        f"run {run_id}: {f.name} already exists in {self.uri} with different "
                        "content; run ids are immutable -- publish under a new run id") from None
                reused.append(f.name)
        data = manifest.to_bytes()
        try:
            self.store.put_bytes(self._run_key(run_id, "manifest.json"), data, if_none_match=True)
        except AlreadyExistsError:
            existing = self._try_manifest(run_id)
            assert existing is not None
            return self._same_or_conflict(existing, manifest)
        return PublishResult(manifest, hashlib.sha256(data).hexdigest(), tuple(uploaded),
                             tuple(reused), already_published=False)

    @staticmethod
    def _check_weights(path: Path) -> None:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
        except (SafetensorError, ValueError, OSError) as err:
            raise PublishError(f"{path} is not a valid safetensors file: {err}") from None
        if not keys:
            raise PublishError(f"{path} holds no tensors")

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
                              gate=dict(gate) if gate is not None else None)
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
        """Move ``alias`` back to its ``previous`` run (or to run ``to``); a CAS against the
        state it read, so a concurrent move makes it fail instead of undoing the wrong thing."""
        check_alias(alias)
        if to is not None:
            check_run_id(to)
        cur = self.get_alias(alias)
        if cur is None:
            raise NotFoundError(f"alias {alias!r} is not set; nothing to roll back")
        target = to if to is not None else cur.previous
        if target is None:
            raise RegistryError(f"alias {alias!r} has no previous run to roll back to")
        return self._move(alias, target, action="rollback", reason=reason, actor=actor,
                          expect=cur.run_id, gate=None, verify=True)

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
