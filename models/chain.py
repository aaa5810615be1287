"""The conversion chain: raw per-frame features -> converted audio, offline or block by block.

:class:`ConversionChain` owns the whole inference chain over ``k`` frames of ``S`` streams:

1. content: the model's own encoder on the input mel, or an external content model (window mode,
   :class:`comostream.realtime.window.WindowedContent`) on the frames' input samples;
2. conditioning F0: the causal unvoiced hold (:func:`comostream.models.acoustic.hold_unvoiced`,
   the last voiced F0 kept in the state, :data:`~comostream.models.config.DEFAULT_F0_HZ` before
   any) and then the per-frame transposition; the conditioner (content, F0, voiced, loudness,
   singer);
3. the one-step consistency target on counter-based noise
   (:func:`comostream.models.noise.frame_noise`, a frame counter in the state: independent of the
   block size);
4. the vocoder, excited by the transposed F0 (0 where unvoiced).

Every input arrives aligned (frame ``t`` of each input belongs to input frame ``t``); inside, side
inputs are delayed to meet the later outputs of the lookahead stages, so the output is
``lookahead_frames`` frames late. Like every streaming module it has ``init_state`` / ``step``; its
offline call (``forward``) is one step over all frames from a fresh state. One step over a whole
sequence and consecutive steps over blocks execute the same causal ops, so offline and streamed
outputs are equal by construction (see :mod:`comostream.models.streaming`).

State tensors are preallocated by ``init_state`` and updated in place, and no Python branch depends
on the data: ``step`` can be traced (:class:`comostream.realtime.traced.TracedStep`) or captured in
a CUDA graph (:class:`comostream.realtime.cuda_graph.GraphStep`).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from comostream.models.acoustic import AcousticModel, hold_unvoiced
from comostream.models.config import DEFAULT_F0_HZ, NOISE_SCALE
from comostream.models.edm import denormalise_mel
from comostream.models.noise import frame_noise
from comostream.models.streaming import Delay, StreamState, store

__all__ = ["ChainVocoder", "ConversionChain", "FrameInputs"]

FrameInputs = dict[str, Tensor]
"""Raw per-block inputs, all for the same ``k`` input frames of ``S`` streams (model dtype):

* ``mel`` ``(S, n_mels, k)`` natural-log mel of the input (the content encoder's input);
* ``audio`` ``(S, k * hop)`` the frames' input samples (an external content model's input);
* ``f0`` ``(S, k)`` Hz as tracked, 0 where unvoiced; ``voiced`` ``(S, k)`` 0/1;
* ``loudness`` ``(S, k)`` dB;
* ``transpose`` ``(S, k)`` semitones per frame (a caller ramps changes over frames);
* ``speaker`` ``(S, speaker_dim)`` singer embedding (mixes and ramps are done by the caller);
* only for a model with a retrieval index (:mod:`comostream.models.retrieval`):
  ``index_rate`` ``(S, 1)`` in [0, 1] and ``index_weights`` ``(S, n_indexed)`` (the singer mix
  over the indexed singers, :meth:`~comostream.models.retrieval.RetrievalIndex.weights`).
