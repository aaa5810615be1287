"""Audio file I/O (soundfile) and offline high-quality resampling (torchaudio, Kaiser sinc).

All audio is float32 in [-1, 1]; mono arrays are ``(samples,)``, multichannel ``(channels,
samples)``. Every read checks for a missing/unreadable file, zero samples and NaN/Inf, raising
:class:`AudioError` with the file name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

__all__ = ["AudioError", "check_finite", "read_audio", "load_audio", "resample", "save_wav"]

# librosa "kaiser_best"-equivalent sinc interpolation: ~ -100 dB stopband, 95% passband.
_LOWPASS_WIDTH = 64
_ROLLOFF = 0.9475937167399596
_BETA = 14.769656459379492

_FLOAT_SUBTYPES = {"FLOAT", "DOUBLE"}


class AudioError(ValueError):
    """An audio file or array is missing, unreadable, empty or not finite."""


def check_finite(audio: np.ndarray, what: str) -> None:
    """Raise :class:`AudioError` naming ``what`` if ``audio`` has NaN or Inf samples."""
    if not np.all(np.isfinite(audio)):
        n_nan = int(np.count_nonzero(np.isnan(audio)))
        n_inf = int(np.count_nonzero(np.isinf(audio)))
        raise AudioError(f"{what}: contains non-finite samples ({n_nan} NaN, {n_inf} Inf)")


def read_audio(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Read wav/flac/ogg (anything libsndfile reads) at its native rate.

    Returns ``(audio (samples,) float32 mono = mean of channels, sample_rate Hz)``.
    """
    p = Path(path)
    if not p.exists():
        raise AudioError(f"{p}: file not found")
    if not p.is_file():
        raise AudioError(f"{p}: not a regular file")
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"{p}: unreadable or corrupt audio file ({exc})") from None
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError(f"{p}: audio file has zero samples")
    check_finite(data, str(p))
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32), int(sr)


def load_audio(path: str | os.PathLike[str], sample_rate: int = 24000) -> np.ndarray:
    """Read an audio file as mono float32 ``(samples,)`` resampled to ``sample_rate`` Hz."""
    audio, sr = read_audio(path)
    return resample(audio, sr, sample_rate)


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Offline band-limited resampling (Kaiser-windowed sinc, width 64), ``sr_in`` -> ``sr_out`` Hz.

    ``audio`` is ``(samples,)`` or ``(channels, samples)``; the output keeps the layout with
    ``ceil(samples * sr_out / sr_in)`` samples, float32. Identity (a float32 copy) when equal.
    """
    if int(sr_in) != sr_in or int(sr_out) != sr_out or sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive integers, got {sr_in} -> {sr_out}")
    x = np.asarray(audio)
    if x.ndim not in (1, 2):
        raise ValueError(f"audio must be (samples,) or (channels, samples), got {x.shape}")
    if sr_in == sr_out:
        return np.array(x, dtype=np.float32)
    if x.shape[-1] == 0:
        return np.zeros(x.shape, dtype=np.float32)
    with torch.no_grad():
        y = AF.resample(
            torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
            int(sr_in),
            int(sr_out),
            lowpass_filter_width=_LOWPASS_WIDTH,
            rolloff=_ROLLOFF,
            resampling_method="sinc_interp_kaiser",
            beta=_BETA,
        )
    return y.numpy().astype(np.float32, copy=False)


def save_wav(
    path: str | os.PathLike[str], audio: np.ndarray, sample_rate: int, subtype: str = "PCM_16"
) -> None:
    """Atomically write ``audio`` (``(samples,)`` or ``(channels, samples)``) as a WAV file.

    Writes a temp file in the target directory then ``os.replace``s it, creating parent
    directories. PCM subtypes are clipped to [-1, 1]; ``"FLOAT"``/``"DOUBLE"`` are not.
    Raises :class:`AudioError` on NaN/Inf samples or a write failure.
    """
    p = Path(path)
    x = np.asarray(audio)
    if x.ndim not in (1, 2):
        raise AudioError(f"{p}: audio must be (samples,) or (channels, samples), got {x.shape}")
    subtype = subtype.upper()
    x = x.astype(np.float64 if subtype == "DOUBLE" else np.float32, copy=False)
    check_finite(x, str(p))
    if subtype not in _FLOAT_SUBTYPES:
        x = np.clip(x, -1.0, 1.0)
    frames = x if x.ndim == 1 else x.T  # soundfile wants (samples, channels)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            sf.write(fh, frames, int(sample_rate), subtype=subtype, format="WAV")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, p)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise AudioError(f"{p}: could not write audio ({exc})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
