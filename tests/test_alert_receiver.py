"""The stack's log-only alert receiver (docker/alert-receiver/receiver.py): one stdout line per
alert of an Alertmanager webhook payload, 200 to Alertmanager, 413 for oversized bodies."""

from __future__ import annotations

import http.client
import importlib.util
import json
import threading
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

RECEIVER = Path(__file__).resolve().parents[1] / "docker/alert-receiver/receiver.py"


@pytest.fixture
def receiver_url():
    spec = importlib.util.spec_from_file_location("alert_receiver", RECEIVER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    server = ThreadingHTTPServer(("127.0.0.1", 0), mod.Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_port}", mod
    server.shutdown()
    server.server_close()
    t.join(timeout=10)


def _post(url: str, body: bytes) -> int:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def _post_headers_only(url: str, path: str, content_length: int) -> int:
    """Announce an oversized body and read the answer before sending any of it (the receiver
    must refuse on Content-Length alone; sending the body would race the server's close)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(content_length))
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def test_logs_one_line_per_alert_and_answers_200(receiver_url, capfd):
    url, mod = receiver_url
    payload = {"version": "4", "status": "firing", "receiver": "atft-page", "alerts": [
        {"status": "firing", "labels": {"alertname": "ATFTRetrainStale", "severity": "critical",
                                        "dag_id": "atft_retrain"},
         "annotations": {"summary": "no successful retrain for 2 trading days"}},
        {"status": "resolved", "labels": {"alertname": "ATFTTaskFailed", "severity": "warning"},
         "annotations": {}},
    ]}
    assert _post(f"{url}/atft/critical", json.dumps(payload).encode()) == 200
    lines = capfd.readouterr().out.strip().splitlines()
    assert lines == [
        "/atft/critical firing ATFTRetrainStale severity=critical dag_id=atft_retrain "
        "no successful retrain for 2 trading days",
        "/atft/critical resolved ATFTTaskFailed severity=warning dag_id=-",
    ]
    assert _post(f"{url}/atft/info", b"not json") == 200
    assert "not an Alertmanager payload (8 bytes)" in capfd.readouterr().out
    assert _post_headers_only(url, "/atft/info", mod.MAX_BODY + 1) == 413
    with urllib.request.urlopen(f"{url}/healthz", timeout=10) as resp:
        assert resp.status == 200