"""


class ChainVocoder(Protocol):
    """What the chain needs of a streaming vocoder (:class:`comostream.models.vocoder.Vocoder`)."""

    lookahead_frames: int
    hop_length: int

    def init_state(self, batch: int, device: Any = None, dtype: Any = None) -> StreamState: ...

    def step(
        self, mel: Tensor, f0_hz: Tensor, state: StreamState
    ) -> tuple[Tensor, StreamState]: ...


def _transposed(
    held_hz: Tensor, f0_hz: Tensor, voiced: Tensor, semitones: Tensor
) -> tuple[Tensor, Tensor]:
    """``(conditioning F0, vocoder F0)`` ``(S, k)`` Hz in ``f0_hz``'s dtype: the held F0
    transposed by ``semitones (S, k)``, and the transposed tracked F0 where voiced (0 elsewhere).
    The products are taken in float64 and rounded once to the model dtype."""
    ratio = 2.0 ** (semitones.double() / 12.0)
    cond = (held_hz.double() * ratio).to(f0_hz.dtype)
    is_voiced = voiced.to(torch.bool) & (f0_hz > 0)
    voc = torch.where(is_voiced, f0_hz.double() * ratio, torch.zeros_like(ratio))
    return cond, voc.to(f0_hz.dtype)


class ConversionChain(nn.Module):
    """:data:`FrameInputs` of ``k`` frames -> waveform ``(S, k * hop)`` (or log-mel
    ``(S, n_mels, k)`` when built without a vocoder), ``lookahead_frames`` frames late.

    ``content_model``: an external content model in window mode
    (:class:`comostream.realtime.window.WindowedContent`, fed the frames' ``audio``) for a model
    trained on its features; None uses the model's own encoder (fed ``mel``). ``vocoder``: the
    built-in streaming vocoder or a :class:`comostream.realtime.window.WindowedVocoder`. ``seed``:
    noise seed; ``noise_scale``: the noise's scale (``[realtime] noise_scale``, 1 = as distilled).
    """

    def __init__(
        self,
        model: AcousticModel,
        vocoder: nn.Module | None = None,
        content_model: nn.Module | None = None,
        seed: int = 0,
        noise_scale: float = NOISE_SCALE,
    ) -> None:
        super().__init__()
        self.model = model
        self.vocoder = vocoder
        self.seed = int(seed)
        self.noise_scale = float(noise_scale)
        self.sigma_max = float(model.cfg.edm.sigma_max)
        self.noise_amp = self.noise_scale * self.sigma_max  # the target's input: noise * this
        # device tensors, so a captured graph never copies host scalars
        self.register_buffer("sigma", torch.tensor(self.sigma_max), persistent=False)
        self.register_buffer("seed_t", torch.tensor(self.seed), persistent=False)
        self.n_mels = model.cfg.audio.n_mels
        self.hop_length = model.cfg.audio.hop_length
        self.content_model = content_model
        enc = content_model if content_model is not None else model.content_encoder
        if enc is None and model.cfg.model.content_dim > 0:
            raise ValueError("the model takes content features: give it a content model")
        if enc is not None and int(getattr(enc, "dim", getattr(enc, "content_dim", -1))) != (
            model.cfg.model.content_dim
        ):
            raise ValueError(
                f"the content model gives {getattr(enc, 'dim', '?')} channels, the "
                f"acoustic model takes {model.cfg.model.content_dim}"
            )
        late_content = enc.lookahead_frames if enc is not None else 0
        late_cond = late_content + model.conditioner.lookahead_frames
        late_mel = late_cond + model.target.lookahead_frames
        self.content_late, self.cond_late, self.mel_late = late_content, late_cond, late_mel
        voc_late = vocoder.lookahead_frames if vocoder is not None else 0
        self.lookahead_frames: int = late_mel + voc_late
        self.profile: dict[str, float] | None = None  # stage -> seconds of the last step
        self.side_delay = Delay(3, late_content)  # f0, voiced, loudness -> meet the content
        self.f0_delay = Delay(1, late_mel)  # the vocoder's F0 -> meets the generated mel
        self.index_singers: tuple[str, ...] = (
            model.retrieval.names if model.retrieval is not None else ()
        )

    @property
    def speaker_dim(self) -> int:
        """Size of the singer embedding input."""
        return int(self.model.cfg.model.speaker_dim)

    def _device_dtype(self, device: Any, dtype: Any) -> tuple[Any, Any]:
        ref = next(self.model.parameters())
        return (ref.device if device is None else device), (ref.dtype if dtype is None else dtype)

    def init_state(self, streams: int, device: Any = None, dtype: Any = None) -> StreamState:
        """Fresh preallocated state of ``streams`` streams (models' device/dtype by default)."""
        device, dtype = self._device_dtype(device, dtype)
        m = self.model
        state: StreamState = {
            "conditioner": m.conditioner.init_state(streams, device, dtype),
            "target": m.target.init_state(streams, device, dtype),
            "side_delay": self.side_delay.init_state(streams, device, dtype),
            "f0_delay": self.f0_delay.init_state(streams, device, dtype),
            "f0_hold": torch.full((streams, 1), DEFAULT_F0_HZ, dtype=dtype, device=device),
            "frame": torch.full((streams, 1), -self.cond_late, dtype=torch.int64, device=device),
        }
        if self.content_model is not None:
            state["content"] = self.content_model.init_state(streams, device, dtype)
        elif m.content_encoder is not None:
            state["content"] = m.content_encoder.init_state(streams, device, dtype)
        if self.vocoder is not None:
            state["vocoder"] = self.vocoder.init_state(streams, device, dtype)
        return state

    def zero_inputs(
        self, streams: int, frames: int, device: Any = None, dtype: Any = None
    ) -> FrameInputs:
        """Preallocated :data:`FrameInputs` of one block: silence, unvoiced, no transposition
        (static buffers of a CUDA graph, a tracing example)."""
        device, dtype = self._device_dtype(device, dtype)

        def z(*shape: int) -> Tensor:
            return torch.zeros(*shape, device=device, dtype=dtype)

        inputs = {
            "mel": z(streams, self.n_mels, frames),
            "audio": z(streams, frames * self.hop_length),
            "f0": z(streams, frames),
            "voiced": z(streams, frames),
            "loudness": z(streams, frames),
            "transpose": z(streams, frames),
            "speaker": z(streams, self.speaker_dim),
        }
        if self.index_singers:
            inputs["index_rate"] = z(streams, 1)
            inputs["index_weights"] = z(streams, len(self.index_singers))
        return inputs

    def forward(self, inputs: FrameInputs) -> Tensor:
        """Offline: one step over all frames from a fresh state (``lookahead_frames`` late)."""
        f0 = inputs["f0"]
        return self.step(inputs, self.init_state(f0.shape[0], f0.device, f0.dtype))

    def step(self, inputs: FrameInputs, state: StreamState) -> Tensor:
        """One block of ``k`` frames: the output, ``lookahead_frames`` frames late.

        Offline is one step of all frames from a fresh state: the same ops as any blocking.
        """
        m = self.model
        t0 = self._clock()
        f0, voiced, loud = inputs["f0"], inputs["voiced"], inputs["loudness"]
        streams, frames = f0.shape
        held = hold_unvoiced(f0, voiced, state["f0_hold"])  # causal: one number of state
        store(state, "f0_hold", held[:, -1:])
        f0_cond, f0_voc = _transposed(held, f0, voiced, inputs["transpose"])
        side = torch.stack([f0_cond, voiced.to(f0.dtype), loud], dim=1)
        side = self.side_delay.run(side, state["side_delay"])
        if self.content_model is not None:
            content = self.content_model.step(inputs["audio"], state["content"])[0]
        elif m.content_encoder is not None:
            x = m.content_encoder.normalize_input(inputs["mel"])
            content = m.content_encoder.run(x, state["content"])
        else:
            content = f0.new_zeros(streams, 0, frames)
        t1 = self._lap("content", t0)
        if m.retrieval is not None and "index_rate" in inputs:  # frame-local: no state
            content = m.retrieval(content, inputs["index_weights"], inputs["index_rate"])
            t1 = self._lap("index", t1)
        cond = m.conditioner.run(
            content, side[:, 0], side[:, 1], side[:, 2], inputs["speaker"], state["conditioner"]
        )
        start = state["frame"]
        index = start + torch.arange(frames, device=f0.device)
        noise = frame_noise(index, self.n_mels, self.seed_t, f0.dtype)
        state["frame"].add_(frames)
        x = m.target.step(noise * self.noise_amp, self.sigma, cond, state["target"])[0]
        mel = denormalise_mel(x, m.cfg.edm)
        f0_voc = self.f0_delay.run(f0_voc.unsqueeze(1), state["f0_delay"])
        t2 = self._lap("acoustic", t1)
        if self.vocoder is None:
            return mel
        wav = self.vocoder.step(mel, f0_voc[:, 0], state["vocoder"])[0]
        self._lap("vocoder", t2)
        return wav

    def _clock(self) -> float:
        if self.profile is None:
            return 0.0
        ref = self.sigma
        if ref.device.type == "cuda":
            torch.cuda.synchronize(ref.device)
        return time.perf_counter()

    def _lap(self, stage: str, since: float) -> float:
        """Record ``stage``'s time since ``since`` when profiling; the new mark."""
        if self.profile is None:
            return 0.0
        now = self._clock()
        self.profile[stage] = now - since
        return now
