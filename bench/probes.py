"""Small linear probes on frame features (torch, CPU): what a feature still tells about the
singer, and what it keeps of what is sung. Features are frames ``(N, C)``."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Standardizer",
    "confusion",
    "cosine_pairs",
    "logreg_accuracy",
    "logreg_predict",
    "mlp_accuracy",
    "retrieval_hits",
    "ridge_fit",
]

LOGREG_ITERS = 200  # L-BFGS iterations of the singer probe
LOGREG_L2 = 1e-4  # weight decay of the singer probe (per frame, standardised features)
MLP_HIDDEN = 256  # hidden units of the nonlinear singer probe
MLP_STEPS = 400  # Adam steps (minibatches of MLP_BATCH frames)
MLP_BATCH = 1024
RIDGE_L2 = 1.0  # ridge penalty (sum of squares over frames, standardised features)


class Standardizer:
    """Per-channel ``(x - mean) / std`` fitted on training frames ``(N, C)``."""

    def __init__(self, x: Tensor) -> None:
        self.mean = x.mean(0, keepdim=True)
        self.std = x.std(0, keepdim=True).clamp(min=1e-6)

    def __call__(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def logreg_accuracy(
    x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, n_classes: int, seed: int = 0
) -> float:
    """Test accuracy of a multinomial logistic regression (full-batch L-BFGS) on frames."""
    pred = logreg_predict(x_train, y_train, x_test, n_classes, seed)
    return float((pred == y_test).float().mean())


def confusion(y_true: Tensor, y_pred: Tensor, n_classes: int) -> list[list[float]]:
    """Row-normalised confusion matrix: ``[true][predicted]`` fraction of each true class's
    frames (a row of zeros for a class without frames)."""
    counts = torch.zeros(n_classes, n_classes, dtype=torch.float64)
    ones = torch.ones(y_true.shape[0], dtype=torch.float64)
    counts.index_put_((y_true.long(), y_pred.long()), ones, accumulate=True)
    return (counts / counts.sum(1, keepdim=True).clamp(min=1.0)).tolist()


def logreg_predict(
    x_train: Tensor, y_train: Tensor, x_test: Tensor, n_classes: int, seed: int = 0
) -> Tensor:
    """Classes ``(N_test,)`` that a multinomial logistic regression (full-batch L-BFGS) fitted on
    the training frames gives the test frames."""
    torch.manual_seed(seed)
    norm = Standardizer(x_train)
    xtr, xte = norm(x_train), norm(x_test)
    lin = torch.nn.Linear(xtr.shape[1], n_classes, dtype=xtr.dtype)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=LOGREG_ITERS, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xtr), y_train)
        loss = loss + LOGREG_L2 * lin.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return lin(xte).argmax(-1)


def mlp_accuracy(
    x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, n_classes: int, seed: int = 0
) -> float:
    """Test accuracy of a one-hidden-layer MLP classifier on frames (a nonlinear probe: what a
    model downstream could still read, beyond the linear probe)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    norm = Standardizer(x_train)
    xtr, xte = norm(x_train), norm(x_test)
    net = torch.nn.Sequential(
        torch.nn.Linear(xtr.shape[1], MLP_HIDDEN, dtype=xtr.dtype),
        torch.nn.GELU(),
        torch.nn.Linear(MLP_HIDDEN, n_classes, dtype=xtr.dtype),
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    with torch.enable_grad():
        for _ in range(MLP_STEPS):
            pick = torch.randint(0, xtr.shape[0], (MLP_BATCH,), generator=gen)
            loss = torch.nn.functional.cross_entropy(net(xtr[pick]), y_train[pick])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((net(xte).argmax(-1) == y_test).float().mean())


def ridge_fit(x: Tensor, y: Tensor, l2: float = RIDGE_L2) -> tuple[Standardizer, Tensor]:
    """Ridge regression ``y (N, D) ~ [norm(x), 1] @ W``; returns the standardizer and ``W``."""
    norm = Standardizer(x)
    xa = torch.cat([norm(x), torch.ones(x.shape[0], 1, dtype=x.dtype)], 1).double()
    reg = l2 * torch.eye(xa.shape[1], dtype=xa.dtype)
    reg[-1, -1] = 0.0  # no penalty on the bias
    w = torch.linalg.solve(xa.T @ xa + reg, xa.T @ y.double())
    return norm, w.to(x.dtype)


def ridge_predict(norm: Standardizer, w: Tensor, x: Tensor) -> Tensor:
    """Predictions ``(N, D)`` of a :func:`ridge_fit` model."""
    return torch.cat([norm(x), torch.ones(x.shape[0], 1, dtype=x.dtype)], 1) @ w


def cosine_pairs(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of matching rows of ``a`` and ``b`` ``(N, C)`` -> ``(N,)``."""
    return torch.nn.functional.cosine_similarity(a, b, dim=1)


def retrieval_hits(a: Tensor, b: Tensor, tolerance: int) -> tuple[int, int]:
    """For each frame ``t`` of ``a (T, C)``, is the most cosine-similar frame of ``b (T, C)``
    within ``tolerance`` frames of ``t``? Returns ``(hits, frames)``."""
    sim = torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T
    best = sim.argmax(1)
    t = torch.arange(a.shape[0])
    return int(((best - t).abs() <= tolerance).sum()), int(a.shape[0])


def shuffled_index(frames: int, rng: np.random.Generator, min_shift: int) -> np.ndarray:
    """A frame index at least ``min_shift`` frames away from each position (a cyclic shift)."""
    if frames <= 2 * min_shift:
        return np.roll(np.arange(frames), frames // 2)
    return np.roll(np.arange(frames), int(rng.integers(min_shift, frames - min_shift)))
