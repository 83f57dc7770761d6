"""A small HTTP stand-in of the KFP v2beta1 REST API: it records every request and answers like the real server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    body: dict[str, Any]


@dataclass
class KfpStandIn:
    host: str
    requests: list[Recorded] = field(default_factory=list)

    def calls(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path == path]


def _answer(request: Recorded) -> tuple[int, dict[str, Any]]:
    if request.path == "/apis/v2beta1/healthz":
        return 200, {"multi_user": False}
    if request.path == "/apis/v2beta1/experiments" and request.method == "GET":
        return 200, {"experiments": [], "total_size": 0}
    if request.path == "/apis/v2beta1/experiments" and request.method == "POST":
        return 200, {**request.body, "experiment_id": "exp-1"}
    if request.path == "/apis/v2beta1/runs" and request.method == "POST":
        return 200, {**request.body, "run_id": "run-1", "state": "PENDING"}
    if request.path == "/apis/v2beta1/recurringruns" and request.method == "POST":
        return 200, {**request.body, "recurring_run_id": "recurring-1", "status": "ENABLED"}
    return 404, {"error": f"no such endpoint in the stand-in: {request.method} {request.path}"}


@contextmanager
def kfp_stand_in() -> Iterator[KfpStandIn]:
    """Serve the stand-in on a free port of 127.0.0.1 for the duration of the block."""
    record = KfpStandIn(host="")

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            request = Recorded(self.command, url.path, parse_qs(url.query), body)
            record.requests.append(request)
            status, payload = _answer(request)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _handle  # noqa: N815 - http.server's naming

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    record.host = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield record
    finally:
        server.shutdown()
        server.server_close()
