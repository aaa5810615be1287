"""Streaming primitives: chunked == one-shot, declared vs measured reach, static state."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from comostream.models.backbone import Backbone
from comostream.models.conditioner import Conditioner
from comostream.models.config import load_config
from comostream.models.edm import EDMPrecond
from comostream.models.streaming import CausalConv1d, Delay, Streaming, init_tree, state_tensors

from helpers import (
    FIXED_CHUNKS,
    chunk_bounds,
    measured_reach,
    random_chunkings,
    run_stream,
    state_signature,
)

CONV_CASES = [(3, 1, 0), (3, 1, 1), (3, 2, 3), (5, 4, 2), (1, 1, 0), (2, 3, 3)]  # k, d, L


pytestmark = pytest.mark.usefixtures("one_thread")


def _conv(k: int, d: int, la: int, seed: int = 0) -> CausalConv1d:
    torch.manual_seed(seed)
    return CausalConv1d(3, 5, k, d, la)


def _stream_conv(conv: CausalConv1d, x: torch.Tensor, sizes: int | list[int]) -> torch.Tensor:
    state = conv.init_state(x.shape[0])
    return run_stream(
        lambda c: conv.step(c, state)[0],
        lambda: conv.flush(state, x.shape[0]),
        [x],
        chunk_bounds(x.shape[-1], sizes),
        conv.lookahead_frames,
    )


@pytest.mark.parametrize("k,d,la", CONV_CASES)
def test_conv_chunked_equals_one_shot(k: int, d: int, la: int) -> None:
    conv = _conv(k, d, la)
    x = torch.randn(2, 3, 41)
    with torch.no_grad():
        ref = conv(x)
    assert ref.shape == (2, 5, 41)
    for sizes in [*FIXED_CHUNKS, *random_chunkings(41, 3, seed=k * 10 + d)]:
        y = _stream_conv(conv, x, sizes)
        assert y.shape == ref.shape
        assert (y - ref).abs().max() <= 1e-5, sizes


@settings(max_examples=25, deadline=None)
@given(
    case=st.sampled_from(CONV_CASES),
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=8),
    frames=st.integers(1, 30),
)
def test_conv_streamed_in_any_chunking_equals_one_shot(
    case: tuple[int, int, int], sizes: list[int], frames: int
) -> None:
    conv = _conv(*case)
    x = torch.randn(1, 3, frames)
    with torch.no_grad():
        ref = conv(x)
    assert (_stream_conv(conv, x, sizes) - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("k,d,la", CONV_CASES)
def test_conv_declared_reach_is_measured(k: int, d: int, la: int) -> None:
    conv = _conv(k, d, la)
    assert conv.left_frames + conv.lookahead_frames == (k - 1) * d
    assert measured_reach(conv, torch.randn(1, 3, 40), 20) == (la, conv.left_frames)


def test_conv_one_shot_is_a_non_causal_conv() -> None:
    """One-shot = a plain conv padded ``left_frames`` before and ``lookahead_frames`` after."""
    conv = _conv(3, 2, 3)
    x = torch.randn(2, 3, 17)
    w, b = conv.conv.weight, conv.conv.bias
    ref = F.conv1d(F.pad(x, (conv.left_frames, conv.lookahead_frames)), w, b, dilation=2)
    assert torch.allclose(conv(x), ref, atol=1e-6)


def test_conv_rejects_lookahead_beyond_span() -> None:
    with pytest.raises(ValueError, match="lookahead"):
        CausalConv1d(2, 2, 3, 1, 3)


def test_delay_shifts_by_its_samples_streamed_or_one_shot() -> None:
    x = torch.arange(10.0).view(1, 1, 10)
    delay = Delay(1, 3)
    assert torch.equal(delay(x)[0, 0], torch.tensor([0, 0, 0, 0, 1, 2, 3, 4, 5, 6.0]))
    state = delay.init_state(1)
    y = torch.cat([delay.run(x[..., a:b], state) for a, b in chunk_bounds(10, [1, 4, 2])], -1)
    assert torch.equal(y, delay(x))
    assert Delay(1, 0).init_state(1) == {} and Delay(1, 0)(x) is x


def test_state_is_preallocated_and_static() -> None:
    module = torch.nn.ModuleDict({"a": _conv(3, 2, 1), "b": torch.nn.ModuleList([Delay(5, 2)])})
    state = init_tree(module, batch=2)
    before = state_signature(list(state_tensors(state)))
    assert [name for name, *_ in before] == ["a.history", "b.0.history"]
    with torch.inference_mode():
        for k in [1, 3, 2, 8] * 20:
            h = module["a"].step(torch.randn(2, 3, k), state["a"])[0]
            module["b"][0].run(h, state["b"]["0"])
    assert state_signature(list(state_tensors(state))) == before


def test_the_streaming_modules_implement_the_streaming_protocol() -> None:
    cfg = load_config("configs/tiny.toml")
    backbone = Backbone(cfg.model)
    for module in (
        _conv(3, 1, 1),
        backbone,
        EDMPrecond(backbone, cfg.edm),
        Conditioner(cfg.model, ["a"]),
    ):
        assert isinstance(module, Streaming)
