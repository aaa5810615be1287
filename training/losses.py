"""Training losses: pure functions that take every network explicitly.

``edm_loss`` trains the teacher (Karras et al. 2022, eq. 8 with the EDM weighting);
``consistency_distillation_loss`` distils it into the student (Song et al. 2023, Algorithm 2);
``ema_update`` moves the target towards the student. Denoisers are
:class:`comostream.models.edm.EDMPrecond` (``denoiser(x, sigma, cond)``); data ``x0`` is normalised
mel ``(B, n_mels, T)`` and noise has the same shape. No RNG inside except in the ``sample_*``
helpers, which take a generator.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from comostream.models.config import EDMConfig
from comostream.models.edm import karras_sigmas, sigma_like
from comostream.models.samplers import Denoiser, heun_step

__all__ = [
    "masked_mean",
    "Distance",
    "consistency_distillation_loss",
    "distance",
    "distillation_sigmas",
    "edm_loss",
    "edm_weight",
    "ema_update",
    "sample_distill_index",
    "sample_edm_sigma",
]

Distance = Literal["l2", "pseudo_huber"]


def sample_edm_sigma(
    batch: int,
    generator: torch.Generator | None = None,
    P_mean: float = -1.2,
    P_std: float = 1.2,
    device: torch.device | str | None = None,
) -> Tensor:
    """Training noise levels ``(B,)``: ``ln(sigma) ~ N(P_mean, P_std^2)`` (EDM Table 1)."""
    return torch.exp(torch.randn(batch, generator=generator, device=device) * P_std + P_mean)


def edm_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """EDM loss weight ``lambda(sigma) = (sigma^2 + sd^2) / (sigma * sd)^2``."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``x (B, C, T)`` over the frames where ``mask (B, T)`` is true (all if None)."""
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype).unsqueeze(1).expand_as(x)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def edm_loss(
    denoiser: nn.Module,
    x0: Tensor,
    cond: Tensor,
    sigma: Tensor,
    noise: Tensor,
    mask: Tensor | None = None,
) -> Tensor:
    """Weighted denoising loss (scalar): ``mean(lambda(s) * (D(x0 + s*noise, s) - x0)^2)``.

    ``sigma`` is ``(B,)`` or per frame ``(B, 1, T)`` (see :func:`sample_edm_sigma`);
    ``denoiser.sigma_data`` gives the weighting; ``mask (B, T)`` selects the real frames.
    """
    s = sigma_like(sigma, x0)
    pred = denoiser(x0 + s * noise, s, cond)
    return masked_mean(edm_weight(s, denoiser.sigma_data) * (pred - x0) ** 2, mask)


def distillation_sigmas(cfg: EDMConfig, steps: int | None = None) -> Tensor:
    """The distillation grid, ASCENDING: ``steps + 1`` Karras sigmas ``sigma_min .. sigma_max``
    (``steps`` = ``cfg.distill_steps`` intervals), float64 ``(steps + 1,)``."""
    n = cfg.distill_steps if steps is None else steps
    return karras_sigmas(n + 1, cfg.sigma_min, cfg.sigma_max, cfg.rho).flip(0)


def sample_distill_index(
    batch: int,
    steps: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Interval indices ``n (B,)`` uniform in ``[0, steps - 1]`` (pairs ``n, n + 1``)."""
    return torch.randint(0, steps, (batch,), generator=generator, device=device)


def distance(
    a: Tensor, b: Tensor, kind: Distance = "l2", huber_c: float = 0.03, mask: Tensor | None = None
) -> Tensor:
    """Per-item distance ``(B,)`` over all other axes.

    ``"l2"``: mean squared error (CoMoSVC). ``"pseudo_huber"``: ``sqrt(mse + c^2) - c`` (Song &
    Dhariwal 2023, with the norm taken as an RMS so ``c`` is per element, in normalised-mel units).
    """
    sq = (a - b) ** 2
    if mask is None:
        mse = sq.flatten(1).mean(dim=1)
    else:  # mean over the real frames ``mask (B, T)`` of each item
        m = mask.to(sq.dtype).unsqueeze(1).expand_as(sq)
        mse = (sq * m).flatten(1).sum(dim=1) / m.flatten(1).sum(dim=1).clamp(min=1.0)
    if kind == "l2":
        return mse
    if kind == "pseudo_huber":
        return torch.sqrt(mse + huber_c**2) - huber_c
    raise ValueError(f"unknown distance {kind!r} (l2, pseudo_huber)")


def consistency_distillation_loss(
    student: Denoiser,
    target: Denoiser,
    teacher: Denoiser,
    x0: Tensor,
    cond: Tensor,
    n_index: Tensor,
    sigmas: Tensor,
    noise: Tensor,
    kind: Distance = "l2",
    huber_c: float = 0.03,
    mask: Tensor | None = None,
) -> Tensor:
    """Consistency distillation loss (scalar), Song et al. 2023, Algorithm 2.

    ``sigmas`` is the ASCENDING grid of :func:`distillation_sigmas`, ``n_index (B,)`` the
    intervals. ``x_{n+1} = x0 + sigma_{n+1} * noise``; the frozen teacher takes one Heun step to
    ``sigma_n`` giving ``x_n``; the loss is ``distance(student(x_{n+1}, sigma_{n+1}),
    target(x_n, sigma_n))`` with the teacher and target under ``no_grad``.
    """
    grid = sigmas.to(device=x0.device, dtype=x0.dtype)
    s_next = grid[n_index + 1].view(-1, 1, 1)
    s_n = grid[n_index].view(-1, 1, 1)
    x_next = x0 + s_next * noise
    with torch.no_grad():
        x_n = heun_step(teacher, x_next, s_next, s_n, cond)
        y_target = target(x_n, s_n, cond)
    y = student(x_next, s_next, cond)
    return distance(y, y_target, kind, huber_c, mask).mean()


@torch.no_grad()
def ema_update(target: nn.Module, student: nn.Module, rate: float) -> None:
    """``target <- rate * target + (1 - rate) * student`` (parameters); buffers are copied."""
    for t, s in zip(target.parameters(), student.parameters(), strict=True):
        t.lerp_(s, 1.0 - rate)
    for tb, sb in zip(target.buffers(), student.buffers(), strict=True):
        tb.copy_(sb)
