"""Registers and ``--transpose auto``: the whole semitones that bring a source's register to a
singer's.

A singer's register is the median F0 (Hz) of its voiced frames, stored in the model file's voice
prints (``comostream export --corpus``, ``comostream voice add``); a mix's is the weighted
geometric mean of its singers'. A source's is the median F0 of its voiced frames by the engine's
tracker. ``auto`` = ``round(12 * log2(singer / source))``, within :data:`AUTO_LIMIT` semitones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from comostream.models.mix import check_mix

__all__ = [
    "AUTO_LIMIT",
    "MIN_VOICED_FRAMES",
    "NoRegisterError",
    "STREAM_VOICED_FRAMES",
    "auto_semitones",
    "median_voiced_hz",
    "registers_from_prints",
    "singer_register",
]

AUTO_LIMIT = 24  # semitones: an automatic shift never goes beyond two octaves
MIN_VOICED_FRAMES = 24  # a source register needs at least this many voiced frames (0.26 s)
# a live source's register: the median of its first this many voiced frames (1 s at 24 kHz / 256)
STREAM_VOICED_FRAMES = 94


class NoRegisterError(ValueError):
    """The model file stores no register for a singer (no voice print with ``f0_median``)."""


def singer_register(prints: Mapping[str, Mapping[str, Any]], spec: Any) -> float:
    """Median F0 (Hz) of singer ``spec`` (a name or a mix ``{name: weight}``) from the voice
    prints; :class:`NoRegisterError` naming the singer when one has none."""
    items = {spec: 1.0} if isinstance(spec, str) else check_mix(spec)
    total = sum(items.values())
    log_hz = 0.0
    for name, weight in items.items():
        hz = (prints.get(name) or {}).get("f0_median")
        if hz is None or not math.isfinite(float(hz)) or float(hz) <= 0:
            raise NoRegisterError(
                f"the model file stores no register for singer {name!r}: give --transpose N "
                "(semitones), or re-export the model with `comostream export --corpus DIR`"
            )
        if len(items) == 1:
            return float(hz)  # exactly the stored figure
        log_hz += weight / total * math.log(float(hz))
    return math.exp(log_hz)


def registers_from_prints(prints: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Singer -> register (Hz) of the voice prints that store one (``f0_median``)."""
    return {n: float(p["f0_median"]) for n, p in prints.items() if p.get("f0_median") is not None}


def median_voiced_hz(f0_hz: np.ndarray, voiced: np.ndarray) -> float | None:
    """Median F0 (Hz) of the voiced frames, None with fewer than :data:`MIN_VOICED_FRAMES`."""
    f0 = np.asarray(f0_hz, np.float64)[np.asarray(voiced, bool) & (np.asarray(f0_hz) > 0)]
    return float(np.median(f0)) if f0.shape[0] >= MIN_VOICED_FRAMES else None


def auto_semitones(source_hz: float, singer_hz: float) -> float:
    """Whole semitones from a source register to a singer's, within +-:data:`AUTO_LIMIT`."""
    if not (source_hz > 0 and singer_hz > 0):
        raise ValueError(f"registers must be positive Hz, got {source_hz} and {singer_hz}")
    steps = round(12.0 * math.log2(singer_hz / source_hz))
    return float(max(-AUTO_LIMIT, min(AUTO_LIMIT, steps)))
