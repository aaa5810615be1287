"""The audio side of ``comostream live``: PortAudio callbacks that only copy and count, the
worker that converts, and the F0 tap the status line reads.

A callback mixes the input to mono in a preallocated buffer, hands it to the
:class:`~comostream.realtime.runner.ThreadedConverter` (a ring copy), reads the converted block back
(a ring copy; on underrun the dry input stands in), mixes wet and dry with gains ramped sample by
sample (bypass, monitor level: no clicks), copies the result to every output channel and counts the
device's xrun flags. No allocation beyond numpy views, no logging, no torch, no locks.

One duplex stream (input and output on the same host API) keeps input and output sample-locked:
the delay is exactly the converter's plus the devices'. Separate input and output streams (two
host APIs) are aligned at the first output callback (what the input gathered before is skipped:
the delay is then the duplex one, to within a callback); their clocks may drift apart, which the
converter absorbs by dropping or concealing a block (counted).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from comostream.realtime.engine import StreamingConverter
from comostream.realtime.frontend import IncrementalF0Like
from comostream.realtime.runner import Ring, ThreadedConverter

__all__ = ["F0Tap", "LiveMixer", "TimedConverter", "XRUN_FLAGS", "output_buffer"]

XRUN_FLAGS = ("input_overflow", "input_underflow", "output_overflow", "output_underflow")


def output_buffer(callback: int, block: int, margin_blocks: int) -> int:
    """Samples of silence the output ring must start with so that callbacks of ``callback``
    samples never wait for the converter: it outputs whole blocks, so up to ``block - 1`` input
    samples wait for the rest of their block, and a callback takes its ``callback`` samples at
    once. The worker then has one callback period plus ``margin_blocks`` blocks to deliver each
    block (compute and scheduling)."""
    return max(1, callback + block - 1 + margin_blocks * block)


class F0Tap:
    """Wraps an incremental F0 tracker and keeps the latest frame's F0 (Hz, 0 = unvoiced) for
    the status line; otherwise transparent."""

    def __init__(self, tracker: IncrementalF0Like) -> None:
        self.tracker = tracker
        self.lookahead_samples = tracker.lookahead_samples
        self.lookahead_frames = tracker.lookahead_frames
        self.f0_hz = 0.0

    def push(self, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f0, voiced = self.tracker.push(chunk)
        if len(f0):
            self.f0_hz = float(f0[-1]) if bool(voiced[-1]) else 0.0
        return f0, voiced

    def reset(self) -> None:
        self.tracker.reset()
        self.f0_hz = 0.0


class TimedConverter(ThreadedConverter):
    """A :class:`ThreadedConverter` that times its conversions (for the RTF) and runs jobs
    submitted from other threads (singer / transposition changes) in the worker, between
    blocks, so the engine is only ever touched by one thread."""

    def __init__(self, engine: StreamingConverter, **kwargs: Any) -> None:
        super().__init__(engine, **kwargs)
        self.compute_s = 0.0  # worker seconds spent converting
        self.converted = 0  # input samples converted
        self.pending_prefill = 0  # samples of prefill asked for, not yet added
        self.errors: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job()`` in the worker before its next block; a failure's message goes to
        :attr:`errors`."""
        self._jobs.put(job)
        self._wake.set()

    def add_prefill(self, samples: int) -> None:
        """Lengthen the output buffer (and the delay) by ``samples`` of silence, from the worker
        (the ring's only producer)."""
        self.pending_prefill += samples

        def grow() -> None:
            self.out.write(np.zeros(samples, np.float32))
            self.prefill += samples
            self.pending_prefill -= samples

        self.submit(grow)

    def process_available(self) -> int:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            try:
                job()
            except Exception as exc:  # noqa: BLE001 (reported; the worker must keep converting)
                self.errors.put(f"{type(exc).__name__}: {exc}")
        t0 = time.perf_counter()
        blocks = super().process_available()
        if blocks:
            self.compute_s += time.perf_counter() - t0
            self.converted += blocks * self.block
        return blocks


