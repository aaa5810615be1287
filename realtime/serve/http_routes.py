"""HTTP side of ``comostream serve``: Host/Origin checks, the browser page, ``/singers`` and
``/health`` (HTTPS when the server has a TLS pair).

Runs as the WebSocket server's ``process_request`` hook. Bound to loopback, only loopback
``Host`` headers are accepted (DNS rebinding); browser ``Origin`` s must be the page's own or
listed in ``ServerConfig.allow_origins``; the page's own is ``http://HOST`` or ``https://HOST``
(``--tls-cert``, or a TLS proxy) with HOST the request's ``Host``, scheme included. A request
that passes and asks for a WebSocket on ``/`` or ``/ws`` is let through (``None``); other paths
serve ``web/`` (beside this module), ``/health``: ``{"status", "version"}`` only, plus the
stream counts when the server has no token or the request carries it (``Authorization: Bearer
TOKEN``), and ``/singers`` (the singers and their registers; 401 without the token when the
server has one).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from comostream.realtime.serve.config import ServerConfig, is_loopback
from comostream.realtime.serve.protocol import PROTOCOL_VERSION

__all__ = ["STATIC", "WS_PATHS", "authorized", "route_http", "same_origin"]

STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/worklet.js": ("worklet.js", "text/javascript; charset=utf-8"),
}
WS_PATHS = ("/", "/ws")


def same_origin(origin: str, host: str) -> bool:
    """Whether browser ``Origin`` ``origin`` is this server's own page reached as ``host`` (the
    ``Host`` header): scheme ``http`` (or ``https``, through a TLS proxy) and the same
    host:port, compared without case."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return (
        parts.scheme.lower() in ("http", "https")
        and bool(host)
        and parts.netloc.lower() == host.lower()
        and origin.lower() == f"{parts.scheme}://{parts.netloc}".lower()  # no path, no userinfo
    )


def authorized(request: Request, config: ServerConfig) -> bool:
    """Whether ``request`` may see the stream counts: the server has no token, or the request
    carries it as ``Authorization: Bearer TOKEN`` (compared in constant time)."""
    if not config.token:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), config.token.encode()
    )


def route_http(
    conn: ServerConnection,
    request: Request,
    config: ServerConfig,
    counts: Callable[[], dict[str, int]],
    singers: Callable[[], dict[str, Any]] | None = None,
) -> Response | None:
    """Host/Origin checks, then the page, its scripts, /health and /singers; None: a WebSocket.
    ``counts()``: streams and connections, reported by /health to authorised requests;
    ``singers()``: the body of /singers (authorised requests only)."""
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
            and not same_origin(origin, host)
        ):
            return conn.respond(HTTPStatus.FORBIDDEN, f"Origin {origin!r} not allowed\n")
        return None
    if path == "/health":
        health: dict[str, object] = {"status": "ok", "version": PROTOCOL_VERSION}
        if authorized(request, config):
            health.update(counts())
        body = json.dumps(health)
        return _response(conn, body.encode(), "application/json")
    if path == "/singers" and singers is not None:
        if not authorized(request, config):
            body = json.dumps({"error": "unauthorized", "message": "this server needs its token"})
            return _response(conn, body.encode(), "application/json", HTTPStatus.UNAUTHORIZED)
        return _response(conn, json.dumps(singers()).encode(), "application/json")
    if path in STATIC:
        name, ctype = STATIC[path]
        page = resources.files("comostream.realtime.serve") / "web" / name
        return _response(conn, page.read_bytes(), ctype)
    return conn.respond(HTTPStatus.NOT_FOUND, "not found\n")


def _response(
    conn: ServerConnection, body: bytes, ctype: str, status: HTTPStatus = HTTPStatus.OK
) -> Response:
    """A ``status`` (200) with ``body`` (bytes) of content type ``ctype``, never cached."""
    r = conn.respond(status, "")
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
