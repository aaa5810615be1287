"""Batched serving (``realtime/serve/batcher.py``): the due blocks of every session go through one
batched model step, and each session's output equals a separate engine's, with sessions joining
and leaving mid-stream; through the WebSocket server too, and overload still drops the oldest.

References are separate engines over the same tiny random-weight model
(:func:`comostream.realtime.engine.convert_array`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from comostream.models.config import RealtimeConfig
from comostream.realtime.engine import StreamingConverter, convert_array
from comostream.realtime.serve.batcher import BatchScheduler, SlotStep, bucket_sizes
from comostream.realtime.serve.client import StreamClient, stream_array
from comostream.realtime.serve.config import ServerConfig
from comostream.realtime.serve.engines import EngineFactory
from comostream.realtime.serve.protocol import FLAG_DROPPED, PROTOCOL_VERSION, Hello
from comostream.realtime.serve.server import ServerThread

from helpers import FLOAT_BACKEND, sung

pytestmark = pytest.mark.usefixtures("one_thread")
RT = RealtimeConfig(block_frames=2)
SERVE_RT = RealtimeConfig(block_frames=2, backend=FLOAT_BACKEND)  # held to torch engines


class _Accumulate:
    """A stand-in step: per stream, the running sum of its inputs (state ``acc (S, 1)``); the
    output repeats the sum once per frame. Records each call's batch size."""

    lookahead_frames, hop_length, speaker_dim = 0, 1, 0

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def init_state(self, streams: int) -> dict[str, Tensor]:
        return {"acc": torch.zeros(streams, 1, dtype=torch.float64)}

    def step(self, inputs: dict[str, Tensor], state: dict[str, Tensor]) -> Tensor:
        self.sizes.append(int(inputs["f0"].shape[0]))
        state["acc"] += inputs["f0"].sum(-1, keepdim=True)
        return state["acc"].expand_as(inputs["f0"]).clone()


def _block(value: float, frames: int = 2) -> dict[str, Tensor]:
    return {"f0": torch.full((1, frames), value, dtype=torch.float64)}


def test_bucket_sizes_cover_the_largest_batch() -> None:
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(5) == [1, 2, 3, 4, 6]
    assert bucket_sizes(16)[-1] == 16 and bucket_sizes(1000)[-1] == 64


class _FakeEngine:
    """An engine stand-in on a :class:`SlotStep`: a push of values queues one block per value
    (``frames`` frames of it); the outputs' last samples come back on delivery."""

    def __init__(self, sched: BatchScheduler, frames: int = 2) -> None:
        self.step_module = SlotStep(sched)
        self.frames, self.defer_blocks = frames, False
        self.queued: list[dict[str, Tensor]] = []
        self.outs: list[float] = []

    def ingest(self, samples: np.ndarray) -> tuple[int, bool]:
        assert self.defer_blocks
        if np.any(np.isnan(samples)):
            raise ValueError("not a number")
        self.queued += [_block(float(v), self.frames) for v in samples]
        return len(samples), True

    def accept(self, y: Tensor) -> None:
        self.outs.append(float(y[0, -1]))

    def deliver(self, n: int, squeeze: bool) -> list[float]:
        out, self.outs = self.outs, []
        return out


