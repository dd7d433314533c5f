"""Progress of long byte transfers (registry publish, issue 13 item 4).

A tqdm bar on an interactive terminal; otherwise (Airflow task logs, CI) plain log lines at most
every ``every_s`` seconds and at the end, with MB/s and the ETA -- a ``\\r``-redrawn bar is noise in
a log file. Training has its own batch progress (:class:`atft_core.train.callbacks.Progress`).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator

MB = 1 << 20  # the one definition (registry.storebase imports it)


@contextlib.contextmanager
def byte_progress(total: int, desc: str, *, logger: logging.Logger, interactive: bool | None = None,
                  every_s: float = 10.0) -> Iterator[Callable[[int], None]]:
    """Yield ``update(n_bytes)``; report ``desc`` progress towards ``total`` bytes."""
    interactive = sys.stderr.isatty() if interactive is None else interactive
    if interactive:
        from tqdm.auto import tqdm

        with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False) as bar:
            yield bar.update
        return
    t0 = last = time.perf_counter()
    done = 0

    def line(now: float) -> None:
        rate = done / (now - t0) if now > t0 else float("nan")
        eta = (total - done) / rate if rate and rate == rate and rate > 0 else float("nan")
        logger.info("%s: %.1f/%.1f MB (%.0f%%), %.1f MB/s, ETA %.0fs", desc, done / MB, total / MB,
                    100.0 * done / total if total else 100.0, rate / MB, eta)

    def update(n: int) -> None:
        nonlocal done, last
        done += int(n)
        now = time.perf_counter()
        if now - last >= every_s:
            line(now)
            last = now

    yield update
    line(time.perf_counter())
