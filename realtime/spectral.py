"""The front end's per-frame log-mel and loudness from one STFT, in one GIL-free numba kernel.

:class:`~comostream.models.mel.MelSpectrogram` and :class:`~comostream.models.loudness.Loudness`
each window and transform the frames, then run a handful of small torch ops; per block of a
stream that is two FFTs and some twenty dispatches. :class:`FrameSpectra` windows and transforms
the frames once (torch's rFFT, as the offline modules: numpy's differs in the last bits, which
the log of a near-silent bin magnifies) and computes both features in
:func:`_mel_loudness` (``nogil``: streams on other threads run meanwhile), with the same
definitions: ``log(max(M @ sqrt(|X|^2 + 1e-9), log_floor))`` with the mel filterbank ``M`` summed
over its nonzero bins only (each triangular filter spans a few dozen of the 513; float64
accumulation), and the A-weighted mean square ``sum_k w_k |X_k|^2`` in float64 (as
:meth:`~comostream.models.loudness.Loudness.from_power`). The results equal the torch modules'
to float32 rounding (``tests/test_block_cost.py``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit
from torch import Tensor

from comostream.models.config import AudioConfig
from comostream.models.loudness import FLOOR_DB, Loudness
from comostream.models.mel import MAG_EPS, MelSpectrogram

__all__ = ["FrameSpectra"]


@njit(cache=True, nogil=True)
def _mel_loudness(
    spec: np.ndarray,
    basis: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    loud_w: np.ndarray,
    log_floor: float,
    power_floor: float,
    mel: np.ndarray,
    loud: np.ndarray,
) -> None:
    """``spec (k, F, 2)`` float32 spectrum (real, imaginary) -> ``mel (n_mels, k)`` natural-log
    and ``loud (k,)`` dB (float32, written in place). ``basis (n_mels, F)`` float32 filterbank,
    nonzero only in ``[lo[m], hi[m])``; ``loud_w (F,)`` float64 A-weighted power weights."""
    k, n_bins, _ = spec.shape
    mag = np.empty(n_bins, np.float32)
    eps = np.float32(MAG_EPS)
    for t in range(k):
        p = 0.0
        for j in range(n_bins):
            re, im = spec[t, j, 0], spec[t, j, 1]
            power = re * re + im * im  # float32, as torch squares them
            mag[j] = np.sqrt(power + eps)
            p += np.float64(power) * loud_w[j]
        for m in range(basis.shape[0]):
            acc = 0.0
            for j in range(lo[m], hi[m]):
                acc += np.float64(basis[m, j]) * np.float64(mag[j])
            mel[m, t] = math.log(max(np.float32(acc), np.float32(log_floor)))
        loud[t] = 10.0 * math.log10(max(p, power_floor))


class FrameSpectra:
    """Log-mel ``(n_mels, k)`` and loudness ``(k,)`` dB of raw frames ``(1, k, n_fft)`` (one
    stream), as :class:`~comostream.models.mel.MelSpectrogram` and
    :class:`~comostream.models.loudness.Loudness` compute them (module docstring)."""

    def __init__(self, audio: AudioConfig, floor_db: float = FLOOR_DB) -> None:
        mel, loud = MelSpectrogram(audio), Loudness(audio, floor_db)
        if not torch.equal(mel.window, loud.window):
            raise ValueError("mel and loudness must share the analysis window")
        self.window = mel.window  # (n_fft,) float32
        self.basis = np.ascontiguousarray(mel.mel_basis.numpy())
        nonzero = self.basis != 0.0
        any_bin = nonzero.any(axis=1)
        first = np.argmax(nonzero, axis=1)
        last = self.basis.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)
        self.lo = np.where(any_bin, first, 0).astype(np.int64)
        self.hi = np.where(any_bin, last, 0).astype(np.int64)
        self.loud_w = loud.weights.double().numpy()  # the float32 weights, as Loudness uses them
        self.log_floor = float(audio.log_floor)
        self.power_floor = 10.0 ** (floor_db / 10.0)

    def __call__(self, frames: Tensor) -> tuple[np.ndarray, np.ndarray]:
        spec = torch.fft.rfft(frames[0] * self.window, dim=-1)  # (k, F) complex64
        k = spec.shape[0]
        mel = np.empty((self.basis.shape[0], k), np.float32)
        loud = np.empty(k, np.float32)
        parts = torch.view_as_real(spec).numpy()  # (k, F, 2), no copy
        args = (self.basis, self.lo, self.hi, self.loud_w, self.log_floor, self.power_floor)
        _mel_loudness(parts, *args, mel, loud)
        return mel, loud