def _wait_until(cond: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_scheduler_batches_pending_blocks_pads_to_a_bucket_and_keeps_each_state() -> None:
    step, bucket = _Accumulate(), _Accumulate()
    sched = BatchScheduler(step, buckets={1: bucket, 2: bucket, 4: bucket}, frames=2, capacity=2)
    try:
        engines = [_FakeEngine(sched) for _ in range(4)]  # the table grows from 2 rows
        slots = [e.step_module.slot for e in engines]
        assert sched.capacity >= 4 and len(set(slots)) == 4
        with sched._table_lock:  # hold the step: the first block waits, three more queue up
            first = sched.convert(engines[0], np.array([1.0]))
            _wait_until(lambda: not sched._jobs)  # taken by the thread, which waits for the lock
            rest = [sched.convert(e, np.array([10.0 * (i + 1)])) for i, e in enumerate(engines[1:])]
        outs = [f.result(10.0) for f in [first, *rest]]
        assert bucket.sizes == [1, 4]  # one alone, then three together padded to four
        assert sched.stats.padded_rows == 1 and sched.stats.rows == 4
        assert outs == [[2.0], [20.0], [40.0], [60.0]]
        assert sched.stats.cycles == 2 and sched.stats.frontend_cpu_s > 0.0
        # the padding row (a copy of the first) changed no state; two blocks of one push go
        # in two steps, each with the other sessions' blocks of that cycle
        a, b = sched.convert(engines[1], np.array([0.0, 1.0])), sched.convert(engines[2], [1.0])
        assert a.result(10.0) == [20.0, 22.0] and b.result(10.0) == [42.0]
        # a block of another length runs on the eager step at its exact size, directly too
        assert float(sched.run(slots[0], _block(1.0, frames=3))[0, -1]) == 5.0
        odd = _FakeEngine(sched, frames=3)
        assert sched.convert(odd, np.array([1.0])).result(10.0) == [3.0]
        assert step.sizes == [1, 1]
        # a control call runs in the scheduler's thread, in order with the engine's blocks
        names = [sched.call(lambda: threading.current_thread().name, engine=e) for e in engines]
        assert {f.result(10.0) for f in names} == {"comostream-batcher"}
        # a slot given back and taken again starts fresh
        engines[2].step_module.close().result(10.0)
        again = _FakeEngine(sched)
        assert again.step_module.slot == slots[2]
        assert sched.convert(again, np.array([5.0])).result(10.0) == [10.0]
        # a session leaving with a block queued: the block fails alone (not the others in its
        # step) and the slot is free only after it
        with sched._table_lock:
            busy = sched.convert(engines[0], np.array([1.0]))
            _wait_until(lambda: not sched._jobs)
            late = sched.convert(engines[3], np.array([1.0]))
            other = sched.convert(engines[1], np.array([1.0]))
            freed = engines[3].step_module.close()
            assert slots[3] not in sched._free
        assert busy.result(10.0) == [7.0] and other.result(10.0) == [24.0]
        with pytest.raises(RuntimeError, match="closed"):
            late.result(10.0)
        freed.result(10.0)
        assert slots[3] in sched._free
    finally:
        sched.close()
    with pytest.raises(RuntimeError, match="stopped"):
        sched.convert(engines[1], np.array([1.0]))


class _Binding(_Accumulate):
    """A step that binds its state buffers (as ONNX Runtime's IO binding does): it must get the
    same state object for a batch size every time (one slot alone: that slot's own object)."""

    steps_views = False

    def __init__(self) -> None:
        super().__init__()
        self.states: dict[int, set[int]] = {}
        self.ptrs: dict[int, set[int]] = {}  # batch size -> where its ``acc`` rows were
        self._seen: list[dict[str, Tensor]] = []  # kept alive: a freed object's id is reused

    def step(self, inputs: dict[str, Tensor], state: dict[str, Tensor]) -> Tensor:
        n = int(inputs["f0"].shape[0])
        self._seen.append(state)
        self.states.setdefault(n, set()).add(id(state))
        self.ptrs.setdefault(n, set()).add(state["acc"].data_ptr())
        return super().step(inputs, state)


def test_a_step_that_binds_its_buffers_gets_the_same_rows_and_the_state_is_kept() -> None:
    bucket = _Binding()
    sched = BatchScheduler(_Accumulate(), buckets={1: bucket, 2: bucket}, frames=2, capacity=2)
    try:
        a, b = _FakeEngine(sched), _FakeEngine(sched)
        for k in range(1, 4):  # alone (one row), then both together (two rows), in turn
            before = (k - 1.0) * k + 2.0 * (k - 1)  # a's sum so far (each value counts twice)
            assert sched.convert(a, np.array([float(k)])).result(10.0) == [before + 2.0 * k]
            with sched._table_lock:
                fa = sched.convert(a, np.array([1.0]))
                fb = sched.convert(b, np.array([2.0]))
                _wait_until(lambda: not sched._jobs)
            assert fa.result(10.0) == [before + 2.0 * k + 2.0] and fb.result(10.0) == [4.0 * k]
        assert bucket.sizes == [1, 2] * 3
        assert {size: len(ids) for size, ids in bucket.states.items()} == {1: 1, 2: 1}
        # alone, a's own rows of the table, in place; together, gathered rows of the step's own
        table = sched._table[0]
        slot = a.step_module.slot
        assert bucket.ptrs[1] == {table[slot].data_ptr()}
        start, end = table.data_ptr(), table.data_ptr() + table.numel() * table.element_size()
        assert not any(start <= p < end for p in bucket.ptrs[2])
        # the table grows (a third session): a's rows move, its sum stays, its state object is new
        c = _FakeEngine(sched)
        assert sched.capacity == 4
        assert sched.convert(a, np.array([1.0])).result(10.0) == [18.0 + 2.0]  # a: 18 so far
        assert len(bucket.states[1]) == 2 and sched._table[0][slot].data_ptr() in bucket.ptrs[1]
        c.step_module.close()
    finally:
        sched.close()


def test_a_block_waits_a_little_for_the_other_sessions_blocks() -> None:
    bucket = _Accumulate()
    sched = BatchScheduler(_Accumulate(), buckets={1: bucket, 2: bucket}, frames=2, wait_ms=300.0)
    try:
        a = _FakeEngine(sched)
        t0 = time.monotonic()
        sched.convert(a, np.array([1.0])).result(10.0)  # the only session: no one to wait for
        assert time.monotonic() - t0 < 0.25 and bucket.sizes == [1]
        b = _FakeEngine(sched)
        first = sched.convert(a, np.array([1.0]))
        time.sleep(0.02)
        sched.convert(b, np.array([1.0])).result(10.0)  # due: every session has a block pending
        first.result(10.0)
        assert bucket.sizes == [1, 2]  # the two went together
        t0 = time.monotonic()
        sched.convert(a, np.array([1.0])).result(
            10.0
        )  # b sends nothing: a goes alone after the wait
        assert 0.25 < time.monotonic() - t0 < 3.0 and bucket.sizes == [1, 2, 1]
    finally:
        sched.close()


def test_a_failing_step_or_front_end_fails_its_sessions_not_the_scheduler() -> None:
    class Broken(_Accumulate):
        def step(self, inputs: dict[str, Tensor], state: dict[str, Tensor]) -> Tensor:
            if float(inputs["f0"][0, 0]) < 0:
                raise ValueError("bad block")
            return super().step(inputs, state)

    sched = BatchScheduler(Broken(), frames=2)
    try:
        engine, other = _FakeEngine(sched), _FakeEngine(sched)
        with pytest.raises(RuntimeError, match="bad block"):
            sched.convert(engine, np.array([-1.0])).result(10.0)
        with pytest.raises(ValueError, match="not a number"):
            sched.convert(engine, np.array([np.nan])).result(10.0)
        with pytest.raises(ZeroDivisionError):
            sched.call(lambda: 1 / 0).result(10.0)
        assert sched.convert(engine, np.array([3.0])).result(10.0) == [6.0]
        assert sched.convert(other, np.array([1.0])).result(10.0) == [2.0]
    finally:
        sched.close()


def _signal(sr: int, seconds: float, seed: int) -> np.ndarray:
    """:func:`helpers.sung`, shifted and scaled per session (not all the same note)."""
    x = sung(sr, seconds)
    return (np.roll(x, 997 * seed) * (1.0 - 0.15 * seed)).astype(np.float32)


def _reference_engine(models: Any, sr: int, spk: Any, tr: float, block: int) -> StreamingConverter:
    """A separate engine of its own (eager: no tracing time; traced equals eager)."""
    return StreamingConverter.from_models(
        *models, speaker=spk, transpose=tr, sample_rate=sr, realtime=RT, chunk=block, trace=False
    )


CASES = [  # (rate, singer, transposition, block samples)
    (48000, "alto", 0.0, 1024),
    (24000, "bass", 3.0, 512),
    (44100, {"alto": 0.5, "tenor": 0.5}, -5.0, 700),  # not the model's block: queued as whole
    (16000, "tenor", 0.0, 2048),  # two model blocks per push
]


def test_batched_sessions_joining_and_leaving_equal_separate_engines(models: Any) -> None:
    """Four sessions through one scheduler: two start together, a third joins mid-stream, one
    leaves early and a fourth takes its slot (fresh state); each equals its own engine."""
    factory = EngineFactory(*models, SERVE_RT, max_batch=4)
    factory.warm_up()
    sched = factory.scheduler
    assert sched is not None and sorted(sched.buckets) == [1, 2, 3, 4]
    signals = [_signal(sr, 0.45 if i != 1 else 0.25, i) for i, (sr, *_) in enumerate(CASES)]
    outputs: dict[int, np.ndarray] = {}
    slots: dict[int, int] = {}
    progress = [threading.Event() for _ in CASES]  # set once a session is a few blocks in

    def session(i: int, wait_for: threading.Event | None) -> None:
        """As the server runs a session: every engine call in the scheduler's thread."""
        if wait_for is not None:
            wait_for.wait(30.0)
        sr, spk, tr, block = CASES[i]
        hello = Hello(PROTOCOL_VERSION, sr, 1, "f32le", None, None, tr, None)
        engine = sched.call(factory.create, hello, block, spk).result(30.0)
        step = engine.step_module
        assert isinstance(step, SlotStep)
        slots[i] = step.slot  # type: ignore[assignment]
        x, parts = signals[i], []
        x = np.concatenate([x, np.zeros(-len(x) % block, np.float32)])
        for k in range(len(x) // block):
            parts.append(sched.convert(engine, x[k * block : (k + 1) * block]).result(30.0))
            if k == 3:
                progress[i].set()
        parts.append(sched.call(engine.flush, engine=engine).result(30.0))
        d = engine.delay_samples
        outputs[i] = np.concatenate(parts)[d : d + len(signals[i])]
        done = factory.release(engine)
        assert done is not None
        done.result(30.0)
        progress[i].set()

    left = threading.Event()  # session 1 (the short one) has left
    threads = [
        threading.Thread(target=session, args=(0, None)),
        threading.Thread(target=session, args=(1, None)),
        threading.Thread(target=session, args=(2, progress[0])),  # joins mid-stream
        threading.Thread(target=session, args=(3, left)),  # takes the slot session 1 left
    ]
    for t in threads[:3]:
        t.start()
    threads[1].join(60.0)
    left.set()
    threads[3].start()
    for t in threads:
        t.join(60.0)
    assert slots[3] == slots[1]  # the lowest free slot: the one session 1 left
    assert sched.stats.rows > sched.stats.steps  # blocks of several sessions went together
    for i, (sr, spk, tr, block) in enumerate(CASES):
        engine = _reference_engine(models, sr, spk, tr, block)
        ref = convert_array(engine, signals[i])
        assert np.abs(ref).max() > 1e-3
        assert outputs[i].shape == ref.shape
        assert np.abs(outputs[i] - ref).max() <= 1e-4 * np.abs(ref).max(), f"session {i}"
    assert sched.sessions == 0  # every slot given back


def test_batched_server_output_equals_per_session_engines(models: Any) -> None:
    """Four concurrent WebSocket clients (rates, singers, transpositions, blocks) on a batched
    server get what separate engines give; the scheduler did batch them."""
    factory = EngineFactory(*models, SERVE_RT, max_batch=4)
    config = ServerConfig(port=0, max_streams=4, max_queue_ms=3000.0)
    signals = [_signal(sr, 0.35, i) for i, (sr, *_) in enumerate(CASES)]
    with ServerThread(factory, config) as st:

        async def run_all() -> list[Any]:
            return await asyncio.gather(
                *(
                    stream_array(st.url, x, sr, fast=True, speaker=spk, transpose=tr, block=b)
                    for x, (sr, spk, tr, b) in zip(signals, CASES, strict=True)
                )
            )

        results = asyncio.run(run_all())
        # every session's engine ran in the scheduler's thread: no thread of a session's own
        names = {t.name for t in threading.enumerate() if t.name.startswith("comostream-")}
        assert names == {"comostream-batcher", "comostream-server"}, names
    sched = factory.scheduler
    assert sched is not None and sched.stats.rows > sched.stats.steps
    for x, r, (sr, spk, tr, block) in zip(signals, results, CASES, strict=True):
        assert r.dropped_samples == 0
        assert r.stats["batch"]["steps"] > 0
        engine = _reference_engine(models, sr, spk, tr, block)
        ref = convert_array(engine, x)
        assert r.output.shape == x.shape
        assert np.abs(r.output - ref).max() <= 1e-4 * np.abs(ref).max(), f"{sr} Hz {spk}"


def test_overloaded_batched_server_drops_oldest_and_keeps_the_timeline(models: Any) -> None:
    """The batched step stalls for 0.4 s while a client streams at 3x real time: the session's
    input queue drops its oldest blocks (DROPPED replies, silence), every block is answered in
    order, and the stream goes on afterwards."""
    factory = EngineFactory(*models, SERVE_RT, max_batch=2)
    config = ServerConfig(port=0, max_queue_ms=60.0)
    block, sr = 1024, 48000
    with ServerThread(factory, config) as st:

        async def run() -> tuple[list[Any], dict[str, Any]]:
            client = await StreamClient.connect(st.url, sample_rate=sr)
            sched = factory.scheduler
            assert sched is not None
            replies: list[Any] = []
            x = 0.1 * np.ones(block, np.float32)
            try:
                for k in range(40):
                    if k == 5:
                        sched._table_lock.acquire()  # the step stalls...
                    if k == 25:
                        sched._table_lock.release()  # ...and recovers
                    await client.send_block(k, x)
                    await asyncio.sleep(block / sr / 3)
                while sum(r.count for r in replies) < 40 * block:  # gaps merge blocks
                    reply = await asyncio.wait_for(client.recv(), 10.0)
                    if not isinstance(reply, dict):
                        replies.append(reply)
                stats = await _stats(client)
            finally:
                await client.close()
            return replies, stats

        replies, stats = asyncio.run(run())
    seqs = [r.seq for r in replies]
    dropped = [r for r in replies if r.flags & FLAG_DROPPED]
    assert seqs == sorted(seqs) and seqs[-1] == 39  # in order, up to the last block
    assert dropped and stats["dropped_in_blocks"] > 0
    assert sum(r.count for r in replies) == 40 * block  # the timeline never moves
    assert len(replies) < 40  # dropped blocks in a row come back as one merged gap
    assert not replies[-1].flags & FLAG_DROPPED  # converting again after the stall


async def _stats(client: StreamClient) -> dict[str, Any]:
    await client.control("stats")
    while True:
        msg = await client.recv()
        if isinstance(msg, dict) and msg.get("type") == "stats":
            return msg


def test_a_broken_scheduler_fails_its_jobs_instead_of_hanging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sched = BatchScheduler(_Accumulate(), frames=2)
    try:
        engine = _FakeEngine(sched)

        def broken(jobs: list[Any]) -> None:
            raise AssertionError("a bug in the cycle")

        monkeypatch.setattr(sched, "_cycle", broken)
        with pytest.raises(RuntimeError, match="scheduler failed: a bug in the cycle"):
            sched.convert(engine, np.array([1.0])).result(10.0)
        with pytest.raises(RuntimeError, match="stopped"):
            sched.convert(engine, np.array([1.0]))
    finally:
        sched.close()


def test_the_batched_step_and_batched_converter_draw_the_configured_noise_scale(
    models: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``[realtime] noise_scale`` reaches the chain of serve's batched step and of
    :class:`BatchedConverter`, not only an engine's own (test_engine_models)."""
    import comostream.realtime.batch as batch_mod
    import comostream.realtime.serve.engines as engines_mod
    from comostream.models.chain import ConversionChain

    seen: list[float] = []

    class Spy(ConversionChain):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            seen.append(self.noise_scale)

    monkeypatch.setattr(engines_mod, "ConversionChain", Spy)
    monkeypatch.setattr(batch_mod, "ConversionChain", Spy)
    rt = RealtimeConfig(block_frames=2, backend=FLOAT_BACKEND, noise_scale=0.25)
    EngineFactory(*models, rt, max_batch=2).warm_up()
    batch_mod.BatchedConverter(*models, [None, None], realtime=rt)
    assert seen == [0.25, 0.25]