class LiveMixer:
    """Callback-side state: preallocated buffers, output gains and xrun counters.

    ``conv``: the converter the callbacks feed; ``out_channels``: the mono result is copied to
    each; ``ramp_ms``: gain changes (bypass, monitor) move linearly over this time.
    """

    def __init__(
        self,
        conv: ThreadedConverter,
        sample_rate: int,
        out_channels: int = 1,
        *,
        bypass: bool = False,
        monitor: float = 0.0,
        ramp_ms: float = 10.0,
        max_frames: int = 8192,
    ) -> None:
        self.conv = conv
        self.out_channels = out_channels
        self.max_frames = max_frames
        self._dry = np.zeros(max_frames, np.float32)  # duplex / output callback
        self._dry_in = np.zeros(max_frames, np.float32)  # input callback (separate streams)
        self._wet = np.zeros(max_frames, np.float32)
        self._gain = np.zeros(max_frames, np.float32)
        self._steps = np.arange(1, max_frames + 1, dtype=np.float32)
        self._step = 1.0 / max(1.0, ramp_ms * sample_rate / 1000.0)  # gain change per sample
        self._dry_ring = Ring(max(4 * max_frames, sample_rate))  # separate streams only
        self._synced = False
        self.callbacks = 0  # callbacks so far (duplex or output)
        self.largest = 0  # the most frames a callback has brought
        self.xrun_flags = dict.fromkeys(XRUN_FLAGS, 0)
        self.xruns = 0
        self.bypass = bypass
        self.monitor = monitor
        self._target_wet, self._target_dry = self._targets()
        self._wet_gain, self._dry_gain = self._target_wet, self._target_dry

    # -- control (any thread) --------------------------------------------------------------------
    def resync(self) -> None:
        """Separate streams (re)starting: align them again at the next output callback."""
        self._synced = False

    def set_bypass(self, on: bool) -> None:
        """Output the dry input instead of the conversion (ramped)."""
        self.bypass = bool(on)
        self._target_wet, self._target_dry = self._targets()

    def set_monitor(self, level: float) -> None:
        """Mix the dry input into the conversion at ``level`` (0-1, linear; ramped)."""
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"monitor level must be within 0-1, got {level}")
        self.monitor = float(level)
        self._target_wet, self._target_dry = self._targets()

    def _targets(self) -> tuple[float, float]:
        return (0.0, 1.0) if self.bypass else (1.0, self.monitor)

    # -- callbacks -------------------------------------------------------------------------------
    def duplex_callback(
        self, indata: np.ndarray, outdata: np.ndarray, frames: int, time_info: Any, status: Any
    ) -> None:
        """``sounddevice.Stream`` callback: ``indata (frames, in_ch)`` -> ``outdata``."""
        self.callbacks += 1
        if frames > self.largest:
            self.largest = frames
        if status:
            self._count(status)
        for pos in range(0, frames, self.max_frames):
            n = min(frames - pos, self.max_frames)
            dry = self._mono(indata[pos : pos + n], self._dry)
            self.conv.write(dry)
            self._output(outdata[pos : pos + n], dry)

    def input_callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """``sounddevice.InputStream`` callback (separate streams)."""
        if frames > self.largest:
            self.largest = frames
        if status:
            self._count(status)
        for pos in range(0, frames, self.max_frames):
            n = min(frames - pos, self.max_frames)
            dry = self._mono(indata[pos : pos + n], self._dry_in)
            self.conv.write(dry)
            self._dry_ring.write(dry)

    def output_callback(
        self, outdata: np.ndarray, frames: int, time_info: Any, status: Any
    ) -> None:
        """``sounddevice.OutputStream`` callback (separate streams)."""
        self.callbacks += 1
        if frames > self.largest:
            self.largest = frames
        if status:
            self._count(status)
        if not self._synced:
            self._resync()
        for pos in range(0, frames, self.max_frames):
            n = min(frames - pos, self.max_frames)
            dry = self._dry[:n]
            got = self._dry_ring.read_into(dry)
            dry[got:] = 0.0
            self._output(outdata[pos : pos + n], dry)
        excess = self._dry_ring.available() - self.max_frames  # input clock faster: catch up
        if excess > 0:
            self._dry_ring.skip(excess)

    # -- internals -------------------------------------------------------------------------------
    def _resync(self) -> None:
        """Separate streams: skip what the input gathered before the output started, so that
        the converter holds no more than its prefill (the duplex delay, to within a callback)."""
        conv = self.conv
        excess = conv.out.available() + conv.inp.available() - conv.prefill
        conv.out.skip(max(0, min(excess, conv.out.available())))
        self._dry_ring.skip(self._dry_ring.available())
        self._synced = True

    def _mono(self, block: np.ndarray, buf: np.ndarray) -> np.ndarray:
        n = block.shape[0]
        dry = buf[:n]
        if block.shape[1] == 1:
            dry[:] = block[:, 0]
        else:
            np.mean(block, axis=1, out=dry)
        return dry

    def _output(self, outdata: np.ndarray, dry: np.ndarray) -> None:
        """Read the converted block, mix it with ``dry`` and write every output channel."""
        n = dry.shape[0]
        wet = self._wet[:n]
        self.conv.read(wet, dry=dry)
        self._wet_gain = self._apply_gain(wet, self._wet_gain, self._target_wet)
        if self._dry_gain != 0.0 or self._target_dry != 0.0:
            self._dry_gain = self._apply_gain(dry, self._dry_gain, self._target_dry)
            np.add(wet, dry, out=wet)
        outdata[:] = wet[:, None]

    def _apply_gain(self, x: np.ndarray, gain: float, target: float) -> float:
        """Scale ``x`` in place by a gain moving from ``gain`` towards ``target``; the new gain."""
        n = x.shape[0]
        if gain == target:
            if gain != 1.0:
                np.multiply(x, gain, out=x)
            return gain
        g = self._gain[:n]
        up = target > gain
        np.multiply(self._steps[:n], self._step if up else -self._step, out=g)
        g += gain
        if up:
            np.minimum(g, target, out=g)
        else:
            np.maximum(g, target, out=g)
        np.multiply(x, g, out=x)
        new = float(g[-1])
        return target if abs(new - target) < 1e-6 else new

    def _count(self, status: Any) -> None:
        flagged = False
        for name in XRUN_FLAGS:
            if getattr(status, name, False):
                self.xrun_flags[name] += 1
                flagged = True
        if flagged:
            self.xruns += 1
