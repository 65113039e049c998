"""The daemon's local HTTP endpoint: ``GET /status`` (JSON) and ``GET /metrics`` (Prometheus text).

It is served by the standard library's `http.server.ThreadingHTTPServer` in a background thread:
two read-only GET routes need no framework, the stdlib server is maintained with Python itself, and
it keeps the daemon free of an extra async stack (the node runs on trio, which the common ASGI
servers do not). It listens on 127.0.0.1 by default, or on any IPv4 or IPv6 address (``::1``); it
has no authentication, so bind it to a loopback or otherwise private address only.

The server never touches node state itself: each request calls `snapshot()`, which the daemon
implements by running `NodeHandle.status` on the trio thread (`trio.from_thread.run_sync`), so every
answer is a consistent picture taken between two trio steps. When the node is gone the request gets
``503``.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from p2pfl import strict_json
from p2pfl.daemon.metrics import CONTENT_TYPE, render_metrics

__all__ = ["StatusServer", "StatusUnavailable"]

log = logging.getLogger(__name__)

Snapshot = Callable[[], dict[str, Any]]


class StatusUnavailable(Exception):
    """The node cannot answer now (starting, or stopped); the server replies 503."""


class StatusServer:
    """Serve `snapshot()` as /status and /metrics on `host`:`port` (0: a free port) until `stop`."""

    def __init__(self, snapshot: Snapshot, *, host: str = "127.0.0.1", port: int = 0) -> None:
        handler = type("_BoundHandler", (_Handler,), {"snapshot": staticmethod(snapshot)})
        try:
            server_class = type("_Server", (ThreadingHTTPServer,), {"address_family": _family(host, port)})
            self._server = server_class((host, port), handler)
        except OSError as exc:  # socket.gaierror too: a host that does not resolve
            # No errno in the message: a CLI prints it as is, after "Error: "; the cause keeps it.
            raise OSError(f"status server cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="p2pfl-status", daemon=True
        )

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> StatusServer:
        self._thread.start()
        log.info("status server listening", extra={"url": self.url})
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; waits at most ~poll_interval for the serving loop."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=2.0)
        self._server.server_close()


def _family(host: str, port: int) -> socket.AddressFamily:
    """The address family to bind `host` with: `ThreadingHTTPServer` is AF_INET only unless told,
    so an IPv6 address (``::1``) would be refused. A host name takes the family it resolves to first."""
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]


class _Handler(BaseHTTPRequestHandler):
    snapshot: Snapshot
    server_version = "p2pfl-status"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if path not in ("/", "/status", "/metrics"):
            self._reply(HTTPStatus.NOT_FOUND, b'{"error": "not found; try /status or /metrics"}\n')
            return
        try:
            status = self.snapshot()
        except StatusUnavailable as exc:
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, _json({"error": str(exc)}))
            return
        except Exception as exc:  # never let a snapshot bug kill the server thread quietly
            log.exception("status snapshot failed")
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, _json({"error": repr(exc)}))
            return
        if path == "/metrics":
            self._reply(HTTPStatus.OK, render_metrics(status), content_type=CONTENT_TYPE)
        else:
            self._reply(HTTPStatus.OK, _json(status))

    def _reply(self, code: HTTPStatus, body: bytes, *, content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("status request: " + format, *args)


def _json(document: dict[str, Any]) -> bytes:
    """`document` as strict JSON: a diverged model's NaN loss is null, not the ``NaN`` most clients refuse."""
    return (strict_json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
