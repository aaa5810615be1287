"""``comostream serve``: WebSocket streaming for DAW bridges and browsers (``docs/protocol.md``).

:class:`StreamServer` accepts connections and runs one
:class:`~comostream.realtime.serve.session.Session` per connection (its engine, run in the batch
scheduler's thread or a worker thread of its own, and bounded drop-oldest queues), at most
``max_streams`` streams at a time: only sessions that completed a valid hello (with the token
when one is set) count; connections still in their hello have a short deadline
(``hello_timeout_s``) and a cap of their own (``max_pending``), so silent sockets never take a
stream's slot. Every session's engine comes from one
:class:`~comostream.realtime.serve.engines.EngineFactory` over the shared models: the traced
model step is built once and shared, its state is per engine; batched (the default), the due
blocks of all sessions run in one step (:mod:`comostream.realtime.serve.batcher`). Settings:
:class:`~comostream.realtime.serve.config.ServerConfig`.

The same port serves the browser page (``/``), its scripts, the singers (``GET /singers``) and a
health endpoint (``GET /health``) through :mod:`comostream.realtime.serve.http_routes`; with a TLS
pair (``ServerConfig.tls_cert``/``tls_key``) all of it is HTTPS/WSS. Bound to loopback, only
loopback ``Host`` headers are accepted (DNS rebinding); elsewhere a token is required. Browser
``Origin`` s must be the page's own or listed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from comostream.realtime.gil import SERVE_SWITCH_S, switch_interval
from comostream.realtime.heap import settle_heap
from comostream.realtime.serve.config import ServerConfig
from comostream.realtime.serve.engines import EngineFactory
from comostream.realtime.serve.http_routes import route_http
from comostream.realtime.serve.protocol import ProtocolError, max_frame_bytes
from comostream.realtime.serve.session import Session

__all__ = ["ServerThread", "StreamServer", "run_server"]

log = logging.getLogger("comostream.server")

PING_S = 20.0  # keepalive ping interval and timeout
MAX_QUEUE = 16  # incoming messages buffered per connection
WRITE_LIMIT = 2**16  # bytes buffered per connection before a send waits
CLOSE_TIMEOUT_S = 2.0
PUBLISH_S = 0.25  # serve --processes: how often a process publishes its counts for /health
# `serve --processes`' control bytes (realtime/serve/processes.py): ready, a connection ended,
# a connection handed over (with its descriptor)
READY, CLOSED, CONNECTION = b"R", b"-", b"c"


class StreamServer:
    """The WebSocket server: sessions, the browser page, ``/health`` (see the module doc)."""

    def __init__(self, factory: EngineFactory, config: ServerConfig | None = None) -> None:
        self.factory = factory
        self.config = config or ServerConfig()
        self.sessions: dict[str, Session] = {}
        self.upgrading: set[ServerConnection] = set()  # TCP accepted, WebSocket not open yet
        self._server: Server | None = None
        self.port = self.config.port
        self.on_closed: Callable[[], None] | None = None  # each connection's end (processes)
        self._private: tempfile.TemporaryDirectory[str] | None = None  # start(handover=True)
        self._ssl: ssl.SSLContext | None = None  # the TLS context, made once by start()
        # serve --processes: every process's (streams, pending) in shared memory, its own slot
        # written by publish(), so /health reports the totals (set before start())
        self.board: Any = None
        self.processes = 1
        self._publisher: asyncio.Task[None] | None = None

    async def start(self, handover: bool = False) -> None:
        """Warm the models up, bind and start accepting connections (``self.port`` is then the
        bound port). ``handover`` (a process of ``serve --processes``): the connections come
        through :meth:`adopt`; the port is the parent's, and the WebSocket server listens only
        on a Unix socket in a private directory, which nothing connects to (websockets refuses
        handshakes with 503 unless its server is serving)."""
        await asyncio.get_running_loop().run_in_executor(None, self.factory.warm_up)
        settle_heap()  # no full garbage collection of the models' objects mid-stream
        self._ssl = self.config.ssl_context()
        where: dict[str, Any] = {"host": self.config.host, "port": self.config.port}
        if self.board is not None:
            self._publisher = asyncio.get_running_loop().create_task(self._publishing())
        if handover:
            self._private = tempfile.TemporaryDirectory(prefix="comostream-serve-")
            where = {"unix": True, "path": os.path.join(self._private.name, "unused.sock")}
        self._server = await serve(
            self._handle,
            **where,
            process_request=self._http,
            ssl=self._ssl,
            create_connection=_guarded_connection(self),
            compression=None,
            max_size=4 * max_frame_bytes(),
            max_queue=MAX_QUEUE,
            write_limit=WRITE_LIMIT,
            close_timeout=CLOSE_TIMEOUT_S,
            open_timeout=self.config.hello_timeout_s,  # the HTTP upgrade: same deadline
            ping_interval=PING_S,
            ping_timeout=PING_S,
        )
        if not handover:
            self.port = int(self._server.sockets[0].getsockname()[1])
        elif self._private is not None:  # listening: the socket's file and folder can go now,
            self._private.cleanup()  # so a process killed later leaves nothing behind in /tmp
            self._private = None

    async def adopt(self, sock: socket.socket) -> None:
        """Serve ``sock``, a TCP connection accepted elsewhere (``serve --processes``), as if
        this server had accepted it: TLS when configured, then HTTP or the WebSocket."""
        assert self._server is not None, "start() first"
        server, connection = self._server, _guarded_connection(self)

        def protocol() -> ServerConnection:
            ws = ServerProtocol(max_size=4 * max_frame_bytes(), logger=server.logger)
            return connection(
                ws,
                server,
                ping_interval=PING_S,
                ping_timeout=PING_S,
                close_timeout=CLOSE_TIMEOUT_S,
                max_queue=MAX_QUEUE,
                write_limit=WRITE_LIMIT,
            )

        extra = {"ssl_handshake_timeout": self.config.hello_timeout_s} if self._ssl else {}
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                protocol, sock, ssl=self._ssl, **extra
            )
        except OSError as exc:  # a failed TLS handshake (timeouts too), a reset
            log.info("a handed-over connection failed before HTTP: %s", exc)
            sock.close()
            if self.on_closed is not None:
                self.on_closed()

    @property
    def url(self) -> str:
        """The WebSocket endpoint (``wss://`` when serving TLS)."""
        return f"{self.http_url.replace('http', 'ws', 1)}/ws"

    @property
    def http_url(self) -> str:
        """The page's base URL (``https://`` when serving TLS), no trailing slash."""
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"{self.config.scheme}://{host}:{self.port}"

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
        if self._private is not None:
            self._private.cleanup()
        if self._publisher is not None:
            self._publisher.cancel()

    def active_streams(self) -> int:
        """Streams: open sessions that completed a valid hello (one closing no longer counts)."""
        return sum(s.is_open and s.authenticated for s in self.sessions.values())

    def pending_connections(self) -> int:
        """Open WebSocket connections still waiting for (or sending) their hello."""
        return sum(s.is_open and not s.authenticated for s in self.sessions.values())

    def _admit(self) -> bool:
        """Whether a session whose hello is valid may start streaming (a free stream slot)."""
        return self.active_streams() < self.config.max_streams

    async def _handle(self, ws: ServerConnection) -> None:
        self.upgrading.discard(ws)
        session = Session(self.factory, self.config, ws, secrets.token_hex(4), self._admit)
        refusal = None
        if self.active_streams() >= self.config.max_streams:
            refusal = ProtocolError(
                "server_full", f"this server serves at most {self.config.max_streams} streams"
            )
        elif self.pending_connections() >= self.config.max_pending:
            refusal = ProtocolError(
                "busy",
                f"{self.config.max_pending} connections are already waiting for their hello",
            )
        if refusal is not None:
            await session.fail(refusal)
            session.executor.shutdown(wait=False)
            return
        self.sessions[session.id] = session
        try:
            await session.run()
        finally:
            self.sessions.pop(session.id, None)

    def _http(self, conn: ServerConnection, request: Request) -> Response | None:
        """Host/Origin checks, then the page, its scripts and /health; None: a WebSocket."""
        return route_http(conn, request, self.config, self._counts, self.factory.singers)

    def publish(self) -> None:
        """Write this process's stream and hello counts to its slot of :attr:`board`."""
        if self.board is not None and self.config.process is not None:
            k = 2 * self.config.process
            self.board[k], self.board[k + 1] = self.active_streams(), self.pending_connections()

    async def _publishing(self) -> None:
        while True:
            self.publish()
            await asyncio.sleep(PUBLISH_S)

    def _counts(self) -> dict[str, int]:
        """What an authorised ``/health`` reports besides the status. With ``serve
        --processes``: the totals over the processes (the others' as they published them, at
        most :data:`PUBLISH_S` old), the caps of the whole server, ``processes``, and which
        ``process`` answered."""
        if self.board is None or self.config.process is None:
            return {
                "streams": self.active_streams(),
                "max_streams": self.config.max_streams,
                "pending": self.pending_connections(),
                "max_pending": self.config.max_pending,
            }
        self.publish()
        n = self.processes
        return {
            "streams": sum(self.board[0 : 2 * n : 2]),
            "max_streams": self.config.max_streams * n,
            "pending": sum(self.board[1 : 2 * n : 2]),
            "max_pending": self.config.max_pending * n,
            "processes": n,
            "process": self.config.process,
        }


def _guarded_connection(server: StreamServer) -> type[ServerConnection]:
    """The connection class of ``server``: counted in ``server.upgrading`` from the TCP accept
    until its WebSocket opens (or it closes); one beyond ``max_pending`` there is closed at once
    (no WebSocket yet to carry a close code), so silent sockets hold no memory."""

    class GuardedConnection(ServerConnection):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            server.upgrading.add(self)
            if len(server.upgrading) > server.config.max_pending:
                server.upgrading.discard(self)
                transport.abort()

        def connection_lost(self, exc: Exception | None) -> None:
            server.upgrading.discard(self)
            super().connection_lost(exc)
            if server.on_closed is not None:
                server.on_closed()

    return GuardedConnection


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
    factory: EngineFactory,
    config: ServerConfig,
    announce: Callable[[str], None] = print,
    *,
    control: socket.socket | None = None,
    board: Any = None,
    processes: int = 1,
) -> int:
    """Serve until SIGTERM/SIGINT, then close every session gracefully (1001). Exit status.

    One of ``serve --processes``' server processes (:mod:`comostream.realtime.serve.processes`)
    gets its ``control`` socket to the parent: it says ready there, serves the connections
    handed over on it, reports each one's end, and stops when the parent goes away; it
    publishes its counts on the shared ``board`` of the ``processes``."""

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        logging.getLogger("websockets").setLevel(logging.WARNING)  # one line per session is ours

    async def main() -> None:
        server = StreamServer(factory, config)
        server.board, server.processes = board, processes
        await server.start(handover=control is not None)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if control is not None:
            _follow_parent(server, control, stop)
        http = server.http_url
        if config.process is not None:  # the parent announces the URL once all are ready
            announce(f"process {config.process} ready: {len(factory.speakers)} singers")
        else:
            announce(
                f"serving on {server.url} (browser page {http}/, health {http}/health); "
                f"singers: {', '.join(factory.speakers)}"
            )
        await stop.wait()
        announce(f"shutting down: closing {len(server.sessions)} session(s)")
        await server.shutdown()
        factory.close()  # the batch scheduler's thread

    # the scheduler's thread and the event loop hand the GIL over every 0.5 ms, not 5
    with switch_interval(SERVE_SWITCH_S):
        asyncio.run(main())
    return 0


def _follow_parent(server: StreamServer, control: socket.socket, stop: asyncio.Event) -> None:
    """Wire a ``serve --processes`` server to its parent's ``control`` socket (module doc of
    :mod:`comostream.realtime.serve.processes`): ready now, adopt each connection handed over,
    report each connection's end, stop at the parent's end."""
    loop = asyncio.get_running_loop()
    control.setblocking(False)
    tasks: set[asyncio.Task[None]] = set()

    def tell(message: bytes) -> None:
        with contextlib.suppress(OSError):  # the parent is gone: the reader below stops us
            control.send(message)

    def on_control() -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(control, 1, 4)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            if not data:
                loop.remove_reader(control.fileno())
                stop.set()
                return
            for fd in fds:
                task = loop.create_task(server.adopt(socket.socket(fileno=fd)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

    server.on_closed = lambda: tell(CLOSED)
    loop.add_reader(control.fileno(), on_control)
    # Ctrl-C reaches the whole process group: the first process stops the others (SIGTERM)
    loop.remove_signal_handler(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tell(READY)
