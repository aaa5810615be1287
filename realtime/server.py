"""``comostream serve``: WebSocket streaming for DAW bridges and browsers (``docs/protocol.md``).

One :class:`Session` per connection owns its engine (a
:class:`~realtime.engine.StreamingConverter` over the shared models; the traced model step is
built once and shared, its state is per engine) and one worker thread that runs it, so
inference never blocks the event loop. Three tasks per session: the reader validates frames
into the input queue, the worker converts in order, the sender writes replies. Both queues are
bounded :class:`DropQueue` s: audio beyond ``max_queue_ms`` drops the OLDEST blocks, which
become ``FLAG_DROPPED`` replies (silence, no PCM) so the client's timeline and the delay never
move, and the counts are in ``stats``. A client that does not read its replies therefore loses
old replies instead of growing server memory.

The same port serves the browser page (``/``), its scripts and a health endpoint
(``GET /health``). Bound to loopback, only loopback ``Host`` headers are accepted (DNS
rebinding); elsewhere a token is required. Browser ``Origin`` s must be the page's own or listed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import secrets
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from models.config import RealtimeConfig
from realtime.engine import MODEL_RATE, SampleFifo, StreamingConverter
from realtime.protocol import (
    FLAG_BYPASS,
    FLAG_DROPPED,
    FLAG_FLUSH,
    MAX_BLOCK,
    PROTOCOL_VERSION,
    Hello,
    ProtocolError,
    error_message,
    max_frame_bytes,
    pack_frame,
    parse_hello,
    parse_set,
    parse_text,
    unpack_frame,
)  # fmt: skip

__all__ = ["DropQueue", "EngineFactory", "ServerConfig", "ServerThread", "Session",
           "StreamServer", "run_server"]  # fmt: skip

log = logging.getLogger("comostream.server")
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/worklet.js": ("worklet.js", "text/javascript; charset=utf-8")}  # fmt: skip
WS_PATHS = ("/", "/ws")
MAX_MESSAGES = 64  # queued control frames / text replies per direction and session


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerConfig:
    """``comostream serve`` settings. A token is required unless bound to loopback."""

    host: str = "127.0.0.1"
    port: int = 8765  # 0: any free port
    token: str | None = None
    max_streams: int = 8
    idle_timeout_s: float = 30.0  # a session with no frame for this long is closed
    max_queue_ms: float = 200.0  # audio queued per direction beyond this drops the oldest
    allow_origins: tuple[str, ...] = ()  # browser origins allowed besides the page's own

    def __post_init__(self) -> None:
        if not is_loopback(self.host) and not self.token:
            raise ValueError(f"serving on {self.host} (not loopback) needs a token: pass "
                             "--token SECRET (clients send it in their hello)")  # fmt: skip
        if self.max_streams < 1 or self.idle_timeout_s <= 0 or self.max_queue_ms <= 0:
            raise ValueError("max_streams, idle_timeout_s and max_queue_ms must be positive")


class EngineFactory:
    """Engines over one loaded acoustic model + vocoder; the (traced) step is built by the first
    engine and shared by the later ones (its state is per engine)."""

    def __init__(self, model: Any, vocoder: Any, realtime: RealtimeConfig | None = None) -> None:
        self.model, self.vocoder = model, vocoder
        self.rt = realtime or RealtimeConfig()
        self.speakers: list[str] = list(model.speakers)
        self._step: Any = None
        self._lock = threading.Lock()

    def natural_block(self, sample_rate: int) -> int:
        """Samples per channel of one model step at ``sample_rate`` (the default block)."""
        hop = self.model.cfg.audio.hop_length
        return max(1, round(self.rt.block_frames * hop * sample_rate / MODEL_RATE))

    def check_speaker(self, spec: str | dict[str, float]) -> None:
        """Raise ``ProtocolError('unknown_speaker')`` unless every name is a singer."""
        for name in [spec] if isinstance(spec, str) else list(spec):
            if name not in self.speakers:
                raise ProtocolError("unknown_speaker", f"unknown speaker {name!r}; known "
                                                       f"speakers: {', '.join(self.speakers)}")

    def warm_up(self, sample_rate: int = 48000) -> None:
        """Build the shared step and run a few blocks once (tracing, JIT compilation), so the
        first session's first blocks are not late."""
        hello = Hello(PROTOCOL_VERSION, sample_rate, 1, "f32le", None, None, 0.0, None)
        block = self.natural_block(sample_rate)
        engine = self.create(hello, block, self.speakers[0])
        for _ in range(8):
            engine.push(np.zeros(block, np.float32))

    def create(self, hello: Hello, block: int, speaker: Any) -> StreamingConverter:
        """An engine for a session (pushes of ``block`` samples)."""
        kw = dict(speaker=speaker, transpose=hello.transpose, sample_rate=hello.sample_rate,
                  channels=hello.channels, realtime=self.rt, chunk=block)  # fmt: skip
        with self._lock:
            if self._step is None:
                engine = StreamingConverter.from_models(self.model, self.vocoder, **kw)
                self._step = engine.step_module
                return engine
        return StreamingConverter(self._step, embed=self.model.conditioner.speaker_embedding,
                                  audio=self.model.cfg.audio, **kw)  # fmt: skip


