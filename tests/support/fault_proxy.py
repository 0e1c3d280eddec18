"""A fault-injecting HTTP proxy in front of a real OpenAI-compatible server (tests only).

Faults are chosen per request from its `X-Compass-Request-Id` header (sha256 of the id mod 10 picks a rule)
and its attempt number, so a run is reproducible and a retried request meets its fault exactly as planned:

| bucket | fault                                   | on attempts | expected outcome                      |
|--------|-----------------------------------------|-------------|---------------------------------------|
| 0      | 429 with Retry-After: 1                 | first       | retried after >= 1 s, then valid       |
| 1      | 500                                     | first       | retried, then valid                    |
| 2      | hang past the client timeout            | first       | timeout, retried, then valid           |
| 3      | truncated body (connection cut)         | first       | dropped connection, retried, valid     |
| 4      | 503                                     | every       | failed after retries                   |
| 5      | 200 with the answer's JSON cut in half  | every       | stored reject (parse:invalid_json)     |
| 6      | 400                                     | every       | failed at once, never retried          |
| 7-9    | none                                    |             | valid                                  |

Hand-written on the stdlib server because the faults need byte-level control of the response (a body cut
short of its Content-Length) that proxy libraries exist to prevent. Every request is logged to `self.log`.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = {0: ("429", "first"), 1: ("500", "first"), 2: ("hang", "first"), 3: ("truncate", "first"),
          4: ("503", "every"), 5: ("garble", "every"), 6: ("400", "every")}


def bucket(request_id: str) -> int:
    return int(hashlib.sha256(request_id.encode()).hexdigest(), 16) % 10


def expected_outcome(request_id: str) -> str:
    """What the run must record for this request: ok, reject or failed."""
    b = bucket(request_id)
    return {4: "failed", 5: "reject", 6: "failed"}.get(b, "ok")


class FaultProxy:
    def __init__(self, upstream: str, hang_seconds: float = 4.0, faults: bool = True):
        u = urlsplit(upstream)
        self.host, self.port = u.hostname, u.port
        self.hang_seconds, self.faults = hang_seconds, faults
        self.log: list[dict] = []
        self.attempts: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                proxy.forward(self, None)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.forward(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _fault(self, rid: str | None) -> tuple[str | None, int]:
        if not rid:
            return None, 0
        with self.lock:
            self.attempts[rid] += 1
            attempt = self.attempts[rid]
        if not self.faults:
            return None, attempt
        rule = FAULTS.get(bucket(rid))
        if rule and (rule[1] == "every" or attempt == 1):
            return rule[0], attempt
        return None, attempt

    def _reply(self, h, code: int, body: bytes, headers: dict | None = None) -> None:
        h.send_response(code)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def forward(self, h, body: bytes | None) -> None:
        rid = h.headers.get("X-Compass-Request-Id")
        fault, attempt = self._fault(rid)
        with self.lock:
            self.log.append({"request_id": rid, "attempt": attempt, "fault": fault, "t": time.monotonic()})
        try:
            if fault == "429":
                return self._reply(h, 429, b'{"error": {"message": "slow down"}}', {"Retry-After": "1"})
            if fault in ("500", "503", "400"):
                return self._reply(h, int(fault), json.dumps({"error": {"message": f"injected {fault}"}}).encode())
            if fault == "hang":
                time.sleep(self.hang_seconds)  # the client gives up first; whatever follows goes nowhere
            con = http.client.HTTPConnection(self.host, self.port, timeout=300)
            headers = {k: v for k, v in h.headers.items() if k.lower() not in ("host", "content-length",
                                                                              "connection")}
            con.request(h.command, h.path, body=body, headers=headers)
            resp = con.getresponse()
            data = resp.read()
            con.close()
            if fault == "garble" and resp.status == 200:
                payload = json.loads(data)
                text = payload["choices"][0]["message"]["content"] or ""
                payload["choices"][0]["message"]["content"] = text[: max(1, len(text) // 2)]
                data = json.dumps(payload).encode()
            if fault == "truncate":
                h.send_response(resp.status)
                h.send_header("Content-Type", "application/json")
                h.send_header("Content-Length", str(len(data)))
                h.end_headers()
                h.wfile.write(data[: len(data) // 2])
                h.wfile.flush()
                h.close_connection = True
                h.connection.shutdown(2)
                return
            self._reply(h, resp.status, data)
        except (BrokenPipeError, ConnectionResetError, OSError):
            h.close_connection = True
