"""Where pushes go (a resolved Pushgateway) and how: HTTP with a TOTAL deadline.

``push_timeout_seconds`` is the deadline of the whole request, connect to last byte. urllib's
``timeout`` (what prometheus_client uses) bounds each socket operation only, so a gateway that
trickles one byte per second held a push for minutes. :func:`request_with_deadline` arms a timer
that shuts the socket down at the deadline, which ends any blocked read at once.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from atft_core.config import MetricsConfig

ENV_URL = "ATFT_PUSHGATEWAY_URL"
ENV_AIRFLOW_CONN = "AIRFLOW_CONN_ATFT_PUSHGATEWAY"


class DeadlineExceeded(TimeoutError):
    """The request had no complete answer within its total deadline."""


@dataclass(frozen=True)
class Gateway:
    """A resolved Pushgateway: URL (scheme://host:port[/prefix]), optional basic auth, source."""

    url: str
    username: str | None = None
    password: str | None = None
    source: str = "config"


# --------------------------------------------------------------------------- gateway resolution
def parse_airflow_connection(value: str) -> Gateway:
    """Parse an Airflow connection (URI or JSON form) into a :class:`Gateway`.

    ``http://host:9091``, ``https://u:p@host``, ``http://host:9091/https`` (Airflow puts the HTTP
    scheme in ``schema``), ``{"conn_type": "http", "host": "h", "port": 9091, "schema": "https"}``.
    """
    value = value.strip()
    if not value:
        raise ValueError(f"{ENV_AIRFLOW_CONN} is empty")
    if value.startswith("{"):
        try:
            d = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"{ENV_AIRFLOW_CONN}: invalid JSON: {err}") from None
        conn_type, host, port = d.get("conn_type") or "http", d.get("host"), d.get("port")
        schema, login, password = d.get("schema"), d.get("login"), d.get("password")
    else:
        u = urllib.parse.urlsplit(value)
        conn_type, host, port = u.scheme, u.hostname, u.port
        schema = urllib.parse.unquote(u.path.lstrip("/")) or None
        login = urllib.parse.unquote(u.username) if u.username else None
        password = urllib.parse.unquote(u.password) if u.password else None
    if not host:
        raise ValueError(f"{ENV_AIRFLOW_CONN}: no host in the connection")
    if "://" in host:  # host already carries the scheme
        base = host.rstrip("/")
    else:
        scheme = schema if schema in ("http", "https") else ("https" if conn_type == "https" else "http")
        base = f"{scheme}://{host}"
    if port:
        base = f"{base}:{int(port)}"
    return Gateway(base, login, password, source=ENV_AIRFLOW_CONN)


def resolve_gateway(cfg: MetricsConfig, environ: Mapping[str, str] | None = None) -> Gateway | None:
    """Config, then ``ATFT_PUSHGATEWAY_URL``, then the Airflow connection; None -> textfile."""
    env = os.environ if environ is None else environ
    if cfg.pushgateway_url:
        return Gateway(cfg.pushgateway_url.rstrip("/"), source="config")
    if env.get(ENV_URL, "").strip():
        return Gateway(env[ENV_URL].strip().rstrip("/"), source=ENV_URL)
    if env.get(ENV_AIRFLOW_CONN, "").strip():
        return parse_airflow_connection(env[ENV_AIRFLOW_CONN])
    return None


# --------------------------------------------------------------------------- HTTP with a deadline
def _basic_auth(username: str, password: str | None) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password or ''}".encode()).decode()


def request_with_deadline(url: str, method: str = "GET", data: bytes | None = None,
                          headers: Mapping[str, str] | None = None,
                          deadline_s: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of one HTTP(S) request that ends within ``deadline_s`` seconds in total.

    Raises :class:`DeadlineExceeded` ("no complete answer from HOST within N s") or the
    connection's OSError."""
    u = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    conn = cls(u.hostname or "", u.port, timeout=deadline_s)  # also bounds connect
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        sock = conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # a blocked recv returns at once
            except OSError:
                pass

    timer = threading.Timer(deadline_s, cut)
    timer.daemon = True
    timer.start()
    try:
        conn.connect()
        if expired.is_set():  # the timer fired while connecting (no socket to cut yet)
            raise DeadlineExceeded
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        conn.request(method, path, body=data, headers=dict(headers or {}))
        resp = conn.getresponse()
        body = resp.read()
        if expired.is_set():
            raise DeadlineExceeded
        return resp.status, body
    except Exception as err:
        if expired.is_set() or isinstance(err, TimeoutError):
            raise DeadlineExceeded(f"no complete answer from {u.netloc} within {deadline_s:g} s "
                                   "(total deadline, metrics.push_timeout_seconds)") from None
        raise
    finally:
        timer.cancel()
        conn.close()


def deadline_handler(gw: Gateway, deadline_s: float) -> Callable:
    """A prometheus_client push handler: the request under a total deadline (+ basic auth)."""

    def handler(url, method, timeout, headers, data):  # signature prometheus_client calls
        def handle() -> None:
            hdrs = dict(headers)
            if gw.username:
                hdrs["Authorization"] = _basic_auth(gw.username, gw.password)
            status, body = request_with_deadline(url, method, data, hdrs, deadline_s)
            if status >= 400:
                raise OSError(f"pushgateway answered {status}: {body[:200].decode(errors='replace')}")
        return handle

    return handler


def get_json(gw: Gateway, path: str, deadline_s: float):
    """GET ``{gateway}{path}`` as JSON within the deadline (basic auth when configured)."""
    hdrs = {"Authorization": _basic_auth(gw.username, gw.password)} if gw.username else {}
    status, body = request_with_deadline(f"{gw.url}{path}", "GET", None, hdrs, deadline_s)
    if status >= 400:
        raise OSError(f"pushgateway answered {status} for {path}")
    return json.loads(body)
