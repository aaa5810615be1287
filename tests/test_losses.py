"""Training losses: EDM weighting, distillation plumbing, EMA, and a real training signal."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from comostream.models.backbone import Backbone
from comostream.models.config import load_config
from comostream.models.edm import EDMPrecond
from comostream.models.samplers import consistency_onestep, heun_sampler, sampling_sigmas
from comostream.training.losses import (
    consistency_distillation_loss,
    distance,
    distillation_sigmas,
    edm_loss,
    edm_weight,
    ema_update,
    sample_distill_index,
    sample_edm_sigma,
)

CFG = load_config("configs/tiny.toml")
BINS = 8  # toy "mel" bins: few enough for the tiny backbone's 16 channels to carry x itself
BATCH, FRAMES = 16, 24


pytestmark = pytest.mark.usefixtures("one_thread")


def toy_batch(gen: torch.Generator, batch: int = BATCH) -> tuple[Tensor, Tensor]:
    """Smooth random conditions ``(B, Cg, T)`` and mel-like targets ``(B, BINS, T)`` that they
    fully determine (a fixed linear map per frame, std ~0.4)."""
    mix = torch.randn(BINS, CFG.model.cond_channels, generator=torch.Generator().manual_seed(0))
    walk = torch.randn(batch, CFG.model.cond_channels, FRAMES + 4, generator=gen).cumsum(-1)
    cond = F.avg_pool1d(walk, 5, 1)
    cond = cond / cond.std(dim=-1, keepdim=True)
    return 0.2 / CFG.model.cond_channels**0.5 * torch.einsum("mc,bct->bmt", mix, cond), cond


def _precond(consistency: bool, seed: int = 0) -> EDMPrecond:
    torch.manual_seed(seed)
    return EDMPrecond(Backbone(CFG.model, n_mels=BINS), CFG.edm, consistency=consistency)


def test_sample_edm_sigma_is_lognormal_and_seeded() -> None:
    s = sample_edm_sigma(20000, torch.Generator().manual_seed(0))
    assert s.shape == (20000,) and bool((s > 0).all())
    assert float(s.log().mean()) == pytest.approx(-1.2, abs=0.03)
    assert float(s.log().std()) == pytest.approx(1.2, abs=0.03)
    again = sample_edm_sigma(20000, torch.Generator().manual_seed(0))
    assert torch.equal(s, again)


def test_edm_weight_and_a_perfect_denoiser() -> None:
    sigma = torch.tensor([0.1, 0.5, 4.0])
    assert torch.allclose(edm_weight(sigma, 0.5), (sigma**2 + 0.25) / (sigma * 0.5) ** 2)
    x0, cond = toy_batch(torch.Generator().manual_seed(0), 4)

    class Oracle(torch.nn.Module):
        sigma_data = 0.5

        def forward(self, x: Tensor, sigma: Tensor, cond: Tensor) -> Tensor:
            return x0

    noise = torch.randn_like(x0)
    assert float(edm_loss(Oracle(), x0, cond, sample_edm_sigma(4), noise)) == 0.0
    per_frame = torch.rand(4, 1, FRAMES) + 0.1
    with torch.no_grad():
        assert float(edm_loss(_precond(False), x0, cond, per_frame, noise)) > 0


def test_distillation_sigmas_rise_from_min_to_max_and_indices_cover_every_step() -> None:
    s = distillation_sigmas(CFG.edm)
    assert s.shape == (CFG.edm.distill_steps + 1,)
    assert s[0] == CFG.edm.sigma_min and s[-1] == CFG.edm.sigma_max and bool((s[1:] > s[:-1]).all())
    n = sample_distill_index(1000, CFG.edm.distill_steps, torch.Generator().manual_seed(0))
    assert int(n.min()) == 0 and int(n.max()) == CFG.edm.distill_steps - 1


def test_distance_is_mse_or_pseudo_huber_and_refuses_others() -> None:
    a, b = torch.zeros(2, 3, 4), torch.full((2, 3, 4), 0.5)
    assert torch.allclose(distance(a, b), torch.full((2,), 0.25))
    huber = distance(a, b, "pseudo_huber", huber_c=0.03)
    assert torch.allclose(huber, torch.full((2,), (0.25 + 0.03**2) ** 0.5 - 0.03))
    with pytest.raises(ValueError):
        distance(a, b, "l1")  # type: ignore[arg-type]


def test_distillation_gradients_reach_only_the_student() -> None:
    teacher, student = _precond(False), _precond(True)
    target = copy.deepcopy(student)
    x0, cond = toy_batch(torch.Generator().manual_seed(0), 4)
    n = torch.tensor([0, 3, 5, 7])
    loss = consistency_distillation_loss(
        student, target, teacher, x0, cond, n, distillation_sigmas(CFG.edm), torch.randn_like(x0)
    )
    loss.backward()
    assert loss.ndim == 0 and float(loss.detach()) > 0
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in [*teacher.parameters(), *target.parameters()])


def test_ema_update_moves_the_target_towards_the_student_only() -> None:
    target, student = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    t0, s0 = target.weight.detach().clone(), student.weight.detach().clone()
    ema_update(target, student, 0.9)
    assert torch.allclose(target.weight, 0.9 * t0 + 0.1 * s0)
    assert torch.equal(student.weight, s0)


@pytest.fixture(scope="module")
def trained_teacher() -> tuple[EDMPrecond, float, float]:
    """The tiny teacher after 300 Adam steps of ``edm_loss``; eval loss before and after."""
    teacher = _precond(False)
    gen = torch.Generator().manual_seed(99)
    x0, cond = toy_batch(gen, 32)
    sigma, noise = sample_edm_sigma(32, gen), torch.randn(x0.shape, generator=gen)

    def eval_loss() -> float:
        with torch.no_grad():
            return float(edm_loss(teacher, x0, cond, sigma, noise))

    before = eval_loss()
    opt = torch.optim.Adam(teacher.parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(300):
        x0_b, cond_b = toy_batch(gen)
        noise_b = torch.randn(x0_b.shape, generator=gen)
        loss = edm_loss(teacher, x0_b, cond_b, sample_edm_sigma(BATCH, gen), noise_b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return teacher.eval().requires_grad_(False), before, eval_loss()


def test_edm_training_reduces_the_loss(trained_teacher: tuple[EDMPrecond, float, float]) -> None:
    _, before, after = trained_teacher
    assert after < 0.5 * before, (before, after)


def test_distillation_approaches_the_teacher_sampler(
    trained_teacher: tuple[EDMPrecond, float, float],
) -> None:
    """One-step target output vs the teacher's 18-step Heun output from the same noise."""
    teacher = trained_teacher[0]
    student = EDMPrecond(copy.deepcopy(teacher.backbone), CFG.edm, consistency=True)
    student.requires_grad_(True)
    target = copy.deepcopy(student).requires_grad_(False)
    gen = torch.Generator().manual_seed(5)
    _, cond = toy_batch(gen, 32)
    noise = torch.randn(32, BINS, FRAMES, generator=gen)
    with torch.no_grad():
        reference = heun_sampler(teacher, noise, cond, sampling_sigmas(CFG.edm, 18))

    def gap() -> float:
        with torch.no_grad():
            one_step = consistency_onestep(target, noise, cond, CFG.edm.sigma_max)
            return float(((one_step - reference) ** 2).mean())

    before = gap()
    sigmas = distillation_sigmas(CFG.edm)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    for _ in range(150):
        x0, cond_b = toy_batch(gen)
        n = sample_distill_index(BATCH, CFG.edm.distill_steps, gen)
        noise_b = torch.randn(x0.shape, generator=gen)
        loss = consistency_distillation_loss(
            student, target, teacher, x0, cond_b, n, sigmas, noise_b
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_update(target, student, CFG.edm.ema_rate)
    after = gap()
    assert after < 0.6 * before, (before, after)
