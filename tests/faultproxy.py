"""A fault-injecting HTTP reverse proxy on 127.0.0.1, between boto3 and the local S3 endpoint.

It forwards every request to the upstream endpoint unchanged and answers with its response, except
where a ``Fault`` of the current scenario applies. Faults are deterministic: a fault counts the
requests it matches, in arrival order, and hits ``burst`` of every ``every`` of them, starting with
the first. What it injected is counted, so tests can assert the faults really happened.

Kinds, by whether the request reached the upstream endpoint:

- never reached it: ``slowdown`` (503 with S3's ``<Code>SlowDown</Code>`` body), ``internal`` (500
  InternalError), ``deny`` (403 AccessDenied); ``delay`` waits ``seconds`` and then forwards; ``hold`` waits,
  unforwarded, until the test calls ``release()`` (then forwards) or ``drop()`` (then resets the connection, as
  a request from a client that died mid-upload never completes), so a test can act while a request is in flight.
- reached it, the answer was lost: ``lost`` (the upstream did it; the client gets 500 InternalError),
  ``reset`` (status line, headers and part of the body, then a TCP reset; a response without a body is
  reset before its status line), ``stall`` (headers and half the body, ``seconds`` of silence, the rest).
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import struct
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BEFORE = {"slowdown": (503, "SlowDown", "Please reduce your request rate."),
          "internal": (500, "InternalError", "We encountered an internal error. Please try again."),
          "deny": (403, "AccessDenied", "Access Denied")}  # fmt: skip
AFTER = {"lost", "reset", "stall"}
KINDS = {*BEFORE, "delay", "hold", *AFTER}
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "expect"
}  # fmt: skip


@dataclass
class Fault:
    """One kind of fault and the requests it hits.

    :param kind: one of ``KINDS`` (see the module docstring).
    :param every: count matching requests in cycles of this many...
    :param burst: ...and hit the first ``burst`` of each cycle.
    :param methods: HTTP methods it matches; empty for all.
    :param path: a regular expression searched in the request's path and query (URL-decoded).
    :param conditional: only conditional writes (If-Match / If-None-Match), only others, or either (None).
    :param min_body: for ``reset`` and ``stall``: only responses with at least this many body bytes.
    :param seconds: for ``delay`` and ``stall``.
    :param limit: hit at most this many requests in all.
    :param per_request: hit one request (method and path) at most this many times, so that a retry that keeps
        arriving in the same slot of the cycle (parallel clients in lockstep) is not hit forever.

    A ``hold`` sets ``arrived`` when it catches a request and waits for ``release()`` or ``drop()``.
    """

    kind: str
    every: int = 1
    burst: int = 1
    methods: tuple[str, ...] = ()
    path: str = ""
    conditional: bool | None = None
    min_body: int = 0
    seconds: float = 0.0
    limit: int | None = None
    per_request: int | None = None
    seen: int = field(default=0, init=False)
    hits: int = field(default=0, init=False)
    hit_requests: Counter[tuple[str, str]] = field(default_factory=Counter, init=False)
    arrived: threading.Event = field(default_factory=threading.Event, init=False)
    _released: threading.Event = field(default_factory=threading.Event, init=False)
    _dropped: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Invalid fault kind {self.kind!r}. Only {sorted(KINDS)} are supported.")

    def matches(self, method: str, path: str, conditional: bool, body: int | None) -> bool:
        return (
            (not self.methods or method in self.methods)
            and (not self.path or re.search(self.path, path) is not None)
            and (self.conditional is None or self.conditional == conditional)
            and (body is None or body >= self.min_body)
        )

    def take(self, request: tuple[str, str]) -> bool:
        """Count one matching request; whether this one is hit."""
        hit = (
            self.seen % self.every < self.burst
            and (self.limit is None or self.hits < self.limit)
            and (self.per_request is None or self.hit_requests[request] < self.per_request)
        )
        self.seen += 1
        self.hits += hit
        self.hit_requests[request] += hit
        return hit

    def release(self) -> None:
        """Let held requests go on to the upstream."""
        self._released.set()

    def drop(self) -> None:
        """Never forward held requests; their connections are reset."""
        self._dropped = True
        self._released.set()

    def reset(self) -> None:
        self.seen = self.hits = 0
        self.hit_requests.clear()


@dataclass
class Event:
    kind: str
    method: str
    path: str


class FaultProxy:
    """The proxy; ``start()`` it, point a client at ``endpoint_url``, choose faults with ``scenario``.

    :param upstream: the S3 endpoint to forward to, e.g. ``http://127.0.0.1:5000``.
    """

    def __init__(self, upstream: str) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.faults: list[Fault] = []
        self.events: list[Event] = []
        self.requests = 0
        self.errors: list[str] = []  # the proxy's own failures: a test whose proxy failed proves nothing
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def endpoint_url(self) -> str:
        assert self._server is not None, "start() the proxy first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def injected(self) -> Counter[str]:
        """How many faults of each kind were injected since the scenario began."""
        with self._lock:
            return Counter(e.kind for e in self.events)

    def start(self) -> FaultProxy:
        handler = type("Handler", (_Handler,), {"proxy": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.proxy = self
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True).start()
        return self

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def connection(self, **config_kwargs: object) -> str:
        """An Airflow AWS connection (JSON, for ``AIRFLOW_CONN_<ID>``) to S3 through this proxy; ``config_kwargs``
        go into the connection's extra, as a deployment would tune botocore (retries, timeouts)."""
        from airflow_tl.demo.local_s3 import connection_json

        conn = json.loads(connection_json(self.endpoint_url))
        if config_kwargs:
            conn["extra"]["config_kwargs"] = config_kwargs
        return json.dumps(conn)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def use(self, *faults: Fault) -> None:
        """Replace the faults and start counting afresh."""
        with self._lock:
            for fault in faults:
                fault.reset()
            self.faults = list(faults)
            self.events = []
            self.requests = 0

    @contextmanager
    def scenario(self, *faults: Fault) -> Iterator[FaultProxy]:
        self.use(*faults)
        try:
            yield self
        finally:
            self.faults = []

    def _pick(self, kinds: set[str], method: str, path: str, conditional: bool, body: int | None) -> Fault | None:
        with self._lock:
            for fault in (f for f in self.faults if f.kind in kinds):
                if fault.matches(method, path, conditional, body) and fault.take((method, path)):
                    self.events.append(Event(fault.kind, method, path))
                    return fault
        return None


