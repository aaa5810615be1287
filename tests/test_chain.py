"""The conversion chain (models/chain.py): offline call == streamed steps, the causal F0 hold and
the per-frame transposition inside it, tracing."""

from __future__ import annotations

import pytest
import torch

from comostream.models.chain import ConversionChain, FrameInputs
from comostream.models.config import DEFAULT_F0_HZ
from comostream.realtime.traced import TracedStep

pytestmark = pytest.mark.usefixtures("one_thread")

FRAMES = 40


def _inputs(chain: ConversionChain, streams: int = 2, frames: int = FRAMES) -> FrameInputs:
    """Random block inputs with unvoiced runs (F0 0 and garbage F0 flagged unvoiced) that cross
    block edges, and a transposition ramp from 0 to +5 semitones."""
    g = torch.Generator().manual_seed(3)
    x = chain.zero_inputs(streams, frames)
    x["mel"] = torch.randn(x["mel"].shape, generator=g) - 6.0
    x["audio"] = torch.randn(x["audio"].shape, generator=g) * 0.1
    voiced = torch.ones(streams, frames)
    voiced[:, :3] = 0  # nothing voiced yet: the default F0
    voiced[:, 9:17] = 0  # a gap across several blocks
    voiced[1, 25:31] = 0
    f0 = 150.0 + 100.0 * torch.rand(streams, frames, generator=g)
    f0[:, 9:13] = 0.0  # unvoiced as 0 Hz...
    f0[:, 13:17] = 999.0  # ...or with a value the voiced flag rules out
    x["f0"], x["voiced"] = f0, voiced
    x["loudness"] = torch.rand(streams, frames, generator=g) * 30 - 50
    x["transpose"] = torch.linspace(0.0, 5.0, frames).expand(streams, frames).contiguous()
    x["speaker"] = torch.randn(streams, chain.speaker_dim, generator=g)
    return x


def _blocks(x: FrameInputs, sizes: list[int]) -> list[FrameInputs]:
    out, start = [], 0
    hop = x["audio"].shape[-1] // x["f0"].shape[-1]
    for k in sizes:
        per_frame = ("mel", "f0", "voiced", "loudness", "transpose")
        block = {n: x[n][..., start : start + k] for n in per_frame}
        block["audio"] = x["audio"][:, start * hop : (start + k) * hop]
        block["speaker"] = x["speaker"]
        out.append(block)
        start += k
    assert start == x["f0"].shape[-1]
    return out


@pytest.fixture(scope="module")
def chain(models) -> ConversionChain:
    model, vocoder = models
    return ConversionChain(model, vocoder).eval()


def test_offline_call_equals_streamed_steps_across_held_f0_and_a_transposition_ramp(
    chain: ConversionChain,
) -> None:
    x = _inputs(chain)
    with torch.inference_mode():
        offline = chain(x)
        state = chain.init_state(2)
        blocks = _blocks(x, [1, 4, 3, 7, 2, 9, 5, 9])
        streamed = torch.cat([chain.step(b, state) for b in blocks], dim=-1)
    assert offline.shape == (2, FRAMES * chain.hop_length)
    assert offline.abs().max() > 1e-3  # the chain makes sound
    torch.testing.assert_close(streamed, offline, rtol=0, atol=1e-5 * float(offline.abs().max()))


def test_the_state_holds_the_last_voiced_f0_and_starts_at_the_default(
    chain: ConversionChain,
) -> None:
    x = _inputs(chain)
    with torch.inference_mode():
        state = chain.init_state(2)
        assert state["f0_hold"].flatten().tolist() == [DEFAULT_F0_HZ, DEFAULT_F0_HZ]
        first, second, *_ = _blocks(x, [12, 14, FRAMES - 26])
        chain.step(first, state)  # ends in the gap: the frame before it is the last voiced one
        assert torch.equal(state["f0_hold"][:, 0], x["f0"][:, 8])
        chain.step(second, state)
        assert float(state["f0_hold"][0, 0]) == float(x["f0"][0, 25])  # voiced at its end
        assert float(state["f0_hold"][1, 0]) == float(x["f0"][1, 24])  # unvoiced from 25 on


def test_unvoiced_f0_values_do_not_reach_the_output(chain: ConversionChain) -> None:
    x = _inputs(chain)
    y = dict(x, f0=torch.where(x["voiced"] > 0, x["f0"], torch.full_like(x["f0"], 77.0)))
    with torch.inference_mode():
        assert torch.equal(chain(x), chain(y))


def test_transposition_changes_the_output_only_from_the_frames_it_applies_to(
    chain: ConversionChain,
) -> None:
    x = _inputs(chain)
    y = dict(x, transpose=x["transpose"].clone())
    y["transpose"][:, 30:] += 3.0
    with torch.inference_mode():
        a, b = chain(x), chain(y)
    cut = (30 - chain.lookahead_frames) * chain.hop_length  # the chain is causal, this late
    assert torch.equal(a[:, :cut], b[:, :cut])
    assert not torch.equal(a[:, cut:], b[:, cut:])


def test_traced_chain_replays_the_hold_and_ramp_like_eager_steps(chain: ConversionChain) -> None:
    x = _inputs(chain)
    block = 4
    traced = TracedStep(chain, chain.zero_inputs(2, block), streams=2)
    blocks = _blocks(x, [block] * (FRAMES // block))
    with torch.inference_mode():
        eager_state, traced_state = chain.init_state(2), traced.init_state(2)
        eager = torch.cat([chain.step(b, eager_state) for b in blocks], dim=-1)
        replay = torch.cat([traced.step(b, traced_state) for b in blocks], dim=-1)
    torch.testing.assert_close(replay, eager, rtol=0, atol=1e-5 * float(eager.abs().max()))
    assert torch.equal(traced_state["f0_hold"], eager_state["f0_hold"])


def test_noise_scale_scales_the_targets_input_noise_and_zero_removes_the_seed(models) -> None:
    """``noise_scale`` s: the target's input is s * sigma_max * noise (one call of the target
    with that input agrees); at 0 the output no longer depends on the seed, above 0 it does."""
    model, _ = models
    mel_chain = {  # log-mel out (no vocoder): what the noise reaches first
        (s, seed): ConversionChain(model, None, seed=seed, noise_scale=s).eval()
        for s in (0.0, 0.5, 1.0)
        for seed in (0, 1)
    }
    c = mel_chain[(0.5, 0)]
    assert c.noise_amp == pytest.approx(0.5 * model.cfg.edm.sigma_max)
    x = _inputs(c)
    with torch.inference_mode():
        out = {k: ch(x) for k, ch in mel_chain.items()}
    assert torch.equal(out[(0.0, 0)], out[(0.0, 1)])
    assert not torch.allclose(out[(0.5, 0)], out[(0.5, 1)])
    assert not torch.allclose(out[(0.5, 0)], out[(1.0, 0)])
