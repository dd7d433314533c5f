"""Shared pieces of the registry's object stores (see :mod:`atft_core.registry.store`)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from atft_core.progress import MB
from atft_core.registry.names import check_name

IMMUTABLE_PREFIXES = ("runs/", "aliases/history/", "signals/")  # signals: atft_core.serving


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ListedObject:
    """A listed object (or leftover of an interrupted write); ``modified`` is epoch seconds."""

    key: str
    size: int
    modified: float
    upload_id: str | None = None  # S3 unfinished multipart upload
    path: Path | None = None  # file:// leftover temp file


def sha256_file(path: str | Path, chunk: int = 4 * MB) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_key(key: str) -> str:
    # Keys are built from validated names; re-check here so no caller can bypass it.
    parts = key.split("/")
    for p in parts:
        check_name(p, "key component")
    return key


def is_immutable(key: str) -> bool:
    return key.startswith(IMMUTABLE_PREFIXES)


class ObjectStore(Protocol):
    uri: str

    def put_bytes(self, key: str, data: bytes, *, if_none_match: bool = False,
                  if_match: str | None = None) -> str: ...

    def put_file(self, key: str, path: Path, *, sha256: str,
                 on_bytes: Callable[[int], None] | None = None) -> None: ...

    def get_bytes(self, key: str) -> tuple[bytes, str]: ...

    def download(self, key: str, dest: Path) -> None: ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def list_keys(self, prefix: str) -> list[str]: ...

    def list_info(self, prefix: str) -> list[ListedObject]: ...

    def delete(self, key: str) -> None: ...

    def list_leftovers(self, prefix: str) -> list[ListedObject]: ...

    def remove_leftover(self, item: ListedObject) -> None: ...

    def describe(self) -> str: ...


def new_txn_id() -> str:
    return uuid.uuid4().hex
