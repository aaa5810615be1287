"""F0 benchmark: accuracy and cost of each backend against a corpus's exact F0.

Metrics (frames on the 24 kHz / hop-256 grid, pooled over all utterances of the split):

- ``rpa``: raw pitch accuracy, the fraction of ground-truth-voiced frames whose estimate is
  voiced and within 50 cents;
- ``rca``: raw chroma accuracy, the same with octave errors forgiven;
- ``vde``: voicing decision error, the fraction of all frames whose voiced flags disagree;
- ``gross``: gross pitch error, the fraction of frames voiced in both the reference and the
  estimate whose estimate is more than 50 cents off (voicing misses are in ``vde``);
- ``octave``: of the same frames, those off by a whole number of octaves (within 50 cents of
  +-1200 k cents, k != 0): the part of ``gross`` that is an octave jump;
- ``lookahead_ms``: how far past a frame's centre a streaming backend reads before it outputs
  the frame (analysis window and decoding lag; ``None`` for offline backends, which read the
  whole file);
- ``rtf``: wall-clock compute seconds per second of audio (extraction + post-processing, on the
  configured device and torch threads; the first call of each backend, which loads models and
  compiles kernels, is made on a warm-up clip and not timed);
- ``seconds`` / ``frames``: audio evaluated.

``suite`` (unless ``suite=False``): per condition of the known-pitch suite
(:mod:`comostream.bench.f0_suite`: octave leaps, vibrato, breathy, low and high notes,
synthesised at run time with exact F0), ``gross``, ``octave``, ``vde`` and ``frames`` of the
backend output as is.

``rpa``/``rca``/``vde``/``gross``/``octave`` are measured after
:func:`comostream.models.f0_post.postprocess` (the F0 the models are trained on); the ``_raw``
ones are the backend output before it (for ``yin`` and ``yin-track`` that output already
includes their causal post-processing or decoding: it is what the streaming engine uses).
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from comostream.bench.f0_suite import known_pitch_suite, vowel_envelope
from comostream.models.audio import read_audio
from comostream.models.config import STREAMING_F0_BACKENDS, F0Config
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
    voiced_both: int = 0  # frames voiced in both the reference and the estimate
    gross_err: int = 0  # of those: more than 50 cents off
    octave_err: int = 0  # of those: off by a whole number of octaves (+-50 cents)

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
        off = both & (np.abs(diff) > CENTS_TOLERANCE)
        self.voiced_both += int(both.sum())
        self.gross_err += int(off.sum())
        self.octave_err += int((off & (chroma <= CENTS_TOLERANCE)).sum())

    @property
    def rpa(self) -> float:
        return self.pitch_ok / max(self.voiced_ref, 1)

    @property
    def rca(self) -> float:
        return self.chroma_ok / max(self.voiced_ref, 1)

    @property
    def vde(self) -> float:
        return self.voicing_err / max(self.frames, 1)

    @property
    def gross(self) -> float:
        return self.gross_err / max(self.voiced_both, 1)

    @property
    def octave(self) -> float:
        return self.octave_err / max(self.voiced_both, 1)


def score_f0(est: F0Track, ref_f0: np.ndarray) -> dict[str, float]:
    """``rpa``, ``rca``, ``vde``, ``gross``, ``octave`` of one track against reference F0 (T,)
    Hz."""
    s = F0Scores()
    s.add(est, ref_f0)
    return {"rpa": s.rpa, "rca": s.rca, "vde": s.vde, "gross": s.gross, "octave": s.octave}


def lookahead_ms(backend: str) -> float | None:
    """Milliseconds past a frame's centre that streaming ``backend`` reads before it outputs the
    frame (window overhang plus decoding lag); None for an offline backend."""
    from comostream.models.f0_stream import streaming_tracker

    if backend not in STREAMING_F0_BACKENDS:
        return None
    tracker = streaming_tracker(backend)
    samples = tracker.lookahead_samples + HOP_LENGTH * tracker.lookahead_frames
    return 1000.0 * samples / SAMPLE_RATE


def run_suite(
    backend: str,
    cfg: F0Config | None = None,
    device: str | None = None,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Per known-pitch condition: ``gross``, ``octave``, ``vde``, ``frames`` of ``backend``'s
    output (no post-processing) against the exact F0 (:mod:`comostream.bench.f0_suite`)."""
    out: dict[str, dict[str, float]] = {}
    for cond, phrases in _suite_cache(seed).items():
        s = F0Scores()
        for audio, ref in phrases:
            s.add(extract_f0(audio, SAMPLE_RATE, cfg, backend, device=device), ref)
        out[cond] = {"gross": s.gross, "octave": s.octave, "vde": s.vde, "frames": float(s.frames)}
    return out


