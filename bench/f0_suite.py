"""A known-pitch suite for F0 trackers, synthesised at run time with exact F0 (WORLD).

Each condition is a few short phrases (audio float32 (N,) at 24 kHz, exact F0 float32 (T,) Hz on
the project grid, 0 = unvoiced), made from a note plan with vowel-like formants
(:func:`vowel_envelope`, shared with :func:`comostream.bench.f0.synthetic_singing`):

- ``leaps``: legato octave leaps up and down (and fifths) with 30 ms portamento, 110-520 Hz;
- ``vibrato``: long notes with wide, fast vibrato (+-1 semitone at 5.5-7.5 Hz);
- ``breathy``: notes with strong aperiodicity in every band (a breathy voice);
- ``low``: notes between 65 and 98 Hz;
- ``high``: notes between 700 and 1000 Hz.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from comostream.models.f0_track import HOP_LENGTH, SAMPLE_RATE, n_frames

__all__ = ["SUITE_CONDITIONS", "known_pitch_suite", "render_notes", "vowel_envelope"]

SUITE_CONDITIONS: tuple[str, ...] = ("leaps", "vibrato", "breathy", "low", "high")
_HOP_S = HOP_LENGTH / SAMPLE_RATE  # seconds per frame
_VOWELS = ((700, 1200, 2600, 3500), (300, 2300, 3000, 3700), (450, 800, 2700, 3500))


def vowel_envelope(freqs: np.ndarray, formants: Sequence[float]) -> np.ndarray:
    """A vowel-like power envelope (bins,): formant bumps on a -12 dB/octave tilt."""
    tilt = 1.0 / (1.0 + (freqs / 300.0) ** 2)
    bumps = sum(
        g * np.exp(-0.5 * ((freqs - f) / (60.0 + 0.06 * f)) ** 2)
        for f, g in zip(formants, (1.0, 0.5, 0.2, 0.1), strict=False)
    )
    return 1e-3 * (tilt * (0.05 + 20.0 * bumps) + 1e-6)


def render_notes(
    notes: Sequence[tuple[float, float]],
    *,
    vibrato_cents: float = 30.0,
    vibrato_hz: float = 5.5,
    glide_s: float = 0.03,
    aperiodicity: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """WORLD-synthesise a phrase of ``notes`` ``(hz, seconds)`` (``hz = 0``: a breath gap).

    Consecutive voiced notes are joined by a ``glide_s`` linear glide in cents (legato); every
    voiced frame gets sinusoidal vibrato of ``vibrato_cents`` at ``vibrato_hz``. ``aperiodicity``
    in [0, 1) raises every band's aperiodicity to at least that (breathiness). 0.1 s of silence
    is added on both sides. Returns audio float32 (N,) at 24 kHz (peak 0.5) and its exact F0
    float32 (T,) Hz, 0 = unvoiced.
    """
    import pyworld

    rng = np.random.default_rng(seed)
    lead = int(round(0.1 / _HOP_S))
    cents: list[float] = [np.nan] * lead
    for hz, seconds in notes:
        cents += [1200.0 * np.log2(hz / 440.0) if hz > 0 else np.nan] * int(round(seconds / _HOP_S))
    cents += [np.nan] * lead
    c = np.array(cents)
    voiced = ~np.isnan(c)
    # legato glides: between adjacent voiced notes, a linear ramp over glide_s centred on the step
    half = max(1, int(round(glide_s / _HOP_S / 2)))
    steps = np.where(voiced[1:] & voiced[:-1] & (np.diff(np.nan_to_num(c)) != 0))[0] + 1
    smooth = c.copy()
    for s in steps:
        lo, hi = max(s - half, 0), min(s + half, c.size - 1)
        if voiced[lo : hi + 1].all():
            smooth[lo : hi + 1] = np.linspace(c[lo], c[hi], hi - lo + 1)
    t_frames = c.size
    times = np.arange(t_frames) * _HOP_S
    smooth = smooth + vibrato_cents * np.sin(2.0 * np.pi * vibrato_hz * times + rng.uniform(0, 6))
    f0 = np.where(voiced, 440.0 * np.exp2(np.nan_to_num(smooth) / 1200.0), 0.0)

    fft_size = 2048  # fine enough for 65 Hz (pyworld's default minimum for 24 kHz)
    freqs = np.linspace(0, SAMPLE_RATE / 2, fft_size // 2 + 1)
    sp = np.empty((t_frames, freqs.size))
    vowel = np.array(_VOWELS[0])
    for i in range(t_frames):
        if i % 25 == 0:
            vowel = np.array(_VOWELS[rng.integers(len(_VOWELS))])
        sp[i] = vowel_envelope(freqs, vowel) * (1.0 if voiced[i] else 0.02)
    ap = np.clip((freqs / 8000.0) ** 2, max(aperiodicity, 1e-3), 0.95)[None, :]
    ap = ap.repeat(t_frames, axis=0)
    y = pyworld.synthesize(f0, sp, ap, SAMPLE_RATE, 1000.0 * _HOP_S)
    n = (t_frames - 1) * HOP_LENGTH
    y = np.pad(y, (0, max(0, n - y.size)))[:n]
    y = 0.5 * y / max(np.abs(y).max(), 1e-9)
    assert n_frames(n) == t_frames
    return y.astype(np.float32), f0.astype(np.float32)


def _plans(seed: int) -> dict[str, list[dict]]:
    """Per condition: keyword arguments of :func:`render_notes` for each phrase."""
    rng = np.random.default_rng(seed)

    def dur() -> float:
        return float(rng.uniform(0.25, 0.45))

    leaps = []
    for base in (110.0, 196.0, 262.0):
        leaps.append(
            {
                "notes": [(base, dur()), (2 * base, dur()), (base, dur()), (1.5 * base, dur())]
                + [(2 * base, dur()), (base, dur())],
                "vibrato_cents": 20.0,
            }
        )
    vibrato = [
        {
            "notes": [(hz, 0.9), (hz * 2 ** (5 / 12), 0.9)],
            "vibrato_cents": 100.0,
            "vibrato_hz": float(rng.uniform(5.5, 7.5)),
        }
        for hz in (150.0, 330.0)
    ]
    breathy = [
        {"notes": [(hz, dur()), (0, 0.1), (hz * 1.25, dur()), (hz, dur())], "aperiodicity": 0.3}
        for hz in (180.0, 300.0, 440.0)
    ]
    low = [
        {"notes": [(65.0, dur()), (73.4, dur()), (82.4, dur()), (98.0, dur()), (73.4, dur())]},
        {"notes": [(87.3, dur()), (0, 0.1), (69.3, dur()), (92.5, dur())]},
    ]
    high = [
        {"notes": [(700.0, dur()), (784.0, dur()), (880.0, dur()), (1000.0, dur())]},
        {"notes": [(740.0, dur()), (0, 0.1), (932.0, dur()), (830.0, dur())]},
    ]
    return {"leaps": leaps, "vibrato": vibrato, "breathy": breathy, "low": low, "high": high}


def known_pitch_suite(
    conditions: Sequence[str] = SUITE_CONDITIONS, seed: int = 0
) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Per condition: a list of ``(audio (N,) float32 at 24 kHz, exact F0 (T,) Hz)`` phrases."""
    unknown = set(conditions) - set(SUITE_CONDITIONS)
    if unknown:
        raise ValueError(
            f"unknown suite conditions {sorted(unknown)}; known: {', '.join(SUITE_CONDITIONS)}"
        )
    plans = _plans(seed)
    return {
        name: [render_notes(**plan, seed=seed + i) for i, plan in enumerate(plans[name])]
        for name in conditions
    }
