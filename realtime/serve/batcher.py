"""Batched serving: every session's blocks through one thread and one batched model step.

A :class:`BatchScheduler` owns the model step, a state table with one row (a *slot*) per session,
and one thread that does all the sessions' engine work: nothing of a batched session runs in a
thread of its own. The server hands it each block it receives (:meth:`BatchScheduler.convert`:
the session's engine, the samples and a ``finish`` callback that makes the reply) and each
control call (:meth:`BatchScheduler.call`), and gets a :class:`~concurrent.futures.Future` back.
The thread takes every pending job at once (a *cycle*): it runs the control calls, then each
block's front end (resampling, features, F0; the engine queues its complete model blocks instead
of stepping them), then the queued model blocks of all those sessions together, one per session
per step, gathering their rows of the state table (into rows kept per step and batch size: no
allocation per step, and a step that binds its buffers, like ONNX Runtime's, binds them once;
a session stepped alone runs on its own rows of the table, in place),
padding the batch to the nearest traced size (*bucket*) by repeating the first row, stepping,
and writing the real rows back; then each
block's output leaves the engine and ``finish`` makes its reply. Blocks that arrive during a cycle
go together into the next one, so batches grow with the load and a block waits about one cycle at
most; with ``wait_ms``, a cycle starts once every session in use has a block pending or the oldest
has waited that long (fewer, fuller steps). One thread for all the sessions' Python means no
thread handoff per block and no competition for the interpreter lock between sessions' threads:
only the event loop (the network) runs beside it.

Sessions join (:meth:`BatchScheduler.acquire`) and leave (:meth:`BatchScheduler.release`) at any
block; each keeps its own singer, transposition, rate and block size (the engine's business), and
its own state row, so the output equals that of a separate engine per session. Outside a cycle a
:class:`SlotStep` (the engines' step module) runs a block at once through :meth:`BatchScheduler.run`
(a flush's last blocks, a warm-up). The step may be anything with ``init_state(streams)`` and
``step(inputs, state)`` updating ``state`` in place (every state tensor with the streams as
dimension 0); ``buckets`` maps batch sizes to steps specialised to blocks of ``frames`` frames
(e.g. traced), others run on ``step`` at their exact size.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from comostream.models.streaming import StreamState, rebuild_state, state_tensors

__all__ = ["BUCKETS", "BatchScheduler", "Finish", "SlotStep", "bucket_sizes"]

log = logging.getLogger("comostream.server")
BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)  # batch sizes built at warm-up (<= 1.5x pad)

# A block's reply from its converted samples, the block's wall and CPU seconds in the cycle
Finish = Callable[[np.ndarray, float, float], Any]


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
class _Job:
    """A session's block (``engine``, ``samples``, ``finish``) or control call (``fn``)."""

    future: Future[Any]
    engine: Any = None
    samples: np.ndarray | None = None
    finish: Finish | None = None
    fn: Callable[..., Any] | None = None
    args: tuple[Any, ...] = ()
    queued: float = field(default_factory=time.monotonic)  # seconds (monotonic clock)
    # in the cycle: the engine's model-rate sample count and channel shape, times, error
    n24: int = 0
    squeeze: bool = True
    cpu_s: float = 0.0
    error: BaseException | None = None

    @property
    def is_block(self) -> bool:
        return self.fn is None


@dataclass
class BatchStats:
    """What the scheduler did: steps, rows (real and padding), step times (seconds) and the CPU
    time of its thread in steps and in the sessions' front ends."""

    steps: int = 0
    rows: int = 0
    padded_rows: int = 0
    cycles: int = 0
    cpu_s: float = 0.0  # the steps (gather, step, scatter; intra-op helper threads excluded)
    frontend_cpu_s: float = 0.0  # the sessions' front ends and replies
    busy_s: float = 0.0  # wall time in cycles (the rest: the thread waited for jobs)
    step_s: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=2048))

    def summary(self) -> dict[str, Any]:
        """JSON-ready: step and cycle counts, padded rows and CPU seconds so far; over the latest
        2048 steps the mean batch (streams per step) and the step time p50/p99 (ms)."""
        recent = list(self.step_s)  # (rows, seconds); one C-level copy
        ms = np.asarray([s for _, s in recent] or [0.0]) * 1000.0
        return {
            "steps": self.steps,
            "cycles": self.cycles,
            "batch_mean": float(np.mean([n for n, _ in recent])) if recent else 0.0,
            "padded_rows": self.padded_rows,
            "cpu_s": self.cpu_s,
            "frontend_cpu_s": self.frontend_cpu_s,
            "busy_s": self.busy_s,
            "step_ms_p50": float(np.percentile(ms, 50)),
            "step_ms_p99": float(np.percentile(ms, 99)),
        }


