"""WORLD analysis, speech-to-song time warping, envelope warping and resynthesis.

Frame grid: frame ``t`` is centred at sample ``t * hop`` (WORLD frame period = 1000*hop/sr ms), so
the F0 given to :func:`render` is, frame for frame, the ground truth of the rendered audio, which
has exactly ``(T - 1) * hop`` samples for ``T`` frames (hence ``T == N // hop + 1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import pyworld as pw
import soundfile as sf

__all__ = [
    "Speech",
    "add_breathiness",
    "analyze",
    "clean_voicing",
    "frame_period_ms",
    "gather_frames",
    "load_resampled",
    "peak_normalize",
    "periodic_voicing",
    "render",
    "runs",
    "time_map",
    "warp_envelope",
]

GAP_CAP_FRAMES = 12  # longest consonant/pause kept between sung syllables (frames, ~128 ms)


def frame_period_ms(sample_rate: int, hop: int) -> float:
    """WORLD frame period in milliseconds for a hop of ``hop`` samples."""
    return 1000.0 * hop / sample_rate


def load_resampled(path: Path, sample_rate: int) -> np.ndarray:
    """Read a wav as mono float64 and resample it (polyphase) to ``sample_rate`` Hz."""
    x, sr = sf.read(str(path), dtype="float64", always_2d=True)
    x = x.mean(axis=1)
    if sr != sample_rate:
        from scipy.signal import resample_poly  # slow import (~1 s): keep it out of workers

        g = gcd(int(sr), int(sample_rate))
        x = resample_poly(x, sample_rate // g, int(sr) // g)
    return np.ascontiguousarray(x, dtype=np.float64)


@dataclass(frozen=True)
class Speech:
    """WORLD features of a spoken line: F0 (Hz), envelope, aperiodicity, cleaned voicing mask."""

    f0: np.ndarray
    sp: np.ndarray
    ap: np.ndarray
    voiced: np.ndarray


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open ``[start, end)`` frame runs where ``mask`` is True."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


def clean_voicing(voiced: np.ndarray, max_gap: int = 2, min_run: int = 4) -> np.ndarray:
    """Fill unvoiced gaps of <= ``max_gap`` frames, then drop voiced runs < ``min_run`` frames."""
    v = voiced.copy()
    r = runs(v)
    for (_, e0), (s1, _) in zip(r[:-1], r[1:], strict=True):
        if s1 - e0 <= max_gap:
            v[e0:s1] = True
    for s, e in runs(v):
        if e - s < min_run:
            v[s:e] = False
    return v


def analyze(x: np.ndarray, sr: int, hop: int, f0_floor: float, f0_ceil: float) -> Speech:
    """DIO + StoneMask F0, CheapTrick envelope, D4C aperiodicity and a voicing mask.

    Voiced = DIO voiced, low-band (< 1 kHz) aperiodicity < 0.5 and energy within 50 dB of the
    loudest frame (Harvest is not used here: it marks nearly every TTS frame voiced).
    """
    fp = frame_period_ms(sr, hop)
    f0, t = pw.dio(x, sr, f0_floor=f0_floor, f0_ceil=f0_ceil, frame_period=fp)
    f0 = pw.stonemask(x, f0, t, sr)
    sp = pw.cheaptrick(x, f0, t, sr)
    ap = pw.d4c(x, f0, t, sr)
    low = max(2, int(1000.0 / (sr / 2) * (ap.shape[1] - 1)))
    energy = 10.0 * np.log10(sp.sum(axis=1) + 1e-30)
    voiced = (f0 > 0) & (ap[:, 1:low].mean(axis=1) < 0.5) & (energy > energy.max() - 50.0)
    return Speech(f0, sp, ap, clean_voicing(voiced))


def _spread(start: float, stop: float, n: int) -> np.ndarray:
    """``n`` evenly spread positions over source frames ``[start, stop)`` (centre-aligned)."""
    return start + (np.arange(n) + 0.5) * (stop - start) / n - 0.5


def time_map(
    segments: list[tuple[int, int]], n_src: int, onsets: np.ndarray, n_out: int
) -> tuple[np.ndarray, np.ndarray]:
    """Map output frames to fractional source frames so that speech is sung on the notes.

    ``segments``: voiced source runs (syllable nuclei); ``onsets``: note onsets in output frames
    plus the end of the last note. Voiced runs are assigned to notes (weighted by length and
    count; a run may span several notes, melisma) and stretched to fill them; the consonants
    between runs keep their natural length up to ``GAP_CAP_FRAMES`` and end at the next onset.
    Returns ``(positions, voiced)``, both of length ``n_out``.
    """
    k, n = len(segments), len(onsets) - 1
    pos = np.zeros(n_out)
    vout = np.zeros(n_out, dtype=bool)
    if k == 0:
        return np.linspace(0.0, n_src - 1.0, n_out), vout
    lens = np.array([b - a for a, b in segments], dtype=np.float64)
    cum = np.concatenate([[0.0], np.cumsum(lens)]) / lens.sum()
    p = n * (0.5 * np.arange(k + 1) / k + 0.5 * cum)
    if k <= n:  # snap every run onto its own note onset
        q = np.zeros(k + 1, dtype=np.int64)
        q[k] = n
        for i in range(1, k):
            q[i] = min(max(round(p[i]), q[i - 1] + 1), n - (k - i))
        times = onsets[q]
    else:
        times = np.interp(p, np.arange(n + 1), onsets)
    bounds = np.clip(np.round(times).astype(np.int64), 0, n_out)
    a0 = segments[0][0]
    lead = int(bounds[0])
    m = min(a0, lead)
    pos[lead - m : lead] = np.arange(a0 - m, a0)
    for i, (a, b) in enumerate(segments):
        s, e = int(bounds[i]), int(bounds[i + 1])
        span = e - s
        gap_len = segments[i + 1][0] - b if i + 1 < k else 0
        g = min(gap_len, GAP_CAP_FRAMES, int(0.4 * span))
        v = span - g
        if v <= 0:
            continue
        pos[s : s + v] = np.clip(_spread(a, b, v), a, b - 1)
        vout[s : s + v] = True
        if g > 0:
            nxt = segments[i + 1][0]
            gap = np.arange(b, nxt) if g == gap_len else _spread(b, nxt, g)
            pos[s + v : e] = gap
    end, b_last = int(bounds[-1]), segments[-1][1]
    m = min(n_src - b_last, n_out - end)
    pos[end : end + m] = np.arange(b_last, b_last + m)
    pos[end + m :] = n_src - 1
    return np.clip(pos, 0.0, n_src - 1.0), vout


def gather_frames(sp: np.ndarray, ap: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, ...]:
    """Envelope (log-linear) and aperiodicity (linear) interpolated at fractional frames."""
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, len(sp) - 1)
    w = (pos - i0)[:, None]
    log_sp = np.log(np.maximum(sp, 1e-30))
    sp_o = np.exp((1.0 - w) * log_sp[i0] + w * log_sp[i1])
    ap_o = (1.0 - w) * ap[i0] + w * ap[i1]
    return np.ascontiguousarray(sp_o), np.ascontiguousarray(ap_o)


def _read_bins(sp: np.ndarray, fb: np.ndarray) -> np.ndarray:
    """``sp (T, bins)`` read at fractional bin positions ``fb (bins,)`` (clipped to the axis),
    interpolated in the log domain."""
    nb = sp.shape[1]
    fb = np.clip(fb, 0.0, nb - 1.0)
    j0 = np.minimum(np.floor(fb).astype(np.int64), nb - 2)
    f = fb - j0
    log_sp = np.log(np.maximum(sp, 1e-30))
    out = (1.0 - f) * log_sp[:, j0] + f * log_sp[:, j0 + 1]
    return np.ascontiguousarray(np.exp(out))


def warp_envelope(sp: np.ndarray, alpha: float) -> np.ndarray:
    """All-pass (bilinear) frequency warp of the envelope; ``alpha > 0`` moves formants up.

    Output bin at normalised frequency w reads the input at ``w - 2 atan(a sin w / (1 + a cos w))``
    (the inverse warp), interpolated in the log domain. ``alpha = 0`` returns ``sp`` unchanged.
    """
    if alpha == 0.0:
        return sp
    nb = sp.shape[1]
    w = np.pi * np.arange(nb) / (nb - 1)
    src = w - 2.0 * np.arctan(alpha * np.sin(w) / (1.0 + alpha * np.cos(w)))
    return _read_bins(sp, src / np.pi * (nb - 1))


JITTER_WIDTH_OCT = 0.5  # standard deviation of one band of :func:`jitter_envelope`, octaves


def jitter_envelope(sp: np.ndarray, bands: tuple[tuple[float, float], ...], sr: int) -> np.ndarray:
    """Smooth, monotone frequency warp of the envelope that moves each band on its own.

    ``bands``: (centre Hz, amount); around each centre the output at ``f`` reads the input at
    ``f * exp(amount * bump)`` (a Gaussian bump of :data:`JITTER_WIDTH_OCT` octaves on the
    log-frequency axis), so a formant near the centre moves by about ``-amount`` of its
    frequency while the others stay put: one vowel's formants of a person against another's,
    which a single all-pass warp (:func:`warp_envelope`) cannot make. Interpolated in the log
    domain; no bands returns ``sp`` unchanged.
    """
    if not bands:
        return sp
    nb = sp.shape[1]
    freq = np.linspace(0.0, sr / 2.0, nb)
    octaves = np.log2(np.maximum(freq, 20.0))
    g = np.zeros(nb)
    for centre, amount in bands:
        g += amount * np.exp(-0.5 * ((octaves - np.log2(centre)) / JITTER_WIDTH_OCT) ** 2)
    src = np.maximum.accumulate(freq * np.exp(g))  # monotone: no frequency read twice backwards
    return _read_bins(sp, src / (sr / 2.0) * (nb - 1))


def periodic_voicing(ap: np.ndarray, voiced: np.ndarray, sr: int) -> np.ndarray:
    """Cap aperiodicity on voiced frames: 0.1 below 1 kHz, rising to 1.0 at 5 kHz.

    Sung vowels are more periodic than speech; this also keeps the rendered F0 well defined.
    """
    freq = np.linspace(0.0, sr / 2.0, ap.shape[1])
    cap = 0.1 + 0.9 * np.clip((freq - 1000.0) / 4000.0, 0.0, 1.0)
    out = ap.copy()
    out[voiced] = np.minimum(out[voiced], cap[None, :])
    return out


def add_breathiness(ap: np.ndarray, amount: float, sr: int) -> np.ndarray:
    """Raise aperiodicity towards 1 by ``amount`` (0..1), ramping in from 1 kHz to 4 kHz."""
    if amount <= 0.0:
        return ap
    freq = np.linspace(0.0, sr / 2.0, ap.shape[1])
    ramp = np.clip((freq - 1000.0) / 3000.0, 0.0, 1.0)
    return np.ascontiguousarray(ap + amount * (1.0 - ap) * ramp[None, :])


def render(f0: np.ndarray, sp: np.ndarray, ap: np.ndarray, sr: int, hop: int) -> np.ndarray:
    """WORLD synthesis; returns exactly ``(len(f0) - 1) * hop`` samples (float64)."""
    y = pw.synthesize(
        np.ascontiguousarray(f0, dtype=np.float64),
        np.ascontiguousarray(sp, dtype=np.float64),
        np.ascontiguousarray(ap, dtype=np.float64),
        sr,
        frame_period_ms(sr, hop),
    )
    n = (len(f0) - 1) * hop
    return y[:n] if len(y) >= n else np.pad(y, (0, n - len(y)))


def peak_normalize(x: np.ndarray, peak_dbfs: float = -3.0) -> np.ndarray:
    """Scale so that the absolute peak is ``peak_dbfs`` dB re full scale (silence unchanged)."""
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if peak <= 0.0:
        return x
    return x * (10.0 ** (peak_dbfs / 20.0) / peak)
