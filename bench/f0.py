"""F0 benchmark: accuracy and cost of each backend against a corpus's exact F0.

Metrics (frames on the 24 kHz / hop-256 grid, pooled over all utterances of the split):

- ``rpa``: raw pitch accuracy, the fraction of ground-truth-voiced frames whose estimate is
  voiced and within 50 cents;
- ``rca``: raw chroma accuracy, the same with octave errors forgiven;
- ``vde``: voicing decision error, the fraction of all frames whose voiced flags disagree;
- ``rtf``: wall-clock compute seconds per second of audio (extraction + post-processing, on the
  configured device and torch threads; the first call of each backend, which loads models and
  compiles kernels, is made on a warm-up clip and not timed);
- ``seconds`` / ``frames``: audio evaluated.

``rpa``/``rca``/``vde`` are measured after :func:`comostream.models.f0_post.postprocess` (the F0 the
models are trained on); ``rpa_raw``/``vde_raw`` are the backend output before it (for ``yin`` that
output already includes its causal post-processing: it is what the streaming engine uses).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from comostream.models.audio import read_audio
from comostream.models.config import F0Config
from comostream.models.f0 import BACKENDS, extract_f0
from comostream.models.f0_post import cents, postprocess
from comostream.models.f0_track import HOP_LENGTH, SAMPLE_RATE, F0Track, n_frames
from comostream.training.corpus import CorpusError, load_corpus, select

__all__ = [
    "F0Scores",
    "format_f0_table",
    "run_f0_bench",
    "score_f0",
    "synthetic_singing",
]

CENTS_TOLERANCE = 50.0  # cents


@dataclass
class F0Scores:
    """Frame counts pooled over utterances; the ratios are properties."""

    voiced_ref: int = 0  # ground-truth voiced frames
    pitch_ok: int = 0  # of those: estimate voiced and within 50 cents
    chroma_ok: int = 0  # of those: estimate voiced and within 50 cents modulo octaves
    voicing_err: int = 0  # frames whose voiced flags disagree
    frames: int = 0

    def add(self, est: F0Track, ref_f0: np.ndarray) -> None:
        """Accumulate one utterance: ``est`` (T,) against reference Hz (T,), 0 = unvoiced."""
        t = min(est.n_frames, ref_f0.shape[0])
        ref = np.asarray(ref_f0[:t], dtype=np.float64)
        f0 = np.asarray(est.f0_hz[:t], dtype=np.float64)
        est_v = np.asarray(est.voiced[:t], dtype=bool) & (f0 > 0)
        ref_v = ref > 0
        both = ref_v & est_v
        diff = cents(np.where(both, f0, 1.0), np.where(both, ref, 1.0))
        chroma = np.abs(diff - 1200.0 * np.round(diff / 1200.0))
        self.voiced_ref += int(ref_v.sum())
        self.pitch_ok += int((both & (np.abs(diff) <= CENTS_TOLERANCE)).sum())
        self.chroma_ok += int((both & (chroma <= CENTS_TOLERANCE)).sum())
        self.voicing_err += int((ref_v != est_v).sum())
        self.frames += t

    @property
    def rpa(self) -> float:
        return self.pitch_ok / max(self.voiced_ref, 1)

    @property
    def rca(self) -> float:
        return self.chroma_ok / max(self.voiced_ref, 1)

    @property
    def vde(self) -> float:
        return self.voicing_err / max(self.frames, 1)


def score_f0(est: F0Track, ref_f0: np.ndarray) -> dict[str, float]:
    """``rpa``, ``rca``, ``vde`` of one track against reference F0 (T,) Hz."""
    s = F0Scores()
    s.add(est, ref_f0)
    return {"rpa": s.rpa, "rca": s.rca, "vde": s.vde}


def run_f0_bench(
    corpus_dir: Path,
    backends: Sequence[str] | None = BACKENDS,
    split: str = "test",
    max_utterances: int | None = None,
    cfg: F0Config | None = None,
    progress: bool = True,
    device: str | None = None,
) -> dict[str, dict[str, float]]:
    """Per backend: ``rpa``, ``rca``, ``vde`` (post-processed), ``rpa_raw``, ``vde_raw``,
    ``rtf`` (compute s per audio s), ``seconds``, ``frames`` over ``split`` of the corpus.

    ``backends=None`` means all of :data:`comostream.models.f0.BACKENDS`. ``device`` is for CREPE
    (CPU).
    """
    cfg = cfg or F0Config()
    names = list(BACKENDS if backends is None else backends)
    for name in names:
        if name not in BACKENDS:
            raise ValueError(f"unknown F0 backend {name!r}; known: {', '.join(BACKENDS)}")
    rows = [u for u in select(load_corpus(Path(corpus_dir)), split=split) if u.f0_path]
    if max_utterances is not None:
        rows = rows[:max_utterances]
    if not rows:
        raise CorpusError(
            f"no {split!r} utterances with exact F0 in {corpus_dir}: bench f0 needs a corpus "
            "made by `comostream prep synth DIR`"
        )
    warmup = synthetic_singing(0.5, seed=1)[0]
    results: dict[str, dict[str, float]] = {}
    for name in names:
        extract_f0(warmup, SAMPLE_RATE, cfg, name, device=device)  # load model, compile
        post, raw = F0Scores(), F0Scores()
        compute = seconds = 0.0
        for row in tqdm(rows, desc=f"f0 {name}", disable=not progress, file=sys.stderr):
            audio, sr = read_audio(row.path)
            ref = np.load(row.f0_path).astype(np.float32)
            start = time.perf_counter()
            track = extract_f0(audio, sr, cfg, name, device=device)
            smooth = postprocess(track, cfg)
            compute += time.perf_counter() - start
            seconds += audio.shape[0] / sr
            raw.add(track, ref)
            post.add(smooth, ref)
        results[name] = {
            "rpa": post.rpa,
            "rca": post.rca,
            "vde": post.vde,
            "rpa_raw": raw.rpa,
            "vde_raw": raw.vde,
            "rtf": compute / max(seconds, 1e-9),
            "seconds": seconds,
            "frames": float(post.frames),
        }
    return results


def format_f0_table(results: dict[str, dict[str, float]]) -> str:
    """A Markdown table of :func:`run_f0_bench` results, one row per backend."""
    lines = [
        "| backend | RPA | RCA | VDE | RPA raw | VDE raw | RTF | audio s | frames |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r.get('rpa', float('nan')):.3f} | {r.get('rca', float('nan')):.3f} "
            f"| {r.get('vde', float('nan')):.3f} | {r.get('rpa_raw', float('nan')):.3f} "
            f"| {r.get('vde_raw', float('nan')):.3f} | {r.get('rtf', float('nan')):.3f} "
            f"| {r.get('seconds', 0.0):.1f} | {int(r.get('frames', 0))} |"
        )
    return "\n".join(lines)


def _envelope(freqs: np.ndarray, formants: Sequence[float]) -> np.ndarray:
    """A vowel-like power envelope (bins,): formant bumps on a -12 dB/octave tilt."""
    tilt = 1.0 / (1.0 + (freqs / 300.0) ** 2)
    bumps = sum(
        g * np.exp(-0.5 * ((freqs - f) / (60.0 + 0.06 * f)) ** 2)
        for f, g in zip(formants, (1.0, 0.5, 0.2, 0.1), strict=False)
    )
    return 1e-3 * (tilt * (0.05 + 20.0 * bumps) + 1e-6)


def synthetic_singing(
    seconds: float = 3.0, seed: int = 0, base_midi: float = 60.0
) -> tuple[np.ndarray, np.ndarray]:
    """A WORLD-synthesised "sung" phrase and its exact F0.

    Notes of 0.25-0.6 s around ``base_midi`` (+-7 semitones) with 5-6.5 Hz vibrato, 40 ms
    portamento, vowel-like formants and breathy unvoiced gaps. Returns audio float32 (N,) at
    24 kHz (peak 0.5) and F0 float32 (T,) Hz on the project grid, 0 = unvoiced.
    """
    import pyworld

    rng = np.random.default_rng(seed)
    n = int(round(seconds * SAMPLE_RATE))
    t_frames = n_frames(n)
    hop_s = HOP_LENGTH / SAMPLE_RATE
    midi = np.full(t_frames, np.nan)
    t = int(0.1 / hop_s)  # leading silence/breath
    scale = np.array([-7, -5, -3, -2, 0, 2, 4, 5, 7], dtype=float)
    while t < t_frames - int(0.1 / hop_s):
        length = int(rng.uniform(0.25, 0.6) / hop_s)
        midi[t : t + length] = base_midi + rng.choice(scale)
        t += length
        if rng.random() < 0.4:
            t += int(rng.uniform(0.05, 0.15) / hop_s)
    voiced = ~np.isnan(midi)
    # 40 ms portamento inside voiced runs (moving average of the note steps).
    k = max(1, int(0.04 / hop_s))
    pad = (k // 2, k - 1 - k // 2)
    wsum = np.convolve(np.pad(np.where(voiced, midi, 0.0), pad), np.ones(k), "valid")
    cnt = np.convolve(np.pad(voiced.astype(float), pad), np.ones(k), "valid")
    smooth = np.where(voiced, wsum / np.maximum(cnt, 1), np.nan)
    times = np.arange(t_frames) * hop_s
    rate, depth = rng.uniform(5.0, 6.5), rng.uniform(0.2, 0.5)  # Hz, semitones
    smooth = smooth + depth * np.sin(2 * np.pi * rate * times)
    f0 = np.where(voiced, 440.0 * np.exp2((np.nan_to_num(smooth) - 69.0) / 12.0), 0.0)

    fft_size = 1024
    freqs = np.linspace(0, SAMPLE_RATE / 2, fft_size // 2 + 1)
    vowels = [(700, 1200, 2600, 3500), (300, 2300, 3000, 3700), (450, 800, 2700, 3500)]
    sp = np.empty((t_frames, freqs.size))
    vowel = np.array(vowels[0])
    for i in range(t_frames):
        if i % 30 == 0:
            vowel = np.array(vowels[rng.integers(len(vowels))])
        sp[i] = _envelope(freqs, vowel) * (1.0 if voiced[i] else 0.02)
    ap = np.clip((freqs / 8000.0) ** 2, 1e-3, 0.9)[None, :].repeat(t_frames, axis=0)
    y = pyworld.synthesize(f0, sp, ap, SAMPLE_RATE, 1000.0 * hop_s)
    y = np.pad(y, (0, max(0, n - y.size)))[:n]
    y = 0.5 * y / max(np.abs(y).max(), 1e-9)
    return y.astype(np.float32), f0.astype(np.float32)
