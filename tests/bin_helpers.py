"""Shared test helpers for external binaries and local servers (promtool, prometheus, pushgateway).

* :func:`require_binary` skips a test when a binary is missing locally, but FAILS it when the
  environment variable ``CI`` is set (``true``/``1``/anything but ``0``/``false``/empty): CI must
  have every tool, so a missing one is a broken build, not a silent skip.
* :func:`free_port`, :func:`start_server`, :func:`stop_server`, :func:`wait_until`: servers listen
  on 127.0.0.1, are stopped by PID, and every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_binary(name: str) -> str:
    """Absolute path of ``name`` on PATH; skip (locally) or fail (CI) when missing."""
    path = shutil.which(name)
    if path:
        return path
    msg = f"required binary {name!r} not found on PATH (Debian package: see scripts/bootstrap.sh)"
    if in_ci():
        pytest.fail(msg + " -- CI is set, so this is an error, not a skip")
    pytest.skip(msg)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], object], timeout: float = 30.0, interval: float = 0.2,
               what: str = "condition"):
    """Poll ``check`` until it returns a truthy value (returned) or ``timeout`` passes (fail)."""
    deadline = time.monotonic() + timeout
    last_err: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as err:  # noqa: BLE001 -- server not up yet
            last_err = err
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last error: {last_err})")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.status == 200


def start_server(args: list[str], ready_url: str, log_path: Path, timeout: float = 30.0):
    """Start a server process and wait (bounded) until ``ready_url`` answers 200."""
    log = open(log_path, "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()

    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"{args[0]} exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        return http_ok(ready_url)

    try:
        wait_until(ready, timeout=timeout, what=f"{args[0]} at {ready_url}")
    except BaseException:
        stop_server(proc)
        raise
    return proc


def stop_server(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop the process we started, by its PID: SIGTERM, bounded wait, then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def start_pushgateway(log_path: Path) -> tuple[str, subprocess.Popen]:
    """A real Pushgateway on a free 127.0.0.1 port, metrics kept in memory only.

    Debian's build defaults ``--persistence.file`` to /var/lib/prometheus/pushgateway.data, which
    every instance would share: groups pushed by one test would reappear in the next.
    """
    binary = require_binary("prometheus-pushgateway")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server([binary, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
                        f"{url}/-/ready", log_path)
    return url, proc
