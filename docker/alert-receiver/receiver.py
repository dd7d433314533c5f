"""Log-only Alertmanager webhook receiver (the `alert-receiver` service in docker-compose.yml).

Alertmanager POSTs each notification to http://alert-receiver:8080/atft/<severity>; this prints
one line per alert to stdout (`docker compose logs alert-receiver`) and answers 200, so alerts
are visible in the stack without credentials. Replace the receivers in
include/prometheus/alertmanager.yml with slack_configs / pagerduty_configs / email_configs for
real paging. Standard library only (runs on the pinned python:*-alpine image). Request bodies
are capped; anything that is not an Alertmanager payload is logged as such and still answered.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20  # Alertmanager payloads are a few KB


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *_):  # one line per alert below instead of access logs
        pass

    def _reply(self, code: int, body: bytes = b"ok\n") -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # healthcheck
        self._reply(200 if self.path == "/healthz" else 404)

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            self.close_connection = True  # the unread body must not be parsed as a request
            self._reply(413, b"too large\n")
            return
        raw = self.rfile.read(n)
        try:
            payload = json.loads(raw)
            alerts = payload.get("alerts", [])
        except (ValueError, AttributeError):
            print(f"{self.path}: not an Alertmanager payload ({len(raw)} bytes)", flush=True)
            self._reply(200)
            return
        for a in alerts:
            labels = a.get("labels", {})
            summary = a.get("annotations", {}).get("summary", "")
            line = (f"{self.path} {a.get('status', '?')} {labels.get('alertname', '?')} "
                    f"severity={labels.get('severity', '?')} dag_id={labels.get('dag_id', '-')} "
                    f"{summary}")
            print(line.rstrip(), flush=True)
        self._reply(200)


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    # inside the compose network only: the service publishes no host port
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
