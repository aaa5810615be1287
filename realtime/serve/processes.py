"""``comostream serve --processes N``: one port, N server processes.

One server process runs every session's front end and model step under one interpreter lock,
so it uses about one core however many the machine has. With ``--processes N`` the serving
process binds the port and starts N - 1 more (``spawn``), each a whole
:class:`~comostream.realtime.serve.server.StreamServer` with its own models, batch scheduler and
event loop, built from one :class:`FactorySpec`. The first process accepts every TCP
connection and gives it to the process with the fewest open connections (itself included): to
another one as the socket's file descriptor over a Unix socket pair (``socket.send_fds``). That
process serves it to its end: TLS, HTTP routes, WebSocket.

Control messages on each pair, one byte each: first -> other ``c`` with a connection's
descriptor; other -> first ``R`` once it is ready (models loaded and warmed up), ``-`` each time
a connection handed to it has closed. Each process admits ``ceil(max_streams / N)`` streams (and
``ceil(max_pending / N)`` connections in their hello), so together they admit about
``max_streams``; each publishes its stream and hello counts to a shared array every 0.25 s, so
``/health`` answers with the totals from any of them. SIGTERM or SIGINT to the first process
closes its sessions (1001) and stops the others, which close theirs; another process that dies
is given no more connections (the exit status is then 1), and one that loses the first process
stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import multiprocessing
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comostream.models.config import F0Config, RealtimeConfig
from comostream.models.limits import DEFAULT_INDEX_RATE
from comostream.realtime.serve.config import ServerConfig

__all__ = ["FactorySpec", "auto_processes", "serve_processes"]

log = logging.getLogger("comostream.server")

STREAMS_PER_PROCESS = 4  # `--processes auto`: a process per this many of --max-streams
LOG_FORMAT = "%(asctime)s %(name)s[%(processName)s]: %(message)s"
START_TIMEOUT_S = 180.0  # a process that has not loaded its models by then is a failure
STOP_TIMEOUT_S = 15.0  # after SIGTERM, before SIGKILL


@dataclass(frozen=True)
class FactorySpec:
    """What a server process loads: the :class:`~comostream.realtime.serve.engines.
    EngineFactory` of ``serve``'s options (picklable: sent to each process). ``threads``: torch
    intra-op threads of the process (None: leave torch's setting)."""

    checkpoint: Path
    vocoder: Path | None = None
    device: str = "cpu"
    threads: int | None = None
    realtime: RealtimeConfig = dataclasses.field(default_factory=RealtimeConfig)
    f0: F0Config = dataclasses.field(default_factory=F0Config)
    batch: bool = True
    max_batch: int = 8
    batch_wait_ms: float | None = None
    index_rate: float = DEFAULT_INDEX_RATE

    def apply_threads(self) -> None:
        """Set this process's torch threads (``threads``, and one inter-op thread)."""
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
            with contextlib.suppress(RuntimeError):  # only before any parallel work
                torch.set_num_interop_threads(1)

    def build(self) -> Any:
        """Load the models and return the factory (not yet warmed up)."""
        from comostream.realtime.load import load_models, load_voiceprints, read_export
        from comostream.realtime.serve.engines import EngineFactory

        export = read_export(self.checkpoint)
        model, voc = load_models(
            self.checkpoint, self.vocoder, self.device, self.realtime, payload=export
        )
        prints = load_voiceprints(self.checkpoint, payload=export)
        registers = {name: p["f0_median"] for name, p in prints.items() if "f0_median" in p}
        return EngineFactory(
            model,
            voc,
            self.realtime,
            registers,
            batch=self.batch,
            max_batch=self.max_batch,
            batch_wait_ms=self.batch_wait_ms,
            f0=self.f0,
            index_rate=self.index_rate,
        )


def auto_processes(max_streams: int, device: str) -> int:
    """``serve --processes auto``: on the CPU, a process per :data:`STREAMS_PER_PROCESS` of
    ``max_streams`` up to the cores this process may run on; one on a GPU. (A process keeps
    about one core busy at 4-8 streams on a 2-core machine; docs/streaming.md.)"""
    if device != "cpu":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, math.ceil(max_streams / STREAMS_PER_PROCESS)))


def process_config(config: ServerConfig, processes: int, index: int) -> ServerConfig:
    """Process ``index``'s share of ``config``: its stream and hello caps divided by
    ``processes`` (rounded up), ``process`` set."""
    return dataclasses.replace(
        config,
        max_streams=math.ceil(config.max_streams / processes),
        max_pending=math.ceil(config.max_pending / processes),
        process=index,
    )


