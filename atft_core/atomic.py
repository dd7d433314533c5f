"""Atomic file writes: a kill at any moment leaves either the old file or the new one.

Every write goes to a temp file in the destination directory, is fsync'ed, renamed over the
target with ``os.replace``, and the directory is fsync'ed so the rename itself is durable.
"""

from __future__ import annotations

import contextlib
import io
import os
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

    ``mode``: permission bits for the new file (the temp file is created 0600).
    """
    path = Path(path)
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
        if mode is not None:
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
