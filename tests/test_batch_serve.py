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

from helpers import sung

pytestmark = pytest.mark.usefixtures("one_thread")
RT = RealtimeConfig(block_frames=2)


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


def test_scheduler_batches_pending_blocks_pads_to_a_bucket_and_keeps_each_state() -> None:
    step, bucket = _Accumulate(), _Accumulate()
    sched = BatchScheduler(step, buckets={1: bucket, 2: bucket, 4: bucket}, frames=2, capacity=2)
    try:
        slots = [sched.acquire() for _ in range(4)]  # the table grows from 2 rows
        assert sched.capacity >= 4 and len(set(slots)) == 4
        outs: dict[int, list[float]] = {s: [] for s in slots}

        def run(slot: int, value: float) -> None:
            outs[slot].append(float(sched.run(slot, _block(value))[0, -1]))

        deadline = time.monotonic() + 10.0
        with sched._table_lock:  # hold the step: the first block waits, three more queue up
            first = threading.Thread(target=run, args=(slots[0], 1.0))
            first.start()
            while (slots[0] not in sched._busy or sched._pending) and time.monotonic() < deadline:
                time.sleep(0.001)  # taken by the scheduler, which now waits for the lock
            rest = [
                threading.Thread(target=run, args=(s, 10.0 * (i + 1)))
                for i, s in enumerate(slots[1:])
            ]
            for t in rest:
                t.start()
            while len(sched._pending) < 3 and time.monotonic() < deadline:
                time.sleep(0.001)
        for t in [first, *rest]:
            t.join(10.0)
        assert bucket.sizes == [1, 4]  # one alone, then three together padded to four
        assert sched.stats.padded_rows == 1 and sched.stats.rows == 4
        assert [outs[s] for s in slots] == [[2.0], [20.0], [40.0], [60.0]]
        # the padding row (a copy of the first) changed no state
        assert float(sched.run(slots[1], _block(0.0))[0, -1]) == 20.0
        # a block of another length runs on the eager step at its exact size
        assert float(sched.run(slots[0], _block(1.0, frames=3))[0, -1]) == 5.0
        assert step.sizes == [1]
        # a slot given back and taken again starts fresh
        sched.release(slots[2])
        again = sched.acquire()
        assert again == slots[2] and float(sched.run(again, _block(5.0))[0, -1]) == 10.0
        # a session leaving with a block in the step: its slot is free only after that step
        with sched._table_lock:
            late = threading.Thread(target=run, args=(slots[3], 1.0))
            late.start()
            while slots[3] not in sched._busy and time.monotonic() < deadline + 10.0:
                time.sleep(0.001)
            sched.release(slots[3])
            assert slots[3] not in sched._free
        late.join(10.0)
        assert outs[slots[3]] == [60.0, 62.0] and slots[3] in sched._free
    finally:
        sched.close()
    with pytest.raises(RuntimeError, match="stopped"):
        sched.run(slots[1], _block(1.0))


def test_a_block_waits_a_little_for_the_other_sessions_blocks() -> None:
    bucket = _Accumulate()
    sched = BatchScheduler(_Accumulate(), buckets={1: bucket, 2: bucket}, frames=2, wait_ms=300.0)
    try:
        a = sched.acquire()
        t0 = time.monotonic()
        sched.run(a, _block(1.0))  # the only session: no one to wait for
        assert time.monotonic() - t0 < 0.25 and bucket.sizes == [1]
        b = sched.acquire()
        first = threading.Thread(target=sched.run, args=(a, _block(1.0)))
        first.start()
        time.sleep(0.02)
        sched.run(b, _block(1.0))  # due at once: every session in use has a block pending
        first.join(5.0)
        assert bucket.sizes == [1, 2]  # the two went together
        t0 = time.monotonic()
        sched.run(a, _block(1.0))  # b sends nothing: a goes alone after the wait
        assert 0.25 < time.monotonic() - t0 < 3.0 and bucket.sizes == [1, 2, 1]
    finally:
        sched.close()


def test_a_failing_step_fails_its_sessions_not_the_scheduler() -> None:
    class Broken(_Accumulate):
        def step(self, inputs: dict[str, Tensor], state: dict[str, Tensor]) -> Tensor:
            if float(inputs["f0"][0, 0]) < 0:
                raise ValueError("bad block")
            return super().step(inputs, state)

    sched = BatchScheduler(Broken(), frames=2)
    try:
        slot = sched.acquire()
        with pytest.raises(RuntimeError, match="bad block"):
            sched.run(slot, _block(-1.0))
        assert float(sched.run(slot, _block(3.0))[0, -1]) == 6.0
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
    factory = EngineFactory(*models, RT, max_batch=4)
    factory.warm_up()
    sched = factory.scheduler
    assert sched is not None and sorted(sched.buckets) == [1, 2, 3, 4]
    signals = [_signal(sr, 0.45 if i != 1 else 0.25, i) for i, (sr, *_) in enumerate(CASES)]
    outputs: dict[int, np.ndarray] = {}
    slots: dict[int, int] = {}
    progress = [threading.Event() for _ in CASES]  # set once a session is a few blocks in

    def session(i: int, wait_for: threading.Event | None) -> None:
        if wait_for is not None:
            wait_for.wait(30.0)
        sr, spk, tr, block = CASES[i]
        hello = Hello(PROTOCOL_VERSION, sr, 1, "f32le", None, None, tr, None)
        engine = factory.create(hello, block, spk)
        step = engine.step_module
        assert isinstance(step, SlotStep)
        slots[i] = step.slot  # type: ignore[assignment]
        x, parts = signals[i], []
        x = np.concatenate([x, np.zeros(-len(x) % block, np.float32)])
        for k in range(len(x) // block):
            parts.append(engine.push(x[k * block : (k + 1) * block]))
            if k == 3:
                progress[i].set()
        parts.append(engine.flush())
        d = engine.delay_samples
        outputs[i] = np.concatenate(parts)[d : d + len(signals[i])]
        factory.release(engine)
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
    factory = EngineFactory(*models, RT, max_batch=4)
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
    factory = EngineFactory(*models, RT, max_batch=2)
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
