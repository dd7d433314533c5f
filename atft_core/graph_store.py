"""Day graphs kept on disk across processes and runs (issue 15: scale).

A day's graph (:func:`atft_core.graph.build_day_graph`) is a pure function of its inputs: the
trailing returns window (N, W), the sectors (N,), the graph settings and the graph code. A nightly
retrain adds one day, yet every new process (the retrain, each DDP rank, each HPO worker, the
replay) rebuilt every day's graph: measured 170 ms per day at 4,000 stocks, i.e. about 7 minutes
for 2,500 days, several GPU epochs' worth. This store keeps them on disk.

Decisions:

* **Key = a hash of exactly what the graph is computed from**: blake2b over the returns and
  sector bytes (dtype and shape included), the graph settings, the source of
  ``atft_core/graph.py`` and the torch version. Changing any input, a setting or the graph code
  is a different key, so a stale graph is never read; nothing has to be invalidated by hand.
* **Format**: one ``<key>.graph`` file per day: a magic, (N, E, destination width), the edges as
  a per-source row pointer (N + 1) int32 and destinations int16 (int32 beyond 32,767 stocks),
  rho float32, and a CRC32 of all of it (checked on read). The same-sector flag is recomputed from
  the sectors. 6 bytes per edge: about 160 KB per day at 1,000 stocks (28 edges per stock),
  520 KB at 4,000. Not ``.npz``: its zip parsing alone cost 0.6 ms per day, as much as building
  a 190-stock day.
* **Writes**: temp file in the same folder + ``os.replace`` (readers see a whole file or none;
  concurrent writers of one key write the same bytes). No fsync: a lost or torn file is a miss.
* **The store never fails a run**: a missing, unreadable or inconsistent file is a miss (rebuilt
  and rewritten); a failed write (disk full, read-only) is logged once and skipped; all counted in
  ``stats``.
* **Size**: :meth:`GraphStore.prune` removes the least recently used graph files (a hit touches
  its file) beyond ``max_bytes``; only files named like this store's own (``<40 hex>.graph``) are
  ever removed.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from atft_core.config import GraphConfig

log = logging.getLogger(__name__)
SUFFIX = ".graph"
MAGIC = b"ATFTGRF1"
_NAME = re.compile(r"^[0-9a-f]{40}\.graph$")
DEFAULT_MAX_BYTES = 4 * 1024**3  # ~2,500 days of 1,000 stocks is ~0.4 GB, of 4,000 ~1.5 GB


@functools.cache
def _code_digest() -> bytes:
    """The graph code's identity: a change to graph.py, or another torch (whose kernels compute
    rho), is a different key."""
    from atft_core import graph

    return hashlib.blake2b(Path(graph.__file__).read_bytes() + torch.__version__.encode(), digest_size=16).digest()


def _decode(blob: bytes, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(ptr, dst, rho) of a stored graph of n nodes, or None unless it is whole and consistent."""
    head = len(MAGIC) + 24
    if len(blob) < head + 4 or blob[: len(MAGIC)] != MAGIC:
        return None
    if zlib.crc32(blob[:-4]) != int(np.frombuffer(blob[-4:], dtype="<u4")[0]):
        return None
    n_stored, e, width = (int(v) for v in np.frombuffer(blob[len(MAGIC):head], dtype="<i8"))
    if n_stored != n or width not in (2, 4) or e < 0 or len(blob) != head + 4 * (n + 1) + (width + 4) * e + 4:
        return None
    ptr = np.frombuffer(blob, dtype="<i4", count=n + 1, offset=head)
    dst = np.frombuffer(blob, dtype="<i2" if width == 2 else "<i4", count=e, offset=head + 4 * (n + 1))
    rho = np.frombuffer(blob, dtype="<f4", count=e, offset=head + 4 * (n + 1) + width * e)
    if ptr[0] != 0 or ptr[-1] != e or np.any(np.diff(ptr) < 0) or (e and (dst.min() < 0 or dst.max() >= n)):
        return None
    return ptr, dst, rho


@functools.lru_cache(maxsize=16)
def _settings_bytes(cfg: GraphConfig) -> bytes:
    """The graph settings as key bytes (cached: a frozen config, dumped once, not once per day)."""
    return repr(sorted(cfg.model_dump().items())).encode()


