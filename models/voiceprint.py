"""Singer voice prints: a light, offline measure of whose timbre a recording has.

A print is the mean WORLD spectral envelope of a recording's active voiced frames, coded as 24
mel-cepstral coefficients (c1-c24: timbre without level), plus the median F0 (the register).
Prints of the training singers are stored in the inference file (``comostream export --corpus``),
so the demo can say how close a conversion is to its target singer with nothing but the model.
Similarity is the cosine of prints centred on the mean print of all singers.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyworld

from comostream.models.config import F0Config
from comostream.models.f0_yin import yin_f0

__all__ = ["VoicePrint", "closest", "similarity", "voice_print"]

DIMS = 24
ACTIVE_DB = -45.0  # dBFS frames quieter than this are left out


class VoicePrint(dict):
    """``{"mcep": list[float] (24,), "f0_median": float}`` (plain data: checkpoint-safe)."""


def voice_print(
    audio: np.ndarray, cfg: F0Config | None = None, sr: int = 24000, hop: int = 256
) -> VoicePrint:
    """The print of ``audio`` (24 kHz mono float32); ValueError if it has no voiced frame."""
    track = yin_f0(audio, cfg or F0Config())
    x = np.ascontiguousarray(audio, np.float64)
    times = np.arange(track.n_frames, dtype=np.float64) * hop / sr
    f0 = np.where(track.voiced, track.f0_hz, 0.0).astype(np.float64)
    level = _frame_db(x, track.n_frames, hop)
    use = track.voiced & (level > ACTIVE_DB)
    if not use.any():
        raise ValueError("no voiced frame to make a voice print from")
    sp = pyworld.cheaptrick(x, f0, times, sr)
    mcep = pyworld.code_spectral_envelope(sp, sr, DIMS + 1)[:, 1:]
    return VoicePrint(
        mcep=[float(v) for v in mcep[use].mean(axis=0)],
        f0_median=float(np.median(track.f0_hz[use])),
    )


def _frame_db(x: np.ndarray, frames: int, hop: int, win: int = 1024) -> np.ndarray:
    pad = np.pad(x, (win // 2, win // 2 + frames * hop))
    sq = np.concatenate([[0.0], np.cumsum(pad * pad)])
    starts = np.arange(frames) * hop
    return 10 * np.log10(np.maximum((sq[starts + win] - sq[starts]) / win, 1e-20))


def similarity(a: Mapping, b: Mapping, prints: Mapping[str, Mapping]) -> float:
    """Cosine of ``a`` and ``b`` (prints) centred on the mean of ``prints`` (all singers)."""
    centre = np.mean([np.asarray(p["mcep"]) for p in prints.values()], axis=0)
    u, v = np.asarray(a["mcep"]) - centre, np.asarray(b["mcep"]) - centre
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-12))


def closest(a: Mapping, prints: Mapping[str, Mapping]) -> str:
    """The singer whose print is most similar to ``a``."""
    return max(prints, key=lambda name: similarity(a, prints[name], prints))
