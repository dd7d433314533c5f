"""A local J-Quants API V2 server for tests: 127.0.0.1, a free port, a thread of this process.

Speaks the V2 protocol the client uses: ``x-api-key`` header, ``GET /v2/equities/bars/daily
?date=``, ``/v2/equities/master?date=``, ``/v2/markets/calendar?from=&to=``, answers
``{"data": [...], "pagination_key": "..."}`` pages of ``page_size`` records. Faults are injected
by setting attributes: ``fail_next`` (statuses answered before serving normally), ``always``
(a status for every request), ``drop_field`` (a bars field left out), ``malformed`` (broken
JSON), ``page_delay`` (seconds to stall before page 2+ of the bars), ``trickle_s`` (the body
one byte at a time).

Prices: ``Market`` keeps the RAW bar of each (day, code); a split (``splits[(code, day)] = f``)
multiplies raw prices from ``day`` on by ``f`` (0.5 = 2:1) and sets ``AdjFactor = f`` on ``day``.
The adjusted fields are as J-Quants serves them: adjusted for every split published so far
(``published_through``), so a day fetched before a split and the same day fetched after it differ.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from atft_core import calendar

API_KEY = "test-key-SECRET-4242"


@dataclass
class Market:
    codes: list[str]  # 5-character J-Quants codes
    days: list[dt.date]
    splits: dict[tuple[str, dt.date], float] = field(default_factory=dict)
    published_through: dt.date | None = None
    seed: int = 0

    def raw_close(self, code: str, day: dt.date) -> float:
        i, j = self._day_index[day], self._code_index[code]
        base = 1000.0 + 37.0 * j + 3.0 * i + ((i * 7 + j * 13 + self.seed) % 11)
        for (c, s), f in self.splits.items():
            if c == code and day >= s:
                base *= f
        return round(base, 1)

    def __post_init__(self) -> None:
        self._day_index = {d: i for i, d in enumerate(self.days)}
        self._code_index = {c: j for j, c in enumerate(self.codes)}

    def factor(self, code: str, day: dt.date) -> float:
        return self.splits.get((code, day), 1.0)

    def later_factor(self, code: str, day: dt.date) -> float:
        out = 1.0
        for (c, s), f in self.splits.items():
            if c == code and day < s <= (self.published_through or self.days[-1]):
                out *= f
        return out

    def bars(self, day: dt.date) -> list[dict]:
        if day not in self._day_index or (self.published_through and day > self.published_through):
            return []
        rows = []
        for j, code in enumerate(self.codes):
            c = self.raw_close(code, day)
            vol = 10_000.0 + 100 * j
            adj = self.later_factor(code, day)
            rows.append({
                "Date": day.isoformat(), "Code": code, "O": c - 1, "H": c + 2, "L": c - 2, "C": c,
                "UL": "0", "LL": "0", "Vo": vol, "Va": c * vol, "AdjFactor": self.factor(code, day),
                "AdjO": (c - 1) * adj, "AdjH": (c + 2) * adj, "AdjL": (c - 2) * adj, "AdjC": c * adj,
                "AdjVo": vol / adj,
            })
        return rows

    def master(self, day: dt.date) -> list[dict]:
        return [{"Date": day.isoformat(), "Code": code, "CoName": f"Co{j}", "CoNameEn": f"Co{j}",
                 "S17": "1", "S17Nm": "x", "S33": f"{(j % 5 + 1) * 50:04d}", "S33Nm": "x",
                 "ScaleCat": "-", "Mkt": "0111", "MktNm": "Prime", "Mrgn": "1", "MrgnNm": "x", "ProdCat": "11"}
                for j, code in enumerate(self.codes)]


class JQuantsServer:
    def __init__(self, market: Market, page_size: int = 50) -> None:
        self.market = market
        self.page_size = page_size
        self.fail_next: list[int] = []
        self.always: int | None = None
        self.drop_field: str | None = None
        self.malformed = False
        self.page_delay = 0.0
        self.trickle_s = 0.0  # > 0: the body is sent one byte per trickle_s seconds
        self.requests: list[str] = []
        self.headers_seen: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.httpd is not None
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v2"

    # ---------------------------------------------------------------- protocol
    def answer(self, path: str, query: dict[str, str], key: str | None) -> tuple[int, bytes, float]:
        with self._lock:
            self.requests.append(f"{path}?{'&'.join(f'{k}={v}' for k, v in sorted(query.items()))}")
            if self.fail_next:
                return self.fail_next.pop(0), b'{"message": "injected"}', 0.0
        if self.always is not None:
            return self.always, b'{"message": "injected"}', 0.0
        if key != API_KEY:
            return 401, b'{"message": "Invalid API key"}', 0.0
        if path == "/v2/markets/calendar":
            start, end = dt.date.fromisoformat(query["from"]), dt.date.fromisoformat(query["to"])
            trading = set(calendar.trading_days(start, end))
            data = [{"Date": (start + dt.timedelta(n)).isoformat(),
                     "HolDiv": "1" if start + dt.timedelta(n) in trading else "0"}
                    for n in range((end - start).days + 1)]
        elif path == "/v2/equities/master":
            data = self.market.master(dt.date.fromisoformat(query["date"]))
        elif path == "/v2/equities/bars/daily":
            data = self.market.bars(dt.date.fromisoformat(query["date"]))
            if self.drop_field:
                data = [{k: v for k, v in r.items() if k != self.drop_field} for r in data]
        else:
            return 404, b'{"message": "not found"}', 0.0
        page = int(query.get("pagination_key", "0"))
        chunk = data[page * self.page_size:(page + 1) * self.page_size]
        body: dict = {"data": chunk}
        if (page + 1) * self.page_size < len(data):
            body["pagination_key"] = str(page + 1)
        if self.malformed and path == "/v2/equities/bars/daily":
            return 200, b'{"data": [{"Date": "2019-', 0.0
        delay = self.page_delay if (page >= 1 and path == "/v2/equities/bars/daily") else 0.0
        return 200, json.dumps(body).encode(), delay


def _handler(server: JQuantsServer):
    import time

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server API)
            u = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(u.query).items()}
            server.headers_seen.append(dict(self.headers))
            status, body, delay = server.answer(u.path, query, self.headers.get("x-api-key"))
            if delay:
                time.sleep(delay)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                if server.trickle_s > 0:
                    for i in range(min(len(body), 600)):  # bounded: at most 600 bytes trickled
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                        time.sleep(server.trickle_s)
                else:
                    self.wfile.write(body)

        def log_message(self, *args):  # keep pytest output clean
            pass

    return Handler


@contextlib.contextmanager
def serve(market: Market, page_size: int = 50) -> Iterator[JQuantsServer]:
    """Start on 127.0.0.1 (free port) in a daemon thread; shut down on exit."""
    srv = JQuantsServer(market, page_size)
    srv.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(srv))
    srv.httpd.daemon_threads = True
    thread = threading.Thread(target=srv.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
        thread.join(timeout=5)
