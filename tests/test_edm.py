"""EDM schedule and preconditioning: Karras grid, coefficients, boundary condition, streaming."""

from __future__ import annotations

import math

import pytest
import torch

from comostream.models.backbone import Backbone
from comostream.models.config import EDMConfig, load_config
from comostream.models.edm import EDMPrecond, denormalise_mel, karras_sigmas, normalise_mel
from comostream.models.streaming import state_tensors

from helpers import (
    FIXED_CHUNKS,
    chunk_bounds,
    measured_reach,
    random_chunkings,
    run_stream,
    state_signature,
)

CFG = load_config("configs/tiny.toml")
T_FRAMES = 29


pytestmark = pytest.mark.usefixtures("one_thread")


def _precond(consistency: bool) -> EDMPrecond:
    torch.manual_seed(0)
    return EDMPrecond(Backbone(CFG.model), CFG.edm, consistency=consistency).eval()


def test_karras_sigmas_fall_from_max_to_min_as_karras_eq_5() -> None:
    s = karras_sigmas(18, 0.002, 80.0, 7.0)
    assert s.shape == (18,) and s[0] == 80.0 and s[-1] == 0.002
    assert bool((s[1:] < s[:-1]).all())
    i = 5  # Karras eq. 5
    ref = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert float(s[i]) == pytest.approx(ref, rel=1e-12)
    assert karras_sigmas(1, 0.002, 80.0, 7.0).tolist() == [80.0]


def test_preconditioning_coefficients_are_edms_and_meet_the_boundary_condition() -> None:
    sd, s_min = 0.5, 0.002
    edm, cm = _precond(False), _precond(True)
    sigma = torch.tensor([s_min, sd, 3.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm.coefficients(sigma)
    assert c_skip[1] == pytest.approx(0.5) and c_out[1] == pytest.approx(sd / math.sqrt(2))
    assert c_in[2] == pytest.approx(1 / math.sqrt(9 + sd**2))
    assert c_noise[2] == pytest.approx(math.log(3.0) / 4)
    c_skip, c_out, _, _ = cm.coefficients(sigma)
    assert (c_skip[0], c_out[0]) == (1.0, 0.0)  # the boundary condition
    assert c_skip[2] == pytest.approx(sd**2 / ((3 - s_min) ** 2 + sd**2))
    assert c_out[2] == pytest.approx((3 - s_min) * sd / math.sqrt(sd**2 + 9))


def test_boundary_condition_is_exact() -> None:
    cm = _precond(True)
    x = torch.randn(2, 100, T_FRAMES)
    cond = torch.randn(2, CFG.model.cond_channels, T_FRAMES)
    with torch.no_grad():
        assert torch.equal(cm(x, CFG.edm.sigma_min, cond), x)
        assert torch.equal(cm(x, torch.full((2,), CFG.edm.sigma_min), cond), x)
        assert not torch.allclose(cm(x, 1.0, cond), x, atol=1e-3)


@pytest.mark.parametrize("consistency", [False, True])
@pytest.mark.parametrize("sizes", [*FIXED_CHUNKS, *random_chunkings(T_FRAMES, 2, seed=5)])
def test_chunked_equals_one_shot(consistency: bool, sizes: int | list[int]) -> None:
    net = _precond(consistency)
    x = torch.randn(2, 100, T_FRAMES)
    cond = torch.randn(2, CFG.model.cond_channels, T_FRAMES)
    sigma = torch.tensor([0.05, 20.0])  # one per stream
    with torch.no_grad():
        ref = net(x, sigma, cond)
    state = net.init_state(2)
    y = run_stream(
        lambda xc, cc: net.step(xc, sigma, cc, state)[0],
        lambda: net.flush(sigma, state, 2),
        [x, cond],
        chunk_bounds(T_FRAMES, sizes),
        net.lookahead_frames,
    )
    assert (y - ref).abs().max() <= 1e-5


def test_stepping_never_reallocates_the_state() -> None:
    net = _precond(True)
    state = net.init_state(2)
    before = state_signature(list(state_tensors(state)))
    assert any(name.startswith("skip_delay") for name, *_ in before)
    x = torch.randn(2, 100, 40)
    cond = torch.randn(2, CFG.model.cond_channels, 40)
    with torch.inference_mode():
        for a, b in chunk_bounds(40, [1, 3, 2, 4]):
            net.step(x[..., a:b], 1.5, cond[..., a:b], state)
    assert state_signature(list(state_tensors(state))) == before


def test_declared_reach_is_measured() -> None:
    net = _precond(True)
    x = torch.randn(1, 100, 50)
    cond = torch.randn(1, CFG.model.cond_channels, 50)
    reach = measured_reach(lambda v: net(v, 2.0, cond), x, 30)
    assert reach == (net.lookahead_frames, net.left_frames) == (2, 10)


def test_scalar_per_item_and_per_frame_sigmas_agree() -> None:
    net = _precond(False)
    x = torch.randn(2, 100, T_FRAMES)
    cond = torch.randn(2, CFG.model.cond_channels, T_FRAMES)
    with torch.no_grad():
        scalar = net(x, 0.7, cond)
        per_item = net(x, torch.tensor([0.7, 0.7]), cond)
        per_frame = net(x, torch.full((2, 1, T_FRAMES), 0.7), cond)
    assert torch.allclose(scalar, per_item) and torch.allclose(scalar, per_frame, atol=1e-6)
    with pytest.raises(ValueError, match="one sigma per stream"):
        net.step(x, torch.full((2, 1, T_FRAMES), 0.7), cond, net.init_state(2))


def test_mel_normalisation_round_trip() -> None:
    cfg = EDMConfig()
    mel = torch.randn(2, 100, 7) * cfg.mel_std + cfg.mel_mean
    x = normalise_mel(mel, cfg)
    assert float(x.std()) == pytest.approx(cfg.sigma_data, rel=0.1)
    assert torch.allclose(denormalise_mel(x, cfg), mel, atol=1e-5)
