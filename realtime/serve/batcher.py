"""Batched serving: the due blocks of every session through one batched model step.

A :class:`BatchScheduler` owns the model step and a state table with one row (a *slot*) per
session. Each session's engine runs on a :class:`SlotStep`, a drop-in step module: the engine's
front end (resampling, features, F0) runs in the session's own worker thread as before, and when a
block is complete :meth:`SlotStep.step` hands its inputs to the scheduler and waits for the
output. The scheduler's thread takes every pending block (at most one per session: a session
waits for each block before sending the next, so its order is kept), gathers those sessions'
rows of the state table, pads the batch to the nearest traced size (*bucket*) by repeating the
first row, runs the step, writes the real rows back and hands each session its output. A step
starts as soon as a block is pending (or, with ``wait_ms``, once every session in use has one
pending or the oldest has waited that long: each step has a fixed cost, so a short wait for the
blocks due next saves CPU on a busy machine); blocks that arrive during a step go together into
the next one, so batches grow with the load and a block waits about one step at most.

Sessions join (:meth:`BatchScheduler.acquire`) and leave (:meth:`BatchScheduler.release`) at any
block; each keeps its own singer, transposition, rate and block size (the engine's business), and
its own state row, so the output equals that of a separate engine per session. The step may be
anything with ``init_state(streams)`` and ``step(inputs, state)`` updating ``state`` in place
(every state tensor with the streams as dimension 0); ``buckets`` maps batch sizes to steps
specialised to blocks of ``frames`` frames (e.g. traced), others run on ``step`` at their exact
size.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from comostream.models.streaming import StreamState, rebuild_state, state_tensors

__all__ = ["BUCKETS", "BatchScheduler", "SlotStep", "bucket_sizes"]

BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)  # batch sizes built at warm-up (<= 1.5x pad)
WAIT_CHECK_S = 1.0  # a waiting session checks this often that the scheduler is still alive


def bucket_sizes(max_batch: int) -> list[int]:
    """The traced batch sizes for up to ``max_batch`` streams per step: :data:`BUCKETS` up to
    the first one that holds ``max_batch`` (larger loads run in several steps)."""
    out = []
    for size in BUCKETS:
        out.append(size)
        if size >= max_batch:
            break
    return out


@dataclass
class _Request:
    """One session's block waiting for (or done with) a step."""

    slot: int
    inputs: dict[str, Tensor]
    frames: int
    queued: float = field(default_factory=time.monotonic)  # seconds (monotonic clock)
    done: threading.Event = field(default_factory=threading.Event)
    output: Tensor | None = None
    error: BaseException | None = None


@dataclass
class BatchStats:
    """What the scheduler did: steps, rows (real and padding) and step times (seconds)."""

    steps: int = 0
    rows: int = 0
    padded_rows: int = 0
    cpu_s: float = 0.0  # CPU time of the scheduler's thread (its intra-op helpers excluded)
    step_s: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=2048))

    def summary(self) -> dict[str, Any]:
        """JSON-ready: step count and padded rows so far; over the latest 2048 steps the mean
        batch (streams per step) and the step time p50/p99 (ms)."""
        recent = list(self.step_s)  # (rows, seconds); one C-level copy
        ms = np.asarray([s for _, s in recent] or [0.0]) * 1000.0
        return {
            "steps": self.steps,
            "batch_mean": float(np.mean([n for n, _ in recent])) if recent else 0.0,
            "padded_rows": self.padded_rows,
            "cpu_s": self.cpu_s,
            "step_ms_p50": float(np.percentile(ms, 50)),
            "step_ms_p99": float(np.percentile(ms, 99)),
        }


