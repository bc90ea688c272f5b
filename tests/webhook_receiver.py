"""A real webhook receiver on loopback, and signature checks written from the
Standard Webhooks description alone (not with the service's own helper)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers POSTs with the statuses in `script` in turn, then 200 for good."""

    port: int
    script: list[int] = field(default_factory=list)
    # seconds over which the answer's headers trickle out, one line at a time
    trickle_seconds: float = 0.0
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._lock:
                    receiver.received.append(
                        Received({k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    status = receiver.script.pop(0) if receiver.script else 200
                self.send_response(status)
                steps = int(receiver.trickle_seconds / 0.1)
                for step in range(steps):
                    self.send_header(f"x-slow-{step}", "x")
                    self.flush_headers()
                    time.sleep(0.1)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def wait_for(self, count: int, timeout_seconds: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.05)
        with self._lock:
            return list(self.received)


def verify_signature(
    secret: str, headers: dict[str, str], body: bytes, tolerance_seconds: int = 300
) -> bool:
    """From the Standard Webhooks spec: the signed content is
    `{webhook-id}.{webhook-timestamp}.{body}`; the key is the base64 part of the
    `whsec_` secret; `webhook-signature` holds space-delimited `v1,<base64 sig>`
    entries, any of which may match; the timestamp must be recent."""
    msg_id = headers["webhook-id"]
    timestamp = headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance_seconds:
        return False
    key = base64.b64decode(secret.split("_", 1)[1])
    content = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest())
    for entry in headers["webhook-signature"].split(" "):
        version, _, signature = entry.partition(",")
        if version == "v1" and hmac.compare_digest(signature.encode(), expected):
            return True
    return False
