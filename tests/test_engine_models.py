"""The full chain (content encoder, conditioner, one-step target, vocoder, YIN F0, resamplers):
streamed output equals offline output for every block size and input rate."""

from __future__ import annotations

import numpy as np
import pytest

from comostream.models.config import RealtimeConfig
from comostream.realtime.engine import StreamingConverter, convert_array

from helpers import sung

pytestmark = pytest.mark.usefixtures("one_thread")


def _engine(models, rate: int, block: int | None, **kw) -> StreamingConverter:
    model, vocoder = models
    rt = RealtimeConfig(block_frames=block or 1)
    return StreamingConverter.from_models(
        model, vocoder, sample_rate=rate, realtime=rt, offline=block is None, **kw
    )


@pytest.fixture(scope="module")
def offline(models) -> dict[int, np.ndarray]:
    return {r: convert_array(_engine(models, r, None), sung(r)) for r in (24000, 44100, 48000)}


@pytest.mark.parametrize("rate", [24000, 44100, 48000])
@pytest.mark.parametrize("block", [1, 2, 4, 8])
def test_streamed_equals_offline(models, offline, rate: int, block: int) -> None:
    x = sung(rate)
    eng = _engine(models, rate, block)
    sizes = np.random.default_rng(block).integers(1, 3 * 256 * block, 400).tolist()
    y = convert_array(eng, x, chunk=sizes)
    ref = offline[rate]
    assert y.shape == ref.shape == x.shape
    peak = np.abs(ref).max()
    assert peak > 1e-3  # the chain makes sound
    assert np.abs(y - ref).max() <= 1e-4 * peak


def test_latency_is_computed_from_the_modules(models) -> None:
    eng = _engine(models, 24000, 2)
    step = eng.step_module
    # content 1 + conditioner 0 + target 1 + vocoder 1 frames of lookahead
    assert step.lookahead_frames == 3
    assert eng.delay_samples_24k == 256 * 2 + 256 + 256 * 3
    assert eng.latency_ms == pytest.approx(1000 * 256 * 6 / 24000)


def test_speaker_change_is_not_a_click(models) -> None:
    x = sung(24000, 1.0)
    eng = _engine(models, 24000, 2, speaker="alto")
    half = len(x) // 2
    first = eng.push(x[:half])
    eng.set_speaker("bass")
    eng.set_transpose(3.0)
    second = eng.push(x[half:])
    y = np.concatenate([first, second])
    d = np.abs(np.diff(y))
    edge = slice(half - 2000, half + 4000)
    # the largest sample-to-sample step around the change is no larger than elsewhere
    assert d[edge].max() <= 1.5 * np.percentile(np.abs(np.diff(y[4000:])), 99.9) + 1e-6
    assert eng.transpose == 3.0 and eng.speaker == "bass"


def test_unknown_speaker_is_a_clear_error(models) -> None:
    eng = _engine(models, 24000, 2)
    with pytest.raises(KeyError, match="unknown speaker"):
        eng.set_speaker("soprano")


def test_the_engine_draws_its_noise_at_the_configured_scale(models) -> None:
    """``[realtime] noise_scale`` reaches the engine's step: at 0 two seeds give the same output,
    at the default they do not; streamed still equals offline at a scale of its own."""
    model, vocoder = models
    x = sung(24000, 0.5)

    def run(block: int | None, **rt) -> np.ndarray:
        eng = StreamingConverter.from_models(
            model, vocoder, realtime=RealtimeConfig(block_frames=block or 1, **rt),
            offline=block is None,
        )  # fmt: skip
        return convert_array(eng, x)

    np.testing.assert_array_equal(run(None, noise_scale=0.0), run(None, noise_scale=0.0, seed=7))
    assert not np.allclose(run(None), run(None, seed=7))
    ref = run(None, noise_scale=0.3)
    assert not np.allclose(ref, run(None))
    assert np.abs(run(2, noise_scale=0.3) - ref).max() <= 1e-4 * np.abs(ref).max()
