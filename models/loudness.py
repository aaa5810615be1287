"""Per-frame A-weighted loudness in dB, on the project frame grid (see
:mod:`comostream.models.frames`).

Definition: for each frame, with ``X_k`` the rFFT of the Hann-windowed frame ``w * x``,

    P = sum_k c_k * A(f_k)^2 * |X_k|^2 / (n_fft * sum(w^2)),   L = 10 * log10(max(P, 10^(floor/10)))

where ``c_k = 1`` for DC and Nyquist and 2 otherwise, and ``A(f)`` is the IEC 61672 A-weighting
amplitude response (0 dB at 1 kHz). By Parseval, without the weighting ``P`` is the
window-weighted mean square of the frame, so ``L`` is an A-weighted RMS level in dB re full
scale: a full-scale 1 kHz sine reads about -3.01 dB, and gain ``g`` adds exactly ``20 log10 g``
dB above the floor (default -100 dB, so silence is finite).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from comostream.models.config import AudioConfig
from comostream.models.frames import (
    Framer,
    IncrementalFeature,
    as_batch,
    frame_signal,
    periodic_hann,
    stft_power,
)

__all__ = ["FLOOR_DB", "a_weighting_db", "Loudness", "loudness", "IncrementalLoudness"]

FLOOR_DB = -100.0  # dB, lowest reported loudness


def a_weighting_db(freqs: np.ndarray) -> np.ndarray:
    """IEC 61672 A-weighting gain in dB at ``freqs`` (Hz); ``-inf`` at 0 Hz."""
    f2 = np.asarray(freqs, dtype=np.float64) ** 2
    num = (12194.0**2) * f2**2
    den = (f2 + 20.6**2) * np.sqrt((f2 + 107.7**2) * (f2 + 737.9**2)) * (f2 + 12194.0**2)
    with np.errstate(divide="ignore"):
        return 20.0 * np.log10(num / den) + 2.0


def _power_weights(cfg: AudioConfig, window: Tensor) -> Tensor:
    """Per-bin weights ``(n_fft // 2 + 1,)`` mapping ``|X_k|^2`` to A-weighted mean square."""
    n_freqs = cfg.n_fft // 2 + 1
    freqs = np.arange(n_freqs) * cfg.sample_rate / cfg.n_fft
    gain = 10.0 ** (a_weighting_db(freqs) / 10.0)  # power gain; 0 at DC
    sides = np.full(n_freqs, 2.0)
    sides[0] = sides[-1] = 1.0
    norm = cfg.n_fft * float(np.sum(window.double().numpy() ** 2))
    return torch.from_numpy(gain * sides / norm).to(torch.float32)


class Loudness(nn.Module):
    """Offline loudness: ``(B, samples)`` -> ``(B, T)`` dB float32; ``(samples,)`` -> ``(T,)``."""

    window: Tensor
    weights: Tensor

    def __init__(self, cfg: AudioConfig | None = None, floor_db: float = FLOOR_DB) -> None:
        super().__init__()
        self.cfg = cfg or AudioConfig()
        self.floor_db = floor_db
        window = periodic_hann(self.cfg.win_length, self.cfg.n_fft)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("weights", _power_weights(self.cfg, window), persistent=False)

    def forward(self, audio: Tensor) -> Tensor:
        x, squeeze = as_batch(audio)
        frames = frame_signal(x.to(self.window.device), self.cfg.n_fft, self.cfg.hop_length)
        out = self.from_frames(frames)
        return out[0] if squeeze else out

    def from_frames(self, frames: Tensor) -> Tensor:
        """Loudness of raw (unwindowed) frames ``(B, k, n_fft)`` -> ``(B, k)`` dB."""
        return self.from_power(stft_power(frames, self.window))

    def from_power(self, power: Tensor) -> Tensor:
        """Loudness from a power spectrum ``(B, k, n_fft // 2 + 1)`` -> ``(B, k)`` dB."""
        # Accumulate in float64 with an elementwise product: a matmul's blocking depends on the
        # batch shape, which would make streamed and one-shot frames differ in the last bits.
        p = (power.double() * self.weights.double()).sum(-1)
        floor = 10.0 ** (self.floor_db / 10.0)
        return (10.0 * torch.log10(torch.clamp(p, min=floor))).to(power.dtype)


def loudness(
    audio: np.ndarray | Tensor, cfg: AudioConfig | None = None, floor_db: float = FLOOR_DB
) -> np.ndarray | Tensor:
    """Loudness in dB: ``(samples,)`` -> ``(T,)``, ``(B, samples)`` -> ``(B, T)``.

    Returns numpy float32 for numpy input, a tensor (on the input's device) for tensor input.
    """
    is_numpy = not isinstance(audio, Tensor)
    x = torch.from_numpy(np.asarray(audio)) if is_numpy else audio
    with torch.no_grad():
        out = Loudness(cfg, floor_db).to(x.device)(x)
    return out.numpy() if is_numpy else out


class IncrementalLoudness(IncrementalFeature):
    """Streaming loudness, identical to :class:`Loudness` once flushed.

    Same contract as :class:`comostream.models.mel.IncrementalMel`: ``init_state`` / ``step`` /
    ``finish`` or ``push`` / ``flush`` / ``reset``; outputs are ``(B, k)`` dB.
    """

    def __init__(
        self,
        cfg: AudioConfig | None = None,
        device: torch.device | str | None = None,
        capacity: int | None = None,
        floor_db: float = FLOOR_DB,
    ) -> None:
        self.cfg = cfg or AudioConfig()
        self.loudness = Loudness(self.cfg, floor_db)
        framer = Framer(self.cfg.n_fft, self.cfg.hop_length, capacity)
        super().__init__(framer, self.loudness.from_frames, module=self.loudness, device=device)