def store_dir(cfg) -> Path:
    """The deployment's graph store: ``{work_root}/graph_store`` (beside the per-run folders, one
    store for every run, as ``atft_score/live_history.parquet`` is one file across days)."""
    return Path(cfg.work_root) / "graph_store"


def graph_key(returns: Tensor, sectors: Tensor, cfg: GraphConfig) -> str:
    """40 hex digits naming the graph of these inputs (see the module's decisions)."""
    h = hashlib.blake2b(digest_size=20)
    h.update(_code_digest())
    h.update(_settings_bytes(cfg))
    for t in (returns, sectors):
        a = np.ascontiguousarray(t.numpy())
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


class GraphStore:
    """A folder of day graphs: ``get``/``put`` by :func:`graph_key`, ``prune`` by size.

    Args:
        root: the folder (created on first write).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.stats = {"hits": 0, "misses": 0, "bad": 0, "writes": 0, "write_errors": 0}

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}{SUFFIX}"

    def get(self, key: str, sectors: Tensor) -> tuple[Tensor, Tensor] | None:
        """The stored graph as ``build_day_graph`` returns it, or None (missing or unusable)."""
        path = self._path(key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            self.stats["misses"] += 1
            return None
        except OSError:
            self.stats["bad"] += 1
            return None
        arrays = _decode(blob, len(sectors))
        if arrays is None:  # torn, truncated or foreign: rebuilt and overwritten
            self.stats["bad"] += 1
            return None
        ptr, dst, rho = arrays
        self.stats["hits"] += 1
        _quietly(os.utime, path)  # least recently used = oldest mtime (prune)
        # assembled in numpy, one tensor per output: small torch ops cost ~5-30 us each (issue 15)
        src = np.repeat(np.arange(len(sectors), dtype=np.int64), np.diff(ptr))
        dst64 = dst.astype(np.int64)
        sec_all = sectors.numpy()
        sec = sec_all[src]
        same = (sec == sec_all[dst64]) & (sec >= 0)
        attr = np.empty((len(dst64), 2), dtype=np.float32)
        attr[:, 0], attr[:, 1] = rho, same
        return torch.from_numpy(np.stack([src, dst64])), torch.from_numpy(attr)

    def put(self, key: str, edge_index: Tensor, edge_attr: Tensor, n: int) -> None:
        """Store one day's graph (n nodes; edges sorted by source, as built)."""
        src, dst = edge_index.to(torch.int64).numpy()
        ptr = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(np.bincount(src, minlength=n), out=ptr[1:])
        wide = n > np.iinfo(np.int16).max
        body = b"".join([MAGIC, np.array([n, len(dst), 4 if wide else 2], dtype="<i8").tobytes(),
                         ptr.astype("<i4").tobytes(), dst.astype("<i4" if wide else "<i2").tobytes(),
                         edge_attr[:, 0].numpy().astype("<f4").tobytes()])
        blob = body + np.array([zlib.crc32(body)], dtype="<u4").tobytes()
        path = self._path(key)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=SUFFIX)
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, path)
        except OSError as err:  # disk full, read-only: the run goes on without storing
            if tmp is not None:
                _quietly(os.unlink, tmp)
            if not self.stats["write_errors"]:
                log.warning("graph store %s: not writable (%s); day graphs are rebuilt next time", self.root, err)
            self.stats["write_errors"] += 1
            return
        self.stats["writes"] += 1

    def prune(self, max_bytes: int = DEFAULT_MAX_BYTES) -> int:
        """Remove least recently used graph files until the store holds at most ``max_bytes``;
        returns how many were removed. Only this store's own file names are considered."""
        if not self.root.is_dir():
            return 0
        files = []
        for sub in self.root.iterdir():
            if sub.is_dir() and len(sub.name) == 2:
                for p in sub.iterdir():
                    if _NAME.match(p.name):
                        try:
                            st = p.stat()
                        except FileNotFoundError:
                            continue
                        files.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in files)
        removed = 0
        for _, size, p in sorted(files):
            if total <= max_bytes:
                break
            _quietly(p.unlink)
            total -= size
            removed += 1
        return removed


def _quietly(fn, *args) -> None:
    """``fn(*args)``, ignoring an OSError (another process removed or replaced the file)."""
    try:
        fn(*args)
    except OSError:
        pass
