"""Window mode: run models that are not streaming-native (imported checkpoints) chunk by chunk.

The field's realtime tools re-run such a model on a window of left context plus the new block and
keep the new part. Here a window is ``context + block + lookahead`` frames; the block's part is
taken ``lookahead`` frames from the right edge (where the model still sees some future).

* :class:`WindowedVocoder` (mel -> waveform) joins consecutive windows with SOLA: the new window's
  start is searched within ``+-sola_search`` samples for the best normalised cross-correlation
  with the previous window's predicted continuation, then the two are cross-faded over
  ``crossfade`` samples (raised cosine: aligned signals, gains summing to one). The search and
  cross-fade live inside the lookahead, so each step still returns exactly ``k * hop`` samples,
  ``lookahead_frames`` late.
* :class:`WindowedContent` (audio -> content frames) keeps the frames of the block's region.

Both follow the streaming protocol (``lookahead_frames``, ``init_state``, ``step``) so
:class:`comostream.models.chain.ConversionChain` can hold them where a streaming model would be.
A model that does not say its ``sample_rate`` / ``hop_length`` is taken to run at the project's
(:class:`~comostream.models.config.AudioConfig`).
Their output is close to, not equal to, a one-shot run (the price of window mode); their cost is one
model run over the whole window per block.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from comostream.models.config import AudioConfig, RealtimeConfig
from comostream.models.streaming import StreamState

__all__ = ["WindowedContent", "WindowedVocoder", "sola_offset"]


def sola_offset(reference: Tensor, signal: Tensor, search: int) -> int:
    """Offset ``o`` in ``[0, 2 * search]`` maximising the normalised correlation of
    ``signal[o : o + len(reference)]`` with ``reference`` (both 1-D); ``search`` if all silent."""
    n = reference.shape[0]
    if search == 0 or n == 0 or float(reference @ reference) <= 1e-12:
        return search
    frames = signal[: n + 2 * search].unfold(0, n, 1)  # (2 search + 1, n)
    num = frames @ reference
    den = torch.sqrt((frames * frames).sum(-1) * (reference @ reference) + 1e-12)
    score = num / den
    if not torch.isfinite(score).all():
        return search
    return int(torch.argmax(score))


class _Windowed(nn.Module):
    """Shared window bookkeeping: ``context`` past frames and ``lookahead`` future frames."""

    traceable = False  # SOLA chooses an offset from the data: never freeze it in a trace

    def __init__(self, model: nn.Module, rt: RealtimeConfig, hop: int, extra: int) -> None:
        super().__init__()
        self.model = model
        self.hop_length = hop
        rate = int(getattr(model, "sample_rate", AudioConfig().sample_rate))
        self.context_frames = max(1, math.ceil(rt.window_context_ms * rate / 1000 / hop))
        self.lookahead_frames: int = rt.window_lookahead_frames + extra
        self.left_frames = self.context_frames

    def _window(self, history: Tensor, new: Tensor) -> Tensor:
        """``history (S, C, H)`` (updated in place to the newest ``H`` frames) + ``new``."""
        window = torch.cat([history, new], dim=-1)
        history.copy_(window[..., window.shape[-1] - history.shape[-1] :])
        return window


class WindowedVocoder(_Windowed):
    """An external vocoder ``model(mel (S, n_mels, T)) -> (S, T * hop)`` in window mode.

    Implements ``step(mel (S, n_mels, k), f0_hz (S, k), state) -> ((S, k * hop), state)``,
    ``lookahead_frames`` late (the window lookahead plus the SOLA margin); F0 is not used.
    """

    def __init__(self, model: nn.Module, rt: RealtimeConfig | None = None) -> None:
        rt = rt or RealtimeConfig()
        audio = AudioConfig()
        hop = int(getattr(model, "hop_length", audio.hop_length))
        rate = int(getattr(model, "sample_rate", audio.sample_rate))
        self.crossfade = max(1, round(rt.crossfade_ms * rate / 1000))
        self.search = round(rt.sola_search_ms * rate / 1000)
        extra = math.ceil((self.crossfade + self.search) / hop)
        super().__init__(model, rt, hop, extra)
        self.n_mels = int(getattr(model, "n_mels", 100))
        t = torch.linspace(0.0, 1.0, self.crossfade + 2)[1:-1]
        fade_in = torch.sin(0.5 * math.pi * t) ** 2  # raised cosine: fades sum to 1
        self.register_buffer("fade_in", fade_in, persistent=False)
        self.register_buffer("fade_out", 1.0 - fade_in, persistent=False)

    def init_state(self, batch: int, device: Any = None, dtype: Any = None) -> StreamState:
        """Mel history (the log floor: silence) and the predicted continuation (zeros)."""
        dtype = dtype or torch.float32
        frames = self.context_frames + self.lookahead_frames
        return {
            "mel": torch.full(
                (batch, self.n_mels, frames), math.log(1e-5), device=device, dtype=dtype
            ),
            "tail": torch.zeros(batch, self.crossfade, device=device, dtype=dtype),
        }

    def step(self, mel: Tensor, f0_hz: Tensor, state: StreamState) -> tuple[Tensor, StreamState]:
        del f0_hz
        k = mel.shape[-1]
        window = self._window(state["mel"], mel)
        wav = self.model(window)  # (S, W * hop)
        hop, xf, s = self.hop_length, self.crossfade, self.search
        start = (window.shape[-1] - self.lookahead_frames - k) * hop - s
        outs = []
        for i in range(wav.shape[0]):
            w = wav[i, start:]
            o = sola_offset(state["tail"][i], w, s)
            body = w[o : o + k * hop].clone()
            body[:xf] = state["tail"][i] * self.fade_out + body[:xf] * self.fade_in
            state["tail"][i].copy_(w[o + k * hop : o + k * hop + xf])
            outs.append(body)
        return torch.stack(outs), state


class WindowedContent(_Windowed):
    """An external content model ``model(audio (S, N) at the model rate) -> (S, D, N // hop + 1)``
    (frame ``t`` centred at sample ``hop t``) in window mode.

    ``step(audio (S, k * hop), state) -> ((S, D, k), state)``, ``lookahead_frames`` late. The
    engine's per-frame audio is the hop ``[hop t, hop t + hop)``; a window starting at sample
    ``hop j`` therefore gives frame ``j`` as its first output frame.
    """

    def __init__(
        self, model: nn.Module, rt: RealtimeConfig | None = None, hop: int | None = None
    ) -> None:
        hop = AudioConfig().hop_length if hop is None else hop
        super().__init__(model, rt or RealtimeConfig(), hop, 0)
        self.dim = int(model.dim)

    def init_state(self, batch: int, device: Any = None, dtype: Any = None) -> StreamState:
        frames = self.context_frames + self.lookahead_frames
        return {
            "audio": torch.zeros(
                batch, frames * self.hop_length, device=device, dtype=dtype or torch.float32
            )
        }

    def step(self, audio: Tensor, state: StreamState) -> tuple[Tensor, StreamState]:
        k = audio.shape[-1] // self.hop_length
        window = self._window(state["audio"], audio)
        feats = self.model(window)  # (S, D, W + 1)
        w = window.shape[-1] // self.hop_length
        end = w - self.lookahead_frames
        return feats[..., end - k : end], state
