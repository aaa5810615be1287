"""The limits every surface checks in one place: transposition, file rates, block sizes.

Standard library only, so the command line's argument types use them without importing torch.
Each check raises :class:`ValueError` with a message naming the limit; callers wrap it in their
own error type (an argparse error, :class:`~comostream.models.config.ConfigError`, a protocol
error).
"""

from __future__ import annotations

import math

__all__ = [
    "DEFAULT_INDEX_RATE",
    "FILE_RATE_MAX",
    "FILE_RATE_MIN",
    "MAX_BLOCK_FRAMES",
    "MAX_TRANSPOSE",
    "OFFLINE_STEP_FRAMES",
    "check_block_frames",
    "check_file_rate",
    "check_index_rate",
    "check_transpose",
]

MAX_TRANSPOSE = 48.0  # semitones: four octaves either way
FILE_RATE_MIN = 8000  # Hz: the lowest sample rate of a file or stream that is read at all
FILE_RATE_MAX = 384000  # Hz: the highest
MAX_NOISE_SCALE = 2.0  # ``[realtime] noise_scale``: the one-step model's noise, 1 = as distilled
MAX_BLOCK_FRAMES = 512  # frames per model step (5.46 s at 24 kHz / hop 256): bounds its memory
OFFLINE_STEP_FRAMES = 512  # frames per model step of an offline conversion (its memory bound)
# retrieval index blend (models/retrieval.py): 0 = off, by measurement (docs/voice.md: no rate
# moved bench voice's win rate or similarity on the shipped model)
DEFAULT_INDEX_RATE = 0.0


def check_index_rate(rate: object) -> float:
    """``rate`` as a float in [0, 1], the retrieval index's blend (ValueError otherwise)."""
    try:
        value = float(rate)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"index rate must be a number in [0, 1], got {rate!r}") from None
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ValueError(f"index rate must be in [0, 1], got {rate!r}")
    return value


def check_noise_scale(scale: object) -> float:
    """``scale`` as a float in [0, :data:`MAX_NOISE_SCALE`] (ValueError otherwise)."""
    try:
        value = float(scale)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan  # not a number: the same message
    if not 0.0 <= value <= MAX_NOISE_SCALE:  # NaN fails too
        raise ValueError(f"noise_scale must be in [0, {MAX_NOISE_SCALE:g}], got {scale!r}")
    return value


def check_transpose(semitones: float) -> float:
    """``semitones`` as a float if finite and within +-:data:`MAX_TRANSPOSE`, else ValueError."""
    try:
        value = float(semitones)
    except (TypeError, ValueError):
        value = math.nan  # not a number: the same message
    if not math.isfinite(value) or abs(value) > MAX_TRANSPOSE:
        raise ValueError(
            f"transposition must be a finite number within +-{MAX_TRANSPOSE:g} semitones, "
            f"got {semitones!r}"
        )
    return value


def check_file_rate(rate: int, what: str = "audio") -> int:
    """``rate`` (Hz) if within :data:`FILE_RATE_MIN`-:data:`FILE_RATE_MAX`, else ValueError
    naming ``what`` (checked before any resampling: a bogus header must not allocate)."""
    if not FILE_RATE_MIN <= rate <= FILE_RATE_MAX:
        raise ValueError(
            f"{what}: sample rate {rate} Hz is outside the supported "
            f"{FILE_RATE_MIN // 1000}-{FILE_RATE_MAX // 1000} kHz"
        )
    return int(rate)


def check_block_frames(frames: int) -> int:
    """``frames`` per model step if within 1-:data:`MAX_BLOCK_FRAMES`, else ValueError."""
    if not 1 <= frames <= MAX_BLOCK_FRAMES:
        raise ValueError(
            f"block must be 1-{MAX_BLOCK_FRAMES} frames (at most 5.46 s per model step), "
            f"got {frames}"
        )
    return int(frames)