@functools.cache
def _suite_cache(seed: int) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """The known-pitch suite, synthesised once per process."""
    return known_pitch_suite(seed=seed)


def run_f0_bench(
    corpus_dir: Path,
    backends: Sequence[str] | None = BACKENDS,
    split: str = "test",
    max_utterances: int | None = None,
    cfg: F0Config | None = None,
    progress: bool = True,
    device: str | None = None,
    suite: bool = True,
    real: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Per backend: ``rpa``, ``rca``, ``vde``, ``gross``, ``octave`` (post-processed),
    ``rpa_raw``, ``vde_raw``, ``gross_raw``, ``octave_raw``, ``rtf`` (compute s per audio s),
    ``lookahead_ms``, ``seconds``, ``frames`` over ``split`` of the corpus, ``suite`` (see
    :func:`run_suite`) unless ``suite=False``, and ``real`` with ``real=DIR``: ``rpa``, ``vde``,
    ``gross``, ``octave`` (backend output as is), ``seconds``, ``frames`` over the utterances of
    ``split`` with exact F0 of the corpus in DIR (`comostream prep real`: real voices re-sung
    with WORLD; tracker settings are tuned on the train split only).

    ``backends=None`` means all of :data:`comostream.models.f0.BACKENDS`. ``device`` is for CREPE
    (CPU).
    """
    cfg = cfg or F0Config()
    names = list(BACKENDS if backends is None else backends)
    for name in names:
        if name not in BACKENDS:
            raise ValueError(f"unknown F0 backend {name!r}; known: {', '.join(BACKENDS)}")
    rows = _rows_with_f0(corpus_dir, split, max_utterances)
    real_rows = _rows_with_f0(real, split, max_utterances) if real is not None else []
    warmup = synthetic_singing(0.5, seed=1)[0]
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        extract_f0(warmup, SAMPLE_RATE, cfg, name, device=device)  # load model, compile
        post, raw, compute, seconds = _score_rows(rows, name, cfg, device, progress)
        results[name] = {
            "rpa": post.rpa,
            "rca": post.rca,
            "vde": post.vde,
            "gross": post.gross,
            "octave": post.octave,
            "rpa_raw": raw.rpa,
            "vde_raw": raw.vde,
            "gross_raw": raw.gross,
            "octave_raw": raw.octave,
            "rtf": compute / max(seconds, 1e-9),
            "lookahead_ms": lookahead_ms(name),
            "seconds": seconds,
            "frames": float(post.frames),
        }
        if suite:
            results[name]["suite"] = run_suite(name, cfg, device)
        if real_rows:
            _, r, _, secs = _score_rows(real_rows, name, cfg, device, progress, "real")
            results[name]["real"] = {
                "rpa": r.rpa,
                "vde": r.vde,
                "gross": r.gross,
                "octave": r.octave,
                "seconds": secs,
                "frames": float(r.frames),
            }
    return results


def _rows_with_f0(corpus_dir: Path, split: str | None, max_utterances: int | None) -> list[Any]:
    """The utterances of ``split`` (None: all) of a corpus that have exact F0."""
    rows = [u for u in select(load_corpus(Path(corpus_dir)), split=split) if u.f0_path]
    if max_utterances is not None:
        rows = rows[:max_utterances]
    if not rows:
        what = "" if split is None else f"{split!r} "
        raise CorpusError(
            f"no {what}utterances with exact F0 in {corpus_dir}: bench f0 needs a corpus "
            "made by `comostream prep synth DIR` (or `prep real DIR` for --real)"
        )
    return rows


def _score_rows(
    rows: Sequence[Any],
    name: str,
    cfg: F0Config,
    device: str | None,
    progress: bool,
    label: str = "",
) -> tuple[F0Scores, F0Scores, float, float]:
    """Post-processed and raw scores of backend ``name`` over ``rows``, compute s, audio s."""
    post, raw = F0Scores(), F0Scores()
    compute = seconds = 0.0
    desc = f"f0 {name} {label}".strip()
    for row in tqdm(rows, desc=desc, disable=not progress, file=sys.stderr):
        audio, sr = read_audio(row.path)
        ref = np.load(row.f0_path).astype(np.float32)
        start = time.perf_counter()
        track = extract_f0(audio, sr, cfg, name, device=device)
        smooth = postprocess(track, cfg)
        compute += time.perf_counter() - start
        seconds += audio.shape[0] / sr
        raw.add(track, ref)
        post.add(smooth, ref)
    return post, raw, compute, seconds


def format_f0_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown tables of :func:`run_f0_bench` results: one row per backend, then (when
    measured) the known-pitch suite's gross / octave error per condition."""
    nan = float("nan")
    lines = [
        "| backend | RPA | RCA | VDE | gross | octave | gross raw | octave raw | RTF "
        "| lookahead ms | audio s | frames |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        la = r.get("lookahead_ms")
        lines.append(
            f"| {name} | {r.get('rpa', nan):.3f} | {r.get('rca', nan):.3f} "
            f"| {r.get('vde', nan):.3f} | {r.get('gross', nan):.4f} | {r.get('octave', nan):.4f} "
            f"| {r.get('gross_raw', nan):.4f} | {r.get('octave_raw', nan):.4f} "
            f"| {r.get('rtf', nan):.3f} | {'offline' if la is None else f'{la:.1f}'} "
            f"| {r.get('seconds', 0.0):.1f} | {int(r.get('frames', 0))} |"
        )
    reals = {name: r["real"] for name, r in results.items() if r.get("real")}
    if reals:
        lines += [
            "",
            "Real voices re-sung (--real), backend output as is:",
            "",
            "| backend | RPA | VDE | gross | octave | audio s | frames |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in reals.items():
            lines.append(
                f"| {name} | {r['rpa']:.3f} | {r['vde']:.3f} | {r['gross']:.4f} "
                f"| {r['octave']:.4f} | {r['seconds']:.1f} | {int(r['frames'])} |"
            )
    suites = {name: r["suite"] for name, r in results.items() if r.get("suite")}
    if suites:
        conds = list(next(iter(suites.values())))
        lines += [
            "",
            "Known-pitch suite, gross / octave error (fraction of frames voiced in both), VDE:",
            "",
            "| backend | " + " | ".join(conds) + " |",
            "|---|" + "---:|" * len(conds),
        ]
        for name, suite in suites.items():
            cells = [
                f"{suite[c]['gross']:.3f} / {suite[c]['octave']:.3f} / {suite[c]['vde']:.3f}"
                for c in conds
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
        sp[i] = vowel_envelope(freqs, vowel) * (1.0 if voiced[i] else 0.02)
    ap = np.clip((freqs / 8000.0) ** 2, 1e-3, 0.9)[None, :].repeat(t_frames, axis=0)
    y = pyworld.synthesize(f0, sp, ap, SAMPLE_RATE, 1000.0 * hop_s)
    y = np.pad(y, (0, max(0, n - y.size)))[:n]
    y = 0.5 * y / max(np.abs(y).max(), 1e-9)
    return y.astype(np.float32), f0.astype(np.float32)
