"""The stream's geometry: one owner of the model rate, the frame hop, the block and its samples.

Like torchaudio's streaming bundles (``sample_rate``, ``hop_length``, ``segment_length``,
``right_context_length``), a :class:`StreamGeometry` is built once from the model's
:class:`~comostream.models.config.AudioConfig` and the
:class:`~comostream.models.config.RealtimeConfig` (with the chain's lookahead where it is known) and
read by every caller: the engine, the threaded runner, ``live``, ``serve`` and its clients,
``convert``, the demo and the benches. A block of ``B`` frames is ``B * hop`` samples at the model
rate and ``round(B * hop * rate / model_rate)`` (at least 1) at a device's ``rate``:
:meth:`StreamGeometry.samples_for` is the one place that says so.

:data:`INPUT_RATES` are the rates a stream may run at (a session's, a file's); a file at another
rate is resampled to :func:`stream_rate` of it first.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from comostream.models.config import AudioConfig, RealtimeConfig

__all__ = ["FALLBACK_RATE", "INPUT_RATES", "StreamGeometry", "stream_rate"]

INPUT_RATES: tuple[int, ...] = (16000, 22050, 24000, 32000, 44100, 48000)  # Hz
FALLBACK_RATE = 48000  # Hz: the rate a file at any other rate is streamed at


def stream_rate(rate: int) -> int:
    """The rate a ``rate`` Hz signal is streamed at: ``rate`` itself when it is one of
    :data:`INPUT_RATES`, else :data:`FALLBACK_RATE` (resample it first)."""
    return rate if rate in INPUT_RATES else FALLBACK_RATE


@dataclass(frozen=True)
class StreamGeometry:
    """Model rate, hop, block and lookahead of a stream, and their conversions.

    ``sample_rate``: Hz, the model rate; ``hop_length``: samples per frame at the model rate;
    ``block_frames``: frames per model step; ``lookahead_frames``: the chain's future frames
    (its right context; 0 where not known).
    """

    sample_rate: int
    hop_length: int
    block_frames: int
    lookahead_frames: int = 0

    def __post_init__(self) -> None:
        if min(self.sample_rate, self.hop_length, self.block_frames) < 1:
            raise ValueError("sample_rate, hop_length and block_frames must be >= 1")
        if self.lookahead_frames < 0:
            raise ValueError("lookahead_frames must be >= 0")

    @classmethod
    def from_configs(
        cls,
        audio: AudioConfig | None = None,
        realtime: RealtimeConfig | None = None,
        lookahead_frames: int = 0,
    ) -> StreamGeometry:
        """The geometry of ``audio`` (the model's) and ``realtime`` (defaults when None)."""
        a, rt = audio or AudioConfig(), realtime or RealtimeConfig()
        return cls(a.sample_rate, a.hop_length, rt.block_frames, int(lookahead_frames))

    def with_block(self, block_frames: int | None) -> StreamGeometry:
        """The same geometry with ``block_frames`` frames per step (None: unchanged)."""
        if block_frames is None:
            return self
        return dataclasses.replace(self, block_frames=block_frames)

    @property
    def frame_rate(self) -> float:
        """Frames per second."""
        return self.sample_rate / self.hop_length

    @property
    def frame_ms(self) -> float:
        """Duration of one frame (one hop) in ms."""
        return 1000.0 * self.hop_length / self.sample_rate

    @property
    def block_ms(self) -> float:
        """Duration of one block (one model step) in ms."""
        return 1000.0 * self.block_samples / self.sample_rate

    @property
    def lookahead_ms(self) -> float:
        """The chain's lookahead in ms."""
        return self.lookahead_frames * self.frame_ms

    @property
    def block_samples(self) -> int:
        """Samples of one block at the model rate (``block_frames * hop_length``)."""
        return self.block_frames * self.hop_length

    def samples_for(self, frames: int, rate: int | None = None) -> int:
        """Samples that ``frames`` frames last at ``rate`` Hz (the model rate when None):
        ``round(frames * hop * rate / model_rate)``, at least 1."""
        rate = self.sample_rate if rate is None else int(rate)
        return max(1, round(frames * self.hop_length * rate / self.sample_rate))

    def samples_per_block(self, rate: int | None = None) -> int:
        """Samples of one block at ``rate`` Hz (the model rate when None): a device's or a
        client's natural chunk."""
        return self.samples_for(self.block_frames, rate)
