"""Streaming resampler: chunking invariance, exact delay and output counts, filter quality."""

from __future__ import annotations

import math

import numpy as np
import pytest

from comostream.models.audio import resample as torchaudio_resample
from comostream.realtime.resample import StreamingResampler, resample_oneshot

RATES = [
    (48000, 24000),
    (44100, 24000),
    (32000, 24000),
    (22050, 24000),
    (16000, 24000),
    (24000, 48000),
    (24000, 16000),
]


def _chunked(r: StreamingResampler, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """push() over random chunk sizes in 0..4096 (many tiny and empty ones), then flush()."""
    outs, i = [], 0
    while i < x.shape[-1]:
        k = int(rng.choice([0, 1, 2, int(rng.integers(0, 64)), int(rng.integers(0, 4097))]))
        outs.append(r.push(x[..., i : i + k]))
        i += k
    outs.append(r.flush(squeeze=x.ndim == 1))
    return np.concatenate(outs, axis=-1)


def _tone_amplitude(y: np.ndarray, freqs: np.ndarray, sr: int) -> np.ndarray:
    """Amplitude (C,) of the ``freqs[c]`` Hz component of row ``c`` of ``y (C, n)``."""
    n = np.arange(y.shape[-1])
    w = np.hanning(y.shape[-1])
    c = np.einsum("cn,cn->c", w * y, np.exp(-2j * np.pi * np.outer(freqs, n) / sr))
    return 2.0 * np.abs(c) / w.sum()


@pytest.mark.parametrize(("orig", "new"), RATES)
def test_any_chunking_equals_oneshot(orig: int, new: int) -> None:
    rng = np.random.default_rng(orig + new)
    x = (0.3 * rng.standard_normal(2 * orig // 5)).astype(np.float32)
    ref = resample_oneshot(x, orig, new)
    r = StreamingResampler(orig, new)
    for trial in range(2):  # the second stream checks that flush() resets
        y = _chunked(r, x, np.random.default_rng(trial))
        assert y.dtype == np.float32 and y.shape == ref.shape
        np.testing.assert_allclose(y, ref, rtol=0, atol=1e-6)
    assert ref.shape[0] == math.ceil(x.shape[0] * new / orig) + r.delay
    assert r.output_samples(x.shape[0]) == ref.shape[0]


def test_multichannel_chunked_equals_oneshot_and_each_channel_its_mono_resampling() -> None:
    rng = np.random.default_rng(3)
    x = (0.3 * rng.standard_normal((2, 20000))).astype(np.float32)
    r = StreamingResampler(44100, 24000, channels=2)
    y = _chunked(r, x, rng)
    ref = resample_oneshot(x, 44100, 24000)
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-6)
    # channels are independent: each equals its mono resampling
    np.testing.assert_allclose(y[1], resample_oneshot(x[1], 44100, 24000), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("orig", "new"), RATES)
def test_outputs_are_on_time(orig: int, new: int) -> None:
    """After R input samples, every output n with n * orig / new < R has been returned."""
    r = StreamingResampler(orig, new)
    assert r.delay_samples_out == r.delay and float(r.delay).is_integer()
    assert r.delay == math.ceil(r.lookahead_in * new / orig)
    total, received = 0, 0
    for k in [0, 1, 5, 100, 511, 512, 3000, 1, 1]:
        total += r.push(np.zeros(k, np.float32)).shape[0]
        received += k
        expected = max(0, r.delay + math.ceil((received - r.lookahead_in) * new / orig))
        assert total == expected
        assert total >= math.ceil(received * new / orig)


@pytest.mark.parametrize(("orig", "new"), [(48000, 24000), (44100, 24000), (16000, 24000)])
def test_sine_frequency_and_exact_delay(orig: int, new: int) -> None:
    freq = 1000.0
    x = np.sin(2 * np.pi * freq * np.arange(orig) / orig).astype(np.float32)
    r = StreamingResampler(orig, new)
    y = _chunked(r, x, np.random.default_rng(0)).astype(np.float64)
    n = np.arange(y.shape[0])
    expect = np.sin(2 * np.pi * freq * (n - r.delay_samples_out) / new)
    steady = slice(r.delay + 200, y.shape[0] - r.delay - 200)
    assert np.abs(y[steady] - expect[steady]).max() < 2e-3  # one sample off would be ~0.26
    # frequency: DFT peak of the steady part, refined by a parabola on log magnitude
    seg = y[steady] * np.hanning(y[steady].shape[0])
    spec = np.log(np.abs(np.fft.rfft(seg, 8 * seg.shape[0])) + 1e-12)
    k = int(np.argmax(spec))
    a, b, c = spec[k - 1 : k + 2]
    peak = (k + 0.5 * (a - c) / (a - 2 * b + c)) * new / (8 * seg.shape[0])
    assert abs(peak - freq) < 0.05


def test_aligned_oneshot_matches_reference_resampler() -> None:
    """Against torchaudio's Kaiser resampler: same timing, same band-limited signal."""
    rng = np.random.default_rng(5)
    t = np.arange(44100) / 44100
    freqs = rng.uniform(80.0, 9000.0, 12)
    x = 0.05 * np.sin(2 * np.pi * freqs[:, None] * t + rng.uniform(0, 6, (12, 1))).sum(0)
    x = x.astype(np.float32)
    ours = resample_oneshot(x, 44100, 24000, aligned=True)
    ref = torchaudio_resample(x, 44100, 24000)
    assert ours.shape == ref.shape
    mid = slice(200, -200)
    assert np.abs(ours[mid] - ref[mid]).max() < 2e-3


@pytest.mark.parametrize(("orig", "new"), RATES)
def test_passband_ripple_below_0_1_db(orig: int, new: int) -> None:
    low = min(orig, new)
    freqs = np.linspace(50.0, 0.45 * low, 24)
    t = np.arange(orig // 2) / orig
    x = np.sin(2 * np.pi * freqs[:, None] * t[None, :])
    y = resample_oneshot(x, orig, new, aligned=True)[:, 1000:-1000].astype(np.float64)
    gain_db = 20 * np.log10(_tone_amplitude(y, freqs, new))
    assert np.abs(gain_db).max() < 0.1, gain_db


@pytest.mark.parametrize(
    ("orig", "new"), [(48000, 24000), (44100, 24000), (32000, 24000), (24000, 16000)]
)
def test_tones_above_new_nyquist_are_attenuated(orig: int, new: int) -> None:
    """Tones from the new Nyquist up to the old one alias; what is left is >= 60 dB down."""
    freqs = np.linspace(0.5 * new, 0.499 * orig, 40)
    t = np.arange(orig // 2) / orig
    x = np.sin(2 * np.pi * freqs[:, None] * t[None, :])
    y = resample_oneshot(x, orig, new, aligned=True)[:, 1000:-1000].astype(np.float64)
    level_db = 10 * np.log10(np.mean(y**2, axis=1) / 0.5)
    assert level_db.max() < -60.0, (freqs[level_db.argmax()], level_db.max())


@pytest.mark.parametrize(("orig", "new"), [(16000, 24000), (22050, 24000), (24000, 48000)])
def test_upsampling_images_are_attenuated(orig: int, new: int) -> None:
    """A tone ``f`` below the old Nyquist leaves < -60 dB above it (its image at orig - f)."""
    freqs = np.linspace(100.0, 0.499 * orig, 40)
    t = np.arange(orig // 2) / orig
    x = np.sin(2 * np.pi * freqs[:, None] * t[None, :])
    y = resample_oneshot(x, orig, new, aligned=True)[:, 1000:-1000].astype(np.float64)
    power = np.abs(np.fft.rfft(y * np.blackman(y.shape[1]), axis=1)) ** 2
    f = np.fft.rfftfreq(y.shape[1], 1 / new)
    unit = power[0].sum()  # a 100 Hz tone passes at 0 dB
    image_db = 10 * np.log10(power[:, f >= 0.5 * orig].sum(1) / unit)
    assert image_db.max() < -60.0


def test_dc_gain_is_one() -> None:
    for orig, new in RATES:
        y = resample_oneshot(np.ones(4000, np.float32), orig, new, aligned=True)
        np.testing.assert_allclose(y[400:-400], 1.0, atol=1e-6)


def test_identity() -> None:
    x = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    r = StreamingResampler(24000, 24000)
    assert r.delay_samples_out == 0 and r.lookahead_in == 0
    y = _chunked(r, x, np.random.default_rng(2))
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(resample_oneshot(x, 24000, 24000), x)


def test_empty_stream_and_shapes() -> None:
    r = StreamingResampler(48000, 24000)
    assert r.push(np.zeros(0, np.float32)).shape == (0,)
    tail = r.flush()
    assert tail.shape == (r.delay,) and not tail.any()
    r2 = StreamingResampler(48000, 24000, channels=2)
    assert r2.push(np.zeros((2, 100), np.float32)).shape[0] == 2
    assert r2.flush().shape[0] == 2


def test_reset_forgets_the_stream() -> None:
    x = np.random.default_rng(4).standard_normal(3000).astype(np.float32)
    r = StreamingResampler(44100, 24000)
    r.push(x[:1234])
    r.reset()
    y = np.concatenate([r.push(x), r.flush()])
    np.testing.assert_array_equal(y, resample_oneshot(x, 44100, 24000))


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="positive integer"):
        StreamingResampler(0, 24000)
    with pytest.raises(ValueError, match="positive integer"):
        StreamingResampler(44100.5, 24000)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="passband"):
        StreamingResampler(48000, 24000, passband=0.5, stopband=0.45)
    r = StreamingResampler(48000, 24000, channels=2)
    with pytest.raises(ValueError, match=r"\(2, samples\)"):
        r.push(np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="floating"):
        r.push(np.zeros((2, 10), np.int16))
    bad = np.zeros((2, 10), np.float32)
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        r.push(bad)
