"""Frame-local YIN tracker: streaming == one-shot, frame locality, accuracy, voicing, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from comostream.bench.f0 import F0Scores, synthetic_singing
from comostream.models.config import F0Config
from comostream.models.f0 import BACKENDS, extract_f0
from comostream.models.f0_yin import LOOKAHEAD_SAMPLES, IncrementalF0, _post, yin_f0

SR = 24000


def _streamed(inc: IncrementalF0, x: np.ndarray, rng: np.random.Generator) -> tuple:
    """push() over random chunk sizes in 0..4096 (with empty and 1-sample ones), then flush()."""
    f0s, vs, i = [], [], 0
    while i < x.shape[0]:
        k = int(rng.choice([0, 1, int(rng.integers(0, 300)), int(rng.integers(0, 4097))]))
        f, v = inc.push(x[i : i + k])
        assert f.dtype == np.float32 and v.dtype == bool and f.shape == v.shape
        f0s.append(f)
        vs.append(v)
        i += k
    f, v = inc.flush()
    return np.concatenate(f0s + [f]), np.concatenate(vs + [v])


def _tone(freq: float, seconds: float = 1.0, harmonics: bool = False) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    if not harmonics:
        return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    ks = np.arange(1, int(11000 / freq) + 1)
    x = sum(np.sin(2 * np.pi * freq * k * t + k) / k for k in ks)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_incremental_equals_oneshot(seed: int) -> None:
    audio, _ = synthetic_singing(2.0, seed=seed, base_midi=50.0 + 8 * seed)
    audio = audio[: audio.shape[0] - 77 * seed]  # lengths that are not a multiple of the hop
    ref = yin_f0(audio)
    assert ref.n_frames == audio.shape[0] // 256 + 1 and ref.voiced.any()
    inc = IncrementalF0()
    for trial in range(2):  # the second stream checks that flush() resets
        f0, voiced = _streamed(inc, audio, np.random.default_rng(10 * seed + trial))
        np.testing.assert_array_equal(f0, ref.f0_hz)
        np.testing.assert_array_equal(voiced, ref.voiced)


def test_frame_is_released_when_its_window_is_complete() -> None:
    inc = IncrementalF0()
    assert inc.lookahead_samples == LOOKAHEAD_SAMPLES == 512 and inc.lookahead_frames == 0
    x = _tone(220.0)
    t = 5
    f0, _ = inc.push(x[: 256 * t + 511])  # frame t still needs sample 256 t + 511
    assert f0.shape[0] == t
    f0, _ = inc.push(x[256 * t + 511 : 256 * t + 512])
    assert f0.shape[0] == 1
    inc.reset()
    assert inc.push(x[:511])[0].shape[0] == 0 and inc.push(x[511:512])[0].shape[0] == 1


def test_frame_depends_only_on_its_window() -> None:
    """Raw frames (no post-processing across frames) ignore samples outside [256t-512, 256t+512)."""
    cfg = F0Config(octave_repair=False)
    audio, _ = synthetic_singing(1.5, seed=4)
    ref = yin_f0(audio, cfg)
    t = 60
    other = audio.copy()
    rng = np.random.default_rng(0)
    other[: 256 * t - 512] = rng.uniform(-0.5, 0.5, 256 * t - 512)
    other[256 * t + 512 :] = rng.uniform(-0.5, 0.5, other.shape[0] - 256 * t - 512)
    changed = yin_f0(other, cfg)
    assert changed.f0_hz[t] == ref.f0_hz[t] and changed.voiced[t] == ref.voiced[t]
    assert not np.array_equal(changed.f0_hz, ref.f0_hz)  # the perturbation did change others
    other[256 * t + 200] += 0.3  # inside the window: frame t sees it
    assert yin_f0(other, cfg).f0_hz[t] != ref.f0_hz[t]


@pytest.mark.parametrize("freq", [80.0, 220.0, 440.0, 880.0])
@pytest.mark.parametrize("harmonics", [False, True])
def test_tones_within_10_cents(freq: float, harmonics: bool) -> None:
    track = yin_f0(_tone(freq, harmonics=harmonics))
    inner = slice(2, track.n_frames - 2)  # frames whose window lies inside the tone
    assert track.voiced[inner].all()
    cents = 1200 * np.log2(track.f0_hz[inner] / freq)
    assert np.abs(cents).max() < 10.0, np.abs(cents).max()


def test_rpa_and_vde_on_synthetic_singing_meet_their_bounds() -> None:
    scores = F0Scores()
    for seed in range(4):
        audio, ref = synthetic_singing(3.0, seed=seed, base_midi=48.0 + 6 * seed)
        scores.add(yin_f0(audio), ref)
    assert scores.rpa >= 0.93, scores.rpa
    assert scores.vde <= 0.06, scores.vde


def test_silence_noise_and_quiet_frames_are_unvoiced() -> None:
    silence = yin_f0(np.zeros(SR, np.float32))
    assert not silence.voiced.any() and not silence.f0_hz.any()
    noise = np.random.default_rng(0).standard_normal(2 * SR).astype(np.float32)
    for level in (0.3, 0.01):
        assert not yin_f0(level * noise).voiced.any()
    quiet = _tone(220.0) * np.float32(10 ** (-70 / 20) / 0.3)  # -73 dBFS RMS < silence_db
    assert not yin_f0(quiet).voiced.any()
    assert yin_f0(quiet, F0Config(silence_db=-90.0)).voiced[2:-2].all()  # the gate did it
    empty = yin_f0(np.zeros(0, np.float32))
    assert empty.n_frames == 1 and not empty.voiced.any()


def test_causal_octave_repair_folds_a_doubtful_jump_and_accepts_a_sustained_leap() -> None:
    """_post folds a less periodic frame an octave away; keeps real leaps after 3 frames."""

    def run(f0: list[float], aper: list[float]) -> np.ndarray:
        n = len(f0)
        out, voiced = np.empty(n), np.empty(n, np.bool_)
        state = np.array([0.0, 99.0, 0.0, 0.0])
        f, a = np.array(f0), np.array(aper)
        _post(f, a, np.zeros(n), 0.4, -60.0, True, state, out, voiced)
        assert voiced.all()
        return out

    np.testing.assert_allclose(
        run([200, 202, 404, 203], [0.1, 0.1, 0.2, 0.1]), [200, 202, 202, 203]
    )
    # more periodic than its reference: trusted (the reference was the doubtful one)
    np.testing.assert_allclose(run([200, 404, 404], [0.2, 0.05, 0.05]), [200, 404, 404])
    # a sustained leap: folded for 3 frames, then accepted
    leap = run([200] * 2 + [400] * 6, [0.1] * 2 + [0.2] * 6)
    np.testing.assert_allclose(leap, [200] * 5 + [400] * 3)


def test_extract_f0_yin_equals_yin_f0_at_any_input_rate() -> None:
    assert "yin" in BACKENDS
    audio, _ = synthetic_singing(1.0, seed=5)
    a = extract_f0(audio, backend="yin")
    b = yin_f0(audio)
    np.testing.assert_array_equal(a.f0_hz, b.f0_hz)
    assert a.periodicity is not None and a.periodicity.shape == a.f0_hz.shape
    at48 = extract_f0(np.repeat(audio, 2), 48000, backend="yin")
    assert at48.n_frames == a.n_frames


def test_a_looser_voicing_threshold_voices_more_frames() -> None:
    audio, _ = synthetic_singing(2.0, seed=6)
    loose = yin_f0(audio, dataclasses.replace(F0Config(), yin_voicing=0.9))
    strict = yin_f0(audio, dataclasses.replace(F0Config(), yin_voicing=0.05))
    assert loose.voiced.sum() > strict.voiced.sum()


def test_bad_input_is_a_value_error_naming_the_fault() -> None:
    bad = np.zeros(1000, np.float32)
    bad[10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        yin_f0(bad)
    with pytest.raises(ValueError, match="NaN"):
        IncrementalF0().push(bad)
    with pytest.raises(ValueError, match="mono"):
        yin_f0(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match="floating"):
        IncrementalF0().push(np.zeros(10, np.int16))
    with pytest.raises(ValueError, match="fmin"):
        yin_f0(np.zeros(100, np.float32), F0Config(fmin=25.0))
