"""The streaming F0 trackers the engine can run, by backend name.

Each is incremental on the 24 kHz / hop-256 grid (``push(chunk) -> (f0 (k,), voiced (k,))``,
``flush()``, ``reset()``), declares ``lookahead_samples`` (past a frame's centre, window overhang)
and ``lookahead_frames`` (decoding lag), and returns over any chunking exactly what its one-shot
backend in :func:`comostream.models.f0.extract_f0` returns.
"""

from __future__ import annotations

from comostream.models.config import STREAMING_F0_BACKENDS, F0Config
from comostream.models.f0_yin import IncrementalF0
from comostream.models.f0_yintrack import IncrementalYinTrack

__all__ = ["streaming_tracker"]


def streaming_tracker(backend: str, cfg: F0Config | None = None) -> IncrementalF0:
    """A fresh incremental tracker for ``backend`` (one of ``STREAMING_F0_BACKENDS``).

    Raises ValueError naming the streaming backends for an offline or unknown name.
    """
    if backend == "yin":
        return IncrementalF0(cfg)
    if backend == "yin-track":
        return IncrementalYinTrack(cfg)
    raise ValueError(
        f"F0 backend {backend!r} cannot stream; streaming backends: "
        f"{', '.join(STREAMING_F0_BACKENDS)}"
    )