@dataclass
class Block:
    """A droppable queue item: an audio frame in, or a reply out (``count`` samples)."""

    seq: int
    ts: int
    count: int
    payload: Any


@dataclass
class Gap:
    """Dropped blocks, merged: ``count`` samples of silence ending with block ``seq``."""

    seq: int
    ts: int
    count: int
    blocks: int


class DropQueue:
    """An ordered single-consumer queue: blocks beyond ``max_samples`` drop oldest-first into
    :class:`Gap` s; other items (control frames, text) are kept, at most ``max_messages``."""

    def __init__(self, max_samples: int, max_messages: int = MAX_MESSAGES) -> None:
        self.max_samples, self.max_messages = max_samples, max_messages
        self._items: deque[Any] = deque()
        self._ready = asyncio.Event()
        self.samples = self.messages = 0
        self.dropped_blocks = self.dropped_samples = self.high_water = 0

    def __len__(self) -> int:
        return len(self._items)

    def put_block(self, item: Block | Gap) -> None:
        if isinstance(item, Gap):
            tail = self._items[-1] if self._items else None
            if isinstance(tail, Gap):
                self._merge(tail, item)
            else:
                self._items.append(item)
        else:
            self._items.append(item)
            self.samples += item.count
            while self.samples > self.max_samples:
                self._drop_oldest()
        self._wake()

    def put_message(self, item: Any) -> None:
        if self.messages >= self.max_messages:
            raise ProtocolError("overloaded", f"more than {self.max_messages} control frames "
                                              "queued; wait for the replies")  # fmt: skip
        self._items.append(item)
        self.messages += 1
        self._wake()

    async def get(self) -> Any:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        if isinstance(item, Block):
            self.samples -= item.count
        elif not isinstance(item, Gap):
            self.messages -= 1
        return item

    def _wake(self) -> None:
        self.high_water = max(self.high_water, len(self._items))
        self._ready.set()

    @staticmethod
    def _merge(into: Gap, later: Gap) -> None:
        into.seq, into.ts = later.seq, later.ts
        into.count += later.count
        into.blocks += later.blocks

    def _drop_oldest(self) -> None:
        i, item = next((i, it) for i, it in enumerate(self._items) if isinstance(it, Block))
        self.samples -= item.count
        self.dropped_blocks += 1
        self.dropped_samples += item.count
        gap = Gap(item.seq, item.ts, item.count, 1)
        if i > 0 and isinstance(self._items[i - 1], Gap):
            self._merge(self._items[i - 1], gap)
            del self._items[i]
        else:
            self._items[i] = gap


