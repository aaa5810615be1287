"""Samplers: pure functions over ``denoiser(x, sigma, cond) -> x0_hat``, noise passed in.

No RNG inside: the same noise gives the same output. ``x`` and noise are ``(B, n_mels, T)``
normalised mel (see :func:`comostream.models.edm.normalise_mel`); sigmas are plain floats or 0-d
tensors. Teacher: Euler / Heun over the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) /
sigma`` (Karras et al. 2022, Algorithm 1). Consistency model: one step, or k steps (Song et al.
2023, Algorithm 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from comostream.models.config import EDMConfig
from comostream.models.edm import karras_sigmas

__all__ = [
    "Denoiser",
    "sampling_sigmas",
    "euler_sampler",
    "heun_sampler",
    "heun_step",
    "consistency_onestep",
    "consistency_multistep",
]

Denoiser = Callable[[Tensor, Tensor | float, Tensor], Tensor]


def sampling_sigmas(cfg: EDMConfig, steps: int | None = None) -> Tensor:
    """The teacher's grid: ``steps`` (default ``cfg.teacher_steps``) Karras sigmas, then 0.

    Shape ``(steps + 1,)``, float64, descending; the final step to 0 is an Euler step.
    """
    n = cfg.teacher_steps if steps is None else steps
    sigmas = karras_sigmas(n, cfg.sigma_min, cfg.sigma_max, cfg.rho)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _sigmas(sigmas: Tensor | Sequence[float]) -> list[float]:
    return [float(s) for s in sigmas]


def heun_step(
    denoiser: Denoiser, x: Tensor, sigma: Tensor | float, sigma_next: Tensor | float, cond: Tensor
) -> Tensor:
    """One Heun (2nd-order) step from ``sigma`` to ``sigma_next > 0``; both may be ``(B, 1, 1)``."""
    d = (x - denoiser(x, sigma, cond)) / sigma
    x_euler = x + (sigma_next - sigma) * d
    d_next = (x_euler - denoiser(x_euler, sigma_next, cond)) / sigma_next
    return x + (sigma_next - sigma) * 0.5 * (d + d_next)


def euler_sampler(
    denoiser: Denoiser, noise: Tensor, cond: Tensor, sigmas: Tensor | Sequence[float]
) -> Tensor:
    """Euler over descending ``sigmas`` (``len - 1`` steps, NFE = ``len - 1``) from ``s0*noise``."""
    grid = _sigmas(sigmas)
    x = noise * grid[0]
    for s, s_next in zip(grid[:-1], grid[1:], strict=True):
        x = x + (s_next - s) * (x - denoiser(x, s, cond)) / s
    return x


def heun_sampler(
    denoiser: Denoiser, noise: Tensor, cond: Tensor, sigmas: Tensor | Sequence[float]
) -> Tensor:
    """Heun over descending ``sigmas`` from ``s0*noise``; a step to 0 is Euler (EDM Alg. 1)."""
    grid = _sigmas(sigmas)
    x = noise * grid[0]
    for s, s_next in zip(grid[:-1], grid[1:], strict=True):
        if s_next > 0:
            x = heun_step(denoiser, x, s, s_next, cond)
        else:
            x = x + (s_next - s) * (x - denoiser(x, s, cond)) / s
    return x


def consistency_onestep(
    denoiser: Denoiser, noise: Tensor, cond: Tensor, sigma_max: float
) -> Tensor:
    """One network evaluation: ``denoiser(sigma_max * noise, sigma_max, cond)``."""
    return denoiser(noise * sigma_max, sigma_max, cond)


def consistency_multistep(
    denoiser: Denoiser,
    noises: Sequence[Tensor],
    cond: Tensor,
    sigmas: Tensor | Sequence[float],
    sigma_min: float = 0.002,
) -> Tensor:
    """k-step consistency sampling: one step at ``sigmas[0]``, then for each later sigma re-noise
    ``x + sqrt(s^2 - sigma_min^2) * noises[i]`` and denoise again. ``len(noises) == len(sigmas)``.
    """
    grid = _sigmas(sigmas)
    if len(noises) != len(grid) or not grid:
        raise ValueError(f"need one noise per sigma: {len(noises)} noises, {len(grid)} sigmas")
    x = denoiser(noises[0] * grid[0], grid[0], cond)
    for noise, s in zip(noises[1:], grid[1:], strict=True):
        x = denoiser(x + noise * (max(s * s - sigma_min * sigma_min, 0.0) ** 0.5), s, cond)
    return x
