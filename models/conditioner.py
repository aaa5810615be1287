"""Per-frame condition for the denoiser: content + F0 + loudness + singer -> ``(B, Cg, T)``.

F0 enters as log-F0 (octaves re 200 Hz) of a *continuous* track plus the voiced flag. The caller
prepares it: transposition first (:func:`comostream.models.f0_post.transpose`, unvoiced 0 Hz stays
0), then the gaps filled (:func:`f0_inputs`, i.e.
:func:`comostream.models.f0_post.interpolate_unvoiced`; the two commute except when nothing is
voiced). Gap filling by interpolation needs the next voiced frame, so it is an offline operation; a
realtime caller holds the last voiced F0 instead.

The conditioner is streaming-native: frame-wise 1x1 convs plus one causal context conv with no
lookahead (``lookahead_frames == 0``), with the usual ``init_state`` / ``step`` / ``flush``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from comostream.models.config import ModelConfig
from comostream.models.mix import BadMixError, check_mix
from comostream.models.streaming import (
    CausalConv1d,
    FrameLinear,
    StreamingStack,
    StreamState,
    child,
    pad_future,
)

__all__ = [
    "BadMixError",
    "Conditioner",
    "SpeakerSpec",
    "SpeakerTable",
    "UnknownSpeakerError",
    "check_mix",
    "f0_inputs",
    "resolve_speaker",
]

F0_REF_HZ = 200.0  # Hz, log-F0 feature = log2(f0 / F0_REF_HZ) (octaves)
LOUDNESS_REF_DB = -40.0  # dB: loudness feature = (dB - REF) / SCALE
LOUDNESS_SCALE_DB = 20.0  # dB
CONTEXT_KERNEL = 3  # frames of past the causal context conv sees (itself included)

SpeakerSpec = str | Mapping[str, float]  # one singer's name, or a mix {name: weight}


class UnknownSpeakerError(KeyError):
    """A singer name not in the table; the message lists the known names."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = tuple(known)

    def __str__(self) -> str:
        return f"unknown speaker {self.name!r}; known speakers: {', '.join(self.known)}"


def resolve_speaker(spec: SpeakerSpec | None, known: Sequence[str]) -> SpeakerSpec:
    """The singer a conversion uses: ``spec`` (a name or a mix ``{name: weight}``) with every
    name checked against ``known``, or the default singer (the first) for None. Raises
    :class:`UnknownSpeakerError` for a name not in ``known``."""
    if spec is None:
        return known[0]
    for name in [spec] if isinstance(spec, str) else list(spec):
        if name not in known:
            raise UnknownSpeakerError(name, known)
    return spec


class SpeakerTable(nn.Module):
    """Singer names -> rows of an ``nn.Embedding (n_speakers, dim)``; mixes are weighted sums."""

    def __init__(self, names: Sequence[str], dim: int) -> None:
        super().__init__()
        if not names or len(set(names)) != len(names):
            raise ValueError("speaker names must be non-empty and unique")
        self._names = list(names)
        self.embedding = nn.Embedding(len(names), dim)

    @property
    def names(self) -> tuple[str, ...]:
        """The known singers, in row order (store them with the checkpoint)."""
        return tuple(self._names)

    def resolve(self, spec: SpeakerSpec | None) -> SpeakerSpec:
        """``spec`` checked, or the default singer for None (:func:`resolve_speaker`)."""
        return resolve_speaker(spec, self._names)

    def index(self, name: str) -> int:
        """Row of ``name``; raises :class:`UnknownSpeakerError` listing the known names."""
        try:
            return self._names.index(name)
        except ValueError:
            raise UnknownSpeakerError(name, self._names) from None

    def weights(self, spec: SpeakerSpec) -> Tensor:
        """Mixing weights ``(n_speakers,)``: one-hot for a name, normalised to sum 1 for a mix
        (checked by :func:`~comostream.models.mix.check_mix`: a :class:`BadMixError`, a
        ValueError, for non-finite, negative or huge weights or a zero sum)."""
        w = torch.zeros(len(self._names), dtype=torch.float64)
        items = {spec: 1.0} if isinstance(spec, str) else check_mix(spec)
        for name, weight in items.items():
            w[self.index(name)] += weight
        return (w / w.sum()).to(torch.float32).to(self.embedding.weight.device)

    def embed(self, specs: SpeakerSpec | Sequence[SpeakerSpec]) -> Tensor:
        """Embeddings ``(B, dim)`` of one spec (B = 1) or a list of specs."""
        if isinstance(specs, (str, Mapping)):
            specs = [specs]
        w = torch.stack([self.weights(s) for s in specs])
        return w.to(self.embedding.weight.dtype) @ self.embedding.weight

    def add_speaker(self, name: str) -> int:
        """Append ``name`` (a new row, the mean of the others) and return its row; existing rows
        are kept. The embedding parameter is replaced: build optimisers afterwards."""
        if name in self._names:
            raise ValueError(f"speaker {name!r} already exists")
        old = self.embedding.weight.detach()
        new = nn.Embedding(old.shape[0] + 1, old.shape[1], device=old.device, dtype=old.dtype)
        with torch.no_grad():
            new.weight[:-1] = old
            new.weight[-1] = old.mean(dim=0)
        self.embedding = new
        self._names.append(name)
        return len(self._names) - 1

    def forward(self, index: Tensor) -> Tensor:
        """Rows ``(B, dim)`` for integer ``index (B,)``."""
        return self.embedding(index)