class _Server(ThreadingHTTPServer):
    proxy: FaultProxy

    def handle_error(self, request: object, client_address: object) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):  # a client hanging up on a stalled or reset response is no error
            self.proxy.errors.append(repr(error))
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as boto3's connection pool expects
    proxy: FaultProxy
    _reset = False

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._proxy()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass

    def _proxy(self) -> None:
        body = self._read_body()
        path = urllib.parse.unquote(self.path)
        conditional = "If-Match" in self.headers or "If-None-Match" in self.headers
        with self.proxy._lock:
            self.proxy.requests += 1
        fault = self.proxy._pick({*BEFORE, "delay", "hold"}, self.command, path, conditional, None)
        if fault is not None and fault.kind in BEFORE:
            self._send_error(*BEFORE[fault.kind])
            return
        if fault is not None and fault.kind == "hold":
            fault.arrived.set()
            fault._released.wait()
            if fault._dropped:
                self._reset_connection()
                return
        elif fault is not None:
            time.sleep(fault.seconds)
        status, reason, headers, payload = self._forward(body)
        fault = self.proxy._pick(AFTER, self.command, path, conditional, len(payload))
        if fault is None:
            self._send(status, reason, headers, payload)
        elif fault.kind == "lost":
            self._send_error(*BEFORE["internal"])
        elif fault.kind == "reset":
            if payload:
                self._send(status, reason, headers, payload, upto=len(payload) // 2)
            self._reset_connection()
        else:  # stall
            half = len(payload) // 2
            self._send(status, reason, headers, payload, upto=half)
            time.sleep(fault.seconds)
            self.wfile.write(payload[half:])

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        connection = http.client.HTTPConnection(*self.proxy.upstream, timeout=120)
        try:
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.reason, response.getheaders(), response.read()
        finally:
            connection.close()

    def _send(
        self, status: int, reason: str, headers: list[tuple[str, str]], payload: bytes, upto: int | None = None
    ) -> None:
        """The upstream's response, announcing the whole body but sending only ``upto`` bytes of it if given."""
        self.send_response_only(status, reason)
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP and (name.lower() != "content-length" or self.command == "HEAD"):
                self.send_header(name, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload[:upto])

    def _send_error(self, status: int, code: str, message: str) -> None:
        resource = urllib.parse.urlsplit(self.path).path
        xml = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<Resource>{resource}</Resource><RequestId>fault-proxy</RequestId></Error>"
        ).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(xml)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(xml)

    def _reset_connection(self) -> None:
        """Close with SO_LINGER 0: the peer gets a TCP RST, not an orderly end of stream."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True
        self._reset = True

    def finish(self) -> None:
        if not self._reset:
            try:
                super().finish()
            except OSError:
                pass
