"""``file://`` object store: see :mod:`atft_core.registry.store` for the guarantees."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from atft_core.atomic import fsync_dir
from atft_core.registry.errors import (
    AlreadyExistsError,
    NotFoundError,
    PreconditionError,
    RegistryError,
)
from atft_core.registry.storebase import (
    MB,
    ListedObject,
    ObjectInfo,
    check_key,
    is_immutable,
    sha256_file,
)


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
        return self.root / check_key(key)

    @staticmethod
    def _write_temp(dir_: Path, data: bytes | None = None, src: Path | None = None,
                    on_bytes: Callable[[int], None] | None = None) -> Path:
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
                            if on_bytes is not None:
                                on_bytes(len(block))
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
        if is_immutable(key):
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

    def put_file(self, key: str, path: Path, *, sha256: str,
                 on_bytes: Callable[[int], None] | None = None) -> None:
        final = self._path(key)
        tmp = self._write_temp(final.parent, src=Path(path), on_bytes=on_bytes)
        if is_immutable(key):
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

    def list_info(self, prefix: str) -> list[ListedObject]:
        out = []
        for key in self.list_keys(prefix):
            with contextlib.suppress(FileNotFoundError):
                st = (self.root / key).stat()
                out.append(ListedObject(key, st.st_size, st.st_mtime))
        return out

    def delete(self, key: str) -> None:
        p = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
        fsync_dir(p.parent)
        # drop directories the deletion emptied, but never a top-level one (runs/, selfcheck/):
        # a concurrent writer may be about to create its sub-directory there
        d = p.parent
        while d.parent != self.root and d.is_relative_to(self.root):
            try:
                d.rmdir()
            except OSError:
                break
            d = d.parent

    def list_leftovers(self, prefix: str) -> list[ListedObject]:
        """``.tmp-*`` files :meth:`_write_temp` leaves when a writer is killed mid-write."""
        base = self.root / prefix.rstrip("/") if prefix else self.root
        out = []
        for dirpath, _, filenames in os.walk(base) if base.is_dir() else ():
            for name in filenames:
                if name.startswith(".tmp-"):
                    p = Path(dirpath, name)
                    with contextlib.suppress(FileNotFoundError):
                        st = p.stat()
                        out.append(ListedObject(p.relative_to(self.root).as_posix(), st.st_size,
                                                st.st_mtime, path=p))
        return sorted(out, key=lambda o: o.key)

    def remove_leftover(self, item: ListedObject) -> None:
        assert item.path is not None and item.path.name.startswith(".tmp-")
        assert item.path.resolve().is_relative_to(self.root)
        with contextlib.suppress(FileNotFoundError):
            item.path.unlink()
        with contextlib.suppress(OSError):  # the run directory, if now empty
            item.path.parent.rmdir()

    def describe(self) -> str:
        return f"directory {self.root}"