class BatchScheduler:
    """The shared model step, the sessions' state rows and the thread that runs their blocks
    (see the module docstring).

    ``step``: runs any batch and block size (e.g. the eager chain); ``buckets``: batch size ->
    a step for blocks of exactly ``frames`` frames of that many streams; ``capacity``: initial
    state rows (the table doubles when more sessions join); ``wait_ms``: how long a block may
    wait for other sessions' blocks before a cycle starts without them (0: at once). The step
    runs on the process's torch intra-op threads (``torch.set_num_threads`` is process-wide:
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
        self._kept_rows: dict[tuple[int, int], tuple[list[Tensor], StreamState]] = {}
        self._slot_states: dict[int, StreamState] = {}  # views of the table, per slot
        self._grow(max(1, capacity))
        self._table_lock = threading.Lock()  # the table: a step, a reset or growth at a time
        self._cond = threading.Condition()
        self._jobs: deque[_Job] = deque()
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

    def release(self, slot: int) -> Future[Any]:
        """The session of ``slot`` left: the slot is free once the jobs queued before are done
        (at once from the scheduler's thread or once it has stopped). The returned future is
        done when it is."""
        if threading.current_thread() is self._thread or self._stopped:
            self._free_slot(slot)
            done: Future[Any] = Future()
            done.set_result(None)
            return done
        return self.call(self._free_slot, slot)

    def reset(self, slot: int) -> StreamState:
        """``slot``'s state back to the beginning; its rows as a state of one stream (views of
        the table, live until the table grows)."""
        with self._table_lock:
            self._reset(slot)
            return rebuild_state(self._template, [t[slot : slot + 1] for t in self._table])

    def run(self, slot: int, inputs: dict[str, Tensor]) -> Tensor:
        """One block ``(1, k)`` of ``slot``'s session through the step now, in the calling
        thread (outside the cycles: a flush, a warm-up): its output ``(1, k * hop)``."""
        return self._step_blocks([(slot, inputs)])[0]

    # -- jobs ------------------------------------------------------------------------------------
    def convert(self, engine: Any, samples: np.ndarray, finish: Finish | None = None) -> Future:
        """Queue one pushed block of a session: ``engine`` (a
        :class:`~comostream.realtime.engine.StreamingConverter` on a :class:`SlotStep`) converts
        ``samples`` in the next cycle; the future's result is ``finish(converted samples, wall
        seconds, CPU seconds)`` (the samples themselves without ``finish``). Queue a session's
        next job once the future is done (a second job of one engine waits a cycle)."""
        return self._submit(_Job(Future(), engine=engine, samples=samples, finish=finish))

    def call(self, fn: Callable[..., Any], *args: Any, engine: Any = None) -> Future[Any]:
        """Queue ``fn(*args)`` for the scheduler's thread (a session's control: ``engine``, to
        keep its order with that engine's blocks); the future holds its result."""
        return self._submit(_Job(Future(), engine=engine, fn=fn, args=args))

    def _submit(self, job: _Job) -> Future[Any]:
        with self._cond:
            if self._stopped:
                raise RuntimeError("the batch scheduler has stopped")
            self._jobs.append(job)
            self._cond.notify()
        return job.future

    def close(self) -> None:
        """Stop the scheduler's thread; jobs still pending fail."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(10.0)

    # -- the scheduler's thread ------------------------------------------------------------------
    def _loop(self) -> None:
        jobs: list[_Job] = []
        try:
            while True:
                with self._cond:
                    while not self._stopped and not self._due():
                        self._cond.wait(self._until_due())
                    if self._stopped:
                        self._fail_pending(RuntimeError("the batch scheduler stopped"))
                        return
                    jobs = self._take()
                self._cycle(jobs)
                jobs = []
        except BaseException as exc:  # a bug here must not leave sessions waiting forever
            log.exception("the batch scheduler failed")
            error = RuntimeError(f"the batch scheduler failed: {exc}")
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(error)
            with self._cond:
                self._stopped = True
                self._fail_pending(error)

    def _fail_pending(self, error: BaseException) -> None:
        """Every pending job fails with ``error``. Called with ``_cond`` held."""
        for job in self._jobs:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(error)
        self._jobs.clear()

    def _due(self) -> bool:
        """Whether to start a cycle: a job is pending and either no wait is set, a control call
        is pending, every session in use has a block pending, or the oldest has waited
        ``wait_s``. Called with ``_cond`` held."""
        if not self._jobs:
            return False
        if self.wait_s <= 0.0 or any(not j.is_block for j in self._jobs):
            return True
        if len(self._jobs) >= max(1, self.capacity - len(self._free)):
            return True
        return time.monotonic() >= self._jobs[0].queued + self.wait_s

    def _until_due(self) -> float | None:
        """Seconds until the oldest pending job has waited ``wait_s`` (None: none pending)."""
        if not self._jobs:
            return None
        return max(0.0, self._jobs[0].queued + self.wait_s - time.monotonic())

    def _take(self) -> list[_Job]:
        """The pending jobs in order, the first of each engine (its later ones wait for the
        next cycle, in order); cancelled ones left out. Called with ``_cond`` held."""
        taken: list[_Job] = []
        later: deque[_Job] = deque()
        engines: set[int] = set()
        for job in self._jobs:
            key = id(job.engine) if job.engine is not None else None
            if key is not None and key in engines:
                later.append(job)
            elif job.future.set_running_or_notify_cancel():
                taken.append(job)
                if key is not None:
                    engines.add(key)
        self._jobs = later
        return taken

    def _cycle(self, jobs: list[_Job]) -> None:
        """Control calls; every block's front end; their model blocks stepped together, one per
        session per step; every block's output and reply."""
        t0, cpu0, step_cpu0 = time.perf_counter(), time.thread_time(), self.stats.cpu_s
        blocks: list[_Job] = []
        for job in jobs:
            if not job.is_block:
                assert job.fn is not None
                try:
                    job.future.set_result(job.fn(*job.args))
                except BaseException as exc:  # noqa: BLE001 - the caller gets it
                    job.future.set_exception(exc)
                continue
            c = time.thread_time()
            engine = job.engine
            try:
                engine.defer_blocks = True  # its complete model blocks queue up for the step
                try:
                    job.n24, job.squeeze = engine.ingest(job.samples)
                finally:
                    engine.defer_blocks = False
                blocks.append(job)
            except Exception as exc:  # noqa: BLE001 - the caller gets it
                engine.queued.clear()
                job.future.set_exception(exc)
            job.cpu_s += time.thread_time() - c
        while True:
            ready = [j for j in blocks if j.error is None and j.engine.queued]
            for j in ready:
                if j.engine.step_module.slot is None:  # left meanwhile: not in the others' step
                    j.error, j.engine.queued[:] = RuntimeError("the session's step is closed"), []
            ready = [j for j in ready if j.error is None]
            if not ready:
                break
            items = [(j.engine.step_module.slot, j.engine.queued.pop(0)) for j in ready]
            try:
                outputs = self._step_blocks(items)
            except Exception as exc:  # noqa: BLE001 - every session of the step gets it
                for j in ready:
                    j.error, j.engine.queued[:] = exc, []
                continue
            for j, y in zip(ready, outputs, strict=True):
                c = time.thread_time()
                j.engine.accept(y)
                j.cpu_s += time.thread_time() - c
        for job in blocks:
            if job.error is not None:
                err = RuntimeError(f"batched model step failed: {job.error}")
                job.future.set_exception(err)
                continue
            c = time.thread_time()
            try:
                out = job.engine.deliver(job.n24, job.squeeze)
                if job.finish is None:
                    job.future.set_result(out)
                    continue
                job.cpu_s += time.thread_time() - c
                job.future.set_result(job.finish(out, time.perf_counter() - t0, job.cpu_s))
            except Exception as exc:  # noqa: BLE001 - the caller gets it
                job.future.set_exception(exc)
        self.stats.cycles += 1
        self.stats.busy_s += time.perf_counter() - t0
        step_cpu = self.stats.cpu_s - step_cpu0
        self.stats.frontend_cpu_s += time.thread_time() - cpu0 - step_cpu

    # -- the step --------------------------------------------------------------------------------
    def _step_blocks(self, items: list[tuple[int | None, dict[str, Tensor]]]) -> list[Tensor]:
        """Blocks ``(slot, inputs)`` of distinct slots through the step: those of the buckets'
        ``frames`` padded to a bucket (several steps beyond the largest), others at their exact
        size, grouped by frames. Their outputs ``(1, k * hop)`` in order."""
        if any(slot is None for slot, _ in items):
            raise RuntimeError("a session's step is closed")
        out: list[Tensor | None] = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for i, (_, inputs) in enumerate(items):
            groups.setdefault(int(inputs["f0"].shape[-1]), []).append(i)
        cpu0 = time.thread_time()
        try:
            for frames, idx in groups.items():
                if self.buckets and frames == self.frames:
                    largest = max(self.buckets)
                    for k in range(0, len(idx), largest):
                        part = idx[k : k + largest]
                        size = next(s for s in self.buckets if s >= len(part))
                        ys = self._run(self.buckets[size], size, [items[i] for i in part])
                        for i, y in zip(part, ys, strict=True):
                            out[i] = y
                else:
                    ys = self._run(self.step_module, len(idx), [items[i] for i in idx])
                    for i, y in zip(idx, ys, strict=True):
                        out[i] = y
        finally:
            self.stats.cpu_s += time.thread_time() - cpu0
        return out  # type: ignore[return-value]

    def _run(
        self, step: Any, size: int, items: list[tuple[Any, dict[str, Tensor]]]
    ) -> list[Tensor]:
        """One step of ``items`` padded to ``size`` rows (copies of the first). Consecutive
        slots with no padding (one session alone, say) step on views of the table, in place (a
        step that binds its buffers: one slot alone, on a state object kept per slot); others
        on gathered copies, written back."""
        n = len(items)
        t0 = time.perf_counter()
        with torch.inference_mode():
            slots = [s for s, _ in items] + [items[0][0]] * (size - n)
            if n == 1 and size == 1:
                inputs = items[0][1]
            else:
                inputs = {
                    k: torch.cat([x[k] for _, x in items] + [items[0][1][k]] * (size - n))
                    for k in items[0][1]
                }
            first = slots[0]
            consecutive = size == n and slots == list(range(first, first + n))
            views = getattr(step, "steps_views", True)
            # a step that binds its buffers (ONNX Runtime) steps a lone slot's rows in place too:
            # the slot's state object is kept, so it binds them once
            in_place = consecutive and (views or n == 1)
            index = None if in_place else torch.tensor(slots, dtype=torch.long)
            with self._table_lock:
                if index is None and views:
                    rows = [t[first : first + n] for t in self._table]
                    state = rebuild_state(self._template, rows)
                elif index is None:
                    state = self._slot_state(first)
                else:  # gathered into the step's own rows (kept: no allocation per step)
                    rows, state = self._rows(step, size)
                    for t, r in zip(self._table, rows, strict=True):
                        torch.index_select(t, 0, index, out=r)
                y = step.step(inputs, state)
                if index is not None:  # gathered copies: the real rows written back
                    for t, r in zip(self._table, rows, strict=True):
                        t.index_copy_(0, index[:n], r[:n])
        self.stats.steps += 1
        self.stats.rows += n
        self.stats.padded_rows += size - n
        self.stats.step_s.append((n, time.perf_counter() - t0))
        return [y[i : i + 1] for i in range(n)]

    def _slot_state(self, slot: int) -> StreamState:
        """``slot``'s rows of the table as a state of one stream, the same object every time
        (until the table grows): a step that binds its buffers binds them once per slot."""
        kept = self._slot_states.get(slot)
        if kept is None:
            rows = [t[slot : slot + 1] for t in self._table]
            kept = self._slot_states[slot] = rebuild_state(self._template, rows)
        return kept

    def _rows(self, step: Any, size: int) -> tuple[list[Tensor], StreamState]:
        """State rows of ``size`` streams kept for ``step`` (gathered into before each of its
        steps), and the state over them: the same objects every time, so a step that binds its
        buffers once (ONNX Runtime's IO binding) keeps them."""
        key = (id(step), size)
        kept = self._kept_rows.get(key)
        if kept is None:
            rows = [f.new_empty((size, *f.shape[1:])) for f in self._fresh]
            kept = self._kept_rows[key] = (rows, rebuild_state(self._template, rows))
        return kept

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
        self._slot_states.clear()  # views of the former table
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
    :class:`~comostream.realtime.engine.StreamingConverter`. In the scheduler's cycles the engine
    queues its blocks and the scheduler steps them with other sessions'; a block stepped
    directly (:meth:`step`: a flush, a warm-up) runs at once. :meth:`close` when the session
    ends."""

    def __init__(self, scheduler: BatchScheduler) -> None:
        self.scheduler = scheduler
        inner = scheduler.step_module
        self.lookahead_frames = int(inner.lookahead_frames)
        self.hop_length = int(inner.hop_length)
        self.speaker_dim = int(getattr(inner, "speaker_dim", 0))
        self.profile: dict[str, float] | None = None  # per-stage times are not available
        self.slot: int | None = scheduler.acquire()

    def parameters(self) -> Iterator[Any]:
        return iter(self.scheduler.step_module.parameters())

    def init_state(self, streams: int, device: Any = None, dtype: Any = None) -> StreamState:
        """The slot's state, fresh (``streams`` must be 1)."""
        if streams != 1 or self.slot is None:
            raise ValueError("a session's step has one stream (and must not be closed)")
        return self.scheduler.reset(self.slot)

    def step(self, inputs: dict[str, Tensor], state: StreamState) -> Tensor:
        """One block ``(1, k)`` inputs -> ``(1, k * hop)`` output, through the shared step now
        (``state`` is the slot's own, kept by the scheduler)."""
        if self.slot is None:
            raise RuntimeError("this session's step is closed")
        return self.scheduler.run(self.slot, inputs)

    def close(self) -> Future[Any] | None:
        """Give the slot back (once; after the jobs already queued). The future of the release
        (None if it was closed before)."""
        slot, self.slot = self.slot, None
        return None if slot is None else self.scheduler.release(slot)
