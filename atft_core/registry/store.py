"""Object stores behind the registry: ``file://`` and ``s3://`` with the same semantics.

Semantics both backends implement (and tests/test_registry.py checks on both):

* ``put_bytes(key, data, if_none_match=True)`` creates the object or raises
  AlreadyExistsError -- atomically (S3 ``If-None-Match: *``; file: temp + fsync + ``link()``,
  which fails if the name exists and never exposes a partial file).
* ``put_bytes(key, data, if_match=etag)`` replaces the object only if its current ETag is
  ``etag``, else PreconditionError (S3 ``If-Match``; file: an O_EXCL lock file around a
  read-compare-rename, the rename being atomic).
* Keys under an immutable prefix (``runs/``, ``aliases/history/``) are always create-only, also
  for large files sent through boto3's transfer manager (multipart), where ``If-None-Match`` is
  injected into PutObject / CompleteMultipartUpload by a botocore event hook because s3transfer
  does not accept it as an upload argument.
* ``get_bytes`` returns ``(data, etag)``; ``download`` streams to a local path; ``head`` returns
  :class:`ObjectInfo` or None; ``list_keys(prefix)`` lists keys (relative to the root).

ETags are opaque strings: S3's ETag, or the sha256 of the content for files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from atft_core.atomic import fsync_dir
from atft_core.registry.errors import (
    AlreadyExistsError,
    NotFoundError,
    PreconditionError,
    RegistryError,
)
from atft_core.registry.names import check_name

IMMUTABLE_PREFIXES = ("runs/", "aliases/history/")
MB = 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    metadata: Mapping[str, str] = field(default_factory=dict)


def sha256_file(path: str | Path, chunk: int = 4 * MB) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_key(key: str) -> str:
    # Keys are built from validated names; re-check here so no caller can bypass it.
    parts = key.split("/")
    for p in parts:
        check_name(p, "key component")
    return key


def _is_immutable(key: str) -> bool:
    return key.startswith(IMMUTABLE_PREFIXES)


class ObjectStore(Protocol):
    uri: str

    def put_bytes(self, key: str, data: bytes, *, if_none_match: bool = False,
                  if_match: str | None = None) -> str: ...

    def put_file(self, key: str, path: Path, *, sha256: str) -> None: ...

    def get_bytes(self, key: str) -> tuple[bytes, str]: ...

    def download(self, key: str, dest: Path) -> None: ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def list_keys(self, prefix: str) -> list[str]: ...


# =========================================================================== file://
class FileStore:
    """Objects are files under ``root``; see the module docstring for the guarantees.

    Args:
        root: registry root directory (created if missing).
        lock_timeout_s: bounded wait for the per-key CAS lock; a lock left by a dead process on
            this host is broken, any other stuck lock raises RegistryError naming the file.
    """

    def __init__(self, root: str | Path, lock_timeout_s: float = 30.0) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = f"file://{self.root}"
        self.lock_timeout_s = lock_timeout_s

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    @staticmethod
    def _write_temp(dir_: Path, data: bytes | None = None, src: Path | None = None) -> Path:
        dir_.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dir_)
        try:
            with os.fdopen(fd, "wb") as f:
                if data is not None:
                    f.write(data)
                else:
                    assert src is not None
                    with open(src, "rb") as s:
                        while block := s.read(4 * MB):
                            f.write(block)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return Path(tmp)


    def _create_only(self, final: Path, tmp: Path, key: str) -> None:
        try:
            os.link(tmp, final)  # atomic; fails if the name exists -- never overwrites
        except FileExistsError:
            raise AlreadyExistsError(f"{self.uri}/{key} already exists (write-once)") from None
        finally:
            os.unlink(tmp)
        fsync_dir(final.parent)

    @contextlib.contextmanager
    def _lock(self, final: Path) -> Iterator[None]:
        lock = final.parent / f".{final.name}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.001
        while True:
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                if self._lock_is_stale(lock):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(lock)
                    continue
                if time.monotonic() > deadline:
                    raise RegistryError(
                        f"lock {lock} held for more than {self.lock_timeout_s}s; "
                        "remove it if no registry operation is running"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        try:
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
            os.close(fd)
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)

    @staticmethod
    def _lock_is_stale(lock: Path) -> bool:
        try:
            owner = json.loads(lock.read_text() or "{}")
        except (FileNotFoundError, ValueError):
            return False  # being written right now, or gone: not provably stale
        if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
            return False
        try:
            os.kill(owner["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def put_bytes(self, key: str, data: bytes, *, if_none_match: bool = False,
                  if_match: str | None = None) -> str:
        final = self._path(key)
        if _is_immutable(key):
            if if_match is not None:
                raise PreconditionError(f"{key} is immutable; If-Match writes are refused")
            if_none_match = True
        tmp = self._write_temp(final.parent, data=data)
        etag = hashlib.sha256(data).hexdigest()
        if if_none_match:
            self._create_only(final, tmp, key)
            return etag
        if if_match is None:
            os.replace(tmp, final)
            fsync_dir(final.parent)
            return etag
        try:
            with self._lock(final):
                try:
                    current = hashlib.sha256(final.read_bytes()).hexdigest()
                except FileNotFoundError:
                    raise PreconditionError(f"{key} does not exist (If-Match {if_match})") from None
                if current != if_match:
                    raise PreconditionError(f"{key} changed (ETag {current} != {if_match})")
                os.replace(tmp, final)
                fsync_dir(final.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return etag

    def put_file(self, key: str, path: Path, *, sha256: str) -> None:
        final = self._path(key)
        tmp = self._write_temp(final.parent, src=Path(path))
        if _is_immutable(key):
            self._create_only(final, tmp, key)
        else:
            os.replace(tmp, final)

    def get_bytes(self, key: str) -> tuple[bytes, str]:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"{self.uri}/{key} not found") from None
        return data, hashlib.sha256(data).hexdigest()

    def download(self, key: str, dest: Path) -> None:
        src = self._path(key)
        try:
            with open(src, "rb") as s, open(dest, "wb") as d:
                while block := s.read(4 * MB):
                    d.write(block)
        except FileNotFoundError:
            raise NotFoundError(f"{self.uri}/{key} not found") from None

    def head(self, key: str) -> ObjectInfo | None:
        p = self._path(key)
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            return None
        digest = sha256_file(p)
        return ObjectInfo(key, size, digest, {"sha256": digest})

    def list_keys(self, prefix: str) -> list[str]:
        base = self.root / prefix.rstrip("/") if prefix else self.root
        if not base.is_dir():
            return []
        out = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):  # temp files and locks
                    continue
                out.append(Path(dirpath, name).relative_to(self.root).as_posix())
        return sorted(out)


# =========================================================================== s3://
def _parse_airflow_aws_conn(raw: str) -> dict[str, Any]:
    """Read ``AIRFLOW_CONN_AWS_DEFAULT`` (JSON or URI form) without importing Airflow.

    Returns a dict with any of endpoint_url, region_name, aws_access_key_id,
    aws_secret_access_key found (``extra.endpoint_url`` or ``extra.service_config.s3.endpoint_url``;
    login/password are the access key pair, as in the Amazon provider).
    """
    raw = raw.strip()
    login = password = None
    extra: dict[str, Any] = {}
    if raw.startswith("{"):
        conn = json.loads(raw)
        login, password = conn.get("login"), conn.get("password")
        ex = conn.get("extra") or {}
        extra = json.loads(ex) if isinstance(ex, str) else dict(ex)
        if not extra.get("endpoint_url") and conn.get("host"):
            host = str(conn["host"])
            port = conn.get("port")
            if "://" not in host:
                host = f"{conn.get('schema') or 'http'}://{host}"
            extra.setdefault("endpoint_url", f"{host}:{port}" if port else host)
    else:
        parts = urlsplit(raw)
        login = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        for k, v in parse_qsl(parts.query, keep_blank_values=True):
            if k == "__extra__":
                extra.update(json.loads(v))
            else:
                extra[k] = v
    endpoint = extra.get("endpoint_url") or (
        ((extra.get("service_config") or {}).get("s3") or {}).get("endpoint_url")
    )
    out: dict[str, Any] = {}
    if endpoint:
        out["endpoint_url"] = endpoint
    if extra.get("region_name"):
        out["region_name"] = extra["region_name"]
    if login and password:
        out["aws_access_key_id"] = login
        out["aws_secret_access_key"] = password
    return out


def resolve_s3_settings(endpoint_url: str | None = None,
                        env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Where to reach S3: explicit argument > AWS_ENDPOINT_URL_S3 > AWS_ENDPOINT_URL >
    Airflow ``aws_default`` connection (env var) > AWS itself. Credentials: the standard boto3
    chain, unless only the Airflow connection carries a key pair. ``source`` says which won."""
    env = os.environ if env is None else env
    settings: dict[str, Any] = {}
    conn_raw = env.get("AIRFLOW_CONN_AWS_DEFAULT")
    conn = _parse_airflow_aws_conn(conn_raw) if conn_raw else {}
    if endpoint_url:
        settings.update(endpoint_url=endpoint_url, source="argument")
    elif env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"):
        settings.update(endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env["AWS_ENDPOINT_URL"],
                        source="AWS_ENDPOINT_URL")
    elif conn.get("endpoint_url"):
        settings.update(endpoint_url=conn["endpoint_url"], source="AIRFLOW_CONN_AWS_DEFAULT")
    else:
        settings.update(endpoint_url=None, source="aws")
    if conn.get("region_name") and not (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")):
        settings["region_name"] = conn["region_name"]
    if "aws_access_key_id" in conn and not env.get("AWS_ACCESS_KEY_ID"):
        settings["aws_access_key_id"] = conn["aws_access_key_id"]
        settings["aws_secret_access_key"] = conn["aws_secret_access_key"]
    return settings


_LOADER_LOCK = threading.Lock()
_LOADER: Any = None


def _botocore_session() -> Any:
    """A fresh botocore session (fresh credential resolution) sharing one service-model loader:
    parsing the S3 model costs ~0.3 s per session, the shared loader makes it ~0.05 s."""
    import botocore.loaders
    import botocore.session

    global _LOADER
    with _LOADER_LOCK:
        if _LOADER is None:
            _LOADER = botocore.loaders.create_loader()
        session = botocore.session.get_session()
        session.register_component("data_loader", _LOADER)
    return session


class S3Store:
    """``s3://bucket/prefix`` through boto3. See the module docstring for the guarantees.

    Args:
        bucket, prefix: location of the registry root.
        endpoint_url: overrides :func:`resolve_s3_settings`.
        multipart_threshold_mb / multipart_chunksize_mb / max_concurrency: transfer manager.
        checksum_algorithm: S3 integrity checksum sent with every upload ("SHA256" or "CRC32").
        connect_timeout_s / read_timeout_s / max_attempts: botocore timeouts and retries.
    """

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 multipart_threshold_mb: int = 8, multipart_chunksize_mb: int = 8,
                 max_concurrency: int = 4, checksum_algorithm: str = "SHA256",
                 connect_timeout_s: float = 10.0, read_timeout_s: float = 60.0,
                 max_attempts: int = 4) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config as BotoConfig

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        for p in self.prefix.split("/") if self.prefix else ():
            check_name(p, "S3 prefix component")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.settings = resolve_s3_settings(endpoint_url)
        kwargs = {k: v for k, v in self.settings.items() if k != "source" and v is not None}
        boto_cfg = BotoConfig(
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            s3={"addressing_style": "path"} if kwargs.get("endpoint_url") else {},
            max_pool_connections=max(10, max_concurrency * 2),
        )
        self.client = boto3.session.Session(botocore_session=_botocore_session()).client(
            "s3", config=boto_cfg, **kwargs)
        self.checksum_algorithm = checksum_algorithm
        self.transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold_mb * MB,
            multipart_chunksize=multipart_chunksize_mb * MB,
            max_concurrency=max_concurrency,
        )
        # s3transfer rejects IfNoneMatch as an upload argument: inject it for immutable keys.
        events = self.client.meta.events
        for op in ("PutObject", "CompleteMultipartUpload"):
            events.register(f"before-parameter-build.s3.{op}", self._force_create_only)
        self._local = threading.local()

    def _full(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1:] if self.prefix else full

    def _force_create_only(self, params: dict[str, Any], **_: Any) -> None:
        key = params.get("Key", "")
        if _is_immutable(self._rel(key)) and "IfMatch" not in params:
            params["IfNoneMatch"] = "*"

    @staticmethod
    def _code(err: Exception) -> str:
        return str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))

    def _raise_conditional(self, err: Exception, key: str, if_match: str | None) -> None:
        code = self._code(err)
        if code in ("PreconditionFailed", "412"):
            if if_match is None:
                raise AlreadyExistsError(f"{self.uri}/{key} already exists (write-once)") from None
            raise PreconditionError(f"{self.uri}/{key} changed (If-Match {if_match})") from None
        if code in ("ConditionalRequestConflict", "409"):
            raise PreconditionError(f"{self.uri}/{key}: concurrent conditional write") from None
        if code in ("NoSuchKey", "404") and if_match is not None:
            raise PreconditionError(f"{self.uri}/{key} does not exist (If-Match)") from None
        raise err

    def put_bytes(self, key: str, data: bytes, *, if_none_match: bool = False,
                  if_match: str | None = None) -> str:
        from botocore.exceptions import ClientError

        full = self._full(key)
        if _is_immutable(key) and if_match is not None:
            raise PreconditionError(f"{key} is immutable; If-Match writes are refused")
        kwargs: dict[str, Any] = {"ChecksumAlgorithm": self.checksum_algorithm}
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        elif if_none_match:
            kwargs["IfNoneMatch"] = "*"
        try:
            resp = self.client.put_object(Bucket=self.bucket, Key=full, Body=data, **kwargs)
        except ClientError as err:
            self._raise_conditional(err, key, if_match)
            raise
        return str(resp["ETag"])

    def _manager(self):
        from boto3.s3.transfer import create_transfer_manager

        return create_transfer_manager(self.client, self.transfer_config)

    def put_file(self, key: str, path: Path, *, sha256: str) -> None:
        from botocore.exceptions import ClientError

        full = self._full(key)
        extra = {"ChecksumAlgorithm": self.checksum_algorithm, "Metadata": {"sha256": sha256}}
        try:
            with self._manager() as tm:
                tm.upload(str(path), self.bucket, full, extra_args=extra).result()
        except ClientError as err:
            self._raise_conditional(err, key, None)
            raise

    def get_bytes(self, key: str) -> tuple[bytes, str]:
        from botocore.exceptions import ClientError

        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as err:
            if self._code(err) in ("NoSuchKey", "404"):
                raise NotFoundError(f"{self.uri}/{key} not found") from None
            raise
        with contextlib.closing(resp["Body"]) as body:
            return body.read(), str(resp["ETag"])

    def download(self, key: str, dest: Path) -> None:
        from botocore.exceptions import ClientError

        try:
            with self._manager() as tm:
                tm.download(self.bucket, self._full(key), str(dest)).result()
        except ClientError as err:
            if self._code(err) in ("NoSuchKey", "404"):
                raise NotFoundError(f"{self.uri}/{key} not found") from None
            raise

    def head(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        try:
            r = self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as err:
            if self._code(err) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        return ObjectInfo(key, int(r["ContentLength"]), str(r["ETag"]), dict(r.get("Metadata", {})))

    def list_keys(self, prefix: str) -> list[str]:
        full = self._full(prefix.rstrip("/")) + "/" if prefix else (
            f"{self.prefix}/" if self.prefix else "")
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full):
            out.extend(self._rel(o["Key"]) for o in page.get("Contents", []))
        return sorted(out)


# =========================================================================== uri
def open_store(uri: str, **kwargs: Any) -> FileStore | S3Store:
    """``file://var/registry`` (relative to CWD), ``file:///abs/dir`` or ``s3://bucket/prefix``."""
    if uri.startswith("file://"):
        path = uri[len("file://"):]
        if not path:
            raise RegistryError(f"registry uri {uri!r} has no path")
        fs_kwargs = {k: v for k, v in kwargs.items() if k in ("lock_timeout_s",)}
        return FileStore(Path(path) if path.startswith("/") else Path.cwd() / path, **fs_kwargs)
    if uri.startswith("s3://"):
        rest = uri[len("s3://"):]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise RegistryError(f"registry uri {uri!r} has no bucket")
        s3_kwargs = {k: v for k, v in kwargs.items() if k != "lock_timeout_s"}
        return S3Store(bucket, prefix, **s3_kwargs)
    raise RegistryError(f"registry uri {uri!r}: expected file://PATH or s3://BUCKET/PREFIX")


def new_txn_id() -> str:
    return uuid.uuid4().hex
