"""Shared helpers for the chunked-vs-one-shot tests (imported by tests/test_*.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

FIXED_CHUNKS = (1, 2, 3, 4, 8)


def chunk_bounds(total: int, sizes: int | Sequence[int]) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``total`` frames with ``sizes`` (cycled)."""
    pattern = [sizes] if isinstance(sizes, int) else list(sizes)
    out, start, i = [], 0, 0
    while start < total:
        stop = min(total, start + pattern[i % len(pattern)])
        out.append((start, stop))
        start, i = stop, i + 1
    return out


def random_chunkings(total: int, count: int, seed: int = 0, max_size: int = 9) -> list[list[int]]:
    """``count`` random chunk-size lists (1 .. max_size frames) covering ``total`` frames."""
    rng = np.random.default_rng(seed)
    return [list(rng.integers(1, max_size + 1, size=total)) for _ in range(count)]


def run_stream(
    step: Callable[..., Tensor],
    flush: Callable[[], Tensor],
    inputs: Sequence[Tensor],
    bounds: Sequence[tuple[int, int]],
    delay: int,
) -> Tensor:
    """Feed every chunk of ``inputs`` (time last) to ``step``, then ``flush``; concatenate and
    drop the first ``delay`` frames (the one-shot alignment)."""
    with torch.inference_mode():
        outs = [step(*(x[..., a:b] for x in inputs)) for a, b in bounds]
        outs.append(flush())
    return torch.cat(outs, dim=-1)[..., delay:]


def measured_reach(fn: Callable[[Tensor], Tensor], x: Tensor, frame: int) -> tuple[int, int]:
    """``(lookahead, left)`` in frames: perturb input ``frame`` of ``x (B, C, T)`` and find the
    earliest and latest output frames that change."""
    with torch.no_grad():
        base = fn(x)
        bumped = x.clone()
        bumped[..., frame] += 1.0
        diff = (fn(bumped) - base).abs().flatten(0, -2).amax(dim=0)
    changed = torch.nonzero(diff > 1e-12).flatten()  # untouched frames are bit-identical
    return frame - int(changed[0]), int(changed[-1]) - frame


def state_signature(tensors: Sequence[tuple[str, Tensor]]) -> list[tuple[str, int, int, tuple]]:
    """``(name, id, data_ptr, shape)`` of every state tensor: unchanged = no growth."""
    return [(name, id(t), t.data_ptr(), tuple(t.shape)) for name, t in tensors]
