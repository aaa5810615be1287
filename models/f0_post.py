"""F0 post-processing: octave-jump repair, voiced median smoothing, interpolation, transposition.

All functions take per-frame arrays on the project grid (T,) with F0 in Hz and 0.0 = unvoiced.
The per-frame loops are numba ``@njit(cache=True)`` kernels working in log2-F0 (octaves).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from comostream.models.config import DEFAULT_F0_HZ, F0Config
from comostream.models.f0_track import F0Track

__all__ = [
    "cents",
    "f0_from_log",
    "interpolate_unvoiced",
    "log_f0",
    "median_smooth",
    "postprocess",
    "repair_octaves",
    "transpose",
]


@njit(cache=True)
def _octave_repair_kernel(
    oct_: np.ndarray, voiced: np.ndarray, radius: int, tol: float, min_neighbours: int
) -> np.ndarray:
    """Fold frames lying ~+-1 (or 2) octaves from the median of their voiced neighbours."""
    t_frames = oct_.shape[0]
    out = oct_.copy()
    buf = np.empty(2 * radius + 1)
    for t in range(t_frames):
        if not voiced[t]:
            continue
        n = 0
        for k in range(max(0, t - radius), min(t_frames, t + radius + 1)):
            if voiced[k]:
                buf[n] = oct_[k]
                n += 1
        if n < min_neighbours + 1:
            continue
        ref = np.median(buf[:n])
        d = oct_[t] - ref
        jump = np.round(d)
        if jump != 0.0 and abs(d - jump) < tol and abs(jump) <= 2.0:
            out[t] = oct_[t] - jump
    return out


@njit(cache=True)
def _median_kernel(x: np.ndarray, voiced: np.ndarray, radius: int) -> np.ndarray:
    """Median over the voiced frames of the same voiced run within +-radius frames."""
    t_frames = x.shape[0]
    out = x.copy()
    buf = np.empty(2 * radius + 1)
    for t in range(t_frames):
        if not voiced[t]:
            continue
        n = 0
        k = t
        while k >= 0 and k >= t - radius and voiced[k]:
            buf[n] = x[k]
            n += 1
            k -= 1
        k = t + 1
        while k < t_frames and k <= t + radius and voiced[k]:
            buf[n] = x[k]
            n += 1
            k += 1
        out[t] = np.median(buf[:n])
    return out


def _as_f0(f0_hz: np.ndarray) -> np.ndarray:
    a = np.asarray(f0_hz, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"f0 must have shape (frames,), got {a.shape}")
    return a


def repair_octaves(
    f0_hz: np.ndarray,
    voiced: np.ndarray,
    radius: int = 10,
    tol: float = 0.25,
    min_neighbours: int = 4,
) -> np.ndarray:
    """Fix octave jumps: float32 (T,) Hz.

    A voiced frame whose log2-F0 is within ``tol`` octaves of +-1 or +-2 octaves from the median
    of the voiced frames within +-``radius`` frames is folded back onto that median's octave.
    Runs shorter than about ``radius`` frames are repaired; longer ones (real leaps) are kept.
    """
    f0 = _as_f0(f0_hz)
    v = np.asarray(voiced, dtype=bool) & (f0 > 0)
    oct_ = np.zeros_like(f0)
    oct_[v] = np.log2(f0[v])
    fixed = _octave_repair_kernel(oct_, v, int(radius), float(tol), int(min_neighbours))
    return np.where(v, np.exp2(fixed), 0.0).astype(np.float32)


def median_smooth(f0_hz: np.ndarray, voiced: np.ndarray, frames: int = 3) -> np.ndarray:
    """Median filter (window ``frames``, odd) over voiced frames of each voiced run; (T,) Hz."""
    if frames < 1 or frames % 2 == 0:
        raise ValueError(f"median window must be odd and >= 1, got {frames}")
    f0 = _as_f0(f0_hz)
    v = np.asarray(voiced, dtype=bool) & (f0 > 0)
    if frames == 1:
        return np.where(v, f0, 0.0).astype(np.float32)
    out = _median_kernel(f0, v, frames // 2)
    return np.where(v, out, 0.0).astype(np.float32)


def interpolate_unvoiced(
    f0_hz: np.ndarray, voiced: np.ndarray, default_hz: float = DEFAULT_F0_HZ
) -> np.ndarray:
    """Continuous F0 float32 (T,) Hz: linear in log-F0 across unvoiced gaps, edges held.

    With no voiced frame at all, every frame is ``default_hz``.
    """
    f0 = _as_f0(f0_hz)
    v = np.asarray(voiced, dtype=bool) & (f0 > 0)
    if not v.any():
        return np.full(f0.shape, default_hz, np.float32)
    idx = np.flatnonzero(v)
    logs = np.interp(np.arange(f0.shape[0]), idx, np.log(f0[idx]))
    return np.exp(logs).astype(np.float32)


def transpose(f0_hz: np.ndarray, semitones: float | np.ndarray) -> np.ndarray:
    """F0 shifted by ``semitones`` (scalar or per-frame (T,)); 0 Hz (unvoiced) stays 0."""
    f0 = np.asarray(f0_hz, dtype=np.float64)
    return (f0 * np.exp2(np.asarray(semitones, dtype=np.float64) / 12.0)).astype(np.float32)


def log_f0(f0_hz: np.ndarray, unvoiced_value: float = 0.0) -> np.ndarray:
    """Natural-log F0 float32 (T,) where F0 > 0, ``unvoiced_value`` elsewhere."""
    f0 = np.asarray(f0_hz, dtype=np.float64)
    out = np.full(f0.shape, unvoiced_value, np.float64)
    pos = f0 > 0
    out[pos] = np.log(f0[pos])
    return out.astype(np.float32)


def f0_from_log(log_f0_: np.ndarray, voiced: np.ndarray | None = None) -> np.ndarray:
    """Inverse of :func:`log_f0`: Hz float32 (T,), 0.0 where ``voiced`` is False."""
    f0 = np.exp(np.asarray(log_f0_, dtype=np.float64))
    if voiced is not None:
        f0 = np.where(np.asarray(voiced, dtype=bool), f0, 0.0)
    return f0.astype(np.float32)


def cents(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """Interval ``1200 * log2(a / b)`` in cents (float64); NaN where a or b is <= 0."""
    a_ = np.asarray(a, dtype=np.float64)
    b_ = np.asarray(b, dtype=np.float64)
    ok = (a_ > 0) & (b_ > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 1200.0 * np.log2(np.where(ok, a_, 1.0) / np.where(ok, b_, 1.0))
    return np.where(ok, out, np.nan)


def postprocess(track: F0Track, cfg: F0Config | None = None) -> F0Track:
    """Octave repair (if ``cfg.octave_repair``), then median smoothing (``cfg.median_frames``).

    The voiced mask and periodicity are kept; F0 stays 0.0 on unvoiced frames.
    """
    cfg = cfg or F0Config()
    f0 = np.asarray(track.f0_hz, dtype=np.float32)
    voiced = np.asarray(track.voiced, dtype=bool) & (f0 > 0)
    if cfg.octave_repair:
        f0 = repair_octaves(f0, voiced)
    f0 = median_smooth(f0, voiced, cfg.median_frames)
    return F0Track(f0, voiced, track.periodicity)
