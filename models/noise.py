"""Counter-based Gaussian noise: the value at (seed, frame, bin) never depends on chunking.

The one-step consistency target turns noise into a mel frame. For streamed output to equal offline
output, frame ``t`` must get the same noise whether it is generated alone or among ``T`` frames,
and a CUDA graph must be able to draw it from a frame counter held in a tensor. So noise is a pure
function of integers: a 32-bit integer hash (``lowbias32``, computed in int64 with masking so it
is exact on every device) of ``(seed, frame, bin)`` gives two uniforms, Box-Muller gives the
normal. Indices wrap after 2**32 / (2 * n_bins) frames (about 60 hours at 10.67 ms per frame).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["frame_noise", "hash32"]

_MASK = 0xFFFFFFFF


def hash32(x: Tensor) -> Tensor:
    """``lowbias32`` integer hash of int64 values in ``[0, 2**32)`` (elementwise, int64 out)."""
    x = x & _MASK
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK
    return x ^ (x >> 16)


def frame_noise(
    frames: Tensor, n_bins: int, seed: int | Tensor = 0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Standard normal noise ``(B, n_bins, k)`` for absolute frame indices ``frames (B, k)`` int64.

    ``seed``: an int or an int64 tensor ``(B,)`` (one per stream). Deterministic and identical
    for any split of the frames into chunks.
    """
    frames = frames.to(torch.int64)
    seed_t = torch.as_tensor(seed, dtype=torch.int64, device=frames.device).reshape(-1, 1, 1)
    bins = torch.arange(n_bins, device=frames.device, dtype=torch.int64).view(1, -1, 1)
    base = (frames.unsqueeze(1) * (2 * n_bins) + 2 * bins) ^ hash32(seed_t * 0x9E3779B9 + 1)
    # both uniforms from one hash call (half the ops of an exported step), split after
    u = (hash32(torch.stack([base, base + 1])).to(torch.float64) + 0.5) / 2.0**32
    u1, u2 = u[0], u[1]
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
    return z.to(dtype)
