"""The engines of ``comostream serve``'s sessions: one :class:`EngineFactory` over the shared
models. The traced model step is built once and shared; its state is per engine. Batched (the
default), every engine's blocks go through one :class:`~comostream.realtime.serve.batcher.
BatchScheduler`, whose thread runs the sessions' front ends and their due blocks in one step."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import threading
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch

from comostream.models.chain import ConversionChain
from comostream.models.conditioner import SpeakerSpec, UnknownSpeakerError, resolve_speaker
from comostream.models.config import ONNX_BACKENDS, F0Config, RealtimeConfig
from comostream.models.limits import DEFAULT_INDEX_RATE, check_index_rate
from comostream.realtime.engine import StreamingConverter
from comostream.realtime.geometry import StreamGeometry
from comostream.realtime.onnx_int8 import int8_kernels_problem
from comostream.realtime.serve.batcher import BatchScheduler, SlotStep, bucket_sizes
from comostream.realtime.serve.protocol import PROTOCOL_VERSION, Hello, ProtocolError
from comostream.realtime.traced import TracedStep, standalone_problem

__all__ = ["BATCH_WAIT", "EngineFactory", "batched_backend"]

log = logging.getLogger("comostream.server")

# A block waits at most this share of a block for other sessions' blocks before the batched step
# starts without them. Steps have a fixed cost each, so fewer, fuller steps save CPU below
# saturation (at saturation batches fill anyway), at the price of round trip: 0, none, by default.
BATCH_WAIT = 0.0


def batched_backend(rt: RealtimeConfig, chain: ConversionChain) -> tuple[str, str]:
    """What runs the batched server's steps of ``chain``, and why: ``rt.backend``, or for
    ``auto`` ONNX Runtime with 8-bit weights when it is installed, ``chain`` exports (the
    built-in vocoder and content encoder, float32 on the CPU) and the CPU has int8 kernels
    (x86-64 with AVX2, ARM64); the float ONNX Runtime step without those kernels; else torch.
    The 8-bit step held more real-time streams than the float one in ``bench serve`` on a 2-core
    AMD EPYC (20 against 16, round trip p99 at 16 streams 9-11 against 16-21 ms;
    docs/streaming.md), the float one more than torch, for an export of about 3 s at start-up."""
    if rt.backend != "auto":
        return rt.backend, "[realtime] backend"
    if importlib.util.find_spec("onnxruntime") is None:
        return "torch", "auto: onnxruntime is not installed (the onnx extra)"
    why = standalone_problem(chain, "onnxruntime")
    if why is not None:
        return "torch", f"auto: {why.rsplit(': ', 1)[0]}"  # the reason, not the advice
    no_int8 = int8_kernels_problem()
    if no_int8 is not None:
        return "onnxruntime", f"auto: onnxruntime is installed; {no_int8}"
    return "onnxruntime-int8", "auto: onnxruntime is installed, with int8 kernels for this CPU"


class EngineFactory:
    """Engines over one loaded acoustic model + vocoder; the (traced) step is built by the first
    engine and shared by the later ones (its state is per engine). ``registers``: singer ->
    median F0 in Hz (the voice prints' ``f0_median``), shown by ``GET /singers``.

    ``batch``: run every session's blocks through one :class:`BatchScheduler` (built at
    :meth:`warm_up`), with traced batch sizes up to ``max_batch`` streams per step, a block
    waiting at most ``batch_wait_ms`` for other sessions' blocks (None: :data:`BATCH_WAIT` of
    the block); off: each engine runs the shared step itself, in its session's thread.
    Batched, the server runs the engines' work in the scheduler's thread
    (:meth:`BatchScheduler.convert`, :meth:`BatchScheduler.call`)."""

    def __init__(
        self,
        model: Any,
        vocoder: Any,
        realtime: RealtimeConfig | None = None,
        registers: dict[str, float] | None = None,
        *,
        batch: bool = True,
        max_batch: int = 8,
        batch_wait_ms: float | None = None,
        f0: F0Config | None = None,
        index_rate: float = DEFAULT_INDEX_RATE,
    ) -> None:
        self.model, self.vocoder = model, vocoder
        self.index_rate = check_index_rate(index_rate)  # sessions' default (hello overrides)
        self.rt = realtime or RealtimeConfig()
        self.f0_cfg = f0  # the engines' F0 config (None: the defaults); hello's ``f0`` overrides
        self.speakers: list[str] = list(model.speakers)
        # singer -> median F0 (Hz) of its voice print (``comostream export --corpus``), if any
        self.registers = {k: float(v) for k, v in (registers or {}).items() if k in self.speakers}
        self.geometry = StreamGeometry.from_configs(model.cfg.audio, self.rt)
        self._step: Any = None
        self._lock = threading.Lock()
        self.batch, self.max_batch = batch, max(1, int(max_batch))
        wait = BATCH_WAIT * self.geometry.block_ms if batch_wait_ms is None else batch_wait_ms
        self.batch_wait_ms = float(wait)
        self.scheduler: BatchScheduler | None = None
        self.backend: str | None = None  # what runs the batched steps, once built

    def singers(self) -> dict[str, Any]:
        """``GET /singers``: the singers in the model's order, each with its register (median
        F0 in Hz from the voice prints; null without), and the default singer."""
        return {
            "singers": [{"name": n, "f0_median_hz": self.registers.get(n)} for n in self.speakers],
            "default": self.speakers[0] if self.speakers else None,
        }

    def natural_block(self, sample_rate: int) -> int:
        """Samples per channel of one model step at ``sample_rate`` (the default block)."""
        return self.geometry.samples_per_block(sample_rate)

    def check_speaker(self, spec: SpeakerSpec | None) -> SpeakerSpec:
        """The singer a session uses: ``spec`` checked, or the model's default for None
        (:func:`~comostream.models.conditioner.resolve_speaker`);
        ``ProtocolError('unknown_speaker')`` for a name that is not a singer."""
        try:
            return resolve_speaker(spec, self.speakers)
        except UnknownSpeakerError as exc:
            raise ProtocolError("unknown_speaker", str(exc)) from None

    def check_register(self, spec: SpeakerSpec) -> None:
        """``ProtocolError('no_register')`` unless every singer of ``spec`` (a name or a mix)
        has a register: what ``transpose: "auto"`` needs."""
        names = [spec] if isinstance(spec, str) else list(spec)
        missing = [n for n in names if n not in self.registers]
        if missing:
            raise ProtocolError(
                "no_register",
                'transpose "auto" needs the singer\'s register and the model file stores none '
                f"for {', '.join(map(repr, missing))}: give transpose in semitones (a model "
                "exported with `comostream export --corpus DIR` stores registers)",
            )

    def warm_up(self, sample_rate: int = 48000) -> None:
        """Build the shared step and run a few blocks once (tracing, JIT compilation), so the
        first session's first blocks are not late."""
        hello = Hello(PROTOCOL_VERSION, sample_rate, 1, "f32le", None, None, 0.0, None)
        block = self.natural_block(sample_rate)
        sched = self.start_batching()
        engine = self.create(hello, block, self.check_speaker(None))
        for _ in range(8):
            zeros = np.zeros(block, np.float32)
            if sched is None:
                engine.push(zeros)
            else:  # as a session's blocks go: through the scheduler's cycles
                sched.convert(engine, zeros).result()
        done = self.release(engine)
        if done is not None:
            done.result()

    def start_batching(self) -> BatchScheduler | None:
        """The batch scheduler over :meth:`batch_steps`, started once (None: not batched)."""
        if not self.batch:
            return None
        with self._lock:
            if self.scheduler is not None:
                return self.scheduler
            step, buckets = self.batch_steps()
            self.scheduler = BatchScheduler(
                step,
                buckets=buckets,
                frames=self.rt.block_frames,
                capacity=self.max_batch,
                wait_ms=self.batch_wait_ms,
            )
            return self.scheduler

    def batch_steps(self) -> tuple[Any, dict[int, Any]]:
        """The scheduler's steps: one for any batch and block size (the eager chain), and on a
        CPU the step traced for each batch size of
        :func:`~comostream.realtime.serve.batcher.bucket_sizes`, each run a few times
        (TorchScript optimises on the first runs). On ONNX Runtime one exported step with a
        session pinned to each bucket's shape (faster than the dynamic one; the scheduler gives
        it the same kept state rows every time, so its IO bindings are made once). On Inductor
        one step compiled per bucket, 30-40 s each (six for the default 8 streams). Which of
        them: :func:`batched_backend` (``auto``: ONNX Runtime where it can), kept in
        :attr:`backend`."""
        chain = ConversionChain(
            self.model, self.vocoder, seed=self.rt.seed, noise_scale=self.rt.noise_scale
        ).eval()
        frames = self.rt.block_frames
        self.backend, why = batched_backend(self.rt, chain)
        log.info("batched model step: %s (%s)", self.backend, why)
        if self.backend in ONNX_BACKENDS:  # one ONNX Runtime step, a session pinned per bucket
            from comostream.realtime.onnx_step import OnnxStep, check_exportable

            check_exportable(chain)
            sizes = bucket_sizes(self.max_batch)
            shapes = [(s, frames) for s in sizes]
            int8 = self.backend == "onnxruntime-int8"
            step = OnnxStep.from_chain(chain, frames, shapes=shapes, int8=int8)
            return step, dict.fromkeys(sizes, step)
        if self.backend == "inductor":  # compiled per bucket, 30-40 s each
            from comostream.realtime.compiled import CompiledStep

            sizes = bucket_sizes(self.max_batch)  # all of them: padding 5 rows to 8 cost more
            return chain, {s: CompiledStep(chain, chain.zero_inputs(s, frames), s) for s in sizes}
        on_cpu = next(self.model.parameters()).device.type == "cpu"
        buckets: dict[int, Any] = {}
        if on_cpu and getattr(self.vocoder, "traceable", True):  # as from_models decides
            for size in bucket_sizes(self.max_batch):
                traced = TracedStep(chain, chain.zero_inputs(size, frames), size)
                with torch.inference_mode():
                    state = chain.init_state(size)
                    for _ in range(3):
                        traced.step(chain.zero_inputs(size, frames), state)
                buckets[size] = traced
        return chain, buckets

    def release(self, engine: StreamingConverter) -> Future[Any] | None:
        """A session's engine is done: its batch slot (if any) is given back, after the jobs
        already queued (the future of :meth:`BatchScheduler.release`; None: no slot)."""
        step = engine.step_module
        return step.close() if isinstance(step, SlotStep) else None

    def close(self) -> None:
        """Stop the batch scheduler (if any)."""
        if self.scheduler is not None:
            self.scheduler.close()

    def create(self, hello: Hello, block: int, speaker: Any) -> StreamingConverter:
        """An engine for a session (pushes of ``block`` samples)."""
        kw = dict(
            speaker=speaker,
            transpose=hello.transpose,
            index=getattr(self.model, "retrieval", None),
            index_rate=self.index_rate if hello.index_rate is None else hello.index_rate,
            registers=self.registers,
            sample_rate=hello.sample_rate,
            channels=hello.channels,
            realtime=self.rt,
            chunk=block,
        )
        if hello.f0 is not None:  # the session's streaming F0 tracker (else the config's)
            kw["f0"] = dataclasses.replace(self.f0_cfg or F0Config(), backend=hello.f0)
        elif self.f0_cfg is not None:
            kw["f0"] = self.f0_cfg
        sched = self.start_batching()
        if sched is not None:
            slot = SlotStep(sched)
            try:
                return StreamingConverter(
                    slot,
                    embed=self.model.conditioner.speaker_embedding,
                    audio=self.model.cfg.audio,
                    **kw,
                )
            except BaseException:
                slot.close()
                raise
        with self._lock:
            if self._step is None:
                engine = StreamingConverter.from_models(self.model, self.vocoder, **kw)
                self._step = engine.step_module
                return engine
        return StreamingConverter(
            self._step,
            embed=self.model.conditioner.speaker_embedding,
            audio=self.model.cfg.audio,
            **kw,
        )
