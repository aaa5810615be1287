"""One WebSocket connection of ``comostream serve``: its :class:`Session` and bounded queues.

A :class:`Session` is given the server's engine factory
(:class:`~comostream.realtime.serve.engines.EngineFactory`) and settings
(:class:`~comostream.realtime.serve.config.ServerConfig`), nothing else of the server; it owns its
engine, which never runs in the event loop: batched (the default), the factory's
:class:`~comostream.realtime.serve.batcher.BatchScheduler` runs it in its one thread with every
other session's (front end, shared model step, reply); otherwise a worker thread of the
session's own runs it. Three tasks per session: the reader validates frames into the input
queue, the worker converts in order, the sender writes replies. Both queues are bounded
:class:`DropQueue` s: audio beyond ``max_queue_ms`` drops the OLDEST blocks, which become
``FLAG_DROPPED`` replies (silence, no PCM) so the client's timeline and the delay never move; the
counts are in ``stats``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from comostream.realtime.engine import SampleFifo, StreamingConverter, sanitize_samples
from comostream.realtime.pace import PaceWatch
from comostream.realtime.serve.config import ServerConfig
from comostream.realtime.serve.engines import EngineFactory
from comostream.realtime.serve.protocol import (
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
)

__all__ = ["MAX_MESSAGES", "Block", "DropQueue", "Gap", "Session"]

log = logging.getLogger("comostream.server")  # the server's logger: one line per session
MAX_MESSAGES = 64  # queued control frames / text replies per direction and session
IN_FLIGHT = 2  # a session's blocks (and controls) queued to its engine's thread at a time
PACE_MIN_AUDIO_S = 2.0  # audio converted before a session's RTF is judged (drops: at once)


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
            raise ProtocolError(
                "overloaded",
                f"more than {self.max_messages} control frames queued; wait for the replies",
            )
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

    def __init__(
        self,
        factory: EngineFactory,
        config: ServerConfig,
        ws: ServerConnection,
        sid: str,
        admit: Callable[[], bool] = lambda: True,
    ) -> None:
        self.factory, self.cfg, self.ws, self.id = factory, config, ws, sid
        self.admit = admit  # called once the hello is valid: False when the server is full
        self.authenticated = False  # a valid hello (and token) was accepted: counts as a stream
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"comostream-{sid}")
        self.hello: Hello | None = None
        self.engine: StreamingConverter | None = None
        self.bypass = False
        self.timings: deque[tuple[int, float]] = deque(maxlen=512)  # (seq, compute seconds)
        self.compute_s = 0.0
        self.worker_cpu_s = 0.0  # CPU time of the engine's work (batched: without the step)
        self.blocks_in = self.blocks_out = 0
        self.last_seq = self.last_ts = 0
        self.closing = False
        self.pace = PaceWatch()  # warns once when the session falls behind real time

    @property
    def is_open(self) -> bool:
        """Whether the connection is open and not closing. Counted towards ``max_streams`` once
        :attr:`authenticated`, towards ``max_pending`` before."""
        return self.ws.state is State.OPEN and not self.closing

    # -- life cycle ------------------------------------------------------------------------------
    async def run(self) -> None:
        tasks: list[asyncio.Task[None]] = []
        try:
            await self._open()
            self.inflight: asyncio.Queue[tuple[Any, asyncio.Future[Any] | None]] = asyncio.Queue()
            self.room = asyncio.Semaphore(IN_FLIGHT)
            work = (self._read(), self._work(), self._collect(), self._send())
            tasks = [asyncio.create_task(c) for c in work]
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
                self.factory.release(self.engine)  # its batch slot, once its last block is done
                s = self.stats()
                log.info(
                    "session %s ended: %d blocks in, %d out, dropped %d in / %d out, "
                    "compute p50 %.1f ms",
                    self.id,
                    s["blocks_in"],
                    s["blocks_out"],
                    s["dropped_in_blocks"],
                    s["dropped_out_blocks"],
                    s["compute_ms_p50"],
                )

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

    async def _recv(self, hello: bool = False) -> str | bytes:
        """The next frame; ``hello``: within the hello deadline (``hello_timeout``), else within
        the idle timeout (``idle_timeout``)."""
        code, seconds = (
            ("hello_timeout", self.cfg.hello_timeout_s)
            if hello
            else ("idle_timeout", self.cfg.idle_timeout_s)
        )
        try:
            async with asyncio.timeout(seconds):
                msg = await self.ws.recv()
        except TimeoutError:
            what = "no valid hello" if hello else "no frame"
            raise ProtocolError(code, f"{what} for {seconds:g} s") from None
        if len(msg) > max_frame_bytes():
            raise ProtocolError(
                "frame_too_large", f"frame of {len(msg)} bytes; the limit is {max_frame_bytes()}"
            )
        return msg

    async def _open(self) -> None:
        msg = await self._recv(hello=True)
        if isinstance(msg, bytes):
            raise ProtocolError("not_ready", "audio frame before hello")
        obj = parse_text(msg)
        if obj["type"] != "hello":
            raise ProtocolError("not_ready", f"{obj['type']!r} before hello")
        hello = parse_hello(obj)
        token = self.cfg.token
        if token and not hmac.compare_digest((hello.token or "").encode(), token.encode()):
            raise ProtocolError("unauthorized", "this server needs a valid token in hello")
        factory = self.factory
        speaker = factory.check_speaker(hello.speaker)
        if hello.transpose == "auto":
            factory.check_register(speaker)
        if not self.admit():  # counted from here on (synchronous: no race with other hellos)
            raise ProtocolError(
                "server_full", f"this server serves at most {self.cfg.max_streams} streams"
            )
        self.authenticated = True
        block = hello.block or factory.natural_block(hello.sample_rate)
        try:
            self.engine = await self._in_engine_thread(factory.create, hello, block, speaker)
        except ValueError as exc:
            raise ProtocolError("bad_params", str(exc)) from None
        self.hello, self.block = hello, block
        self.dry = _DryDelay(self.engine.delay_samples, hello.channels)
        budget = max(2 * block, round(self.cfg.max_queue_ms * hello.sample_rate / 1000))
        self.inq, self.outq = DropQueue(budget), DropQueue(budget)
        await self.ws.send(json.dumps(self.ready_message()))
        log.info(
            "session %s: %d Hz x %d, %s, block %d, singer %s",
            self.id,
            hello.sample_rate,
            hello.channels,
            hello.format,
            block,
            speaker,
        )

    def ready_message(self) -> dict[str, Any]:
        assert self.hello is not None and self.engine is not None
        h, e = self.hello, self.engine
        return {
            "type": "ready",
            "version": PROTOCOL_VERSION,
            "session": self.id,
            "sample_rate": h.sample_rate,
            "channels": h.channels,
            "format": h.format,
            "block": self.block,
            "delay_samples": e.delay_samples,
            "latency_ms": e.latency_ms,
            "model_rate": self.factory.geometry.sample_rate,
            "speakers": self.factory.speakers,
            "speaker": e.speaker,
            **self.transposition(),
            "limits": {
                "max_block": MAX_BLOCK,
                "max_frame_bytes": max_frame_bytes(),
                "max_queue_ms": self.cfg.max_queue_ms,
                "idle_timeout_s": self.cfg.idle_timeout_s,
                "max_streams": self.cfg.max_streams,
            },
        }

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
                try:
                    change = parse_set(obj)
                except ProtocolError as exc:
                    if exc.code != "bad_mix":
                        raise
                    # refused as a whole, answered in order (instead of `state`); goes on
                    log.info("session %s: set refused: %s", self.id, exc.message)
                    reply = error_message(exc.code, exc.message, fatal=False)
                    self.inq.put_message({"type": "refused", "reply": reply})
                    continue
                if change.speaker is not None:
                    self.factory.check_speaker(change.speaker)
                obj = {"type": "set", "change": change}
            self.inq.put_message(obj)

    def _in_engine_thread(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """``fn(*args)`` where the engine runs, queued in order with its blocks: the batch
        scheduler's thread or the session's worker thread."""
        sched = self.factory.start_batching()
        if sched is not None:
            return asyncio.wrap_future(sched.call(fn, *args, engine=self.engine))
        return asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _work(self) -> None:
        """Queue the input's blocks and controls to the engine's thread, up to
        :data:`IN_FLIGHT` at a time (so the next block is there when the scheduler's next cycle
        starts); :meth:`_collect` takes their results in order."""
        sched = self.factory.start_batching()
        while True:
            await self.room.acquire()  # released by _collect once the item's result is out
            item = await self.inq.get()  # (taken only then: the queue drops what waits)
            if isinstance(item, Gap):
                future = None
            elif isinstance(item, Block) and sched is not None:
                x = self._mono(item)
                finish = functools.partial(self._reply, item, x)
                future = asyncio.wrap_future(sched.convert(self.engine, x, finish))
            elif isinstance(item, Block):
                future = self._in_engine_thread(self._convert, item)
            else:
                future = self._in_engine_thread(self._control, item)
            await self.inflight.put((item, future))

    async def _collect(self) -> None:
        """The results of :meth:`_work`'s jobs, in order, into the output queue."""
        while True:
            item, future = await self.inflight.get()
            result = None if future is None else await future
            self.room.release()
            if isinstance(item, Gap):
                self.outq.put_block(Gap(item.seq, item.ts, item.count, item.blocks))
            elif isinstance(item, Block):
                self.blocks_out += 1
                self.outq.put_block(Block(item.seq, item.ts, item.count, result))
                self._check_pace()
            else:
                self.outq.put_message(result)

    def _check_pace(self) -> None:
        """Log :func:`~comostream.realtime.pace.pace_warning` once per session: blocks dropped,
        or an RTF above the limit over at least :data:`PACE_MIN_AUDIO_S` of audio."""
        assert self.engine is not None and self.hello is not None
        if self.pace.warned:
            return
        audio_s = self.blocks_out * self.block / self.hello.sample_rate
        rtf = self.compute_s / audio_s if audio_s >= PACE_MIN_AUDIO_S else None
        dropped = self.inq.dropped_blocks + self.outq.dropped_blocks
        text = self.pace.check(rtf, dropped, torch.get_num_threads(), self.engine.block)
        if text:
            log.warning("session %s: %s", self.id, text)

    async def _send(self) -> None:
        assert self.hello is not None
        while True:
            item = await self.outq.get()
            if isinstance(item, Gap):
                item = pack_frame(
                    item.seq, item.ts, None, self.hello.format, FLAG_DROPPED, count=item.count
                )
            elif isinstance(item, Block):
                item = item.payload
            await self.ws.send(item)

    # -- engine side (the batch scheduler's thread, or the session's worker thread) -------------
    def _mono(self, item: Block) -> np.ndarray:
        """A block's samples as the engine takes them: ``(n,)`` mono, else ``(n, channels)``."""
        assert self.hello is not None
        return item.payload[:, 0] if self.hello.channels == 1 else item.payload

    def _convert(self, item: Block) -> bytes:
        """One block through the engine, unbatched: the reply frame (:meth:`_reply`)."""
        assert self.engine is not None
        x = self._mono(item)
        t0, cpu0 = time.perf_counter(), time.thread_time()
        wet = self.engine.push(x)
        return self._reply(item, x, wet, time.perf_counter() - t0, time.thread_time() - cpu0)

    def _reply(
        self, item: Block, x: np.ndarray, wet: np.ndarray, seconds: float, cpu: float
    ) -> bytes:
        """The reply frame of block ``item`` (input ``x``, converted ``wet``, after ``seconds``
        of wall and ``cpu`` of CPU time): the dry delay line runs too (for bypass)."""
        assert self.hello is not None
        dry = self.dry.push(sanitize_samples(np.asarray(x, np.float32))[0])  # as the engine
        self.worker_cpu_s += cpu
        self.timings.append((item.seq, seconds))
        self.compute_s += seconds
        flags = FLAG_BYPASS if self.bypass else 0
        return pack_frame(item.seq, item.ts, dry if self.bypass else wet, self.hello.format, flags)

    def _control(self, obj: dict[str, Any]) -> str | bytes:
        assert self.engine is not None and self.hello is not None
        kind = obj["type"]
        if kind == "refused":
            return str(obj["reply"])
        if kind == "set":
            change = obj["change"]
            auto = change.transpose == "auto" or (
                change.transpose is None and self.engine.transpose_auto
            )
            if auto:  # every singer of the (new) speaker needs a register: else nothing changes
                try:
                    self.factory.check_register(
                        self.engine.speaker if change.speaker is None else change.speaker
                    )
                except ProtocolError as exc:
                    log.info("session %s: set refused: %s", self.id, exc.message)
                    return error_message(exc.code, exc.message, fatal=False)
            if change.speaker is not None:
                self.engine.set_speaker(change.speaker)
            if change.transpose is not None:
                self.engine.set_transpose(change.transpose)
            if change.bypass is not None:
                self.bypass = change.bypass
            if change.index_rate is not None:
                self.engine.set_index_rate(change.index_rate)
        elif kind == "reset":
            self.engine.reset()
            self.dry.reset()
        elif kind == "flush":
            wet = self.engine.flush()
            dry = self.dry.flush(wet.shape[0])
            flags = FLAG_FLUSH | (FLAG_BYPASS if self.bypass else 0)
            return pack_frame(
                self.last_seq, self.last_ts, dry if self.bypass else wet, self.hello.format, flags
            )
        return json.dumps(
            {
                "type": "state",
                "speaker": self.engine.speaker,
                **self.transposition(),
                "bypass": self.bypass,
            }
        )

    def transposition(self) -> dict[str, Any]:
        """``transpose`` (semitones in use; with auto, the shift chosen, 0 before),
        ``transpose_auto`` and ``source_register_hz`` (auto: the input's register once known)."""
        assert self.engine is not None
        e = self.engine
        return {
            "transpose": e.transpose,
            "transpose_auto": e.transpose_auto,
            "source_register_hz": e.source_register_hz,
        }

    def stats(self, blocks: bool = False) -> dict[str, Any]:
        """The ``stats`` reply: latency, compute, real-time factor, drops and queue depths;
        ``blocks``: also ``compute_ms_by_seq``, ``[seq, ms]`` of the last 512 blocks."""
        assert self.engine is not None and self.hello is not None
        timings = list(self.timings)  # one C-level copy: the engine's thread appends meanwhile
        times = np.asarray([t for _, t in timings] or [0.0]) * 1000.0
        audio_s = self.blocks_out * self.block / self.hello.sample_rate
        out = {
            "type": "stats",
            "session": self.id,
            "latency_ms": self.engine.latency_ms,
            "delay_samples": self.engine.delay_samples,
            "block": self.block,
            "blocks_in": self.blocks_in,
            "blocks_out": self.blocks_out,
            "compute_ms_p50": float(np.percentile(times, 50)),
            "compute_ms_p99": float(np.percentile(times, 99)),
            "rtf": self.compute_s / audio_s if audio_s else 0.0,
            "worker_cpu_s": self.worker_cpu_s,
            "dropped_in_blocks": self.inq.dropped_blocks,
            "dropped_in_samples": self.inq.dropped_samples,
            "dropped_out_blocks": self.outq.dropped_blocks,
            "dropped_out_samples": self.outq.dropped_samples,
            "queue_in": len(self.inq),
            "queue_out": len(self.outq),
            "queue_in_high_water": self.inq.high_water,
            "queue_out_high_water": self.outq.high_water,
            "bad_samples": self.engine.stats.bad_samples,
            "bad_output_samples": self.engine.stats.bad_output_samples,
            "input_f0_hz": self.engine.input_f0_median(),
            "speaker": self.engine.speaker,
            **self.transposition(),
            "bypass": self.bypass,
        }
        scheduler = getattr(self.factory, "scheduler", None)
        if scheduler is not None:  # the shared batched step (all sessions together)
            out["batch"] = {**scheduler.stats.summary(), "backend": self.factory.backend}
        if self.cfg.process is not None:  # serve --processes: which process serves this
            out["process"] = self.cfg.process
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
