"""The streaming engine: exact latency, chunk invariance, offline equality, clickless changes."""

from __future__ import annotations

import numpy as np
import pytest

from comostream.models.config import RealtimeConfig
from comostream.realtime.engine import SampleFifo, StreamingConverter, convert_array

from helpers import IdentityStep, rng_chunks, silent_f0

pytestmark = pytest.mark.usefixtures("one_thread")


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 0.1).astype(np.float32)


@pytest.mark.parametrize("block", [1, 2, 4, 8])
@pytest.mark.parametrize("lookahead,f0_late", [(0, 0), (3, 0), (1, 2)])
def test_identity_is_a_pure_delay_of_the_reported_latency(
    block: int, lookahead: int, f0_late: int
) -> None:
    rt = RealtimeConfig(block_frames=block)
    eng = StreamingConverter(IdentityStep(lookahead), realtime=rt, f0_tracker=silent_f0(f0_late))
    x = _noise(24000)
    out = np.concatenate([eng.push(x[a:b]) for a, b in _bounds(len(x), rng_chunks(block, 80))])
    assert out.shape == x.shape  # every push returns as many samples as it got
    d = eng.delay_samples
    assert d == 256 * (block + 1 + lookahead + f0_late)
    assert eng.latency_ms == pytest.approx(1000 * d / 24000)
    np.testing.assert_array_equal(out[:d], 0)
    np.testing.assert_allclose(out[d:], x[: len(x) - d], atol=1e-6)


def _bounds(n: int, sizes: list[int]) -> list[tuple[int, int]]:
    out, pos, i = [], 0, 0
    while pos < n:
        out.append((pos, min(n, pos + sizes[i % len(sizes)])))
        pos, i = out[-1][1], i + 1
    return out


@pytest.mark.parametrize("rate", [24000, 44100, 48000])
def test_identity_convert_array_returns_the_input_through_resamplers(rate: int) -> None:
    t = np.arange(rate) / rate
    x = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    eng = StreamingConverter(IdentityStep(1), sample_rate=rate, f0_tracker=silent_f0())
    y = convert_array(eng, x, chunk=rng_chunks(rate, 50, 10, 2000))
    assert y.shape == x.shape
    mid = slice(rate // 10, -rate // 10)
    assert np.max(np.abs(y[mid] - x[mid])) < 0.02  # band-limited resampling both ways


def test_flush_then_reuse_gives_the_same_output() -> None:
    eng = StreamingConverter(IdentityStep(2), f0_tracker=silent_f0())
    x = _noise(5000, 1)
    a = convert_array(eng, x, chunk=333)
    b = convert_array(eng, x, chunk=700)
    np.testing.assert_allclose(a, x, atol=1e-6)
    np.testing.assert_array_equal(a, b)


def test_offline_equals_streaming_for_identity() -> None:
    x = _noise(7000, 2)
    on = convert_array(StreamingConverter(IdentityStep(1), f0_tracker=silent_f0()), x, 256)
    off = convert_array(
        StreamingConverter(IdentityStep(1), offline=True, f0_tracker=silent_f0()), x
    )
    np.testing.assert_allclose(on, off, atol=1e-6)


def test_stereo_in_stereo_out_and_bad_samples_counted() -> None:
    eng = StreamingConverter(IdentityStep(0), channels=2, f0_tracker=silent_f0())
    x = np.stack([_noise(3000, 3), _noise(3000, 4)], axis=1)
    x[10, 0] = np.nan
    y = eng.push(x)
    assert y.shape == (3000, 2)
    np.testing.assert_array_equal(y[:, 0], y[:, 1])
    assert eng.stats.bad_samples == 1
    with pytest.raises(ValueError, match="shape"):
        eng.push(np.zeros((10, 3), np.float32))


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="sample rate"):
        StreamingConverter(IdentityStep(0), sample_rate=1000, f0_tracker=silent_f0())
    with pytest.raises(ValueError, match="channels"):
        StreamingConverter(IdentityStep(0), channels=3, f0_tracker=silent_f0())


def test_fifo_grows_and_keeps_order() -> None:
    f = SampleFifo(16)
    data = np.arange(1000, dtype=np.float32)
    f.push(data[:600])
    np.testing.assert_array_equal(f.pop(100), data[:100])
    f.push(data[600:])
    np.testing.assert_array_equal(f.pop(900), data[100:])
    with pytest.raises(ValueError):
        f.pop(1)


@pytest.mark.parametrize("rate,block", [(24000, 2), (24000, 3), (48000, 2), (44100, 2)])
def test_declared_chunk_saves_the_fifo_block(rate: int, block: int) -> None:
    """A caller pushing whole blocks gets the same algorithmic latency with one block less of
    stream delay (the block is buffered by the caller instead of the FIFO)."""
    rt = RealtimeConfig(block_frames=block)
    chunk = round(256 * block * rate / 24000)
    robust = StreamingConverter(
        IdentityStep(1), realtime=rt, sample_rate=rate, f0_tracker=silent_f0()
    )
    aligned = StreamingConverter(
        IdentityStep(1), realtime=rt, sample_rate=rate, chunk=chunk, f0_tracker=silent_f0()
    )
    if rate % 24000 == 0:  # whole 24 kHz blocks per chunk: one block less of stream delay
        assert aligned.delay_ms <= robust.delay_ms - 1000 * 256 * block / 24000 + 1.0
        assert aligned.latency_ms <= robust.latency_ms + 1.0
    else:  # 44.1 kHz chunks straddle frames: no saving, never worse
        assert aligned.delay_ms <= robust.delay_ms + 0.1
    x = (np.sin(np.arange(rate) * 2 * np.pi * 300 / rate) * 0.5).astype(np.float32)
    out = np.concatenate(
        [aligned.push(x[a : a + chunk]) for a in range(0, rate - chunk + 1, chunk)]
    )
    d = aligned.delay_samples
    n = len(out)
    tol = 1e-6 if rate == 24000 else 0.02
    assert np.abs(out[d + rate // 10 : n] - x[rate // 10 : n - d]).max() <= tol
    with pytest.raises(ValueError, match="pushes of"):
        aligned.push(x[:100])