def _bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address of ``host`` (one port: the first's when 0)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                addr = (addr[0], sockets[0].getsockname()[1], *addr[2:])
            sock.bind(addr)
            sock.listen(128)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _worker(
    spec: FactorySpec, config: ServerConfig, control: socket.socket, board: Any, processes: int
) -> None:
    """A server process: load, warm up, say ready, serve the connections handed over."""
    from comostream.realtime.serve.server import run_server

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    spec.apply_threads()
    factory = spec.build()
    run_server(
        factory, config, announce=log.info, control=control, board=board, processes=processes
    )


@dataclass
class _Process:
    """The parent's view of one server process (``process`` None: the parent itself)."""

    index: int
    process: Any = None  # multiprocessing.Process
    control: socket.socket | None = None
    connections: int = 0
    ready: bool = False
    alive: bool = True


def serve_processes(
    spec: FactorySpec,
    config: ServerConfig,
    processes: int,
    announce: Callable[[str], None] = print,
) -> int:
    """Serve ``config``'s port from ``processes`` server processes, this one and
    ``processes - 1`` children (module doc), until SIGTERM or SIGINT. Exit status: 0, or 1 when
    a child died."""
    from comostream.realtime.gil import SERVE_SWITCH_S, switch_interval

    if processes < 1:
        raise ValueError("processes must be >= 1")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
        logging.getLogger("websockets").setLevel(logging.WARNING)
    listeners = _bind(config.host, config.port)
    config = dataclasses.replace(config, port=int(listeners[0].getsockname()[1]))
    ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads
    procs: list[_Process] = [_Process(0)]
    board = ctx.Array("i", 2 * processes, lock=False)  # (streams, pending) per process: /health
    try:
        for i in range(1, processes):  # the children load their models while this one does
            parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            proc = ctx.Process(
                target=_worker,
                args=(spec, process_config(config, processes, i), child_end, board, processes),
                name=f"comostream-serve-{i}",
            )
            proc.start()
            child_end.close()
            parent_end.setblocking(False)
            procs.append(_Process(i, proc, parent_end))
        spec.apply_threads()
        factory = spec.build()
        try:
            with switch_interval(SERVE_SWITCH_S):
                return asyncio.run(_parent(factory, procs, listeners, config, board, announce))
        finally:
            factory.close()
    finally:
        _stop(procs)
        for sock in listeners:
            sock.close()
        for p in procs:
            if p.control is not None:
                p.control.close()


async def _parent(
    factory: Any,
    procs: list[_Process],
    listeners: list[socket.socket],
    config: ServerConfig,
    board: Any,
    announce: Callable[[str], None],
) -> int:
    from comostream.realtime.serve.server import CLOSED, CONNECTION, READY, StreamServer

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    status = 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    me = procs[0]
    server = StreamServer(factory, process_config(config, len(procs), 0))
    server.board, server.processes = board, len(procs)
    tasks: set[asyncio.Task[None]] = set()

    def closed_here() -> None:
        me.connections = max(0, me.connections - 1)

    server.on_closed = closed_here

    def on_message(p: _Process) -> None:
        nonlocal status
        assert p.control is not None
        try:
            data = p.control.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the process exited
            loop.remove_reader(p.control.fileno())
            p.alive = False
            if stop.is_set():
                return  # stopping: expected
            p.process.join(1.0)
            log.error(
                "server process %d exited (status %s); serving on with the others",
                p.index,
                p.process.exitcode,
            )
            status = 1
            return
        p.ready = p.ready or READY in data
        p.connections = max(0, p.connections - data.count(CLOSED))

    def on_connection(listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: say so, keep listening
                log.warning("accept failed: %s", exc)
                return
            hand_over(conn)

    def hand_over(conn: socket.socket) -> None:
        """``conn`` to the ready process with the fewest connections (this one included)."""
        while True:
            p = min(
                (q for q in procs if q.alive and q.ready), key=lambda q: (q.connections, q.index)
            )
            if p is me:
                me.connections += 1
                task = loop.create_task(server.adopt(conn))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                return
            assert p.control is not None
            try:
                socket.send_fds(p.control, [CONNECTION], [conn.fileno()])
            except OSError as exc:  # it died and its pair is closed: the next one takes it
                log.warning("server process %d cannot take connections: %s", p.index, exc)
                p.alive = False
                continue
            p.connections += 1
            conn.close()
            return

    for p in procs[1:]:
        assert p.control is not None
        loop.add_reader(p.control.fileno(), on_message, p)
    await server.start(handover=True)
    me.ready = True
    deadline = loop.time() + START_TIMEOUT_S
    while not stop.is_set() and not all(p.ready or not p.alive for p in procs):
        if loop.time() > deadline:
            log.error(
                "server processes not ready after %.0f s: serving from the ready ones (a late "
                "one takes connections once ready)",
                START_TIMEOUT_S,
            )
            break
        await asyncio.sleep(0.05)
    if not stop.is_set():
        for listener in listeners:
            loop.add_reader(listener.fileno(), on_connection, listener)
        started = [p for p in procs if p.ready]
        http = server.http_url
        announce(
            f"serving on {server.url} (browser page {http}/, health {http}/health) from "
            f"{len(started)} processes; singers: {', '.join(factory.speakers)}"
        )
        await stop.wait()
    for listener in listeners:
        loop.remove_reader(listener.fileno())
    announce(f"shutting down: closing {len(server.sessions)} session(s) and the other processes")
    await asyncio.gather(server.shutdown(), loop.run_in_executor(None, _stop, procs))
    return status


def _stop(procs: list[_Process]) -> None:
    """SIGTERM every live child (each closes its sessions), wait, then SIGKILL the late."""
    children = [p.process for p in procs if p.process is not None]
    for proc in children:
        if proc.is_alive():
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGTERM)
    for proc in children:
        proc.join(STOP_TIMEOUT_S)
        if proc.is_alive():
            proc.kill()
            proc.join()
