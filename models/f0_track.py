"""What every F0 backend shares: the frame grid, the input check and the result type
(:class:`F0Track`). The backends are in :mod:`comostream.models.f0` (CREPE, WORLD, and the
dispatch) and :mod:`comostream.models.f0_yin` (the streaming YIN tracker).

Framing convention (project-wide): for ``N`` samples at 24 kHz with hop 256 there are
``T = N // 256 + 1`` frames and frame ``t`` is centred at sample ``t * 256`` (time
``t * 256 / 24000`` s). Every backend returns exactly ``T`` frames on that grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["F0Track", "check_audio", "n_frames", "SAMPLE_RATE", "HOP_LENGTH"]

SAMPLE_RATE = 24000  # Hz, the model rate
HOP_LENGTH = 256  # samples per frame at SAMPLE_RATE


@dataclass(frozen=True, eq=False)
class F0Track:
    """Per-frame F0 on the 24 kHz / hop-256 grid.

    f0_hz: float32 (T,), Hz, 0.0 where unvoiced. voiced: bool (T,).
    periodicity: float32 (T,) in [0, 1] (CREPE confidence) or None (WORLD backends).
    """

    f0_hz: np.ndarray
    voiced: np.ndarray
    periodicity: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.f0_hz.ndim != 1 or self.voiced.shape != self.f0_hz.shape:
            raise ValueError("F0Track: f0_hz and voiced must be 1-D arrays of equal length")
        if self.periodicity is not None and self.periodicity.shape != self.f0_hz.shape:
            raise ValueError("F0Track: periodicity must have the same shape as f0_hz")

    @property
    def n_frames(self) -> int:
        """Number of frames T."""
        return int(self.f0_hz.shape[0])


def n_frames(n_samples: int, hop_length: int = HOP_LENGTH) -> int:
    """Frames T for ``n_samples`` samples: ``n_samples // hop_length + 1``."""
    return n_samples // hop_length + 1


def check_audio(audio: np.ndarray) -> np.ndarray:
    """Validate and return ``audio`` as contiguous float32 (samples,)."""
    a = np.asarray(audio)
    if a.ndim != 1:
        raise ValueError(f"audio must be mono with shape (samples,), got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"audio must be floating point (float32), got {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise ValueError("audio contains NaN or inf samples")
    return np.ascontiguousarray(a, dtype=np.float32)
