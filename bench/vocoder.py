"""Vocoder quality benchmark (``comostream bench vocoder``): resynthesis of held-out lines.

Every utterance of a feature folder's split (default ``test``: lyric lines and melodies never
trained on) is resynthesised one-shot from its cached mel and F0, time-aligned with the
original recording (frame ``t`` owns samples ``[hop t, hop t + hop)``), and compared with it:

* ``mcd_db``: mel-cepstral distortion, ``(10 / ln 10) sqrt(2 sum_d (c_d - c^_d)^2)`` averaged
  over active frames (reference level above ``ACTIVE_DB`` dBFS), with ``c_1 .. c_24`` the
  WORLD-coded CheapTrick envelope (``pyworld.code_spectral_envelope``, 25 dimensions, ``c_0``
  (level) left out) of each signal, both analysed with the input F0 on the frame grid;
* ``f0_rmse_cents``: RMS of ``1200 log2(F0_out / F0_in)`` on frames voiced in both, the output's
  F0 re-estimated with the harvest backend of :mod:`comostream.models.f0`
  (``f0_rmse_cents_original``: the same for the original recording, i.e. the estimators'
  disagreement floor);
* ``pesq_wb``: wide-band PESQ at 16 kHz (``pesq`` package, ``pip install .[eval]``; null
  without it), mean over utterances;
* ``mel_l1``: mean absolute natural-log mel difference between output and original;
* ``compute``: milliseconds of compute per second of audio on one CPU thread, one-shot and
  streamed in blocks of ``block`` frames: CPU time of the calling thread (``*_ms_per_s``, robust
  to other processes on shared cores) and wall time (``*_wall_ms_per_s``); plus the streamed
  output's largest deviation from the one-shot output (relative to its peak).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyworld
import torch

from comostream.models.audio import resample
from comostream.models.checkpoint_io import load_checkpoint
from comostream.models.config import F0Config
from comostream.models.f0 import extract_f0
from comostream.models.mel import mel_spectrogram
from comostream.models.vocoder import Vocoder, load_vocoder
from comostream.training.feature_index import FeatureError
from comostream.training.vocoder_data import corpus_of, load_utterances

__all__ = [
    "ACTIVE_DB",
    "MCEP_DIMS",
    "f0_rmse_cents",
    "format_vocoder_report",
    "frame_db",
    "mcd_db",
    "pesq_wb",
    "run_vocoder_bench",
    "stream_output",
]

ACTIVE_DB = -50.0  # dBFS: frames of the reference quieter than this are left out of the MCD
MCEP_DIMS = 24  # cepstral coefficients compared (c_1 .. c_24)
PESQ_RATE = 16000  # Hz, wide-band PESQ
PESQ_HINT = "pesq not installed: pip install .[eval]"
_MCD_CONST = 10.0 / math.log(10.0) * math.sqrt(2.0)


def frame_db(audio: np.ndarray, frames: int, hop: int, win: int = 1024) -> np.ndarray:
    """RMS level (dBFS) of ``win``-sample windows centred at ``hop t``: ``(frames,)``."""
    x = np.pad(np.asarray(audio, np.float64), (win // 2, win // 2 + frames * hop))
    sq = np.concatenate([[0.0], np.cumsum(x * x)])
    starts = np.arange(frames) * hop
    energy = (sq[starts + win] - sq[starts]) / win
    return 10.0 * np.log10(np.maximum(energy, 1e-20))


def _mcep(audio: np.ndarray, f0: np.ndarray, sr: int, hop: int) -> np.ndarray:
    """``(T, MCEP_DIMS)`` coded CheapTrick envelope without ``c_0``."""
    times = np.arange(f0.shape[0], dtype=np.float64) * hop / sr
    sp = pyworld.cheaptrick(
        np.ascontiguousarray(audio, np.float64), np.ascontiguousarray(f0, np.float64), times, sr
    )
    return pyworld.code_spectral_envelope(sp, sr, MCEP_DIMS + 1)[:, 1:]


def mcd_db(
    ref: np.ndarray, est: np.ndarray, f0_hz: np.ndarray, sr: int = 24000, hop: int = 256
) -> float:
    """Mel-cepstral distortion (dB) between ``ref`` and ``est`` (same length, samples) on the
    frames of ``f0_hz (T,)`` (frame ``t`` at sample ``hop t``) whose reference level exceeds
    :data:`ACTIVE_DB`; NaN when no frame is active."""
    if ref.shape != est.shape:
        raise ValueError(f"mcd_db: signals differ in length ({ref.shape} vs {est.shape})")
    active = frame_db(ref, f0_hz.shape[0], hop) > ACTIVE_DB
    if not active.any():
        return float("nan")
    diff = _mcep(ref, f0_hz, sr, hop) - _mcep(est, f0_hz, sr, hop)
    return float(np.mean(_MCD_CONST * np.sqrt(np.sum(diff[active] ** 2, axis=1))))


def f0_rmse_cents(f0_ref: np.ndarray, f0_est: np.ndarray) -> tuple[float, int]:
    """``(RMS of 1200 log2(est / ref) over frames voiced (> 0) in both, that frame count)``;
    NaN with no such frame."""
    both = (f0_ref > 0) & (f0_est > 0)
    if not both.any():
        return float("nan"), 0
    cents = 1200.0 * np.log2(f0_est[both] / f0_ref[both])
    return float(np.sqrt(np.mean(cents**2))), int(both.sum())


def pesq_wb(ref: np.ndarray, est: np.ndarray, sr: int) -> float | None:
    """Wide-band PESQ (MOS-LQO) of ``est`` against ``ref`` after resampling to 16 kHz; None
    when the ``pesq`` package is missing or it finds no speech."""
    try:
        from pesq import PesqError, pesq
    except ImportError:
        return None
    r, e = resample(ref, sr, PESQ_RATE), resample(est, sr, PESQ_RATE)
    try:
        return float(pesq(PESQ_RATE, r.astype(np.float64), e.astype(np.float64), "wb"))
    except PesqError:
        return None


@contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def stream_output(
    vocoder: Vocoder, mel: torch.Tensor, f0: torch.Tensor, block: int
) -> torch.Tensor:
    """Streamed output ``(B, T * hop)`` of blocks of ``block`` frames, aligned like forward."""
    state = vocoder.init_state(mel.shape[0])
    outs = []
    with torch.inference_mode():
        for a in range(0, mel.shape[-1], block):
            outs.append(vocoder.step(mel[..., a : a + block], f0[:, a : a + block], state)[0])
        outs.append(vocoder.flush(state, mel.shape[0]))
    return torch.cat(outs, dim=-1)[:, vocoder.lookahead_frames * vocoder.hop_length :]


def _evaluate(
    vocoder: Vocoder, utts: list[Any], block: int, harvest: F0Config, with_original: bool
) -> dict[str, Any]:
    """Metrics and compute of ``vocoder`` on ``utts`` (see the module docstring)."""
    sr, hop = vocoder.sample_rate, vocoder.hop_length
    where = next(vocoder.parameters()).device
    sync = torch.cuda.synchronize if where.type == "cuda" else (lambda: None)
    mcds, pesqs, mel_l1s, sq_cents, sq_orig = [], [], [], [], []
    n_voiced = n_orig = 0
    t_one = t_stream = w_one = w_stream = seconds = 0.0
    dev = 0.0
    for _, data in utts:
        mel = torch.from_numpy(data["mel"])[None].to(where)
        f0 = torch.from_numpy(data["f0"])[None].to(where)
        ref = data["audio"]
        with _threads(1), torch.inference_mode():
            c0, w0 = time.thread_time(), time.perf_counter()
            out = vocoder(mel, f0)
            sync()
            c1, w1 = time.thread_time(), time.perf_counter()
            streamed = stream_output(vocoder, mel, f0, block)
            sync()
            c2, w2 = time.thread_time(), time.perf_counter()
        t_one, t_stream = t_one + c1 - c0, t_stream + c2 - c1
        w_one, w_stream, seconds = w_one + w1 - w0, w_stream + w2 - w1, seconds + ref.size / sr
        peak = float(out.abs().max().clamp(min=1e-9))
        dev = max(dev, float((streamed - out).abs().max()) / peak)
        est = out[0].cpu().numpy().astype(np.float32)
        f0_in = data["f0"].astype(np.float64)
        mcds.append(mcd_db(ref, est, f0_in, sr, hop))
        pesqs.append(pesq_wb(ref, est, sr))
        mel_est = mel_spectrogram(est)[:, : data["mel"].shape[1]]
        mel_l1s.append(float(np.mean(np.abs(mel_est - data["mel"]))))
        f0_out = extract_f0(est, sr, harvest, backend="harvest").f0_hz[: f0_in.shape[0]]
        rmse, n = f0_rmse_cents(f0_in, f0_out.astype(np.float64))
        if n:
            sq_cents.append(rmse**2 * n)
            n_voiced += n
        if with_original:
            f0_ref = extract_f0(ref, sr, harvest, backend="harvest").f0_hz[: f0_in.shape[0]]
            rmse, n = f0_rmse_cents(f0_in, f0_ref.astype(np.float64))
            if n:
                sq_orig.append(rmse**2 * n)
                n_orig += n
    valid_pesq = [p for p in pesqs if p is not None]
    result: dict[str, Any] = {
        "mcd_db": float(np.nanmean(mcds)),
        "f0_rmse_cents": math.sqrt(sum(sq_cents) / n_voiced) if n_voiced else None,
        "voiced_frames": n_voiced,
        "pesq_wb": float(np.mean(valid_pesq)) if valid_pesq else None,
        "mel_l1": float(np.mean(mel_l1s)),
        "compute": {
            "threads": 1,
            "block_frames": block,
            "oneshot_ms_per_s": 1000.0 * t_one / seconds,
            "stream_ms_per_s": 1000.0 * t_stream / seconds,
            "oneshot_wall_ms_per_s": 1000.0 * w_one / seconds,
            "stream_wall_ms_per_s": 1000.0 * w_stream / seconds,
            "stream_max_rel_diff": dev,
        },
    }
    if with_original:
        result["f0_rmse_cents_original"] = math.sqrt(sum(sq_orig) / n_orig) if n_orig else None
    return result


def run_vocoder_bench(
    checkpoint: str | Path,
    data: str | Path | None = None,
    corpus: str | Path | None = None,
    *,
    split: str = "test",
    items: int | None = None,
    block: int = 4,
    baseline: bool = False,
    f0: F0Config | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Resynthesis metrics of the vocoder in ``checkpoint`` on ``split`` of feature folder
    ``data`` (default: the one it was trained on), waveforms from ``corpus`` (default: the
    features' source), run on ``device``; F0 re-estimated by harvest with ``f0``'s settings.
    ``baseline``: also score the same architecture untrained (its control network outputs the
    initial gains: pure harmonic-plus-noise from the mel)."""
    if block < 1:
        raise ValueError("--block must be >= 1")
    vocoder = load_vocoder(checkpoint, device)
    meta = load_checkpoint(checkpoint).get("meta", {}) or {}
    if data is None:
        if not meta.get("data"):
            raise FeatureError(f"{checkpoint}: no feature folder recorded; pass --data")
        data = meta["data"]
    feat = Path(data)
    src = corpus_of(feat, Path(corpus) if corpus is not None else None)
    utts = load_utterances(feat, src, split, vocoder.audio, limit=items)
    if not utts:
        raise FeatureError(f"{feat}: no utterances in split {split!r}")
    harvest = f0 or F0Config()
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "data": str(feat),
        "corpus": str(src),
        "split": split,
        "utterances": len(utts),
        "seconds": sum(d["audio"].size for _, d in utts) / vocoder.sample_rate,
        "singers": sorted({e.singer for e, _ in utts}),
        "lookahead_frames": vocoder.lookahead_frames,
        "pesq_note": None if _has_pesq() else PESQ_HINT,
        "device": device,
    }
    result.update(_evaluate(vocoder, utts, block, harvest, with_original=True))
    if baseline:
        untrained = Vocoder(vocoder.cfg, vocoder.audio).to(device).eval()
        result["baseline_untrained"] = _evaluate(untrained, utts, block, harvest, False)
    return result


