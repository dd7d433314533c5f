"""Atomic file writes: a kill at any moment leaves either the old file or the new one.

Every write goes to a temp file in the destination directory, is fsync'ed, renamed over the
target with ``os.replace``, and the directory is fsync'ed so the rename itself is durable.

Mode: the temp file is created 0600 (mkstemp), so without care every atomically written file
ended up private. The new file gets ``mode`` when given (e.g. 0600 for a secret), else the mode
of the file it replaces, else 0644 (readable, like a plain ``open(..., "w")`` under umask 022).
An OSError while writing (disk full, read-only filesystem) is re-raised naming the target.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    """fsync a directory (durable renames); a no-op where the filesystem does not allow it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, write: Callable[[io.BufferedWriter], None] | bytes,
                       mode: int | None = None) -> Path:
    """Write ``path`` atomically: temp file in the same dir, fsync, os.replace, fsync dir.

    ``mode``: permission bits for the new file; default: those of the file it replaces, else
    :data:`DEFAULT_MODE` (0644). Pass 0o600 for a secret.
    """
    path = Path(path)
    try:
        return _atomic_write(path, write, mode)
    except OSError as err:
        if err.filename is None and err.errno is not None:  # fsync/write errors name no file
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


DEFAULT_MODE = 0o644


def _atomic_write(path: Path, write, mode: int | None) -> Path:
    if mode is None:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            mode = DEFAULT_MODE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(write, bytes | bytearray):
                fh.write(write)
            else:
                write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str, mode: int | None = None) -> Path:
    return atomic_write_bytes(path, text.encode(), mode=mode)