class BatchScheduler:
    """The shared model step and the sessions' state rows (see the module docstring).

    ``step``: runs any batch and block size (e.g. the eager chain); ``buckets``: batch size ->
    a step for blocks of exactly ``frames`` frames of that many streams; ``capacity``: initial
    state rows (the table doubles when more sessions join); ``wait_ms``: how long a block may
    wait for other sessions' blocks before a step starts without them (0: at once). The step runs
    on the process's torch intra-op threads (``torch.set_num_threads`` is process-wide:
    ``serve --threads``).
    """

    def __init__(
        self,
        step: Any,
        *,
        buckets: Mapping[int, Any] | None = None,
        frames: int = 0,
        capacity: int = 8,
        wait_ms: float = 0.0,
    ) -> None:
        self.step_module = step
        self.wait_s = max(0.0, float(wait_ms)) / 1000.0
        self.buckets = dict(sorted((buckets or {}).items()))
        self.frames = int(frames)
        self.stats = BatchStats()
        with torch.inference_mode():
            self._template = step.init_state(1)
        self._fresh = [t for _, t in state_tensors(self._template)]
        for name, t in state_tensors(self._template):
            if t.dim() == 0 or t.shape[0] != 1:
                raise ValueError(f"state tensor {name} {tuple(t.shape)}: no streams dimension 0")
        self._table: list[Tensor] = []
        self._free: list[int] = []
        self._grow(max(1, capacity))
        self._table_lock = threading.Lock()  # the table: a step, a reset or growth at a time
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._busy: set[int] = set()  # slots with a request pending or in a step
        self._leaving: set[int] = set()  # released while busy: freed after their step
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="comostream-batcher", daemon=True)
        self._thread.start()

    # -- sessions --------------------------------------------------------------------------------
    @property
    def sessions(self) -> int:
        """Slots in use."""
        with self._table_lock:
            return self.capacity - len(self._free)

    @property
    def capacity(self) -> int:
        return int(self._table[0].shape[0])

    def acquire(self) -> int:
        """A free slot for a new session (its state fresh)."""
        with self._table_lock:
            if not self._free:
                self._grow(2 * self.capacity)
            slot = self._free.pop(0)
            self._reset(slot)
        return slot

    def release(self, slot: int) -> None:
        """The session of ``slot`` left: the slot is free once its last step is done."""
        with self._cond:
            if slot in self._busy:
                self._leaving.add(slot)
                return
        self._free_slot(slot)

    def reset(self, slot: int) -> StreamState:
        """``slot``'s state back to the beginning; its rows as a state of one stream (views of
        the table, live until the table grows)."""
        with self._table_lock:
            self._reset(slot)
            return rebuild_state(self._template, [t[slot : slot + 1] for t in self._table])

    def run(self, slot: int, inputs: dict[str, Tensor]) -> Tensor:
        """One block of ``slot``'s session through the next step (blocking): its output
        ``(1, k * hop)``. Called from the session's thread, one block at a time."""
        return self.wait(self.submit(slot, inputs))

    def submit(self, slot: int, inputs: dict[str, Tensor]) -> _Request:
        """Queue one block of ``slot`` for the next step (:meth:`wait` for its output)."""
        req = _Request(slot, inputs, int(inputs["f0"].shape[-1]))
        with self._cond:
            if self._stopped:
                raise RuntimeError("the batch scheduler has stopped")
            if slot in self._busy:
                raise RuntimeError(f"slot {slot} already has a block in flight")
            self._busy.add(slot)
            self._pending.append(req)
            self._cond.notify()
        return req

    def wait(self, req: _Request) -> Tensor:
        """The output of a block from :meth:`submit`, once its step is done."""
        while not req.done.wait(WAIT_CHECK_S):
            if not self._thread.is_alive():
                raise RuntimeError("the batch scheduler has stopped")
        if req.error is not None:
            raise RuntimeError(f"batched model step failed: {req.error}") from req.error
        assert req.output is not None
        return req.output

    def close(self) -> None:
        """Stop the scheduler's thread; blocks still pending fail."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(10.0)

    # -- the scheduler's thread ------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and not self._due():
                    self._cond.wait(self._until_due())
                if self._stopped:
                    for req in self._pending:
                        req.error = RuntimeError("the batch scheduler has stopped")
                        req.done.set()
                    return
                groups = self._take()
            cpu0 = time.thread_time()
            for step, size, reqs in groups:
                self._run(step, size, reqs)
            self.stats.cpu_s += time.thread_time() - cpu0
            with self._cond:
                for _, _, reqs in groups:
                    for req in reqs:
                        self._busy.discard(req.slot)
                leaving = self._leaving - self._busy
                self._leaving -= leaving
            for slot in leaving:
                self._free_slot(slot)
            for _, _, reqs in groups:
                for req in reqs:
                    req.done.set()

    def _due(self) -> bool:
        """Whether to step now: a block is pending and either every session in use has one
        pending, the largest bucket is full, or the oldest has waited ``wait_s``. Called with
        ``_cond`` held."""
        if not self._pending:
            return False
        if len(self._pending) >= max(1, self.capacity - len(self._free)):
            return True
        if self.buckets and len(self._pending) >= max(self.buckets):
            return True
        return time.monotonic() >= self._pending[0].queued + self.wait_s

    def _until_due(self) -> float | None:
        """Seconds until the oldest pending block has waited ``wait_s`` (None: none pending)."""
        if not self._pending:
            return None
        return max(0.0, self._pending[0].queued + self.wait_s - time.monotonic())

    def _take(self) -> list[tuple[Any, int, list[_Request]]]:
        """The pending blocks as steps ``(step, batch size, requests)``: blocks of the buckets'
        ``frames`` padded to a bucket (at most the largest; the rest wait for the next step),
        others at their exact size, grouped by frames. Called with ``_cond`` held."""
        natural = [r for r in self._pending if r.frames == self.frames] if self.buckets else []
        largest = max(self.buckets) if self.buckets else 0
        taken = natural[:largest]
        rest = [r for r in self._pending if r.frames != self.frames or not self.buckets]
        self._pending = natural[largest:]
        groups: list[tuple[Any, int, list[_Request]]] = []
        if taken:
            size = next(s for s in self.buckets if s >= len(taken))
            groups.append((self.buckets[size], size, taken))
        by_frames: dict[int, list[_Request]] = {}
        for req in rest:
            by_frames.setdefault(req.frames, []).append(req)
        groups += [(self.step_module, len(reqs), reqs) for reqs in by_frames.values()]
        return groups

    def _run(self, step: Any, size: int, reqs: list[_Request]) -> None:
        """One step of ``reqs`` padded to ``size`` rows (copies of the first). Consecutive slots
        with no padding (one session alone, say) step on views of the table, in place; others
        on gathered copies, written back."""
        n = len(reqs)
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                slots = [r.slot for r in reqs] + [reqs[0].slot] * (size - n)
                if n == 1 and size == 1:
                    inputs = reqs[0].inputs
                else:
                    inputs = {
                        k: torch.cat([r.inputs[k] for r in reqs] + [reqs[0].inputs[k]] * (size - n))
                        for k in reqs[0].inputs
                    }
                first = slots[0]
                in_place = size == n and slots == list(range(first, first + n))
                index = None if in_place else torch.tensor(slots, dtype=torch.long)
                with self._table_lock:
                    if index is None:
                        rows = [t[first : first + n] for t in self._table]
                    else:
                        rows = [t.index_select(0, index) for t in self._table]
                    y = step.step(inputs, rebuild_state(self._template, rows))
                    if index is not None:  # gathered copies: the real rows written back
                        for t, r in zip(self._table, rows, strict=True):
                            t.index_copy_(0, index[:n], r[:n])
            for i, req in enumerate(reqs):
                req.output = y[i : i + 1]
        except Exception as exc:  # noqa: BLE001 - every waiting session gets the error
            for req in reqs:
                req.error = exc
        seconds = time.perf_counter() - t0
        self.stats.steps += 1
        self.stats.rows += n
        self.stats.padded_rows += size - n
        self.stats.step_s.append((n, seconds))

    # -- the table -------------------------------------------------------------------------------
    def _grow(self, capacity: int) -> None:
        """Room for ``capacity`` sessions (rows kept; new rows fresh and free)."""
        old = len(self._table[0]) if self._table else 0
        with torch.inference_mode():
            table = [f.new_empty((capacity, *f.shape[1:])) for f in self._fresh]
            for t, f, o in zip(table, self._fresh, self._table or [None] * len(table), strict=True):
                if o is not None:
                    t[:old].copy_(o)
                t[old:].copy_(f.expand(capacity - old, *f.shape[1:]))
        self._table = table
        self._free += list(range(old, capacity))

    def _reset(self, slot: int) -> None:
        with torch.inference_mode():
            for t, f in zip(self._table, self._fresh, strict=True):
                t[slot : slot + 1].copy_(f)

    def _free_slot(self, slot: int) -> None:
        with self._table_lock:
            if slot not in self._free:
                self._free.append(slot)
                self._free.sort()


class SlotStep:
    """One session's step over a :class:`BatchScheduler` slot: a drop-in ``step_module`` for a
    :class:`~comostream.realtime.engine.StreamingConverter` (its blocks go through the shared
    batched step). :meth:`close` when the session ends."""

    def __init__(self, scheduler: BatchScheduler) -> None:
        self.scheduler = scheduler
        inner = scheduler.step_module
        self.lookahead_frames = int(inner.lookahead_frames)
        self.hop_length = int(inner.hop_length)
        self.speaker_dim = int(getattr(inner, "speaker_dim", 0))
        self.profile: dict[str, float] | None = None  # per-stage times are not available
        self.slot: int | None = scheduler.acquire()
        self._lock = threading.Lock()  # a block is queued or the slot given back, not both

    def parameters(self) -> Iterator[Any]:
        return iter(self.scheduler.step_module.parameters())

    def init_state(self, streams: int, device: Any = None, dtype: Any = None) -> StreamState:
        """The slot's state, fresh (``streams`` must be 1)."""
        if streams != 1 or self.slot is None:
            raise ValueError("a session's step has one stream (and must not be closed)")
        return self.scheduler.reset(self.slot)

    def step(self, inputs: dict[str, Tensor], state: StreamState) -> Tensor:
        """One block ``(1, k)`` inputs -> ``(1, k * hop)`` output, through the shared step
        (``state`` is the slot's own, kept by the scheduler)."""
        with self._lock:
            if self.slot is None:
                raise RuntimeError("this session's step is closed")
            req = self.scheduler.submit(self.slot, inputs)
        return self.scheduler.wait(req)

    def close(self) -> None:
        """Give the slot back (once; after the block in flight, if any)."""
        with self._lock:
            slot, self.slot = self.slot, None
        if slot is not None:
            self.scheduler.release(slot)
