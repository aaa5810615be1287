"""Denoiser backbone: chunked == one-shot, declared delay and reach, static state."""

from __future__ import annotations

import pytest
import torch

from comostream.models.backbone import Backbone, lookahead_schedule
from comostream.models.config import ModelConfig, load_config
from comostream.models.streaming import state_tensors

from helpers import (
    FIXED_CHUNKS,
    chunk_bounds,
    measured_reach,
    random_chunkings,
    run_stream,
    state_signature,
)

TINY = load_config("configs/tiny.toml").model
T_FRAMES = 37


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    torch.manual_seed(0)
    return Backbone(TINY).eval()


def _inputs(batch: int = 2, frames: int = T_FRAMES) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 100, frames, generator=gen)
    return x, torch.randn(batch, TINY.cond_channels, frames, generator=gen)


def test_lookahead_schedule_centres_first_then_spreads_and_refuses_too_much() -> None:
    assert lookahead_schedule([1, 2, 4, 8] * 3, 3, 2) == [1, 0, 0, 0, 1] + [0] * 7
    assert lookahead_schedule([1, 2], 3, 4) == [2, 2]  # centred first (1, 2), then the span
    assert sum(lookahead_schedule([1, 2, 4], 3, 14)) == 14
    with pytest.raises(ValueError, match="exceeds"):
        lookahead_schedule([1, 2], 3, 7)


@pytest.mark.parametrize(
    "cfg", [TINY, ModelConfig(), load_config("configs/large.toml").model], ids=str
)
def test_declared_delay_is_walked_from_layers(cfg: ModelConfig) -> None:
    net = Backbone(cfg) if cfg.channels <= 128 else None
    if net is None:  # the large preset: check the schedule without building 48 M parameters
        dil = [2 ** (i % cfg.dilation_cycle) for i in range(cfg.layers)]
        assert sum(lookahead_schedule(dil, cfg.kernel_size, cfg.lookahead_frames)) == 0
        return
    spans = sum((cfg.kernel_size - 1) * 2 ** (i % cfg.dilation_cycle) for i in range(cfg.layers))
    assert net.lookahead_frames == cfg.lookahead_frames
    assert net.left_frames == spans - cfg.lookahead_frames


@pytest.mark.parametrize("sizes", [*FIXED_CHUNKS, *random_chunkings(T_FRAMES, 2, seed=3)])
def test_chunked_equals_one_shot(backbone: Backbone, sizes: int | list[int]) -> None:
    x, cond = _inputs()
    c_noise = torch.tensor([-1.0, 0.7])
    with torch.no_grad():
        ref = backbone(x, c_noise, cond)
    state = backbone.init_state(2)
    y = run_stream(
        lambda xc, cc: backbone.step(xc, c_noise, cc, state)[0],
        lambda: backbone.flush(c_noise, state, 2),
        [x, cond],
        chunk_bounds(T_FRAMES, sizes),
        backbone.lookahead_frames,
    )
    assert y.shape == ref.shape == (2, 100, T_FRAMES)
    assert (y - ref).abs().max() <= 1e-5


def test_declared_reach_is_measured(backbone: Backbone) -> None:
    x, cond = _inputs(1, 60)
    la, left = measured_reach(lambda v: backbone(v, 0.3, cond), x, 40)
    assert (la, left) == (backbone.lookahead_frames, backbone.left_frames)
    cla, cleft = measured_reach(lambda c: backbone(x, 0.3, c), cond, 40)
    assert cla <= backbone.lookahead_frames and cleft <= backbone.left_frames


def test_a_constant_per_frame_noise_level_equals_the_scalar_one(backbone: Backbone) -> None:
    x, cond = _inputs()
    with torch.no_grad():
        scalar = backbone(x, 0.25, cond)
        per_frame = backbone(x, torch.full((2, 1, T_FRAMES), 0.25), cond)
        varying = backbone(x, torch.linspace(-1, 1, T_FRAMES).expand(2, 1, -1), cond)
    assert torch.allclose(scalar, per_frame, atol=1e-6)
    assert not torch.allclose(scalar, varying, atol=1e-3)


def test_stepping_never_reallocates_the_state(backbone: Backbone) -> None:
    state = backbone.init_state(2)
    before = state_signature(list(state_tensors(state)))
    assert before and all(t.dtype == torch.float32 for _, t in state_tensors(state))
    x, cond = _inputs(2, 60)
    with torch.inference_mode():
        for a, b in chunk_bounds(60, [1, 2, 4, 3]):
            backbone.step(x[..., a:b], 0.1, cond[..., a:b], state)
    assert state_signature(list(state_tensors(state))) == before


def test_step_output_has_the_declared_delay(backbone: Backbone) -> None:
    """The causal stream lags the one-shot output by exactly ``lookahead_frames``."""
    x, cond = _inputs()
    state = backbone.init_state(2)
    with torch.inference_mode():
        ref = backbone(x, 0.0, cond)
        y, _ = backbone.step(x, 0.0, cond, state)
    d = backbone.lookahead_frames
    assert torch.allclose(y[..., d:], ref[..., :-d], atol=1e-5)
    assert not torch.allclose(y, ref, atol=1e-3)
