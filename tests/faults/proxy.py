"""A fault-injecting HTTP proxy for tests, on 127.0.0.1 in a background thread.

``FaultProxy(upstream)`` forwards every request to ``upstream`` (a loopback HTTP server: the
world's STAC API or its range file server) and answers with the upstream's response, unless a
:class:`Fault` whose ``pattern`` matches the request path applies:

* ``status``: answer ``status`` (503, 404 ...) without asking the upstream;
* ``reset``: reset the connection (TCP RST) without answering;
* ``delay``: wait ``delay_s`` (bounded by ``max_delay_s``), then forward as usual: a client
  with a shorter timeout gives up first;
* ``truncate``: send the upstream's status and headers (full ``Content-Length``) but only the
  first ``keep`` fraction of the body, then close the connection;
* ``file``: serve the local file ``path`` instead of the upstream's (Range requests honoured):
  a corrupted, truncated or CRS-less copy of an asset.

A fault applies to the first ``times`` matching requests (``None``: to all of them) of the
given ``methods``; with ``body``, only to requests whose body matches that pattern too (one
region's STAC searches, say, whichever worker sends them and in whatever order). JSON bodies
pass through ``rewrite`` (e.g. the upstream's URLs replaced by proxies' URLs), so STAC
responses can point clients at the asset proxy. Everything is bounded: upstream requests time
out, delays are capped and interrupted by :meth:`FaultProxy.stop`, bodies are size-capped, and
the request log keeps at most ``MAX_LOG`` entries.
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

MAX_BODY = 64 << 20
MAX_LOG = 100_000
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "content-length",
}
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class Fault:
    """One injected fault: which requests (``pattern``, ``times``) and what happens to them."""

    pattern: str
    kind: str  # status | reset | delay | truncate | file
    times: int | None = None
    status: int = 503
    delay_s: float = 0.0
    keep: float = 0.5
    path: Path | None = None
    methods: tuple[str, ...] = ("GET", "HEAD", "POST")
    body: str | None = None
    hits: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.kind not in {"status", "reset", "delay", "truncate", "file"}:
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.kind == "file" and self.path is None:
            raise ValueError("a file fault needs a path")
        self._regex = re.compile(self.pattern)
        self._body_regex = re.compile(self.body) if self.body is not None else None

    def matches(self, method: str, path: str, body: bytes = b"") -> bool:
        """Whether the fault applies to a request (and counts it if so)."""
        if method not in self.methods or not self._regex.search(path):
            return False
        if self._body_regex is not None and not self._body_regex.search(
            body.decode("utf-8", "replace")
        ):
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        self.hits += 1
        return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    proxy: FaultProxy


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # an idle keep-alive connection is dropped after this many seconds
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle()

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle()

    def do_POST(self) -> None:  # noqa: N802
        self._handle()

    def _handle(self) -> None:
        proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        fault = proxy.match(self.command, self.path, body)
        proxy.record(self.command, self.path, fault.kind if fault else "pass")
        try:
            if fault is None:
                self._forward(body)
            elif fault.kind == "status":
                self._send(fault.status, b"injected fault\n", {"Content-Type": "text/plain"})
            elif fault.kind == "reset":
                self._reset()
            elif fault.kind == "delay":
                if not proxy.stopping.wait(min(fault.delay_s, proxy.max_delay_s)):
                    self._forward(body)
                else:
                    self.close_connection = True
            elif fault.kind == "truncate":
                self._forward(body, keep=fault.keep)
            else:
                assert fault.path is not None
                self._serve_file(fault.path)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client gave up (it timed out): fine

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _reset(self) -> None:
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def _forward(self, body: bytes, keep: float | None = None) -> None:
        proxy = self.server.proxy
        conn = http.client.HTTPConnection(
            proxy.upstream_host, proxy.upstream_port, timeout=proxy.upstream_timeout_s
        )
        try:
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() not in _HOP_BY_HOP and k.lower() not in {"host", "accept-encoding"}
            }
            if body:
                headers["Content-Length"] = str(len(body))
            try:
                conn.request(self.command, self.path, body=body or None, headers=headers)
                response = conn.getresponse()
                data = response.read(MAX_BODY + 1) if self.command != "HEAD" else b""
            except (OSError, http.client.HTTPException) as err:
                self._send(502, f"upstream: {err}\n".encode(), {"Content-Type": "text/plain"})
                return
            if len(data) > MAX_BODY:
                raise ValueError(f"upstream body of {self.path} exceeds {MAX_BODY} bytes")
            out_headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
            length = response.getheader("Content-Length")
            kind = (response.getheader("Content-Type") or "").lower()
            if proxy.rewrite is not None and "json" in kind and data:
                data = proxy.rewrite(data.decode("utf-8")).encode("utf-8")
                length = str(len(data))
            elif self.command != "HEAD":
                length = str(len(data))
        finally:
            conn.close()
        self.send_response(response.status)
        for key, value in out_headers:
            self.send_header(key, value)
        if length is not None:
            self.send_header("Content-Length", length)
        if keep is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        if keep is None:
            self.wfile.write(data)
            return
        self.wfile.write(data[: int(len(data) * keep)])
        self.wfile.flush()
        self.close_connection = True

    def _serve_file(self, path: Path) -> None:
        data = Path(path).read_bytes()
        size = len(data)
        header = self.headers.get("Range")
        match = _RANGE.match(header.strip()) if header else None
        if match is None or not (match.group(1) or match.group(2)):
            self._send(200, data, {"Content-Type": "image/tiff", "Accept-Ranges": "bytes"})
            return
        first_s, last_s = match.groups()
        if first_s:
            first = int(first_s)
            last = min(int(last_s), size - 1) if last_s else size - 1
        else:
            first, last = max(0, size - int(last_s)), size - 1
        if first >= size or first > last:
            self._send(416, b"", {"Content-Range": f"bytes */{size}"})
            return
        self._send(
            206,
            data[first : last + 1],
            {"Content-Type": "image/tiff", "Content-Range": f"bytes {first}-{last}/{size}"},
        )


class FaultProxy:
    """A fault-injecting reverse proxy in front of one loopback HTTP server.

    Args:
        upstream: Root URL of the server to forward to (``http://127.0.0.1:PORT/``).
        faults: Faults to inject, tried in order; the first that matches applies.
        rewrite: Applied to every JSON body the upstream returns (URLs of the upstreams to the
            proxies' URLs, say); set it after start when it needs the proxy's own URL.
        upstream_timeout_s: Timeout of each upstream request.
        max_delay_s: Upper bound of any injected delay.
    """

    def __init__(
        self,
        upstream: str,
        faults: list[Fault] | None = None,
        rewrite: Callable[[str], str] | None = None,
        upstream_timeout_s: float = 10.0,
        max_delay_s: float = 10.0,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.hostname not in {"127.0.0.1", "localhost"}:
            raise ValueError("the fault proxy forwards to loopback servers only")
        self.upstream = upstream.rstrip("/") + "/"
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.faults = list(faults or [])
        self.rewrite = rewrite
        self.upstream_timeout_s = upstream_timeout_s
        self.max_delay_s = max_delay_s
        self.stopping = threading.Event()
        self.log: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Root URL of the proxy (``http://127.0.0.1:PORT/``)."""
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def start(self) -> str:
        """Listen on a free loopback port; returns the proxy's root URL."""
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop listening and interrupt any delay."""
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_faults(self, faults: list[Fault]) -> None:
        """Replace the faults (their hit counters start from zero) and clear the log."""
        with self._lock:
            self.faults = list(faults)
            self.log.clear()

    def match(self, method: str, path: str, body: bytes = b"") -> Fault | None:
        """The fault that applies to a request, if any."""
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path, body):
                    return fault
        return None

    def record(self, method: str, path: str, outcome: str) -> None:
        """Log one request (bounded)."""
        with self._lock:
            if len(self.log) < MAX_LOG:
                self.log.append((method, path, outcome))

    def count(self, outcome: str, pattern: str = "") -> int:
        """How many logged requests whose path matches ``pattern`` had ``outcome``."""
        regex = re.compile(pattern)
        with self._lock:
            return sum(1 for _m, p, o in self.log if o == outcome and regex.search(p))
