"""``comostream bridge``: a sound card <-> ``comostream serve`` bridge for DAWs.

A DAW routes a send to a (virtual) input device; the bridge streams it to the server and plays
the converted audio on an output device that the DAW records or monitors. The PortAudio callback
only copies: input into a preallocated ring, output out of another (silence on underrun,
counted). An asyncio pump sends every whole block and queues the replies; the output ring starts
with ``prefill`` samples of silence (the jitter buffer) and never holds more than ``max_queued``
(the oldest are skipped), so the delay stays bounded whatever the network does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from comostream.realtime.runner import Ring
from comostream.realtime.serve.client import StreamClient, block_samples, now_us
from comostream.realtime.serve.protocol import FLAG_DROPPED

__all__ = ["Bridge", "BridgeStats", "DeviceError", "run_bridge"]


class DeviceError(RuntimeError):
    """A sound device cannot be opened (missing, busy, unsupported rate)."""


@dataclass
class BridgeStats:
    """Counters in samples (device rate) and the round trips seen (ms)."""

    underruns: int = 0  # output samples played as silence (nothing had arrived)
    overflows: int = 0  # input samples lost (the pump fell behind)
    skipped: int = 0  # converted samples skipped to keep the delay bounded
    dropped: int = 0  # samples the server dropped (overload), played as silence
    sent_blocks: int = 0
    rtt_ms: list[float] = field(default_factory=list)  # the last 1000


class Bridge:
    """Rings between a device callback and a :class:`StreamClient` (see the module doc).

    ``block``: samples per frame (the session's); ``channels``: output channels (the mono
    result is copied to each); ``prefill_blocks`` / ``max_blocks``: output queue bounds.
    """

    def __init__(
        self,
        block: int,
        sample_rate: int,
        channels: int = 1,
        prefill_blocks: int = 2,
        max_blocks: int = 8,
    ) -> None:
        self.block, self.sample_rate, self.channels = block, sample_rate, channels
        capacity = max(64 * block, sample_rate)
        self.inp, self.out = Ring(capacity), Ring(capacity)
        self.prefill, self.max_queued = prefill_blocks * block, max_blocks * block
        self.out.write(np.zeros(self.prefill, np.float32))
        self._play = np.zeros(capacity, np.float32)
        self._work = np.zeros(block, np.float32)
        self.stats = BridgeStats()

    @property
    def buffer_ms(self) -> float:
        """The output jitter buffer in ms (added to the server's latency and the round trip)."""
        return 1000.0 * self.prefill / self.sample_rate

    def callback(self, indata: np.ndarray, outdata: np.ndarray, frames: int, *_: Any) -> None:
        """The PortAudio callback: copy in, copy out, count problems."""
        self.stats.overflows += frames - self.inp.write(indata[:, 0])
        got = self.out.read_into(self._play[:frames])
        self._play[got:frames] = 0.0
        self.stats.underruns += frames - got
        outdata[:] = self._play[:frames, None]

    async def pump(self, client: StreamClient, stop: asyncio.Event) -> None:
        """Send whole blocks, queue replies, until ``stop`` is set (or the server fails)."""
        receiver = asyncio.create_task(self._receive(client))
        poll = self.block / self.sample_rate / 4
        seq = 0
        try:
            while not stop.is_set() and not receiver.done():
                while self.inp.available() >= self.block:
                    self.inp.read_into(self._work)
                    await client.send_block(seq, self._work)
                    seq += 1
                    self.stats.sent_blocks += 1
                await asyncio.sleep(poll)
            if receiver.done():
                receiver.result()  # raises the server's error
        finally:
            receiver.cancel()

    async def _receive(self, client: StreamClient) -> None:
        while True:
            reply = await client.recv()
            if isinstance(reply, dict):
                continue
            if reply.flags & FLAG_DROPPED:
                self.stats.dropped += reply.count
                samples = np.zeros(reply.count, np.float32)
            else:
                samples = np.ascontiguousarray(reply.samples[:, 0])
                self.stats.rtt_ms.append((now_us() - reply.timestamp_us) / 1000.0)
                del self.stats.rtt_ms[:-1000]
            self.out.write(samples)
            excess = self.out.available() - self.max_queued
            if excess > 0:
                self.stats.skipped += self.out.skip(excess)


def run_bridge(
    url: str,
    input_device: int | str | None = None,
    output_device: int | str | None = None,
    *,
    sample_rate: int = 48000,
    block: int | None = None,
    seconds: float | None = None,
    announce: Callable[[str], None] = print,
    **hello: Any,
) -> BridgeStats:
    """Bridge the devices to the server until Ctrl-C (or ``seconds``); returns the counters.
    ``block``: model frames per audio frame and device callback (:func:`block_samples`; None:
    the server's block). ``hello``: speaker, transpose, token (see
    :meth:`StreamClient.connect`)."""
    import sounddevice as sd

    stats = BridgeStats()

    async def main() -> BridgeStats:
        nonlocal stats
        client = await StreamClient.connect(
            url,
            sample_rate=sample_rate,
            channels=1,
            block=block_samples(block, sample_rate),
            **hello,
        )
        stop = asyncio.Event()
        try:
            try:
                out_info = sd.query_devices(output_device, "output")
            except (ValueError, sd.PortAudioError) as exc:
                raise DeviceError(f"output device {output_device!r}: {exc}") from None
            channels = max(1, min(2, int(out_info["max_output_channels"])))
            bridge = Bridge(client.block, sample_rate, channels)
            stats = bridge.stats
            with _open_stream(
                sd,
                sample_rate,
                client.block,
                input_device,
                output_device,
                channels,
                bridge.callback,
            ):
                announce(
                    f"bridging as {client.ready['speaker']}: server latency "
                    f"{client.ready['latency_ms']:.1f} ms + round trip + "
                    f"{bridge.buffer_ms:.1f} ms buffer; Ctrl-C stops"
                )
                pump = asyncio.create_task(bridge.pump(client, stop))
                t_end = None if seconds is None else time.monotonic() + seconds
                while not pump.done() and (t_end is None or time.monotonic() < t_end):
                    await asyncio.wait([pump], timeout=0.2)
                stop.set()
                await pump
        finally:
            await client.close()
        return bridge.stats

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        announce("stopped")
        return stats


def _open_stream(
    sd: Any,
    rate: int,
    block: int,
    inp: int | str | None,
    out: int | str | None,
    channels: int,
    callback: Callable[..., None],
) -> Any:
    """A duplex ``sounddevice.Stream`` (mono in, ``channels`` out); :class:`DeviceError`."""
    try:
        return sd.Stream(
            samplerate=rate,
            blocksize=block,
            device=(inp, out),
            channels=(1, channels),
            dtype="float32",
            latency="low",
            callback=callback,
        )
    except (ValueError, sd.PortAudioError) as exc:
        raise DeviceError(f"cannot open devices {inp!r} -> {out!r} at {rate} Hz: {exc}") from None
