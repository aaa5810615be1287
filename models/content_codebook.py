"""A singer-independent codebook for content frames: each frame becomes a mix of shared codes.

The content encoder's frames still tell a linear probe which singer it hears, also for singers it
never heard (``comostream bench content``). Replacing each frame by what a codebook fitted on
many singers' frames has near it keeps what is sung (the codes are shared by every singer) and
drops what the codes cannot say: so-vits-svc's cluster models do this per target singer; here
one codebook is fitted on all the training singers (``comostream train codebook``, k-means in
:mod:`comostream.training.codebook`).

For a frame ``z`` (``D`` channels), with the codebook's channel mean ``m`` and standard
deviation ``s`` (of the frames it was fitted on) and codes ``c_k`` (``K x D``, standardised):

    u = (z - m) / s,   w_k = softmax_k(-|u - c_k|^2 / temperature),   out = (sum_k w_k c_k) s + m

``temperature = 0`` takes the nearest code alone. Frames of an encoder with ``l2_normalize``
are scaled back to norm ``sqrt(D)``. Frame-wise and stateless: streamed output equals one-shot,
and it traces and exports like a linear layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ContentCodebook"]


class ContentCodebook(nn.Module):
    """``(B, D, T) -> (B, D, T)``: each frame replaced by a soft mix of ``codes`` (see module).

    Buffers (saved with the encoder): ``mean (D,)``, ``std (D,)``, ``codes (K, D)``; they are
    zeros/ones until fitted (:func:`comostream.training.codebook.fit_codebook`) or loaded.
    """

    def __init__(self, dim: int, size: int, temperature: float, l2_normalize: bool) -> None:
        super().__init__()
        self.dim, self.size = dim, size
        self.temperature = float(temperature)
        self.l2_normalize = l2_normalize
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("codes", torch.zeros(size, dim))

    def weights(self, z: Tensor) -> Tensor:
        """``z (B, D, T)`` -> the codes' weights ``(B, T, K)`` (rows sum to 1)."""
        u = (z.transpose(1, 2) - self.mean) / self.std  # (B, T, D)
        codes: Tensor = self.codes  # type: ignore[assignment]
        # -|u - c_k|^2 up to |u|^2, which is the same for every code and so changes neither the
        # softmax nor the nearest code (matmuls only: traceable, exportable)
        score = 2.0 * u @ codes.T - (codes * codes).sum(-1)
        if self.temperature > 0:
            return torch.softmax(score / self.temperature, dim=-1)
        return F.one_hot(score.argmax(-1), self.size).to(z.dtype)

    def forward(self, z: Tensor) -> Tensor:
        q = self.weights(z) @ self.codes * self.std + self.mean  # (B, T, D)
        if self.l2_normalize:
            q = F.normalize(q, dim=-1) * math.sqrt(self.dim)
        return q.transpose(1, 2)
