"""Information perturbation with WORLD: change who sings, keep what is sung and when.

An utterance is analysed once (CheapTrick envelope, D4C aperiodicity on a given or DIO+StoneMask
F0, frame period = one hop), then resynthesised with a random :class:`Perturbation`: F0 times
``2 ** (semitones / 12)`` (envelope kept, so formants stay put), an all-pass frequency warp of
the envelope (formant shift, :func:`comostream.training.world_ops.warp_envelope`), optionally
a formant jitter that moves a few formant regions on their own
(:func:`~comostream.training.world_ops.jitter_envelope`), a random EQ (a few 1-octave Gaussian
peaking bands on a log-frequency axis) and added breathiness. The frame grid
is kept: ``T`` frames in, ``(T - 1) * hop`` samples out, so the perturbed mel has the same ``T``
frames as the original and stays frame-aligned with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyworld as pw

from comostream.models.config import ContentConfig, F0Config
from comostream.training import world_ops as wo

__all__ = ["Perturbation", "WorldAnalysis", "analyze_utterance", "draw_perturbation", "perturb"]

EQ_FMIN_HZ, EQ_FMAX_HZ = 150.0, 8000.0  # range of the random EQ band centres
EQ_WIDTH_OCT = 0.5  # standard deviation of a band's Gaussian bump, octaves (~1 octave wide)
JITTER_BANDS = 3  # formant jitter: bands moved on their own (``[content] formant_jitter``)
JITTER_FMIN_HZ, JITTER_FMAX_HZ = 300.0, 5000.0  # range of their centres (F1 to F4)


@dataclass(frozen=True)
class WorldAnalysis:
    """WORLD features on the project frame grid: ``f0`` (T,) Hz (0 = unvoiced),
    ``sp`` / ``ap`` (T, n_fft_world // 2 + 1) power envelope / aperiodicity, at ``sample_rate``;
    ``rms``: the analysed audio's RMS (full scale 1)."""

    f0: np.ndarray
    sp: np.ndarray
    ap: np.ndarray
    sample_rate: int
    hop: int
    rms: float


@dataclass(frozen=True)
class Perturbation:
    """One random change of singer: pitch (semitones), envelope warp ``alpha``, EQ bands
    (centre Hz, gain dB) and breathiness (0..1)."""

    semitones: float
    formant_alpha: float
    eq: tuple[tuple[float, float], ...]
    breathiness: float
    jitter: tuple[tuple[float, float], ...] = ()  # formant jitter bands (centre Hz, amount)


def analyze_utterance(
    audio: np.ndarray,
    sample_rate: int,
    hop: int,
    f0: np.ndarray | None = None,
    f0_cfg: F0Config | None = None,
) -> WorldAnalysis:
    """Analyse ``audio (samples,)`` on ``T = samples // hop + 1`` frames.

    ``f0`` (T,) Hz (e.g. the corpus's ground truth) is used as is; otherwise DIO + StoneMask
    within ``f0_cfg``'s range.
    """
    x = np.ascontiguousarray(audio, dtype=np.float64)
    frames = x.shape[0] // hop + 1
    t = np.arange(frames, dtype=np.float64) * hop / sample_rate
    if f0 is None:
        fc = f0_cfg or F0Config()
        period = wo.frame_period_ms(sample_rate, hop)
        f0_w, t_w = pw.dio(x, sample_rate, f0_floor=fc.fmin, f0_ceil=fc.fmax, frame_period=period)
        f0_w = pw.stonemask(x, f0_w, t_w, sample_rate)
        f0_hz = np.zeros(frames)
        n = min(frames, len(f0_w))
        f0_hz[:n] = f0_w[:n]
    else:
        if f0.shape != (frames,):
            raise ValueError(f"f0 has shape {f0.shape}, expected ({frames},) frames")
        f0_hz = np.asarray(f0, dtype=np.float64)
    sp = pw.cheaptrick(x, f0_hz, t, sample_rate)
    ap = pw.d4c(x, f0_hz, t, sample_rate)
    rms = float(np.sqrt(np.mean(x**2))) if x.size else 0.0
    return WorldAnalysis(f0_hz, sp, ap, sample_rate, hop, rms)


def draw_perturbation(rng: np.random.Generator, cfg: ContentConfig) -> Perturbation:
    """A random :class:`Perturbation` within ``cfg``'s ranges (random signs)."""
    sign = rng.choice([-1.0, 1.0], size=2)
    semitones = sign[0] * rng.uniform(cfg.pitch_shift_min, cfg.pitch_shift_max)
    alpha = sign[1] * rng.uniform(cfg.formant_alpha_min, cfg.formant_alpha_max)
    centres = np.exp(rng.uniform(np.log(EQ_FMIN_HZ), np.log(EQ_FMAX_HZ), size=cfg.eq_bands))
    gains = rng.uniform(-cfg.eq_db, cfg.eq_db, size=cfg.eq_bands)
    eq = tuple((float(c), float(g)) for c, g in zip(centres, gains, strict=True))
    breath = rng.uniform(0.0, cfg.breathiness_max)
    jitter: tuple[tuple[float, float], ...] = ()
    if cfg.formant_jitter > 0:  # drawn last, only when on: other settings keep their draws
        c = np.exp(rng.uniform(np.log(JITTER_FMIN_HZ), np.log(JITTER_FMAX_HZ), JITTER_BANDS))
        a = rng.uniform(-cfg.formant_jitter, cfg.formant_jitter, JITTER_BANDS)
        jitter = tuple((float(x), float(y)) for x, y in zip(c, a, strict=True))
    return Perturbation(float(semitones), float(alpha), eq, float(breath), jitter)


def eq_curve(eq: tuple[tuple[float, float], ...], bins: int, sample_rate: int) -> np.ndarray:
    """Power gain ``(bins,)`` over 0 .. sample_rate / 2 of the EQ bands (1.0 = flat)."""
    freq = np.linspace(0.0, sample_rate / 2.0, bins)
    octaves = np.log2(np.maximum(freq, 20.0))
    gain_db = np.zeros(bins)
    for centre, gain in eq:
        gain_db += gain * np.exp(-0.5 * ((octaves - np.log2(centre)) / EQ_WIDTH_OCT) ** 2)
    return 10.0 ** (gain_db / 10.0)


def perturb(world: WorldAnalysis, p: Perturbation) -> np.ndarray:
    """Resynthesise ``world`` changed by ``p``: ``(T - 1) * hop`` samples, float64, at the
    original level (RMS matched; level changes are applied to the mel at training time)."""
    sr = world.sample_rate
    f0 = np.where(world.f0 > 0, world.f0 * 2.0 ** (p.semitones / 12.0), 0.0)
    sp = wo.jitter_envelope(wo.warp_envelope(world.sp, p.formant_alpha), p.jitter, sr)
    sp = sp * eq_curve(p.eq, sp.shape[1], sr)[None, :]
    ap = wo.add_breathiness(world.ap, p.breathiness, sr)
    y = wo.render(f0, np.ascontiguousarray(sp), ap, sr, world.hop)
    rms_y = float(np.sqrt(np.mean(y**2))) if y.size else 0.0
    return y * (world.rms / rms_y) if rms_y > 0 else y
