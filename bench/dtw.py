"""Dynamic time warping of two frame sequences (numba), for aligning renditions of one line."""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["dtw_path"]


@njit(cache=True)
def _dtw_acc(dist: np.ndarray) -> np.ndarray:  # pragma: no cover - numba
    ta, tb = dist.shape
    acc = np.full((ta + 1, tb + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, ta + 1):
        for j in range(1, tb + 1):
            acc[i, j] = dist[i - 1, j - 1] + min(acc[i - 1, j], acc[i, j - 1], acc[i - 1, j - 1])
    return acc


def dtw_path(dist: np.ndarray) -> list[tuple[int, int]]:
    """The minimum-cost monotone alignment path ``[(i, j), ...]`` through ``dist (Ta, Tb)``,
    from ``(0, 0)`` to ``(Ta - 1, Tb - 1)``."""
    acc = _dtw_acc(np.ascontiguousarray(dist, np.float64))
    i, j, path = dist.shape[0], dist.shape[1], []
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        step = np.argmin([acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]])
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    return path[::-1]
