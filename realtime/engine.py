"""The streaming engine: audio in at the caller's rate -> converted audio out, chunk by chunk.

The engine frames, ramps, buffers and schedules; the models' computation is the chain's. Per
stream: mono mix -> stateful resampler to the model rate ->
:class:`~comostream.realtime.frontend.FrontEnd` (mel, loudness, F0 per frame) -> blocks of ``B``
frames with the singer embedding and the transposition ramped per frame ->
:class:`~comostream.models.chain.ConversionChain` (content encoder, causal F0 hold and
transposition, conditioner, one-step consistency target, vocoder) -> output FIFO -> stateful
resampler back -> mono or duplicated out. Rates, hop and block come from the engine's
:class:`~comostream.realtime.geometry.StreamGeometry` (:attr:`StreamingConverter.geometry`).

Latency is computed, never written down: with hop ``h`` (256 samples at the 24 kHz model rate), the
analysis window's overhang beyond the frame's hop ``p`` (the front-end's left padding: 256 samples
for the 1024-sample window), the front-end's F0 lookahead ``Lf`` and the models' lookahead ``Ls``
(frames), output sample ``m`` of the model-rate stream is input sample ``m - D`` with

    D = Z + p + Ls h     (``delay_samples_24k``, samples at the model rate)

where ``Z`` is the output FIFO's initial silence. For ANY chunking of the input ``Z = (B + Lf)
h``, exactly the most a block can still be waiting for, so every ``push`` of ``n`` samples
returns ``n`` samples and the delay never moves. A caller that always pushes ``chunk`` samples
(a sound card's block) declares it: ``Z`` is then the least that chunk's phase needs (0 when a
chunk is a block at the model rate), and the chunk's own buffering is counted in :attr:`latency_ms`
instead; the algorithmic latency is then one block + ``p`` + lookaheads. The resamplers add
their own integer delays; at rates such as 44.1 kHz a few samples of silence more make the total
a whole number of output samples, so outputs of any block size line up exactly. ``flush``
returns the last ``D`` samples. Offline (``offline=True``) runs the frames in model steps of
:data:`~comostream.models.limits.OFFLINE_STEP_FRAMES` as they come (and the rest at ``flush``):
the same samples (equal to float rounding: the chain is causal, so consecutive steps on one state
compute what one step over all frames does) with memory bounded whatever the length; its
``push`` returns what is ready so far (possibly nothing), and ``flush`` the rest.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from comostream.models.acoustic import AcousticModel
from comostream.models.chain import ConversionChain
from comostream.models.config import ONNX_BACKENDS, AudioConfig, F0Config, RealtimeConfig
from comostream.models.limits import OFFLINE_STEP_FRAMES, check_transpose
from comostream.models.register import STREAM_VOICED_FRAMES, auto_semitones, singer_register
from comostream.models.retrieval import DEFAULT_INDEX_RATE, RetrievalIndex, check_index_rate
from comostream.realtime.frontend import (
    FrameFeatures,
    FrontEnd,
    IncrementalF0Like,
    default_f0_tracker,
)
from comostream.realtime.geometry import StreamGeometry
from comostream.realtime.resample import StreamingResampler
from comostream.realtime.traced import TracedStep

__all__ = [
    "SAMPLE_LIMIT",
    "SampleFifo",
    "StreamingConverter",
    "convert_array",
    "sanitize_samples",
]

# Input samples are clipped to +-SAMPLE_LIMIT (80 dB above full scale: nothing real is cut) and
# NaN/inf become 0, all counted in ``EngineStats.bad_samples``: finite extremes such as 3e38
# would overflow the resamplers. Model output is held to the same range, non-finite -> 0
# (``bad_output_samples``), so a stream never fails on its values.
SAMPLE_LIMIT = 1e4

SpeakerEmbed = Callable[[Any], Tensor]  # a singer name / mix -> (1, speaker_dim) embedding
VOICED_F0_FRAMES = 1024  # voiced input frames kept for :meth:`StreamingConverter.input_f0_median`


class SampleFifo:
    """A growable float32 FIFO of samples (amortised O(n) per push/pop)."""

    def __init__(self, capacity: int = 8192) -> None:
        self._buf = np.zeros(max(16, capacity), np.float32)
        self._start = 0
        self._end = 0

    def __len__(self) -> int:
        return self._end - self._start

    def push(self, x: np.ndarray) -> None:
        """Append ``x (n,)``."""
        n = x.shape[0]
        if self._end + n > self._buf.shape[0]:
            live = self._buf[self._start : self._end]
            if len(live) + n > self._buf.shape[0] // 2:
                grown = np.zeros(2 * (len(live) + n), np.float32)
                grown[: len(live)] = live
                self._buf = grown
            else:
                self._buf[: len(live)] = live.copy()
            self._start, self._end = 0, len(live)
        self._buf[self._end : self._end + n] = x
        self._end += n

    def pop(self, n: int) -> np.ndarray:
        """Remove and return the oldest ``n`` samples (a copy); ValueError if fewer are held."""
        if n > len(self):
            raise ValueError(f"FIFO holds {len(self)} samples, {n} requested")
        out = self._buf[self._start : self._start + n].copy()
        self._start += n
        return out


@dataclass
class EngineStats:
    """Counters and (when profiling) per-chunk stage times in seconds."""

    chunks: int = 0
    blocks: int = 0
    frames: int = 0
    samples_in: int = 0
    bad_samples: int = 0  # input samples that were NaN/inf (-> 0) or beyond +-SAMPLE_LIMIT
    bad_output_samples: int = 0  # model output samples non-finite (-> 0) or beyond the limit
    stage_times: dict[str, list[float]] = field(default_factory=dict)

    def add_time(self, stage: str, seconds: float) -> None:
        self.stage_times.setdefault(stage, []).append(seconds)


class _Ramp:
    """A value moving linearly to a new target over ``frames`` frames (clickless changes)."""

    def __init__(self, value: Tensor, frames: int) -> None:
        self.start = value
        self.target = value
        self.pos = 1.0
        self.frames = frames
        self._held: tuple[Tensor, Tensor, int, Tensor] | None = None  # a finished ramp's rows

    def set(self, target: Tensor, now: Tensor) -> None:
        self.start, self.target, self.pos = now, target, 0.0

    def take(self, frames: int) -> Tensor:
        """Values of the next ``frames`` frames ``(frames, *shape)``, advancing the ramp."""
        held = self._held
        if self.pos >= 1.0 and held is not None:  # finished: the same rows every block
            start, target, count, rows = held
            if start is self.start and target is self.target and count == frames:
                return rows
        steps = self.pos + (torch.arange(1, frames + 1, dtype=torch.float64) / self.frames)
        w = steps.clamp(max=1.0).to(self.start.dtype).view(-1, *([1] * self.start.dim()))
        finished = self.pos >= 1.0
        self.pos = min(1.0, self.pos + frames / self.frames)
        rows = self.start + (self.target - self.start) * w
        if finished:
            self._held = (self.start, self.target, frames, rows)
        return rows

    def current(self) -> Tensor:
        return self.start + (self.target - self.start) * min(1.0, self.pos)


class StreamingConverter:
    """One conversion stream (see the module docstring).

    ``step``: a :class:`~comostream.models.chain.ConversionChain` (or any module with
    ``lookahead_frames``, ``hop_length``, ``init_state(streams)`` and ``step(FrameInputs, state) ->
    (1, k * hop)``). ``embed``: singer name/mix -> ``(1, speaker_dim)``; None for a step without
    singers. ``sample_rate``/``channels``: the caller's audio (default: the model rate; 1 or 2
    channels in, the same count out: mono is duplicated). ``offline``: run the frames in steps of
    :data:`~comostream.models.limits.OFFLINE_STEP_FRAMES` instead of ``block_frames`` (the
    module docstring). ``transpose``: semitones, finite, within +-48 (ValueError otherwise), or
    ``"auto"``: untransposed until :data:`~comostream.models.register.STREAM_VOICED_FRAMES`
    voiced frames came in, then (ramped, from the frame after the last of them, whatever the
    chunking) the whole semitones from their median F0 to the singer's register, kept
    (:func:`~comostream.models.register.auto_semitones`); ``registers``: singer -> register in
    Hz (the voice prints' ``f0_median``), needed by ``"auto"``
    (:class:`~comostream.models.register.NoRegisterError` for a singer without one).
    """

    def __init__(
        self,
        step: nn.Module,
        *,
        embed: SpeakerEmbed | None = None,
        speaker: Any = None,
        transpose: float | str = 0.0,
        registers: dict[str, float] | None = None,
        sample_rate: int | None = None,
        channels: int = 1,
        realtime: RealtimeConfig | None = None,
        audio: AudioConfig | None = None,
        f0: F0Config | None = None,
        f0_tracker: Callable[[F0Config], IncrementalF0Like] = default_f0_tracker,
        offline: bool = False,
        profile: bool = False,
        chunk: int | None = None,
        index: RetrievalIndex | None = None,
        index_rate: float = DEFAULT_INDEX_RATE,
    ) -> None:
        self.registers = dict(registers or {})
        self.index = index
        self.index_rate = check_index_rate(index_rate)
        auto = transpose == "auto"
        self._singer_hz = self.singer_register_hz(speaker) if auto else None
        transpose = 0.0 if auto else check_transpose(transpose)
        self.rt = realtime or RealtimeConfig()
        self.audio = audio or AudioConfig()
        model_rate = self.audio.sample_rate
        sample_rate = model_rate if sample_rate is None else int(sample_rate)
        if not 8000 <= sample_rate <= 192000:
            raise ValueError(f"unsupported sample rate {sample_rate} Hz (8-192 kHz)")
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {channels}")
        self.step_module = step
        self.sample_rate, self.channels = sample_rate, int(channels)
        self.offline, self.profile = offline, profile
        self.frontend = FrontEnd(self.audio, f0, f0_tracker)
        self.lookahead_frames = self.frontend.lookahead_frames + int(step.lookahead_frames)
        self.geometry = StreamGeometry.from_configs(self.audio, self.rt, self.lookahead_frames)
        self.block = self.geometry.block_frames
        self.hop = self.geometry.hop_length
        resampled = sample_rate != model_rate
        self.rs_in = StreamingResampler(sample_rate, model_rate) if resampled else None
        self.rs_out = StreamingResampler(model_rate, sample_rate) if resampled else None
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be >= 1 sample, got {chunk}")
        self.chunk = chunk
        self.fifo_prefill = (
            self.hop * (self.block + self.frontend.lookahead_frames)
            if chunk is None
            else self._aligned_prefill(chunk)
        )
        self.delay_samples_24k = (
            self.fifo_prefill + self.frontend.pad_samples + self.hop * int(step.lookahead_frames)
        )
        if self.rs_in is not None:  # round the total delay up to a whole output sample
            grid = model_rate // math.gcd(model_rate, sample_rate)
            extra = -(int(self.rs_in.delay_samples_out) + self.delay_samples_24k) % grid
            self.fifo_prefill += extra
            self.delay_samples_24k += extra
        self.embed = embed
        ref = next(step.parameters(), None)
        self.device = ref.device if ref is not None else torch.device("cpu")
        self.dtype = ref.dtype if ref is not None else torch.float32
        dim = int(getattr(step, "speaker_dim", 0))
        zero = torch.zeros(1, dim, dtype=self.dtype)
        self._speaker = _Ramp(self._embedding(speaker) if embed else zero, self.rt.ramp_frames)
        self._transpose = _Ramp(
            torch.tensor(float(transpose), dtype=torch.float64), self.rt.ramp_frames
        )
        self.speaker = speaker
        self._index_weights = self._mix_weights(speaker)
        self._auto = auto
        self.stats = EngineStats()
        self.defer_blocks = False  # batched use: blocks are queued for a shared model step
        self.queued: list[dict[str, Tensor]] = []
        self.reset()

    @classmethod
    def from_models(
        cls,
        model: AcousticModel,
        vocoder: nn.Module | None,
        *,
        content_model: nn.Module | None = None,
        speaker: Any = None,
        trace: bool | None = None,
        **kwargs: Any,
    ) -> StreamingConverter:
        """An engine over an acoustic model and a vocoder (built-in or windowed external).

        ``speaker``: checked against the model's singers, None for the default
        (:meth:`~comostream.models.acoustic.AcousticModel.resolve_speaker`); ``trace``: run the
        chain as a traced graph (:class:`~comostream.realtime.traced.TracedStep`; default: on a
        CPU, when streaming built-in models); other keywords as the constructor. The realtime
        config's ``backend`` ``onnxruntime`` runs the chain exported to ONNX instead
        (:class:`~comostream.realtime.onnx_step.OnnxStep`, built-in models on the CPU;
        ``onnxruntime-int8`` with the matrix products' weights in 8 bits), and
        ``inductor`` compiled to C++ (:class:`~comostream.realtime.compiled.CompiledStep`);
        ``auto`` is torch here (:attr:`~comostream.models.config.RealtimeConfig.engine_backend`).
        """
        rt = kwargs.get("realtime") or RealtimeConfig()
        chain = ConversionChain(
            model, vocoder, content_model, seed=rt.seed, noise_scale=rt.noise_scale
        ).eval()
        step: nn.Module = chain
        on_cpu = next(model.parameters()).device.type == "cpu"
        backend = rt.engine_backend  # auto: torch for an engine of its own
        if backend in ONNX_BACKENDS:
            from comostream.realtime.onnx_step import OnnxStep, check_exportable

            check_exportable(chain)
            int8 = backend == "onnxruntime-int8"
            shapes = [(1, rt.block_frames)]
            step = OnnxStep.from_chain(chain, rt.block_frames, shapes=shapes, int8=int8)
            trace = False
        if trace is None:
            traceable = getattr(vocoder, "traceable", True)  # window mode branches on data
            trace = (
                on_cpu
                and not kwargs.get("offline", False)
                and content_model is None
                and (traceable)
            )
        if backend == "inductor":
            from comostream.realtime.compiled import CompiledStep

            step = CompiledStep(chain, chain.zero_inputs(1, rt.block_frames))
            trace = False
        if trace:
            step = TracedStep(chain, chain.zero_inputs(1, rt.block_frames))
        kwargs.setdefault("audio", model.cfg.audio)
        kwargs.setdefault("index", model.retrieval)
        return cls(
            step,
            embed=model.conditioner.speaker_embedding,
            speaker=model.resolve_speaker(speaker),
            **kwargs,
        )

    # -- public API ------------------------------------------------------------------------------
    def _aligned_prefill(self, chunk: int) -> int:
        """The least FIFO prefill (model-rate samples) that never runs dry when every push brings
        a multiple of ``chunk`` samples: the most a push's end can be ahead of the model's
        output, over enough pushes for the pattern to repeat."""
        fe, hop, block = self.frontend, self.hop, self.block
        rs = self.rs_in
        pushes = min(200_000, 4 * self.geometry.block_samples * (rs.down if rs is not None else 1))
        worst = 0
        for k in range(1, pushes + 1):
            n24 = rs._available(k * chunk) if rs is not None else k * chunk
            complete = max(0, (n24 + fe.pad_samples - fe.lookahead_samples) // hop + 1)
            frames = block * (max(0, complete - fe.lookahead_frames) // block)
            worst = max(worst, n24 - hop * frames)
        return worst

    @property
    def delay_ms(self) -> float:
        """Stream delay in ms: output sample ``m`` is input sample ``m - delay`` (resamplers,
        FIFO prefill, window overhang, lookaheads)."""
        model_rate = self.geometry.sample_rate
        seconds = self.delay_samples_24k / model_rate
        if self.rs_in is not None and self.rs_out is not None:
            seconds += self.rs_in.delay_samples_out / model_rate
            seconds += self.rs_out.delay_samples_out / self.sample_rate
        return 1000.0 * seconds

    @property
    def delay_samples(self) -> int:
        """The stream delay in output samples (a whole number by construction)."""
        return int(round(self.delay_ms * self.sample_rate / 1000.0))

    @property
    def latency_ms(self) -> float:
        """Algorithmic latency in ms, compute excluded: block + window overhang + lookaheads +
        resampling. With a declared ``chunk`` the caller buffers one chunk before pushing it
        (counted here) and the FIFO holds only what the chunk phase needs; without, the FIFO
        holds a whole block so that any chunking works."""
        chunk_ms = 0.0 if self.chunk is None else 1000.0 * self.chunk / self.sample_rate
        return self.delay_ms + chunk_ms

    @property
    def block_ms(self) -> float:
        """Duration of one model step's block in ms."""
        return self.geometry.block_ms

    @property
    def block_samples(self) -> int:
        """Samples of one block at the caller's rate (a sound card's natural chunk)."""
        return self.geometry.samples_per_block(self.sample_rate)

    def set_speaker(self, speaker: Any) -> None:
        """Change singer (a name, or a mix ``{name: weight}``): ramped over ``ramp_frames``."""
        if self.embed is None:
            raise ValueError("this engine has no singer table")
        singer_hz = self.singer_register_hz(speaker) if self._auto else None  # before any change
        emb = self._embedding(speaker)
        self._speaker.set(emb, self._speaker.current())
        self.speaker = speaker
        self._index_weights = self._mix_weights(speaker)
        if self._auto:  # the shift from the source's register to the new singer's
            self._singer_hz = singer_hz
            if self.source_register_hz is not None:
                shift = auto_semitones(self.source_register_hz, singer_hz)
                if self._auto_at is not None:  # chosen, not yet due: due with the new shift
                    self._auto_at = (self._auto_at[0], shift)
                else:
                    self._ramp_transpose(shift)

    def set_index_rate(self, rate: float) -> None:
        """Change the retrieval index rate (in [0, 1]; from the next block; no effect for a
        model without an index)."""
        self.index_rate = check_index_rate(rate)

    def _mix_weights(self, speaker: Any) -> Tensor | None:
        """The singer spec's weights over the indexed singers ``(1, n_indexed)``, or None."""
        if self.index is None:
            return None
        spec = speaker if speaker is not None else self.index.speakers[0]
        return self.index.weights(spec).to(self.dtype).reshape(1, -1)

    def set_transpose(self, semitones: float | str) -> None:
        """Change transposition (semitones, ramped over ``ramp_frames`` frames; ends auto mode),
        or ``"auto"``: to the singer's register from the input's (its latest voiced frames'
        median if :data:`~comostream.models.register.STREAM_VOICED_FRAMES` came in already,
        else once they have)."""
        if semitones == "auto":
            singer_hz = self.singer_register_hz(self.speaker)
            self._auto, self._singer_hz, self._auto_at = True, singer_hz, None
            if len(self.voiced_f0) >= STREAM_VOICED_FRAMES:
                self.source_register_hz = float(np.median(list(self.voiced_f0)))
                self._ramp_transpose(auto_semitones(self.source_register_hz, singer_hz))
            else:  # the voiced frames so far are the first ones: gather the rest
                self.source_register_hz = None
                self._first_f0 = list(self.voiced_f0)
            return
        value = check_transpose(semitones)
        self._auto, self._auto_at, self.source_register_hz = False, None, None
        self._ramp_transpose(value)

    def _ramp_transpose(self, semitones: float) -> None:
        target = torch.tensor(float(semitones), dtype=torch.float64)
        self._transpose.set(target, self._transpose.current())

    @property
    def transpose(self) -> float:
        """The transposition in use (semitones; in auto mode the shift chosen, 0 before)."""
        if self._auto_at is not None:
            return self._auto_at[1]
        return float(self._transpose.target)

    @property
    def transpose_auto(self) -> bool:
        """Whether the transposition follows the singer's register (``"auto"``)."""
        return self._auto

    def singer_register_hz(self, speaker: Any) -> float:
        """The register (Hz) of a singer or mix (NoRegisterError without one)."""
        prints = {name: {"f0_median": hz} for name, hz in self.registers.items()}
        return singer_register(prints, speaker)

    def reset(self) -> None:
        """Start a new stream: every state back to the beginning (singer/transposition kept)."""
        self.frontend.reset()
        for rs in (self.rs_in, self.rs_out):
            if rs is not None:
                rs.reset()
        with torch.inference_mode():
            self.state = self.step_module.init_state(1)
        self._pending: list[FrameFeatures] = []
        self._pending_frames = 0
        self._in24 = 0  # model-rate samples fed (flush padding excluded)
        self._out24 = 0  # model-rate samples returned
        self.fifo = SampleFifo()
        self.fifo.push(np.zeros(self.fifo_prefill, np.float32))
        self._speaker.pos = 1.0
        self._speaker.start = self._speaker.target
        if self._auto:  # auto: the estimate starts again, untransposed
            self._transpose.target = torch.tensor(0.0, dtype=torch.float64)
        self._transpose.pos = 1.0
        self._transpose.start = self._transpose.target
        self.voiced_f0: deque[float] = deque(maxlen=VOICED_F0_FRAMES)  # Hz, latest voiced frames
        self._frames_in = 0  # feature frames from the front end
        self._frames_run = 0  # feature frames through the model step (or queued)
        self._first_f0: list[float] = []  # auto: the first voiced frames' F0 (Hz)
        self.source_register_hz: float | None = None  # auto: the input's register, once known
        self._auto_at: tuple[int, float] | None = None  # auto: (first frame, semitones) pending

    def input_f0_median(self, min_frames: int = 48) -> float | None:
        """The median F0 (Hz) of the input's latest voiced frames (about 11 s of voicing at
        24 kHz), None until ``min_frames`` voiced frames came in: the singer's register."""
        f0 = list(self.voiced_f0)  # one C-level copy: a worker thread may append meanwhile
        return float(np.median(f0)) if len(f0) >= min_frames else None

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Feed ``(n,)`` or ``(n, channels)`` float samples; return as many converted samples
        (same shape convention), ``latency_ms`` late."""
        t0 = time.perf_counter()
        n24, squeeze = self.ingest(samples)
        out = self.deliver(n24, squeeze)
        if self.profile:
            self.stats.add_time("total", time.perf_counter() - t0)
        return out

    def ingest(self, samples: np.ndarray) -> tuple[int, bool]:
        """First half of :meth:`push`: resample and extract features, run (or, when
        ``defer_blocks`` is set, queue) the complete blocks. Returns ``(model-rate samples,
        mono)``."""
        t0 = time.perf_counter()
        mono, squeeze = self._mono(samples)
        if self.chunk is not None and mono.shape[0] % self.chunk:
            raise ValueError(
                f"this engine takes pushes of {self.chunk} samples (or multiples); "
                f"got {mono.shape[0]}"
            )
        x24 = self.rs_in.push(mono) if self.rs_in is not None else mono
        if self.profile:
            self.stats.add_time("resample", time.perf_counter() - t0)
        self._feed(x24)
        self.stats.chunks += 1
        self.stats.samples_in += mono.shape[0]
        return x24.shape[0], squeeze

    def deliver(self, n24: int, squeeze: bool) -> np.ndarray:
        """Second half of :meth:`push`: ``n24`` samples out of the FIFO, resampled back."""
        out24 = self._emit(n24)
        t0 = time.perf_counter()
        out = self.rs_out.push(out24) if self.rs_out is not None else out24
        if self.profile:
            self.stats.stage_times["resample"][-1] += time.perf_counter() - t0
        return self._shape(out, squeeze)

    def flush(self) -> np.ndarray:
        """The tail: the remaining ``latency`` worth of output; then the engine is reset."""
        squeeze = self.channels == 1
        tail24 = self.rs_in.flush() if self.rs_in is not None else np.zeros(0, np.float32)
        self._feed(tail24)
        self._in24 += tail24.shape[0]
        need = self._in24 - self._out24 + self.delay_samples_24k
        zeros = np.zeros(self.delay_samples_24k + 2 * self.hop * self.block, np.float32)
        self._feed(zeros, final=True)
        out24 = self.fifo.pop(need)
        if self.rs_out is not None:
            out = np.concatenate([self.rs_out.push(out24), self.rs_out.flush()])
        else:
            out = out24
        self.reset()
        return self._shape(out, squeeze)

    # -- internals -------------------------------------------------------------------------------
    def _embedding(self, speaker: Any) -> Tensor:
        assert self.embed is not None
        with torch.inference_mode():
            return self.embed(speaker).detach().to("cpu", self.dtype).reshape(1, -1)

    def _mono(self, samples: np.ndarray) -> tuple[np.ndarray, bool]:
        with np.errstate(over="ignore"):  # beyond float32: inf, replaced below
            x = np.asarray(samples, dtype=np.float32)
        x, bad = sanitize_samples(x)  # before the channel mix, which could overflow
        self.stats.bad_samples += bad
        if x.ndim == 1:
            squeeze = True
        elif x.ndim == 2 and x.shape[1] in (1, 2):
            squeeze = False
            x = x.mean(axis=1)
        else:
            raise ValueError(f"samples must be (n,) or (n, 1|2), got shape {x.shape}")
        return np.ascontiguousarray(x), squeeze

    def _shape(self, out: np.ndarray, squeeze: bool) -> np.ndarray:
        if squeeze and self.channels == 1:
            return out
        return np.repeat(out[:, None], self.channels, axis=1)

    def _feed(self, x24: np.ndarray, final: bool = False) -> None:
        """Front-end on ``x24``; run every complete block (offline: every complete step of
        :data:`~comostream.models.limits.OFFLINE_STEP_FRAMES`, and all frames when final)."""
        t0 = time.perf_counter()
        self.frontend.f0_seconds = 0.0
        feats = self.frontend.push(x24) if x24.shape[0] else None
        if self.profile and not final:
            f0_time = self.frontend.f0_seconds
            self.stats.add_time("features", time.perf_counter() - t0 - f0_time)
            self.stats.add_time("f0", f0_time)
        if feats is not None and feats.frames:
            voiced = feats.voiced & (feats.f0 > 0)
            self.voiced_f0.extend(feats.f0[voiced].tolist())
            if self._auto and self.source_register_hz is None:
                self._estimate(feats.f0, voiced)
            self._frames_in += feats.frames
            self._pending.append(feats)
            self._pending_frames += feats.frames
        size = OFFLINE_STEP_FRAMES if self.offline else self.block
        while self._pending_frames and (self._pending_frames >= size or (self.offline and final)):
            if len(self._pending) == 1 and self._pending_frames == size:  # a push of one block
                head = self._pending[0]
                self._pending, self._pending_frames = [], 0
                self._run_block(head)
                continue
            frames = FrameFeatures.concat(self._pending)
            head, rest = frames.split(min(size, self._pending_frames))
            self._pending = [rest] if rest.frames else []
            self._pending_frames = rest.frames
            self._run_block(head)

    def _estimate(self, f0: np.ndarray, voiced: np.ndarray) -> None:
        """Auto mode: gather the first voiced frames' F0; with enough, choose the shift, due
        from the frame after the last of them (the same frame whatever the chunking)."""
        idx = np.flatnonzero(voiced)[: STREAM_VOICED_FRAMES - len(self._first_f0)]
        self._first_f0.extend(np.asarray(f0)[idx].tolist())
        if len(self._first_f0) < STREAM_VOICED_FRAMES:
            return
        assert self._singer_hz is not None
        self.source_register_hz = float(np.median(self._first_f0))
        shift = auto_semitones(self.source_register_hz, self._singer_hz)
        self._auto_at = (self._frames_in + int(idx[-1]) + 1, shift)

    def _take_transpose(self, k: int) -> Tensor:
        """The next ``k`` frames' transposition, an auto shift started on its frame."""
        start = self._frames_run
        self._frames_run += k
        due = self._auto_at
        if due is None or due[0] >= start + k:
            return self._transpose.take(k)
        j = max(0, due[0] - start)
        self._auto_at = None
        head = self._transpose.take(j)
        self._ramp_transpose(due[1])
        return torch.cat([head, self._transpose.take(k - j)])

    def _emit(self, n: int) -> np.ndarray:
        self._in24 += n
        if self.offline:  # what is ready, never beyond the input's count (a prefix of the output)
            n = min(len(self.fifo), self._in24 - self._out24)
        self._out24 += n
        return self.fifo.pop(n)

    def _run_block(self, f: FrameFeatures) -> None:
        """One block of frames with its ramped singer and transposition through the model
        step (:data:`~comostream.models.chain.FrameInputs`), output into the FIFO."""
        k = f.frames
        transpose = self._take_transpose(k)
        speaker = self._speaker.take(k)[-1] if self.embed is not None else self._speaker.start
        dev, dt = self.device, self.dtype

        def t(a: np.ndarray | Tensor) -> Tensor:
            if fast:  # a float32 array as it is (no copy), a view of a converted one
                return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).unsqueeze(0)
            return torch.as_tensor(np.asarray(a), dtype=dt).to(dev).unsqueeze(0)

        fast = dev.type == "cpu" and dt == torch.float32

        inputs = {
            "mel": t(f.mel),
            "loudness": t(f.loudness),
            "voiced": t(f.voiced.astype(np.float32)),
            "f0": t(f.f0),
            "transpose": t(transpose),
            "audio": t(f.audio.T.reshape(-1)),
            "speaker": speaker.to(dev, dt).reshape(1, -1),
        }
        if self._index_weights is not None:
            inputs["index_rate"] = torch.full((1, 1), self.index_rate, dtype=dt, device=dev)
            inputs["index_weights"] = self._index_weights.to(dev, dt)
        if self.defer_blocks:
            self.queued.append(inputs)
            return
        t0 = time.perf_counter()
        if self.profile:
            self.step_module.profile = {}
        with torch.inference_mode():
            y = self.step_module.step(inputs, self.state)
        if self.profile:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            self.stats.add_time("model", time.perf_counter() - t0)
            for stage, seconds in (self.step_module.profile or {}).items():
                self.stats.add_time(stage, seconds)
            self.step_module.profile = None
        self.accept(y)

    def accept(self, y: Tensor) -> None:
        """Queue one block's model output ``(1, k * hop)`` (or ``(k * hop,)``) for delivery."""
        wav, bad = sanitize_samples(y.reshape(-1).float().cpu().numpy())
        self.stats.bad_output_samples += bad
        if wav.shape[0] % self.hop:
            raise RuntimeError(f"the model step gave {wav.shape[0]} samples, not whole frames")
        self.fifo.push(wav)
        self.stats.blocks += 1
        self.stats.frames += wav.shape[0] // self.hop


def sanitize_samples(x: np.ndarray) -> tuple[np.ndarray, int]:
    """``x`` float32 with NaN/inf -> 0 and values clipped to +-:data:`SAMPLE_LIMIT`, and how
    many samples were changed (``x`` itself, not a copy, when none was)."""
    if x.size == 0 or (x.max() <= SAMPLE_LIMIT and x.min() >= -SAMPLE_LIMIT):  # NaN fails
        return x, 0
    bad = ~np.isfinite(x)
    with np.errstate(invalid="ignore"):
        big = np.abs(x) > SAMPLE_LIMIT
    count = int(bad.sum()) + int((big & ~bad).sum())
    if not count:
        return x, 0
    x = np.where(bad, np.float32(0.0), x)
    return np.clip(x, -SAMPLE_LIMIT, SAMPLE_LIMIT).astype(np.float32), count


def convert_array(
    engine: StreamingConverter, audio: np.ndarray, chunk: int | Sequence[int] | None = None
) -> np.ndarray:
    """Convert a whole signal through ``engine`` (pushed in chunks of ``chunk`` samples, or all
    at once), with the latency removed: the output has the input's length and alignment."""
    n = audio.shape[0]
    if engine.chunk is not None:  # whole chunks only: pad the last one
        chunk = engine.chunk
        audio = np.concatenate([audio, np.zeros(-n % chunk, audio.dtype)])
    if chunk is None:
        parts = [engine.push(audio)]
    else:
        sizes = [chunk] if isinstance(chunk, int) else list(chunk)
        parts, pos, i = [], 0, 0
        while pos < audio.shape[0]:
            size = max(1, sizes[i % len(sizes)])
            parts.append(engine.push(audio[pos : pos + size]))
            pos, i = pos + size, i + 1
    d = engine.delay_samples
    parts.append(engine.flush())
    out = np.concatenate(parts, axis=0)
    return out[d : d + n]
