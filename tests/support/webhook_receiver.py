"""A real HTTP webhook receiver on loopback for tests: records requests, answers as told.

``answers`` is a queue of behaviours taken one per request (then ``default``): an int is
the status to answer; ``"hang"`` holds the request open until ``release()`` (or 60 s).
The signature check in the tests is written from the Standard Webhooks specification,
independently of ``shipway.webhooks.signing``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    """One request as the receiver saw it."""

    headers: dict[str, str]
    body: bytes
    at: float
    path: str


@dataclass
class Receiver:
    """The receiver's state: what came in, what to answer next."""

    port: int = 0
    answers: list[int | str] = field(default_factory=list)
    default: int | str = 200
    received: list[Received] = field(default_factory=list)
    hanging: int = 0
    _release: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def release(self) -> None:
        """Let every hanging request (and later ones) finish."""
        self._release.set()

    def next_answer(self) -> int | str:
        with self._lock:
            return self.answers.pop(0) if self.answers else self.default

    def of_type(self, event_type: str) -> list[Received]:
        import json

        return [r for r in self.received if json.loads(r.body).get("type") == event_type]


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance: float = 300) -> bool:
    """Standard Webhooks verification, from the specification: any v1 signature matches
    HMAC-SHA256(base64-decoded secret after whsec_, "{id}.{timestamp}.{body}")."""
    msg_id, stamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(stamp)) > tolerance:
        return False
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = msg_id.encode() + b"." + stamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for candidate in headers["webhook-signature"].split(" "):
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return True
    return False


@contextmanager
def running_receiver(**kwargs: object) -> Iterator[Receiver]:
    """A receiver serving on 127.0.0.1 (a free port) for the duration of the block."""
    state = Receiver(**kwargs)  # type: ignore[arg-type]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            state.received.append(
                Received(
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    at=time.monotonic(),
                    path=self.path,
                )
            )
            answer = state.next_answer()
            if answer == "hang":
                with state._lock:
                    state.hanging += 1
                state._release.wait(60)
                with state._lock:
                    state.hanging -= 1
                answer = 200
            reply = f"answer {answer}".encode()
            try:
                self.send_response(int(answer))
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
            except OSError:
                pass  # the sender gave up (its timeout) before the answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release()
        server.shutdown()
        server.server_close()
