"""The retrieval index: each source content frame blended with its nearest neighbours among a
singer's own content frames (as RVC's ``index_rate``).

An inference file may hold ``index``: ``{singer: (K, content_dim)}`` float tensors, a compact set
of the singer's content frames (:func:`build_bank`: k-means centroids of its voiced frames).
:class:`RetrievalIndex` keeps them padded in one buffer ``(n_indexed, K_max, D)`` with a validity
mask. Per frame and indexed singer it takes the :data:`INDEX_NEIGHBOURS` nearest valid rows
(squared Euclidean distance), weighted by inverse squared distance; the singers' retrievals are
mixed by the stream's ``index_weights`` (a singer without an index contributes the frame itself):

    content' = content + rate * sum_n w_n * (retrieved_n - content)

Frame-local (no state, no lookahead): streaming stays exact and adds no latency. Distances are
elementwise per frame (no matrix product whose rounding could depend on the block size), in
fixed chunks of :data:`_CHUNK` frames to bound memory. With ``rate`` 0 every added term is an
exact 0: the content is unchanged bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from comostream.models.limits import DEFAULT_INDEX_RATE, check_index_rate
from comostream.models.mix import check_mix

__all__ = [
    "DEFAULT_INDEX_RATE",
    "INDEX_NEIGHBOURS",
    "INDEX_SIZE",
    "RetrievalIndex",
    "build_bank",
    "check_index_rate",
]

INDEX_SIZE = 512  # rows kept per singer (k-means centroids): compact files
INDEX_NEIGHBOURS = 4  # nearest rows blended per frame
_EPS = 1e-6  # added to squared distances before inverting
_CHUNK = 128  # frames per distance computation (memory bound; per-frame results are exact)


def build_bank(
    frames: np.ndarray, size: int = INDEX_SIZE, iters: int = 8, seed: int = 0
) -> np.ndarray:
    """``(K, D)`` float32 centroids of ``frames (N, D)`` (K = min(size, N)): deterministic
    k-means (``seed``-chosen initial rows, ``iters`` Lloyd iterations; an emptied cluster keeps
    its centroid)."""
    x = np.asarray(frames, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"frames must be (N, D) with N >= 1, got shape {x.shape}")
    k = min(int(size), x.shape[0])
    rng = np.random.default_rng(seed)
    c = x[np.sort(rng.choice(x.shape[0], k, replace=False))].copy()
    x_sq = (x * x).sum(1, keepdims=True)
    for _ in range(iters):
        d = x_sq - 2.0 * x @ c.T + (c * c).sum(1)[None]
        label = d.argmin(1)
        sums = np.zeros_like(c)
        np.add.at(sums, label, x)
        count = np.bincount(label, minlength=k)[:, None]
        c = np.where(count > 0, sums / np.maximum(count, 1), c)
    return c.astype(np.float32)


class RetrievalIndex(nn.Module):
    """The indexed singers' banks: ``(content (S, D, T), weights (S, n_indexed), rate (S, 1))
    -> content (S, D, T)``. ``speakers``: every singer of the model (table order); ``banks``:
    singer -> ``(K, D)``, a subset of them."""

    def __init__(self, speakers: Sequence[str], banks: Mapping[str, Tensor], dim: int) -> None:
        super().__init__()
        self.speakers = tuple(str(s) for s in speakers)
        unknown = [s for s in banks if s not in self.speakers]
        if unknown:
            raise ValueError(f"index for unknown singer(s) {unknown}")
        self.names = tuple(s for s in self.speakers if s in banks)  # indexed, table order
        if not self.names:
            raise ValueError("an index needs at least one singer's bank")
        rows = [torch.as_tensor(banks[s]).float() for s in self.names]
        for s, b in zip(self.names, rows, strict=True):
            if b.ndim != 2 or b.shape[1] != dim or b.shape[0] < 1:
                raise ValueError(f"index of {s!r}: expected (K >= 1, {dim}), got {tuple(b.shape)}")
        kmax = max(b.shape[0] for b in rows)
        bank = torch.zeros(len(rows), kmax, dim)
        valid = torch.zeros(len(rows), kmax, dtype=torch.bool)
        for i, b in enumerate(rows):
            bank[i, : b.shape[0]] = b
            valid[i, : b.shape[0]] = True
        self.register_buffer("bank", bank, persistent=False)
        self.register_buffer("valid", valid, persistent=False)
        self.neighbours = min(INDEX_NEIGHBOURS, kmax)

    def sizes(self) -> dict[str, int]:
        """Indexed singer -> rows in its bank."""
        return {s: int(v.sum()) for s, v in zip(self.names, self.valid, strict=True)}

    def banks(self) -> dict[str, Tensor]:
        """Indexed singer -> its ``(K, D)`` bank (float32), as stored in a file."""
        return {
            s: self.bank[i, : int(self.valid[i].sum())].float().clone()
            for i, s in enumerate(self.names)
        }

    def weights(self, spec: Any) -> Tensor:
        """A singer spec's mixing weights over the indexed singers ``(n_indexed,)`` float64 (a
        name is one-hot, a mix normalised to sum 1; singers without an index get none)."""
        items = {spec: 1.0} if isinstance(spec, str) else check_mix(spec)
        total = sum(float(w) for w in items.values())
        return torch.tensor([float(items.get(s, 0.0)) / total for s in self.names])

    def retrieve(self, content: Tensor) -> Tensor:
        """Per indexed singer, the blend of each frame's nearest rows ``(S, n_indexed, D, T)``."""
        x = content.transpose(1, 2)  # (S, T, D)
        bank, valid = self.bank.to(x.device, x.dtype), self.valid.to(x.device)
        out = []
        for start in range(0, x.shape[1], _CHUNK):
            xc = x[:, start : start + _CHUNK]
            diff = xc[:, :, None, None, :] - bank[None, None]  # (S, t, N, K, D)
            dist = (diff * diff).sum(-1)  # (S, t, N, K)
            dist = torch.where(valid, dist, torch.full_like(dist, float("inf")))
            near, idx = torch.topk(dist, self.neighbours, dim=-1, largest=False)  # (S, t, N, n)
            w = 1.0 / (near + _EPS)  # 0 for an invalid (inf) row
            w = w / w.sum(-1, keepdim=True)
            rows = bank[torch.arange(bank.shape[0], device=x.device)[:, None], idx]  # S,t,N,n,D
            out.append((w.unsqueeze(-1) * rows).sum(-2))  # (S, t, N, D)
        return torch.cat(out, dim=1).permute(0, 2, 3, 1)

    def forward(self, content: Tensor, weights: Tensor, rate: Tensor) -> Tensor:
        delta = self.retrieve(content) - content.unsqueeze(1)  # (S, N, D, T)
        mixed = (weights.to(content.dtype)[:, :, None, None] * delta).sum(1)
        return content + rate.to(content.dtype)[:, :, None] * mixed
