"""A plain harmonic resynthesis of an F0 track: what a converter that follows the requested
pitch exactly would output, for ``bench quality``'s resynthesis floor (``f0_resynth_floor``)."""

from __future__ import annotations

import numpy as np

__all__ = ["harmonic_tone"]

HARMONICS = 40  # partials at most, amplitude 1/h (a sawtooth-like spectrum)
BAND_HZ = 8000.0  # no partial above this (nor above 0.45 x the sample rate)
LEVEL = 0.1  # peak amplitude of the fundamental


def harmonic_tone(
    f0_hz: np.ndarray, voiced: np.ndarray, sample_rate: int = 24000, hop: int = 256
) -> np.ndarray:
    """``(T * hop,)`` float32 samples at ``sample_rate``: partials of ``f0_hz (T,)`` (Hz per
    frame, frame ``t`` centred at sample ``t * hop``), linearly interpolated between frames,
    sounding on ``voiced (T,)`` frames (> 0 Hz) only and silent elsewhere (the pitch is held
    across the silences so the phase stays continuous); all silent when no frame is voiced."""
    f0 = np.asarray(f0_hz, np.float64)
    on = np.asarray(voiced, bool) & (f0 > 0)
    n = len(f0) * hop
    if not on.any():
        return np.zeros(n, np.float32)
    frames = np.arange(len(f0))
    held = np.interp(frames, frames[on], f0[on])  # unvoiced frames: the nearest voiced pitch
    pos = np.arange(n) / hop
    f = np.interp(pos, frames, held)  # Hz per sample
    gate = np.interp(pos, frames, on.astype(np.float64))
    phase = 2.0 * np.pi * np.cumsum(f) / sample_rate
    band = min(BAND_HZ, 0.45 * sample_rate)
    y = np.zeros(n)
    for h in range(1, HARMONICS + 1):
        below = h * f < band
        if not below.any():
            break
        y += np.where(below, np.sin(h * phase) / h, 0.0)
    return (LEVEL * y * gate).astype(np.float32)
