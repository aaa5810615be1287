"""Real-time use of the engine: an audio thread writes and reads, a worker thread converts.

The audio side (a PortAudio callback, a socket reader) only copies samples into and out of
preallocated single-producer/single-consumer rings: no allocation beyond the copy, no torch, no
lock shared with inference. The worker thread takes input from the input ring, runs
:meth:`StreamingConverter.push` and writes the result to the output ring.

Overload never makes the delay creep:

* input older than ``max_backlog_ms`` is dropped by the worker before converting (oldest first,
  whole blocks; ``stats.dropped_blocks``), so it catches up with the present;
* when the output ring runs dry the reader plays a fade of the last good audio (or the dry input,
  if it is given) instead of silence, and counts the samples (``stats.concealed``);
* every concealed or dropped sample is settled on the output timeline: samples the engine makes
  for a time that was already concealed are discarded, and a dropped input block becomes a
  concealed output block. The output therefore stays exactly ``prefill`` samples behind the
  engine's timeline, whatever happened.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from comostream.realtime.engine import StreamingConverter

__all__ = ["Ring", "RunnerStats", "ThreadedConverter"]


class Ring:
    """Single-producer / single-consumer float32 ring with monotonically growing counters.

    Only the producer moves ``written`` and only the consumer moves ``read``: no lock is needed
    (an int store is atomic under the GIL). ``write`` refuses what does not fit (returns the
    count written).
    """

    def __init__(self, capacity: int) -> None:
        self.buf = np.zeros(capacity, np.float32)
        self.capacity = capacity
        self.written = 0
        self.read = 0

    def available(self) -> int:
        return self.written - self.read

    def write(self, x: np.ndarray) -> int:
        n = min(x.shape[0], self.capacity - self.available())
        start = self.written % self.capacity
        first = min(n, self.capacity - start)
        self.buf[start : start + first] = x[:first]
        self.buf[: n - first] = x[first:n]
        self.written += n
        return n

    def read_into(self, out: np.ndarray) -> int:
        """Fill ``out`` with up to ``len(out)`` samples; return how many were read."""
        n = min(out.shape[0], self.available())
        start = self.read % self.capacity
        first = min(n, self.capacity - start)
        out[:first] = self.buf[start : start + first]
        out[first:n] = self.buf[: n - first]
        self.read += n
        return n

    def skip(self, n: int) -> int:
        n = min(n, self.available())
        self.read += n
        return n


@dataclass
class RunnerStats:
    """Counters (samples at the caller's rate unless named blocks)."""

    dropped_blocks: int = 0  # input blocks dropped by the worker (overload)
    dropped_samples: int = 0
    concealed: int = 0  # output samples the reader had to invent (underrun)
    discarded: int = 0  # converted samples thrown away to settle concealed time
    input_overflow: int = 0  # input samples refused because the input ring was full
    processed: int = 0  # input samples converted


class ThreadedConverter:
    """Runs ``engine`` in a worker thread behind two rings (see the module docstring).

    ``block``: samples per worker step at the caller's rate (default: the engine's block).
    ``prefill``: output samples of silence queued at start, the buffer that absorbs compute
    time (default: two blocks). ``max_backlog_ms`` defaults to the engine's config.
    """

    def __init__(
        self,
        engine: StreamingConverter,
        block: int | None = None,
        prefill: int | None = None,
        max_backlog_ms: float | None = None,
    ) -> None:
        self.engine = engine
        sr = engine.sample_rate
        self.block = block or engine.block_samples
        backlog = engine.rt.max_backlog_ms if max_backlog_ms is None else max_backlog_ms
        self.max_backlog = max(self.block, int(backlog * sr / 1000))
        capacity = max(8 * (self.max_backlog + self.block), 2 * sr)  # >= 2 s of stall
        self.inp = Ring(capacity)
        self.out = Ring(capacity)
        self.prefill = 2 * self.block if prefill is None else prefill
        self.out.write(np.zeros(self.prefill, np.float32))
        self.stats = RunnerStats()
        self._dropped_out = 0  # dropped input samples, settled as concealed output
        self._last = 0.0  # last sample played (reader)
        self._last_out = 0.0  # last sample queued (worker)
        self._fade = np.linspace(1.0, 0.0, capacity, dtype=np.float32)  # preallocated
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._work = np.zeros(self.block, np.float32)

    @property
    def latency_ms(self) -> float:
        """Stream delay from ``write`` to ``read``: the engine's delay plus the output prefill
        (the device's own buffers come on top)."""
        return self.engine.delay_ms + 1000.0 * self.prefill / self.engine.sample_rate

    # -- audio side (callback-safe) --------------------------------------------------------------
    def write(self, x: np.ndarray) -> None:
        """Queue input samples ``(n,)`` (mono, the engine's rate)."""
        n = self.inp.write(x)
        if n < x.shape[0]:
            self.stats.input_overflow += x.shape[0] - n
        self._wake.set()

    def read(self, out: np.ndarray, dry: np.ndarray | None = None) -> None:
        """Fill ``out (n,)`` with converted samples; on underrun, conceal (dry or a fade)."""
        got = self.out.read_into(out)
        if got < out.shape[0]:
            missing = out.shape[0] - got
            if dry is not None and dry.shape[0] >= out.shape[0]:
                out[got:] = dry[got : out.shape[0]]
            else:
                out[got:] = self._fade[-missing:]
                out[got:] *= self._last
            self.stats.concealed += missing
        if out.shape[0]:
            self._last = float(out[-1])

    # -- worker ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="comostream-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker (idempotent)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def __enter__(self) -> ThreadedConverter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def process_available(self) -> int:
        """Convert every whole block queued now (drops first if over the backlog); returns the
        number of blocks converted. The worker thread calls this; tests may call it directly."""
        backlog = self.inp.available()
        if backlog > self.max_backlog:
            drop = ((backlog - self.max_backlog + self.block - 1) // self.block) * self.block
            dropped = self.inp.skip(drop)
            self.stats.dropped_blocks += dropped // self.block
            self.stats.dropped_samples += dropped
            self._dropped_out += dropped
        blocks = 0
        while self.inp.available() >= self.block:
            self.inp.read_into(self._work)
            y = self.engine.push(self._work)
            self.stats.processed += self.block
            self._deliver(y)
            blocks += 1
        return blocks

    def _deliver(self, y: np.ndarray) -> None:
        """Settle the timeline, then queue ``y``."""
        s = self.stats
        debt = s.concealed - s.discarded - self._dropped_out - s.input_overflow
        if debt > 0:  # time already concealed: its samples are late, drop them
            cut = min(debt, y.shape[0])
            s.discarded += cut
            y = y[cut:]
        elif debt < 0:  # input was lost and nothing concealed it yet: keep the timeline
            fill = -debt
            self.stats.concealed += fill
            self.out.write(self._fade[-fill:] * self._last_out)  # fade out, as a concealment
        if y.shape[0]:
            self.out.write(np.ascontiguousarray(y, dtype=np.float32))
            self._last_out = float(y[-1])

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=0.05)
            self._wake.clear()
            self.process_available()
            time.sleep(0)
