"""A local S3 protocol server (moto) on 127.0.0.1, for tests and ``atft bench registry``.

moto 5.2.5 evaluates ``If-None-Match`` / ``If-Match`` on PutObject and CompleteMultipartUpload
as check-then-act inside a threaded werkzeug server, so two concurrent conditional writes can
both pass the check (real S3 evaluates them atomically). ``serialize=True`` (default) wraps the
app in one lock so each request is handled atomically, which restores S3's guarantee; the
transport is still real HTTP. Run as ``python -m atft_core.registry.locals3 [--no-serialize]``:
prints ``PORT <n>`` once listening. moto is a test dependency, imported only here.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

BOOT_TIMEOUT_S = 60.0


def _serialized(app: Any) -> Any:
    lock = threading.Lock()

    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        with lock:
            # materialise the body inside the lock: the whole request is one atomic step
            return list(app(environ, start_response))

    return wrapped


def serve(port: int = 0, serialize: bool = True) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    server = make_server("127.0.0.1", port, _serialized(app) if serialize else app,
                         threaded=True, request_handler=MotoRequestHandler)
    print(f"PORT {server.server_port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()


@contextlib.contextmanager
def local_s3_server(serialize: bool = True) -> Iterator[str]:
    """Start the server as a subprocess; yield its endpoint URL; stop it by PID."""
    with local_s3_process(serialize) as (url, _proc):
        yield url


@contextlib.contextmanager
def local_s3_process(serialize: bool = True) -> Iterator[tuple[str, subprocess.Popen]]:
    """Like :func:`local_s3_server` but also yields the process (to pause/kill it in tests)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "atft_core.registry.locals3"] + ([] if serialize else ["--no-serialize"]),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        port = _read_port(proc)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)  # in case a test left it paused
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _read_port(proc: subprocess.Popen) -> int:
    assert proc.stdout is not None
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(max(0.0, deadline - time.monotonic()))
    line = result[0] if result else ""
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"local S3 server did not start within {BOOT_TIMEOUT_S}s "
                           f"(exit code {proc.poll()}, said {line!r})")
    return int(line.split()[1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--no-serialize", action="store_true")
    a = p.parse_args()
    serve(a.port, serialize=not a.no_serialize)


if __name__ == "__main__":
    main()