class Session:
    """One connection: hello -> ready, then audio and control frames (see the module doc)."""

    def __init__(self, server: StreamServer, ws: ServerConnection, sid: str) -> None:
        self.server, self.ws, self.id = server, ws, sid
        self.cfg = server.config
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"comostream-{sid}")
        self.hello: Hello | None = None
        self.engine: StreamingConverter | None = None
        self.bypass = False
        self.timings: deque[tuple[int, float]] = deque(maxlen=512)  # (seq, compute seconds)
        self.compute_s = 0.0
        self.blocks_in = self.blocks_out = 0
        self.last_seq = self.last_ts = 0
        self.closing = False

    # -- life cycle ------------------------------------------------------------------------------
    async def run(self) -> None:
        tasks: list[asyncio.Task[None]] = []
        try:
            await self._open()
            tasks = [asyncio.create_task(c) for c in (self._read(), self._work(), self._send())]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        except ProtocolError as exc:
            await self.fail(exc)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("session %s failed", self.id)
            await self.fail(ProtocolError("internal", "internal server error"))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.executor.shutdown(wait=False, cancel_futures=True)
            if self.engine is not None:
                s = self.stats()
                log.info("session %s ended: %d blocks in, %d out, dropped %d in / %d out, "
                         "compute p50 %.1f ms", self.id, s["blocks_in"], s["blocks_out"],
                         s["dropped_in_blocks"], s["dropped_out_blocks"],
                         s["compute_ms_p50"])  # fmt: skip

    async def fail(self, exc: ProtocolError) -> None:
        """Send the error text frame, then close with its code (once)."""
        if self.closing:
            return
        self.closing = True
        log.info("session %s: %s (%s)", self.id, exc.code, exc.message)
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            async with asyncio.timeout(2.0):
                await self.ws.send(error_message(exc.code, exc.message))
        reason = exc.message.encode()[:120].decode(errors="ignore")
        await self.ws.close(exc.close_code, reason)

    async def _recv(self) -> str | bytes:
        try:
            async with asyncio.timeout(self.cfg.idle_timeout_s):
                msg = await self.ws.recv()
        except TimeoutError:
            raise ProtocolError("idle_timeout",
                                f"no frame for {self.cfg.idle_timeout_s:g} s") from None
        if len(msg) > max_frame_bytes():
            raise ProtocolError("frame_too_large", f"frame of {len(msg)} bytes; the limit is "
                                                   f"{max_frame_bytes()}")  # fmt: skip
        return msg

    async def _open(self) -> None:
        msg = await self._recv()
        if isinstance(msg, bytes):
            raise ProtocolError("not_ready", "audio frame before hello")
        obj = parse_text(msg)
        if obj["type"] != "hello":
            raise ProtocolError("not_ready", f"{obj['type']!r} before hello")
        hello = parse_hello(obj)
        token = self.cfg.token
        if token and not hmac.compare_digest((hello.token or "").encode(), token.encode()):
            raise ProtocolError("unauthorized", "this server needs a valid token in hello")
        factory = self.server.factory
        speaker = hello.speaker if hello.speaker is not None else factory.speakers[0]
        factory.check_speaker(speaker)
        block = hello.block or factory.natural_block(hello.sample_rate)
        loop = asyncio.get_running_loop()
        try:
            self.engine = await loop.run_in_executor(self.executor, factory.create, hello, block,
                                                     speaker)  # fmt: skip
        except ValueError as exc:
            raise ProtocolError("bad_params", str(exc)) from None
        self.hello, self.block = hello, block
        self.dry = _DryDelay(self.engine.delay_samples, hello.channels)
        budget = max(2 * block, round(self.cfg.max_queue_ms * hello.sample_rate / 1000))
        self.inq, self.outq = DropQueue(budget), DropQueue(budget)
        await self.ws.send(json.dumps(self.ready_message()))
        log.info("session %s: %d Hz x %d, %s, block %d, singer %s", self.id, hello.sample_rate,
                 hello.channels, hello.format, block, speaker)  # fmt: skip

    def ready_message(self) -> dict[str, Any]:
        assert self.hello is not None and self.engine is not None
        h, e = self.hello, self.engine
        return {
            "type": "ready", "version": PROTOCOL_VERSION, "session": self.id,
            "sample_rate": h.sample_rate, "channels": h.channels, "format": h.format,
            "block": self.block, "delay_samples": e.delay_samples, "latency_ms": e.latency_ms,
            "model_rate": MODEL_RATE, "speakers": self.server.factory.speakers,
            "speaker": e.speaker, "transpose": e.transpose,
            "limits": {"max_block": MAX_BLOCK, "max_frame_bytes": max_frame_bytes(),
                       "max_queue_ms": self.cfg.max_queue_ms,
                       "idle_timeout_s": self.cfg.idle_timeout_s,
                       "max_streams": self.cfg.max_streams},
        }  # fmt: skip

    # -- the three tasks -------------------------------------------------------------------------
    async def _read(self) -> None:
        assert self.hello is not None
        h = self.hello
        while True:
            try:
                msg = await self._recv()
            except ConnectionClosed:
                return
            if isinstance(msg, bytes):
                f = unpack_frame(msg, h.format, h.channels, self.block)
                self.blocks_in += 1
                self.last_seq, self.last_ts = f.seq, f.timestamp_us
                self.inq.put_block(Block(f.seq, f.timestamp_us, f.count, f.samples))
                continue
            obj = parse_text(msg)
            kind = obj["type"]
            if kind == "hello":
                raise ProtocolError("not_ready", "a second hello on one session")
            if kind == "stats":
                self.outq.put_message(json.dumps(self.stats(obj.get("blocks") is True)))
                continue
            if kind == "set":
                change = parse_set(obj)
                if change.speaker is not None:
                    self.server.factory.check_speaker(change.speaker)
                obj = {"type": "set", "change": change}
            self.inq.put_message(obj)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await self.inq.get()
            if isinstance(item, Gap):
                self.outq.put_block(Gap(item.seq, item.ts, item.count, item.blocks))
            elif isinstance(item, Block):
                data = await loop.run_in_executor(self.executor, self._convert, item)
                self.blocks_out += 1
                self.outq.put_block(Block(item.seq, item.ts, item.count, data))
            else:
                reply = await loop.run_in_executor(self.executor, self._control, item)
                self.outq.put_message(reply)

    async def _send(self) -> None:
        assert self.hello is not None
        while True:
            item = await self.outq.get()
            if isinstance(item, Gap):
                item = pack_frame(item.seq, item.ts, None, self.hello.format, FLAG_DROPPED,
                                  count=item.count)  # fmt: skip
            elif isinstance(item, Block):
                item = item.payload
            await self.ws.send(item)

    # -- engine side (the session's worker thread) -----------------------------------------------
    def _convert(self, item: Block) -> bytes:
        """One block through the engine (and the dry delay line): the reply frame."""
        assert self.engine is not None and self.hello is not None
        x = item.payload[:, 0] if self.hello.channels == 1 else item.payload
        t0 = time.perf_counter()
        wet = self.engine.push(x)
        dry = self.dry.push(x)
        seconds = time.perf_counter() - t0
        self.timings.append((item.seq, seconds))
        self.compute_s += seconds
        flags = FLAG_BYPASS if self.bypass else 0
        return pack_frame(item.seq, item.ts, dry if self.bypass else wet, self.hello.format, flags)

    def _control(self, obj: dict[str, Any]) -> str | bytes:
        assert self.engine is not None and self.hello is not None
        kind = obj["type"]
        if kind == "set":
            change = obj["change"]
            if change.speaker is not None:
                self.engine.set_speaker(change.speaker)
            if change.transpose is not None:
                self.engine.set_transpose(change.transpose)
            if change.bypass is not None:
                self.bypass = change.bypass
        elif kind == "reset":
            self.engine.reset()
            self.dry.reset()
        elif kind == "flush":
            wet = self.engine.flush()
            dry = self.dry.flush(wet.shape[0])
            flags = FLAG_FLUSH | (FLAG_BYPASS if self.bypass else 0)
            return pack_frame(self.last_seq, self.last_ts, dry if self.bypass else wet,
                              self.hello.format, flags)  # fmt: skip
        return json.dumps({"type": "state", "speaker": self.engine.speaker,
                           "transpose": self.engine.transpose, "bypass": self.bypass})

    def stats(self, blocks: bool = False) -> dict[str, Any]:
        """The ``stats`` reply: latency, compute, real-time factor, drops and queue depths;
        ``blocks``: also ``compute_ms_by_seq``, ``[seq, ms]`` of the last 512 blocks."""
        assert self.engine is not None and self.hello is not None
        timings = list(self.timings)  # one C-level copy: the worker thread appends meanwhile
        times = np.asarray([t for _, t in timings] or [0.0]) * 1000.0
        audio_s = self.blocks_out * self.block / self.hello.sample_rate
        out = {
            "type": "stats", "session": self.id, "latency_ms": self.engine.latency_ms,
            "delay_samples": self.engine.delay_samples, "block": self.block,
            "blocks_in": self.blocks_in, "blocks_out": self.blocks_out,
            "compute_ms_p50": float(np.percentile(times, 50)),
            "compute_ms_p99": float(np.percentile(times, 99)),
            "rtf": self.compute_s / audio_s if audio_s else 0.0,
            "dropped_in_blocks": self.inq.dropped_blocks,
            "dropped_in_samples": self.inq.dropped_samples,
            "dropped_out_blocks": self.outq.dropped_blocks,
            "dropped_out_samples": self.outq.dropped_samples,
            "queue_in": len(self.inq), "queue_out": len(self.outq),
            "queue_in_high_water": self.inq.high_water,
            "queue_out_high_water": self.outq.high_water,
            "bad_samples": self.engine.stats.bad_samples,
            "speaker": self.engine.speaker, "transpose": self.engine.transpose,
            "bypass": self.bypass,
        }  # fmt: skip
        if blocks:
            out["compute_ms_by_seq"] = [[seq, round(1000.0 * t, 4)] for seq, t in timings]
        return out


