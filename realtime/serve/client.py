"""``comostream client``: a file through a ``comostream serve`` server (``docs/protocol.md``).

:class:`StreamClient` is one session (hello -> ready, audio frames, control frames, replies);
:func:`stream_array` streams a signal at real-time pace (or, ``fast``, as fast as the server
answers, with at most ``window`` blocks in flight so the server's queue never drops) and returns
the converted signal aligned to the input, plus the round trips measured from the echoed
timestamps. The tail comes from a ``flush``, so the result equals the engine's own offline
output for the same blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from comostream.models.config import RealtimeConfig
from comostream.realtime.geometry import StreamGeometry, stream_rate
from comostream.realtime.serve.protocol import (
    FLAG_DROPPED,
    FLAG_FLUSH,
    PROTOCOL_VERSION,
    Frame,
    max_frame_bytes,
    pack_frame,
    unpack_frame,
)

__all__ = [
    "ClientResult",
    "ServerError",
    "StreamClient",
    "block_samples",
    "stream_array",
    "stream_file",
]


class ServerError(RuntimeError):
    """The server reported an error (``code`` from ``docs/protocol.md``) or closed the session."""

    def __init__(self, code: str, message: str, close_code: int | None = None) -> None:
        super().__init__(f"server error {code}: {message}")
        self.code, self.message, self.close_code = code, message, close_code


def block_samples(frames: int | None, sample_rate: int) -> int | None:
    """A block of ``frames`` model frames as samples per channel at ``sample_rate`` (the wire's
    unit; None stays None: the server's block). The client does not know the server's model, so
    frames are the default geometry's (:class:`~comostream.models.config.AudioConfig`: hop 256
    at 24 kHz)."""
    if frames is None:
        return None
    geometry = StreamGeometry.from_configs(realtime=RealtimeConfig(block_frames=frames))
    return geometry.samples_per_block(sample_rate)


def now_us() -> int:
    """The client clock for frame timestamps (monotonic, microseconds)."""
    return time.monotonic_ns() // 1000


class StreamClient:
    """One streaming session. Create with :meth:`connect`; ``ready`` is the server's answer."""

    def __init__(self, ws: ClientConnection, ready: dict[str, Any]) -> None:
        self.ws, self.ready = ws, ready
        self.format: str = ready["format"]
        self.channels: int = int(ready["channels"])
        self.block: int = int(ready["block"])
        self.sample_rate: int = int(ready["sample_rate"])
        self.delay_samples: int = int(ready["delay_samples"])

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        sample_rate: int,
        channels: int = 1,
        fmt: str = "f32le",
        block: int | None = None,
        speaker: str | dict[str, float] | None = None,
        transpose: float | str = 0.0,
        token: str | None = None,
    ) -> StreamClient:
        """Open a session; raises :class:`ServerError` if the server refuses it."""
        ws = await connect(
            url,
            compression=None,
            max_size=4 * max_frame_bytes(),
            open_timeout=30.0,
            close_timeout=5.0,
        )
        hello = {
            "type": "hello",
            "version": PROTOCOL_VERSION,
            "sample_rate": sample_rate,
            "channels": channels,
            "format": fmt,
            "block": block,
            "speaker": speaker,
            "transpose": transpose,
            "token": token,
        }
        try:
            with contextlib.suppress(ConnectionClosed):  # refused at once (a full server):
                await ws.send(json.dumps(hello))  # its error message is still there to read
            reply = await _next_text(ws)
        except BaseException:
            await ws.close()
            raise
        return cls(ws, reply)

    async def send_block(self, seq: int, samples: np.ndarray) -> None:
        """One audio frame of ``block`` samples ``(block,)`` / ``(block, channels)``."""
        await self.ws.send(pack_frame(seq, now_us(), samples, self.format))

    async def control(self, kind: str, **fields: Any) -> None:
        """A control frame: ``set`` (speaker/transpose/bypass), ``reset``, ``flush``, ``stats``."""
        await self.ws.send(json.dumps({"type": kind, **fields}))

    async def recv(self) -> Frame | dict[str, Any]:
        """The next reply: an audio :class:`Frame` or a text message (errors raise)."""
        try:
            msg = await self.ws.recv()
        except ConnectionClosed as exc:
            raise _closed(exc) from None
        if isinstance(msg, bytes):
            return unpack_frame(msg, self.format, self.channels, from_server=True)
        return _checked(json.loads(msg))

    async def close(self) -> None:
        await self.ws.close()


async def _next_text(ws: ClientConnection) -> dict[str, Any]:
    try:
        msg = await ws.recv()
    except ConnectionClosed as exc:
        raise _closed(exc) from None
    if isinstance(msg, bytes):
        raise ServerError("bad_message", "expected a text frame")
    return _checked(json.loads(msg))


def _checked(obj: dict[str, Any]) -> dict[str, Any]:
    if obj.get("type") == "error":
        raise ServerError(obj.get("code", "?"), obj.get("message", ""), obj.get("close_code"))
    return obj


def _closed(exc: ConnectionClosed) -> ServerError:
    rcvd = exc.rcvd
    code = rcvd.code if rcvd is not None else None
    return ServerError("closed", f"connection closed ({code}: {rcvd.reason if rcvd else ''})", code)


