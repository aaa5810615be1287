"""Singer mixes ``{name: weight}``: the one check of their weights, shared by the conditioner,
the WebSocket protocol and the CLI's ``--speaker NAME:WEIGHT,...`` (no torch here, so the protocol
and argument parsing stay light).

A weight is a real number (not a bool), finite, within ``0 ... MAX_MIX_WEIGHT``; a mix has at
least one singer and a positive total. Weights are relative: a mix is normalised to sum 1, so
the bound costs nothing and keeps every sum far from float32 overflow (1e39 would be inf).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_MIX_SINGERS", "MAX_MIX_WEIGHT", "BadMixError", "check_mix", "speaker_text"]

MAX_MIX_WEIGHT = 1e6  # largest weight of one singer in a mix (weights are relative)
MAX_MIX_SINGERS = 256  # most singers named in one mix


class BadMixError(ValueError):
    """Mix weights that are not finite, negative, above :data:`MAX_MIX_WEIGHT`, or sum to 0."""


def _weight(name: Any, w: Any) -> float:
    if isinstance(w, bool) or not isinstance(w, int | float):
        raise BadMixError(f"weight of singer {name!r} must be a number, got {w!r}")
    try:
        value = float(w)
    except OverflowError:  # a huge int
        value = math.inf
    if not math.isfinite(value) or not 0.0 <= value <= MAX_MIX_WEIGHT:
        raise BadMixError(
            f"weight of singer {name!r} must be finite and within 0-{MAX_MIX_WEIGHT:g}, got {w!r}"
        )
    return value


def check_mix(mix: Mapping[Any, Any]) -> dict[str, float]:
    """``mix`` ``{name: weight}`` checked (see the module doc) -> ``{name: float weight}``.
    Raises :class:`BadMixError` (a ValueError); names are not checked against a model here."""
    if not isinstance(mix, Mapping) or not mix:
        raise BadMixError("a singer mix needs at least one {name: weight}")
    if len(mix) > MAX_MIX_SINGERS:
        raise BadMixError(f"a singer mix names at most {MAX_MIX_SINGERS} singers, got {len(mix)}")
    out: dict[str, float] = {}
    for name, w in mix.items():
        if not isinstance(name, str):
            raise BadMixError(f"singer names are strings, got {name!r}")
        out[name] = _weight(name, w)
    if sum(out.values()) <= 0.0:
        raise BadMixError("a singer mix needs a positive total weight")
    return out


def speaker_text(speaker: Any) -> str:
    """A singer or a mix as the user types it: ``NAME`` or ``NAME:WEIGHT,NAME:WEIGHT`` (weights
    as given, shortest form: ``a:0.5,b:0.5``); the one spelling every report prints."""
    if isinstance(speaker, Mapping):
        return ",".join(f"{name}:{_short(weight)}" for name, weight in speaker.items())
    return str(speaker)


def _short(weight: Any) -> str:
    """A weight in its shortest form, to 10 digits (``0.5``, ``1``, ``0.3333333``)."""
    return f"{weight:.10g}" if isinstance(weight, int | float) else str(weight)