class Conditioner(StreamingStack):
    """``(content (B, Cc, T), f0_hz (B, T), voiced (B, T), loudness_db (B, T), speaker)`` ->
    ``(B, cond_channels, T)``.

    ``f0_hz`` is continuous (gaps filled, already transposed), in Hz; ``voiced`` bool or 0/1;
    ``loudness_db`` A-weighted dB re full scale. ``speaker``: integer rows ``(B,)``, embeddings
    ``(B, speaker_dim)``, or a :data:`SpeakerSpec` / list of them.
    """

    def __init__(self, cfg: ModelConfig, speakers: Sequence[str]) -> None:
        super().__init__()
        channels = cfg.cond_channels
        self.speakers = SpeakerTable(speakers, cfg.speaker_dim)
        self.input = FrameLinear(cfg.content_dim + 3, channels)
        self.speaker_proj = nn.Linear(cfg.speaker_dim, channels)
        self.context = CausalConv1d(channels, channels, CONTEXT_KERNEL)
        self.output = FrameLinear(channels, channels)
        self.lookahead_frames: int = self.context.lookahead_frames
        self.left_frames: int = self.context.left_frames

    def speaker_embedding(self, speaker: Tensor | SpeakerSpec | Sequence[SpeakerSpec]) -> Tensor:
        """``(B, speaker_dim)`` from rows, embeddings or names/mixes."""
        if isinstance(speaker, Tensor):
            return self.speakers(speaker) if not speaker.is_floating_point() else speaker
        return self.speakers.embed(speaker)

    def features(
        self, content: Tensor, f0_hz: Tensor, voiced: Tensor, loudness_db: Tensor
    ) -> Tensor:
        """Frame features ``(B, Cc + 3, T)``: content, log2(f0/200 Hz), voiced, loudness."""
        log_f0 = torch.log2(f0_hz.clamp(min=1.0) / F0_REF_HZ)
        loud = (loudness_db - LOUDNESS_REF_DB) / LOUDNESS_SCALE_DB
        extra = torch.stack([log_f0, voiced.to(content.dtype), loud], dim=1).to(content.dtype)
        return torch.cat([content, extra], dim=1)

    def run(
        self,
        content: Tensor,
        f0_hz: Tensor,
        voiced: Tensor,
        loudness_db: Tensor,
        speaker: Tensor | SpeakerSpec | Sequence[SpeakerSpec],
        state: StreamState | None,
    ) -> Tensor:
        """Causal computation over ``k`` frames."""
        spk = self.speaker_proj(self.speaker_embedding(speaker).to(content.dtype))
        h = self.input(self.features(content, f0_hz, voiced, loudness_db)) + spk.unsqueeze(-1)
        h = (h + self.context.run(F.silu(h), child(state, "context"))) * math.sqrt(0.5)
        return self.output(F.silu(h))

    def forward(
        self,
        content: Tensor,
        f0_hz: Tensor,
        voiced: Tensor,
        loudness_db: Tensor,
        speaker: Tensor | SpeakerSpec | Sequence[SpeakerSpec],
    ) -> Tensor:
        """One-shot, aligned: ``(B, cond_channels, T)``."""
        d = self.lookahead_frames
        ins = [pad_future(t, d) for t in (content, f0_hz, voiced.to(content.dtype), loudness_db)]
        return self.run(*ins, speaker, None)[..., d:]

    def step(
        self,
        content: Tensor,
        f0_hz: Tensor,
        voiced: Tensor,
        loudness_db: Tensor,
        speaker: Tensor | SpeakerSpec | Sequence[SpeakerSpec],
        state: StreamState,
    ) -> tuple[Tensor, StreamState]:
        """One chunk of ``k`` frames -> ``(B, cond_channels, k)``, ``lookahead_frames`` late."""
        return self.run(content, f0_hz, voiced, loudness_db, speaker, state), state

    def flush(
        self,
        speaker: Tensor | SpeakerSpec | Sequence[SpeakerSpec],
        state: StreamState,
        batch: int,
    ) -> Tensor:
        """The last ``lookahead_frames`` outputs ``(B, cond_channels, L)``: feeds zero frames."""
        ref = self.input.weight
        if self.lookahead_frames == 0:
            return ref.new_zeros(batch, ref.shape[0], 0)
        zeros = ref.new_zeros(batch, self.lookahead_frames)
        content = ref.new_zeros(batch, ref.shape[1] - 3, self.lookahead_frames)
        return self.run(content, zeros, zeros, zeros, speaker, state)


def f0_inputs(f0_hz: np.ndarray, voiced: np.ndarray | None = None) -> tuple[Tensor, Tensor]:
    """Offline F0 preparation: ``(T,)`` Hz (0 = unvoiced, transposed already) ->
    ``(f0_continuous (T,) Hz, voiced (T,) bool)`` via ``interpolate_unvoiced``."""
    from comostream.models.f0_post import interpolate_unvoiced  # numba: imported only when needed

    f0 = np.asarray(f0_hz, dtype=np.float32)
    v = f0 > 0 if voiced is None else np.asarray(voiced, dtype=bool) & (f0 > 0)
    return torch.from_numpy(interpolate_unvoiced(f0, v)), torch.from_numpy(v)