@dataclass
class ClientResult:
    """What :func:`stream_array` got back. ``output``: the input's shape and alignment."""

    output: np.ndarray
    sample_rate: int
    ready: dict[str, Any]
    stats: dict[str, Any]
    rtt_ms: dict[int, float] = field(default_factory=dict)  # seq -> send-to-reply ms
    dropped_samples: int = 0  # samples the server dropped (silence in ``output``)

    def rtt_percentile(self, q: float) -> float:
        values = list(self.rtt_ms.values())
        return float(np.percentile(values, q)) if values else float("nan")


async def stream_array(
    url: str,
    audio: np.ndarray,
    sample_rate: int,
    *,
    fast: bool = False,
    window: int | None = None,
    **hello: Any,
) -> ClientResult:
    """Stream ``audio`` ``(n,)`` or ``(n, 2)`` and return the converted signal aligned to it.

    ``fast``: send as fast as replies come instead of at real-time pace. ``window``: at most
    this many blocks unanswered (default 4 when ``fast``, else unlimited; 1 measures round trips
    without any server queueing). ``hello``: :meth:`StreamClient.connect` keywords (speaker,
    transpose, fmt, token, and block: samples per channel, the wire's unit).
    """
    if window is None and fast:
        window = 4
    x = np.asarray(audio, np.float32)
    channels = 1 if x.ndim == 1 else x.shape[1]
    client = await StreamClient.connect(url, sample_rate=sample_rate, channels=channels, **hello)
    try:
        return await _stream(client, x, fast, window)
    finally:
        await client.close()


async def _stream(
    client: StreamClient, x: np.ndarray, fast: bool, window: int | None
) -> ClientResult:
    n, block, sr = x.shape[0], client.block, client.sample_rate
    blocks = -(-n // block)
    padded = np.zeros((blocks * block, *x.shape[1:]), np.float32)
    padded[:n] = x
    parts: list[np.ndarray] = []
    rtt: dict[int, float] = {}
    acked = asyncio.Event()
    state = {"answered": 0, "dropped": 0}

    async def receive() -> dict[str, Any]:
        while True:
            reply = await client.recv()
            if isinstance(reply, dict):
                continue  # state replies of set/reset
            if reply.flags & FLAG_DROPPED:
                parts.append(np.zeros((reply.count, *x.shape[1:]), np.float32))
                state["dropped"] += reply.count
            else:
                parts.append(reply.samples[:, 0] if x.ndim == 1 else reply.samples)
                if not reply.flags & FLAG_FLUSH:
                    rtt[reply.seq] = (now_us() - reply.timestamp_us) / 1000.0
            if reply.flags & FLAG_FLUSH:
                await client.control("stats", blocks=True)
                while True:
                    msg = await client.recv()
                    if isinstance(msg, dict) and msg.get("type") == "stats":
                        return msg
            state["answered"] = reply.seq + 1
            acked.set()

    receiver = asyncio.create_task(receive())
    t0 = time.perf_counter()
    try:
        for k in range(blocks):
            if not fast:
                await asyncio.sleep(max(0.0, t0 + k * block / sr - time.perf_counter()))
            while window is not None and k - state["answered"] >= window and not receiver.done():
                acked.clear()
                waiter = asyncio.create_task(acked.wait())
                await asyncio.wait([waiter, receiver], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
            if receiver.done():
                break
            await client.send_block(k, padded[k * block : (k + 1) * block])
        if not receiver.done():
            await client.control("flush")
        stats = await receiver
    finally:
        receiver.cancel()
    out = np.concatenate(parts, axis=0)
    d = client.delay_samples
    return ClientResult(out[d : d + n], sr, client.ready, stats, rtt, state["dropped"])


def stream_file(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    url: str,
    *,
    block: int | None = None,
    subtype: str | None = None,
    **kwargs: Any,
) -> ClientResult:
    """Stream an audio file (mono or stereo; a rate the server does not take is resampled first:
    :func:`~comostream.realtime.geometry.stream_rate`) and write the converted audio at that
    rate, in the format of ``output``'s extension (wav/flac/ogg) with ``subtype`` or the
    format's default (:func:`~comostream.models.audio.output_format`, checked before
    streaming). ``block``: model frames per audio frame (:func:`block_samples`; None: the
    server's block); ``kwargs``: :func:`stream_array`'s (fast, window, speaker, transpose, fmt,
    token)."""
    import soundfile as sf

    from comostream.models.audio import (
        AudioError,
        check_finite,
        output_format,
        resample,
        save_audio,
    )

    output_format(output, subtype)
    if not Path(source).is_file():
        raise AudioError(f"{source}: file not found")
    try:
        audio, rate = sf.read(str(source), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"{source}: unreadable audio file ({exc})") from None
    if audio.shape[0] == 0:
        raise AudioError(f"{source}: audio file has zero samples")
    check_finite(audio, str(source))
    x = (
        audio[:, 0]
        if audio.shape[1] == 1
        else audio[:, :2]
        if audio.shape[1] == 2
        else (audio.mean(axis=1))
    )
    if stream_rate(rate) != rate:
        x, rate = resample(np.ascontiguousarray(x.T), rate, stream_rate(rate)).T, stream_rate(rate)
    result = asyncio.run(
        stream_array(
            url, np.ascontiguousarray(x), int(rate), block=block_samples(block, int(rate)), **kwargs
        )
    )
    save_audio(output, result.output.T, rate, subtype)
    return result
