"""Sample-exact harmonic-plus-noise synthesis for the streaming vocoder
(:mod:`comostream.models.vocoder`).

Everything here works on one causal *step* of ``k`` frames and is a pure function of its inputs
and of explicitly passed state values, so a whole sequence and any chunking of it compute the
same samples:

* the oscillator phase (radians, float64) is accumulated per frame and wrapped to ``[0, 2 pi)``;
  inside a frame the instantaneous frequency is interpolated linearly between the controls of
  the previous and the current frame, and the phase is its closed-form running sum;
* harmonic ``h`` (1-based) of a frame pair is ``sin(h * phase)`` weighted by amplitudes that
  move linearly from the previous frame's to the current frame's. With ``K = I * J`` harmonics
  (``I`` the largest divisor of ``K`` up to ``sqrt(K)``), ``h = J' I + i`` (``i = 1 .. I``,
  ``J' = 0 .. J - 1``) and ``sin(h x) = sin(J' I x) cos(i x) + cos(J' I x) sin(i x)``: per sample
  ``2 (I + J)`` sines (50 for 150 harmonics) instead of ``K``, the sums over ``i`` one batched
  matmul (:func:`harmonic_block`; 3-4x faster offline, and it no longer holds a ``(k hop, K)``
  table of sines);
* noise is white noise from a counter-based hash of the absolute sample index (no RNG state:
  identical in every schedule), shaped frame by frame in the FFT domain on Hann-windowed
  segments of ``2 * hop`` samples centred on each frame boundary and overlap-added (Hann at
  hop ``hop`` sums to one, so a unit gain returns the white noise itself). The second half of
  the last segment is carried to the next step.

Spectral envelopes live on the grid of mel-filter centre frequencies (slaney scale, as
:mod:`comostream.models.mel`); :class:`MelGrid` interpolates them at any frequency.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from comostream.models.config import AudioConfig

__all__ = [
    "TWO_PI",
    "MelGrid",
    "hash_uniform",
    "frame_phase",
    "harmonic_block",
    "harmonic_split",
    "noise_block",
    "filter_by_matmul",
    "filter_matrices",
    "hz_to_mel",
    "mel_to_hz",
]

TWO_PI = 2.0 * math.pi
_MASK32 = 0xFFFFFFFF
_HASH_MUL = 0x45D9F3B  # < 2**27: products of 32-bit values stay below 2**63 (no int64 overflow)
_SQRT3 = math.sqrt(3.0)  # uniform [-1, 1) scaled to unit variance

# slaney mel scale (librosa default): linear below 1 kHz, logarithmic above
_F_SP = 200.0 / 3.0  # Hz per mel below the break
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(f: Tensor) -> Tensor:
    """Slaney mel of ``f`` Hz (any shape)."""
    lin = f / _F_SP
    log = _MIN_LOG_MEL + torch.log(f.clamp(min=_MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return torch.where(f >= _MIN_LOG_HZ, log, lin)


def mel_to_hz(m: Tensor) -> Tensor:
    """Inverse of :func:`hz_to_mel`."""
    lin = m * _F_SP
    log = _MIN_LOG_HZ * torch.exp(_LOGSTEP * (m.clamp(min=_MIN_LOG_MEL) - _MIN_LOG_MEL))
    return torch.where(m >= _MIN_LOG_MEL, log, lin)


class MelGrid:
    """The centre frequencies of the ``n_mels`` mel filters as an interpolation grid."""

    def __init__(self, audio: AudioConfig) -> None:
        self.n = audio.n_mels
        lo = float(hz_to_mel(torch.tensor(audio.fmin, dtype=torch.float64)))
        hi = float(hz_to_mel(torch.tensor(audio.fmax, dtype=torch.float64)))
        self.mel_lo, self.mel_step = lo, (hi - lo) / (audio.n_mels + 1)

    def position(self, f_hz: Tensor) -> Tensor:
        """Fractional filter index of ``f_hz`` (any shape), clamped to ``[0, n_mels - 1]``."""
        pos = (hz_to_mel(f_hz) - self.mel_lo) / self.mel_step - 1.0
        return pos.clamp(0.0, self.n - 1.0)

    def width_hz(self, f_hz: Tensor) -> Tensor:
        """Full width (Hz) of a mel filter centred at ``f_hz`` (from one neighbour to the other)."""
        m = hz_to_mel(f_hz)
        return mel_to_hz(m + self.mel_step) - mel_to_hz((m - self.mel_step).clamp(min=0.0))

    def interp(self, env: Tensor, pos: Tensor) -> Tensor:
        """``env (B, n_mels, k)`` at fractional positions ``pos (B, P, k)`` -> ``(B, P, k)``."""
        i0 = pos.detach().floor().long().clamp(max=self.n - 2)
        w = pos - i0.to(pos.dtype)
        a = torch.gather(env, 1, i0)
        b = torch.gather(env, 1, i0 + 1)
        return a + w * (b - a)

    def matrix(self, f_hz: Tensor) -> Tensor:
        """Linear-interpolation matrix ``(len(f_hz), n_mels)``: ``M @ env`` = env at ``f_hz``."""
        pos = self.position(f_hz.to(torch.float64))
        i0 = pos.floor().long().clamp(max=self.n - 2)
        w = pos - i0.to(pos.dtype)
        rows = torch.arange(f_hz.numel())
        m = torch.zeros(f_hz.numel(), self.n, dtype=torch.float64)
        m[rows, i0] = 1.0 - w
        m[rows, i0 + 1] += w
        return m.to(torch.float32)


def hash_uniform(index: Tensor) -> Tensor:
    """Deterministic white noise: uniform ``[-1, 1)`` float32 of int64 sample indices (any shape).

    A 32-bit integer hash (two multiply-xorshift rounds) of the index: counter-based, so any
    schedule that asks for the same indices gets the same values. Negative indices are fine.
    """
    x = index & _MASK32
    x = (((x >> 16) ^ x) * _HASH_MUL) & _MASK32
    x = (((x >> 16) ^ x) * _HASH_MUL) & _MASK32
    x = (x >> 16) ^ x
    return (x >> 8).to(torch.float32) * (2.0 / 2**24) - 1.0


def frame_phase(
    f_prev: Tensor, f_cur: Tensor, phase0: Tensor, ramp: Tensor, sample_rate: int
) -> tuple[Tensor, Tensor]:
    """Oscillator phase of ``k`` frames of ``hop`` samples, float64 radians in ``[0, 2 pi)``.

    ``f_prev``, ``f_cur``: ``(B, k)`` Hz at the start and end of each frame (linear in between);
    ``phase0``: ``(B, 1)`` float64 phase before the first sample; ``ramp``: ``(hop,)`` float64
    ``j / hop``. Returns ``(phase (B, k, hop), phase after the last sample (B, 1))``. The phase
    at the start of each frame is the wrapped running sum of whole-frame increments, so the
    result does not depend on how the frames are grouped into steps (up to float64 rounding).
    """
    fp, fc = f_prev.to(torch.float64), f_cur.to(torch.float64)
    freq = fp.unsqueeze(-1) + ramp * (fc - fp).unsqueeze(-1)  # (B, k, hop) Hz
    within = torch.cumsum(freq * (TWO_PI / sample_rate), dim=-1)  # (B, k, hop)
    total = within[..., -1]  # (B, k) increment of each whole frame
    starts = torch.remainder(phase0 + torch.cumsum(total, dim=1) - total, TWO_PI)
    phase = torch.remainder(starts.unsqueeze(-1) + within, TWO_PI)
    end = torch.remainder(starts[:, -1:] + total[:, -1:], TWO_PI)
    return phase, end


def _factors(n: int) -> tuple[int, int]:
    """``(a, n // a)`` with ``a`` the largest divisor of ``n`` up to its square root."""
    a = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return a, n // a


def harmonic_split(n_harmonics: int) -> tuple[int, int]:
    """``(I, J)`` with ``I * J = n_harmonics``, ``I`` its largest divisor up to the square root:
    harmonic ``h = J' I + i`` is computed from ``i x`` and ``J' I x`` (module docstring)."""
    return _factors(n_harmonics)


def harmonic_block(
    phase: Tensor, amp_prev: Tensor, amp_cur: Tensor, harmonics: Tensor, ramp: Tensor
) -> Tensor:
    """Sum of harmonics over ``k`` frames: ``(B, k * hop)``.

    ``phase (B, k, hop)`` radians; ``amp_prev``/``amp_cur (B, K, k)``: amplitude of harmonic
    ``h`` at the start/end of each frame; ``harmonics (K,)`` = 1 .. K (float32); ``ramp (hop,)``
    float32 ``j / hop``. Sample ``j`` of frame ``i`` is
    ``sum_h sin(h * phase) * (amp_prev + ramp_j (amp_cur - amp_prev))``, computed by angle
    addition over ``K = I * J`` (module docstring; directly when that saves no sines).
    """
    b, k, hop = phase.shape
    f = b * k
    x = phase.to(torch.float32).reshape(f, hop, 1)
    inner, outer = harmonic_split(harmonics.shape[0])
    if 2 * (inner + outer) >= harmonics.shape[0]:  # e.g. a prime count: one sine per harmonic
        with torch.no_grad():  # the sinusoids need no gradient (F0 is an input)
            sines = torch.sin(x * harmonics)
        amps = torch.stack([amp_prev, amp_cur], dim=-1).permute(0, 2, 1, 3)  # (B, k, K, 2)
        ends = torch.bmm(sines, amps.reshape(f, -1, 2))  # (B * k, hop, 2)
    else:
        with torch.no_grad():  # [cos(i x), sin(i x), sin(J' I x), cos(J' I x)]: one sin call
            i = harmonics[:inner]
            j = harmonics[:outer] * inner - inner  # J' I, J' = 0 .. J - 1
            quarter = math.pi / 2  # cos(y) = sin(y + pi / 2)
            mult = torch.cat([i, i, j, j])
            shift = torch.cat([i * 0 + quarter, i * 0, j * 0, j * 0 + quarter])
            trig = torch.sin(x * mult + shift)  # (B * k, hop, 2 I + 2 J)
        # amplitudes of harmonic J' I + i as (frame, end, i, J'); a block matrix maps
        # [cos(i x), sin(i x)] to [sum_i a cos(i x), sum_i a sin(i x)] per end and J'
        a = torch.stack([amp_prev, amp_cur], dim=1).permute(0, 3, 1, 2)  # (B, k, 2, K)
        a = a.reshape(f, 2, outer, inner).transpose(-1, -2)  # (B * k, 2, I, J)
        zero = torch.zeros_like(a)
        w = torch.cat([torch.cat([a, zero], -1), torch.cat([zero, a], -1)], 2)  # (., 2, 2I, 2J)
        w = w.permute(0, 2, 1, 3).reshape(f, 2 * inner, 4 * outer)
        sums = torch.bmm(trig[..., : 2 * inner], w).view(f, hop, 2, 2 * outer)
        ends = (sums * trig[..., 2 * inner :].unsqueeze(2)).sum(-1)  # (B * k, hop, 2)
    out = ends[..., 0] + ramp * (ends[..., 1] - ends[..., 0])
    return out.reshape(b, k * hop)


def noise_block(
    gain: Tensor,
    first_index: Tensor,
    tail: Tensor | None,
    window: Tensor,
    dft: tuple[Tensor, ...] | None = None,
) -> tuple[Tensor, Tensor]:
    """Filtered noise of ``k`` frames: ``(out (B, k * hop), new tail (B, hop))``.

    ``gain (B, k, hop + 1)``: linear magnitude per FFT bin of each frame's segment;
    ``first_index (B,)`` int64: absolute index of the first output sample; ``tail (B, hop)``:
    the second half of the previous step's last segment (None = zeros); ``window (2 hop,)``:
    periodic Hann; ``dft``: :func:`filter_matrices` of ``2 hop`` as tensors (built here when
    None). Segment ``i`` covers samples ``first + i hop .. first + (i + 2) hop - 1``: its first
    half is added to frame ``i``'s output, its second half to frame ``i + 1``'s.
    """
    b, k, _ = gain.shape
    hop = window.shape[0] // 2
    offs = torch.arange(k, device=gain.device) * hop
    idx = first_index.view(b, 1, 1) + offs.view(1, k, 1) + torch.arange(2 * hop, device=gain.device)
    white = hash_uniform(idx).to(gain.dtype) * (_SQRT3 * window)
    if torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
        # ONNX has no complex tensors, and Inductor's C++ launcher would call back into Python
        # (taking the interpreter lock) for the inverse FFT: the same linear maps as matmuls
        seg = filter_by_matmul(white, gain, dft)
    else:
        seg = torch.fft.irfft(torch.fft.rfft(white) * gain, n=2 * hop)  # (B, k, 2 hop)
    first, second = seg[..., :hop], seg[..., hop:]
    carried = gain.new_zeros(b, 1, hop) if tail is None else tail.unsqueeze(1)
    out = first + torch.cat([carried, second[:, :-1]], dim=1)
    return out.reshape(b, k * hop), second[:, -1]


def filter_matrices(n: int) -> tuple[np.ndarray, ...]:
    """The constant matrices of :func:`filter_by_matmul` for ``n`` points (float64): a
    two-stage (Cooley-Tukey) DFT of ``n = p q`` points (``p`` the largest divisor of ``n`` up to
    ``sqrt(n)``; 16 x 32 for 512). Sample ``q n1 + n2`` -> bin ``k1 + p k2`` is a ``p``-point
    DFT over ``n1``, a twiddle ``exp(-2 pi i n2 k1 / n)`` and a ``q``-point DFT over ``n2``; the
    inverse runs the same on the Hermitian spectrum and keeps the real part. They hold
    ``2 (p + q)^2`` numbers instead of the ``2 n^2`` of a direct DFT: a step reads kilobytes, not
    2 MB, of them. In order: the forward ``p``-point DFT ``(p, 2p)``, the twiddle's real and
    imaginary parts ``(q, p)``, the forward ``q``-point DFT on ``[re | im]`` rows ``(2q, 2q)``,
    the inverse ``p``-point one ``(2p, 2p)`` and the inverse ``q``-point real part ``(2q, q)``."""
    p, q = _factors(n)
    i_p, i_q = np.arange(p), np.arange(q)
    w_p = np.exp(-2j * np.pi * np.outer(i_p, i_p) / p)  # (n1, k1)
    w_q = np.exp(-2j * np.pi * np.outer(i_q, i_q) / q)  # (n2, k2)
    twiddle = np.exp(-2j * np.pi * np.outer(i_q, i_p) / n)  # (n2, k1)

    def complex_rows(m: np.ndarray) -> np.ndarray:  # [re | im] rows times the complex matrix m
        return np.block([[m.real, m.imag], [-m.imag, m.real]])

    mats = (
        np.concatenate([w_p.real, w_p.imag], 1),
        twiddle.real,
        twiddle.imag,
        complex_rows(w_q),
        complex_rows(w_p.conj()),
        np.concatenate([w_q.real, w_q.imag], 0) / n,  # Re((b_re + i b_im) conj(w_q)) / n
    )
    return tuple(np.ascontiguousarray(m) for m in mats)


def filter_by_matmul(x: Tensor, gain: Tensor, dft: tuple[Tensor, ...] | None = None) -> Tensor:
    """``irfft(rfft(x) * gain)`` for real ``x (..., n)`` and ``gain (..., n // 2 + 1)`` as real
    matrix products (:func:`filter_matrices`; ``dft``: those as tensors, built here when None):
    what an ONNX export and the Inductor step run (no complex tensors)."""
    n = int(x.shape[-1])
    p, q = _factors(n)
    lead, half = x.shape[:-1], n // 2 + 1
    if dft is None:
        dft = tuple(torch.from_numpy(m) for m in filter_matrices(n))
    fwd_p, tw_re, tw_im, fwd_q, inv_p, inv_q = (m.to(x.device, x.dtype) for m in dft)

    def twiddled(a: Tensor, conj: bool) -> Tensor:  # [re | im] (.., q, 2p) -> (.., p, 2q)
        a_re, a_im, w_im = a[..., :p], a[..., p:], -tw_im if conj else tw_im
        b = torch.cat([a_re * tw_re - a_im * w_im, a_re * w_im + a_im * tw_re], -2)
        return b.transpose(-1, -2)

    # forward: x[q n1 + n2] -> X[k1 + p k2], bins 0 .. n / 2
    a = x.reshape(*lead, p, q).transpose(-1, -2) @ fwd_p
    spec = (twiddled(a, False) @ fwd_q).reshape(*lead, p, 2, q).transpose(-1, -3)
    re = spec[..., 0, :].reshape(*lead, n)[..., :half] * gain
    im = spec[..., 1, :].reshape(*lead, n)[..., :half] * gain
    # inverse: the Hermitian spectrum Y[q k1 + k2] -> the real part of y[m1 + p m2]
    full_re = torch.cat([re, re[..., 1 : half - 1].flip(-1)], -1).reshape(*lead, p, q)
    full_im = torch.cat([im, -im[..., 1 : half - 1].flip(-1)], -1).reshape(*lead, p, q)
    full = torch.cat([full_re, full_im], -2).transpose(-1, -2)  # (.., q[k2], [re | im](k1))
    a = full @ inv_p  # (.., q[k2], [re | im](m1))
    out = twiddled(a, True) @ inv_q  # (.., p[m1], q[m2])
    return out.transpose(-1, -2).reshape(*lead, n)
