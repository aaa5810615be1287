"""``comostream serve``: WebSocket streaming for DAW bridges and browsers (``docs/protocol.md``).

:class:`StreamServer` accepts connections and runs one
:class:`~comostream.realtime.serve.session.Session` per connection (its engine, worker thread and
bounded drop-oldest queues), at most ``max_streams`` at a time. Every session's engine comes from
one :class:`~comostream.realtime.serve.engines.EngineFactory` over the shared models: the traced
model step is built once and shared, its state is per engine. Settings:
:class:`~comostream.realtime.serve.config.ServerConfig`.

The same port serves the browser page (``/``), its scripts and a health endpoint
(``GET /health``) through :mod:`comostream.realtime.serve.http_routes`. Bound to loopback, only
loopback ``Host`` headers are accepted (DNS rebinding); elsewhere a token is required. Browser
``Origin`` s must be the page's own or listed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import threading
from collections.abc import Callable

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from comostream.realtime.serve.config import ServerConfig
from comostream.realtime.serve.engines import EngineFactory
from comostream.realtime.serve.http_routes import route_http
from comostream.realtime.serve.protocol import ProtocolError, max_frame_bytes
from comostream.realtime.serve.session import Session

__all__ = ["ServerThread", "StreamServer", "run_server"]


class StreamServer:
    """The WebSocket server: sessions, the browser page, ``/health`` (see the module doc)."""

    def __init__(self, factory: EngineFactory, config: ServerConfig | None = None) -> None:
        self.factory = factory
        self.config = config or ServerConfig()
        self.sessions: dict[str, Session] = {}
        self._server: Server | None = None
        self.port = self.config.port

    async def start(self) -> None:
        """Warm the models up, bind and start accepting connections (``self.port`` is then the
        bound port)."""
        await asyncio.get_running_loop().run_in_executor(None, self.factory.warm_up)
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._http,
            compression=None,
            max_size=4 * max_frame_bytes(),
            max_queue=16,
            write_limit=2**16,
            close_timeout=2.0,
            ping_interval=20.0,
            ping_timeout=20.0,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"ws://{host}:{self.port}/ws"

    async def shutdown(self) -> None:
        """Close every session with ``shutdown`` (1001), then stop listening."""
        await asyncio.gather(
            *(
                s.fail(ProtocolError("shutdown", "server shutting down"))
                for s in list(self.sessions.values())
            )
        )
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def active_streams(self) -> int:
        """Sessions whose connection is open (one closing no longer counts)."""
        return sum(s.is_open for s in self.sessions.values())

    async def _handle(self, ws: ServerConnection) -> None:
        session = Session(self.factory, self.config, ws, secrets.token_hex(4))
        if self.active_streams() >= self.config.max_streams:
            await session.fail(
                ProtocolError(
                    "server_full", f"this server serves at most {self.config.max_streams} streams"
                )
            )
            session.executor.shutdown(wait=False)
            return
        self.sessions[session.id] = session
        try:
            await session.run()
        finally:
            self.sessions.pop(session.id, None)

    def _http(self, conn: ServerConnection, request: Request) -> Response | None:
        """Host/Origin checks, then the page, its scripts and /health; None: a WebSocket."""
        return route_http(conn, request, self.config, self.active_streams)


class ServerThread:
    """A :class:`StreamServer` on its own event loop in a daemon thread (tests, benchmarks,
    embedding): ``with ServerThread(factory, config) as st: ... st.url ...``."""

    def __init__(self, factory: EngineFactory, config: ServerConfig | None = None) -> None:
        self.server = StreamServer(factory, config or ServerConfig(port=0))
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="comostream-server", daemon=True)

    @property
    def url(self) -> str:
        return self.server.url

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._started.wait(30.0)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10.0)

    def _main(self) -> None:
        async def main() -> None:
            self.loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            try:
                await self.server.start()
            except BaseException as exc:
                self._error = exc
                raise
            finally:
                self._started.set()
            await self._stop.wait()
            await self.server.shutdown()

        with contextlib.suppress(BaseException):
            asyncio.run(main())


def run_server(
    factory: EngineFactory, config: ServerConfig, announce: Callable[[str], None] = print
) -> int:
    """Serve until SIGTERM/SIGINT, then close every session gracefully (1001). Exit status."""

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        logging.getLogger("websockets").setLevel(logging.WARNING)  # one line per session is ours

    async def main() -> None:
        server = StreamServer(factory, config)
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        http = server.url.replace("ws://", "http://").removesuffix("/ws")
        announce(
            f"serving on {server.url} (browser page {http}/, health {http}/health); "
            f"singers: {', '.join(factory.speakers)}"
        )
        await stop.wait()
        announce(f"shutting down: closing {len(server.sessions)} session(s)")
        await server.shutdown()

    asyncio.run(main())
    return 0