class _DryDelay:
    """The input delayed by the engine's stream delay (bypass keeps the timeline)."""

    def __init__(self, delay: int, channels: int) -> None:
        self.delay, self.channels = delay, channels
        self.reset()

    def reset(self) -> None:
        self.fifo = SampleFifo()
        self.fifo.push(np.zeros(self.delay * self.channels, np.float32))

    def push(self, x: np.ndarray) -> np.ndarray:
        self.fifo.push(np.ascontiguousarray(x, np.float32).reshape(-1))
        return self.fifo.pop(x.size).reshape(x.shape)

    def flush(self, samples: int) -> np.ndarray:
        """The held tail, zero-padded or cut to ``samples``; then reset."""
        held = self.fifo.pop(len(self.fifo)).reshape(-1, self.channels)
        out = np.zeros((samples, self.channels), np.float32)
        out[: min(samples, held.shape[0])] = held[:samples]
        self.reset()
        return out[:, 0] if self.channels == 1 else out


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
            self._handle, self.config.host, self.config.port, process_request=self._http,
            compression=None, max_size=4 * max_frame_bytes(), max_queue=16, write_limit=2**16,
            close_timeout=2.0, ping_interval=20.0, ping_timeout=20.0,
        )  # fmt: skip
        self.port = int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"ws://{host}:{self.port}/ws"

    async def shutdown(self) -> None:
        """Close every session with ``shutdown`` (1001), then stop listening."""
        await asyncio.gather(*(s.fail(ProtocolError("shutdown", "server shutting down"))
                               for s in list(self.sessions.values())))  # fmt: skip
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def active_streams(self) -> int:
        """Sessions whose connection is open (one closing no longer counts)."""
        return sum(s.ws.state is State.OPEN and not s.closing for s in self.sessions.values())

    async def _handle(self, ws: ServerConnection) -> None:
        session = Session(self, ws, secrets.token_hex(4))
        if self.active_streams() >= self.config.max_streams:
            await session.fail(ProtocolError("server_full", f"this server serves at most "
                                             f"{self.config.max_streams} streams"))  # fmt: skip
            session.executor.shutdown(wait=False)
            return
        self.sessions[session.id] = session
        try:
            await session.run()
        finally:
            self.sessions.pop(session.id, None)

    def _http(self, conn: ServerConnection, request: Request) -> Response | None:
        """Host/Origin checks, then the page, its scripts and /health; None: a WebSocket."""
        host = request.headers.get("Host", "")
        if is_loopback(self.config.host) and not is_loopback(urlsplit("//" + host).hostname or ""):
            return conn.respond(HTTPStatus.FORBIDDEN, f"Host {host!r} not allowed\n")
        path = urlsplit(request.path).path
        if request.headers.get("Upgrade", "").lower() == "websocket":
            origin = request.headers.get("Origin")
            if path not in WS_PATHS:
                return conn.respond(HTTPStatus.NOT_FOUND, "WebSocket endpoint is /ws\n")
            if origin is not None and origin not in self.config.allow_origins and (
                    urlsplit(origin).netloc != host):  # fmt: skip
                return conn.respond(HTTPStatus.FORBIDDEN, f"Origin {origin!r} not allowed\n")
            return None
        if path == "/health":
            body = json.dumps({"status": "ok", "version": PROTOCOL_VERSION,
                               "streams": self.active_streams(),
                               "max_streams": self.config.max_streams})  # fmt: skip
            return _response(conn, body.encode(), "application/json")
        if path in STATIC:
            name, ctype = STATIC[path]
            return _response(conn, (resources.files("realtime") / "web" / name).read_bytes(),
                             ctype)  # fmt: skip
        return conn.respond(HTTPStatus.NOT_FOUND, "not found\n")


def _response(conn: ServerConnection, body: bytes, ctype: str) -> Response:
    r = conn.respond(HTTPStatus.OK, "")
    r.body = body
    for name, value in (("Content-Length", str(len(body))), ("Content-Type", ctype),
                        ("Cache-Control", "no-store")):  # fmt: skip
        if name in r.headers:  # Headers is a multidict: replace, don't add
            del r.headers[name]
        r.headers[name] = value
    return r


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
        announce(f"serving on {server.url} (browser page {http}/, health {http}/health); "
                 f"singers: {', '.join(factory.speakers)}")  # fmt: skip
        await stop.wait()
        announce(f"shutting down: closing {len(server.sessions)} session(s)")
        await server.shutdown()

    asyncio.run(main())
    return 0

