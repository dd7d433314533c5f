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
* ``list_info(prefix)`` lists keys with size and modification time; ``delete(key)`` removes one
  object (only the self-check's scratch objects and ``atft registry gc`` use it);
  ``list_leftovers`` / ``remove_leftover`` find what an interrupted write left behind (file:
  ``.tmp-*`` files; S3: unfinished multipart uploads).
* S3 only: every call has a TOTAL deadline (``deadline_s``; a transfer gets it per part), enforced
  around botocore's per-read timeouts and retries; an unreachable endpoint, a missing bucket, a
  server that never answers or missing credentials end with one BackendUnavailableError line
  naming the endpoint.

ETags are opaque strings: S3's ETag, or the sha256 of the content for files.

Modules: :mod:`.storebase` (shared types), :mod:`.filestore`, :mod:`.s3store`; this module
re-exports them and maps a URI to a store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atft_core.registry.errors import RegistryError
from atft_core.registry.filestore import FileStore
from atft_core.registry.s3store import S3Store, resolve_s3_settings
from atft_core.registry.storebase import (
    IMMUTABLE_PREFIXES,
    MB,
    ListedObject,
    ObjectInfo,
    ObjectStore,
    new_txn_id,
    sha256_file,
)

__all__ = ["IMMUTABLE_PREFIXES", "MB", "FileStore", "ListedObject", "ObjectInfo", "ObjectStore",
           "S3Store", "new_txn_id", "open_store", "resolve_s3_settings", "sha256_file"]


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
