"""Per-frame A-weighted loudness: calibration, gain law, floor, and streaming == offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comostream.models.config import AudioConfig
from comostream.models.loudness import (
    FLOOR_DB,
    IncrementalLoudness,
    Loudness,
    a_weighting_db,
    loudness,
)

CFG = AudioConfig()
SR = CFG.sample_rate
SIGNAL = (np.random.default_rng(1).standard_normal(6000) * 0.2).astype(np.float32)
OFFLINE = loudness(SIGNAL, CFG)


def _sine(freq: float, amp: float = 1.0, n: int = SR // 2) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / SR)).astype(np.float32)


def _stream(inc: IncrementalLoudness, x: np.ndarray, sizes: list[int]) -> np.ndarray:
    outs, i, j = [], 0, 0
    while i < x.shape[-1]:
        n = sizes[j % len(sizes)]
        outs.append(inc.push(torch.from_numpy(x[..., i : i + n])))
        i, j = i + n, j + 1
    outs.append(inc.flush())
    return torch.cat(outs, dim=-1).numpy()


@pytest.mark.parametrize("n", [0, 1, 255, 256, 1000, 24000])
def test_loudness_has_one_float32_value_per_frame(n: int) -> None:
    out = loudness(np.zeros(n, np.float32), CFG)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert out.shape == (n // CFG.hop_length + 1,)


def test_silence_is_floor() -> None:
    out = loudness(np.zeros(5000, np.float32))
    assert np.all(np.isfinite(out)) and np.all(out == pytest.approx(FLOOR_DB))


def test_a_weighting_matches_its_reference_values_at_100_1k_and_10k_hz() -> None:
    db = a_weighting_db(np.array([100.0, 1000.0, 10000.0]))
    np.testing.assert_allclose(db, [-19.1, 0.0, -2.5], atol=0.1)


def test_a_full_scale_1khz_sine_reads_minus_3_db() -> None:
    mid = loudness(_sine(1000.0))[10:-10]
    np.testing.assert_allclose(mid, -3.0103, atol=0.05)


def test_a_100hz_sine_reads_19_db_below_a_1khz_one() -> None:
    low = loudness(_sine(100.0))[10:-10].mean()
    mid = loudness(_sine(1000.0))[10:-10].mean()
    assert mid - low == pytest.approx(19.1, abs=0.5)


def test_doubling_the_gain_adds_6_db_and_loudness_rises_with_level() -> None:
    x = SIGNAL
    base = loudness(x)
    louder = loudness(2.0 * x)  # +6.02 dB
    np.testing.assert_allclose(louder - base, 20 * np.log10(2.0), atol=1e-3)
    levels = [loudness(g * x)[5:-5].mean() for g in (0.01, 0.1, 0.3, 1.0, 3.0)]
    assert np.all(np.diff(levels) > 0)


def test_tensor_and_batch_input_give_the_numpy_values() -> None:
    x = torch.from_numpy(np.stack([SIGNAL, 0.5 * SIGNAL]))
    out = loudness(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, len(SIGNAL) // 256 + 1)
    np.testing.assert_allclose(out[0].numpy(), OFFLINE, atol=1e-5)
    np.testing.assert_allclose(Loudness(CFG)(x[1]).numpy(), out[1].numpy(), atol=1e-5)


@pytest.mark.parametrize("sizes", [[1], [7], [300], [10000], [0, 513, 0, 2]])
def test_incremental_equals_offline(sizes: list[int]) -> None:
    x = SIGNAL[:1500] if sizes == [1] else SIGNAL
    ref = OFFLINE if sizes != [1] else loudness(x)
    out = _stream(IncrementalLoudness(CFG), x[None], sizes)
    assert out.shape == (1, *ref.shape)
    assert np.abs(out[0] - ref).max() <= 1e-5


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 5000),
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=12).filter(lambda s: sum(s) >= 64),
    gain=st.sampled_from([0.0, 1e-4, 1.0]),
)
def test_incremental_equals_offline_for_random_chunkings_and_levels(
    n: int, sizes: list[int], gain: float
) -> None:
    x = SIGNAL[:n] * np.float32(gain)
    out = _stream(IncrementalLoudness(CFG, capacity=500), x[None], sizes)
    ref = loudness(x)
    assert out.shape == (1, *ref.shape)
    assert np.abs(out[0] - ref).max() <= 1e-5


def test_functional_step_and_finish_on_a_batch_equal_offline() -> None:
    x = np.stack([SIGNAL, SIGNAL[::-1] * 0.01])
    inc = IncrementalLoudness(CFG)
    state = inc.init_state(batch=2)
    outs = []
    for i in range(0, x.shape[1], 480):
        out, state = inc.step(torch.from_numpy(np.ascontiguousarray(x[:, i : i + 480])), state)
        assert out.shape[:1] == (2,)
        outs.append(out)
    out, state = inc.finish(state)
    outs.append(out)
    ref = Loudness(CFG)(torch.from_numpy(x.copy())).numpy()
    np.testing.assert_allclose(torch.cat(outs, -1).numpy(), ref, atol=1e-5, rtol=0)
