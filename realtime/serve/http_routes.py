"""Plain-HTTP side of ``comostream serve``: Host/Origin checks, the browser page and ``/health``.

Runs as the WebSocket server's ``process_request`` hook. Bound to loopback, only loopback
``Host`` headers are accepted (DNS rebinding); browser ``Origin`` s must be the page's own or
listed in ``ServerConfig.allow_origins``. A request that passes and asks for a WebSocket on
``/`` or ``/ws`` is let through (``None``); other paths serve ``web/`` (beside this module) or
``/health``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from http import HTTPStatus
from importlib import resources
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from comostream.realtime.serve.config import ServerConfig, is_loopback
from comostream.realtime.serve.protocol import PROTOCOL_VERSION

__all__ = ["STATIC", "WS_PATHS", "route_http"]

STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/worklet.js": ("worklet.js", "text/javascript; charset=utf-8"),
}
WS_PATHS = ("/", "/ws")


def route_http(
    conn: ServerConnection, request: Request, config: ServerConfig, streams: Callable[[], int]
) -> Response | None:
    """Host/Origin checks, then the page, its scripts and /health; None: a WebSocket.
    ``streams()``: the open sessions, reported by /health."""
    host = request.headers.get("Host", "")
    if is_loopback(config.host) and not is_loopback(urlsplit("//" + host).hostname or ""):
        return conn.respond(HTTPStatus.FORBIDDEN, f"Host {host!r} not allowed\n")
    path = urlsplit(request.path).path
    if request.headers.get("Upgrade", "").lower() == "websocket":
        origin = request.headers.get("Origin")
        if path not in WS_PATHS:
            return conn.respond(HTTPStatus.NOT_FOUND, "WebSocket endpoint is /ws\n")
        if (
            origin is not None
            and origin not in config.allow_origins
            and (urlsplit(origin).netloc != host)
        ):
            return conn.respond(HTTPStatus.FORBIDDEN, f"Origin {origin!r} not allowed\n")
        return None
    if path == "/health":
        body = json.dumps(
            {
                "status": "ok",
                "version": PROTOCOL_VERSION,
                "streams": streams(),
                "max_streams": config.max_streams,
            }
        )
        return _response(conn, body.encode(), "application/json")
    if path in STATIC:
        name, ctype = STATIC[path]
        page = resources.files("comostream.realtime.serve") / "web" / name
        return _response(conn, page.read_bytes(), ctype)
    return conn.respond(HTTPStatus.NOT_FOUND, "not found\n")


def _response(conn: ServerConnection, body: bytes, ctype: str) -> Response:
    """A 200 with ``body`` (bytes) of content type ``ctype``, never cached."""
    r = conn.respond(HTTPStatus.OK, "")
    r.body = body
    for name, value in (
        ("Content-Length", str(len(body))),
        ("Content-Type", ctype),
        ("Cache-Control", "no-store"),
    ):
        if name in r.headers:  # Headers is a multidict: replace, don't add
            del r.headers[name]
        r.headers[name] = value
    return r
