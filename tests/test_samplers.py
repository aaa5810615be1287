"""Samplers: determinism, one-step analytic checks, Heun beats Euler on a Gaussian."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from comostream.models.backbone import Backbone
from comostream.models.config import load_config
from comostream.models.edm import EDMPrecond, karras_sigmas
from comostream.models.samplers import (
    consistency_multistep,
    consistency_onestep,
    euler_sampler,
    heun_sampler,
    sampling_sigmas,
)

CFG = load_config("configs/tiny.toml")
MU, SD = 0.3, 0.5  # the toy Gaussian data distribution N(MU, SD^2) per element


pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian_denoiser(x: Tensor, sigma: Tensor | float, cond: Tensor) -> Tensor:
    """The ideal denoiser E[x0 | x] for x0 ~ N(MU, SD^2): analytic."""
    return MU + SD**2 / (SD**2 + sigma**2) * (x - MU)


def exact_ode(x_start: torch.Tensor, s0: float, s1: float) -> torch.Tensor:
    """The probability-flow ODE keeps (x - MU) / sqrt(SD^2 + sigma^2) constant."""
    return MU + (x_start - MU) * math.sqrt(SD**2 + s1**2) / math.sqrt(SD**2 + s0**2)


def test_sampling_sigmas_run_from_sigma_max_to_zero() -> None:
    s = sampling_sigmas(CFG.edm)
    assert s.shape == (CFG.edm.teacher_steps + 1,) and s[-1] == 0 and s[0] == CFG.edm.sigma_max


def test_one_step_euler_and_heun_are_analytic() -> None:
    a, s0, s1 = 0.3, 2.0, 0.5

    def linear(x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor) -> torch.Tensor:
        return a * x

    noise = torch.randn(1, 100, 4, dtype=torch.float64)
    x0 = s0 * noise
    euler = x0 * (1 + (s1 - s0) * (1 - a) / s0)
    assert torch.allclose(euler_sampler(linear, noise, noise, [s0, s1]), euler)
    d0 = (1 - a) * x0 / s0
    d1 = (1 - a) * (x0 + (s1 - s0) * d0) / s1
    heun = x0 + (s1 - s0) * (d0 + d1) / 2
    assert torch.allclose(heun_sampler(linear, noise, noise, [s0, s1]), heun)
    # a final step to sigma = 0 is Euler: it lands on the denoiser's output
    assert torch.allclose(heun_sampler(linear, noise, noise, [s0, 0.0]), a * x0)


def test_heun_beats_euler_on_a_gaussian() -> None:
    noise = torch.randn(2, 100, 16, generator=torch.Generator().manual_seed(0))
    exact = exact_ode(80.0 * noise, 80.0, 0.002)
    errors = {}
    for n in (32, 128):
        sigmas = karras_sigmas(n, 0.002, 80.0, 7.0)
        errors[n] = [
            float((sampler(gaussian_denoiser, noise, noise, sigmas) - exact).abs().max())
            for sampler in (euler_sampler, heun_sampler)
        ]
    (euler_32, heun_32), (euler_128, heun_128) = errors[32], errors[128]
    assert heun_32 < 0.25 * euler_32
    assert heun_128 < 0.1 * euler_128 and heun_128 < 0.005
    assert heun_128 < heun_32 / 8  # second order: 4x the steps, ~16x smaller error


def test_samplers_are_deterministic_given_the_noise() -> None:
    torch.manual_seed(0)
    net = EDMPrecond(Backbone(CFG.model), CFG.edm, consistency=True).eval()
    gen = torch.Generator().manual_seed(1)
    cond = torch.randn(1, CFG.model.cond_channels, 12, generator=gen)
    noise, other = torch.randn(2, 1, 100, 12, generator=gen)
    sigmas = sampling_sigmas(CFG.edm, 3)
    cases = [
        lambda n: heun_sampler(net, n, cond, sigmas),
        lambda n: euler_sampler(net, n, cond, sigmas),
        lambda n: consistency_onestep(net, n, cond, CFG.edm.sigma_max),
        lambda n: consistency_multistep(net, [n, n.flip(-1)], cond, [80.0, 1.0], 0.002),
    ]
    with torch.no_grad():
        for sample in cases:
            first = sample(noise)
            torch.randn(3)  # the global RNG is not used
            assert torch.equal(first, sample(noise.clone()))
            assert not torch.allclose(first, sample(other), atol=1e-4)


def test_consistency_samplers_apply_the_denoiser_as_the_paper_and_need_a_noise_per_sigma() -> None:
    def half(x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor) -> torch.Tensor:
        return 0.5 * x + sigma

    n0, n1 = torch.randn(2, 1, 100, 3)
    assert torch.allclose(consistency_onestep(half, n0, n0, 80.0), 40.0 * n0 + 80.0)
    x = 40.0 * n0 + 80.0
    ref = 0.5 * (x + math.sqrt(4.0 - 0.002**2) * n1) + 2.0
    assert torch.allclose(consistency_multistep(half, [n0, n1], n0, [80.0, 2.0], 0.002), ref)
    with pytest.raises(ValueError, match="one noise per sigma"):
        consistency_multistep(half, [n0], n0, [80.0, 2.0], 0.002)