def _has_pesq() -> bool:
    try:
        import pesq  # noqa: F401
    except ImportError:
        return False
    return True


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_vocoder_report(result: dict[str, Any]) -> str:
    """A short human-readable report of :func:`run_vocoder_bench`."""
    c = result["compute"]
    lines = [
        f"vocoder {result['checkpoint']}: {result['utterances']} {result['split']} utterances "
        f"({result['seconds']:.1f} s) of {len(result['singers'])} singers",
        f"  MCD            {_fmt(result['mcd_db'], '.2f')} dB",
        f"  F0 RMSE        {_fmt(result['f0_rmse_cents'], '.1f')} cents "
        f"(original recording: {_fmt(result.get('f0_rmse_cents_original'), '.1f')})",
        f"  PESQ-wb        {_fmt(result['pesq_wb'], '.2f')}"
        + (f"  ({result['pesq_note']})" if result.get("pesq_note") else ""),
        f"  mel L1         {result['mel_l1']:.3f}",
        f"  compute, 1 thread (CPU time): one-shot {c['oneshot_ms_per_s']:.1f} ms/s, streamed in "
        f"blocks of {c['block_frames']} frames {c['stream_ms_per_s']:.1f} ms/s (wall "
        f"{c['oneshot_wall_ms_per_s']:.1f} / {c['stream_wall_ms_per_s']:.1f}; max deviation "
        f"{c['stream_max_rel_diff']:.1e} of peak)",
    ]
    base = result.get("baseline_untrained")
    if base:
        lines.append(
            f"  untrained baseline: MCD {_fmt(base['mcd_db'], '.2f')} dB, F0 RMSE "
            f"{_fmt(base['f0_rmse_cents'], '.1f')} cents, PESQ-wb {_fmt(base['pesq_wb'], '.2f')}, "
            f"mel L1 {base['mel_l1']:.3f}"
        )
    return "\n".join(lines)
