"""F0 post-processing: octave repair, median smoothing, interpolation, transposition, helpers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comostream.models.config import F0Config
from comostream.models.f0_post import (
    cents,
    f0_from_log,
    interpolate_unvoiced,
    log_f0,
    median_smooth,
    postprocess,
    repair_octaves,
    transpose,
)
from comostream.models.f0_track import F0Track


def _contour(t_frames: int = 120, base: float = 220.0) -> tuple[np.ndarray, np.ndarray]:
    """A vibrato contour (Hz) with an unvoiced gap at frames 50-59."""
    t = np.arange(t_frames)
    f0 = base * np.exp2(0.3 / 12 * np.sin(2 * np.pi * t / 18))
    voiced = np.ones(t_frames, bool)
    voiced[50:60] = False
    return np.where(voiced, f0, 0.0).astype(np.float32), voiced


def test_transpose_scales_voiced_f0_by_2_to_the_semitones_over_12_and_keeps_zeros() -> None:
    f0 = np.array([0.0, 110.0, 220.0, 0.0, 440.0], np.float32)
    np.testing.assert_allclose(transpose(f0, 12), 2 * f0, rtol=1e-6)
    np.testing.assert_allclose(transpose(f0, -12), f0 / 2, rtol=1e-6)
    np.testing.assert_allclose(transpose(f0, 7), f0 * 2 ** (7 / 12), rtol=1e-6)
    per_frame = transpose(f0, np.array([12, 12, 0, 5, -24]))
    np.testing.assert_allclose(per_frame, [0.0, 220.0, 220.0, 0.0, 110.0], rtol=1e-6)
    assert transpose(f0, 3.5).dtype == np.float32


def test_cents_is_nan_where_unvoiced_and_log_f0_inverts() -> None:
    assert cents(440.0, 220.0) == pytest.approx(1200.0)
    assert cents(220.0, 440.0) == pytest.approx(-1200.0)
    out = cents(np.array([0.0, 440.0, 100.0]), np.array([220.0, 0.0, 100.0]))
    assert np.isnan(out[0]) and np.isnan(out[1]) and out[2] == 0.0
    f0 = np.array([0.0, 100.0, 200.0], np.float32)
    lf = log_f0(f0)
    assert lf[0] == 0.0 and lf[2] == pytest.approx(np.log(200.0))
    np.testing.assert_allclose(f0_from_log(lf, f0 > 0), f0, rtol=1e-6)


def test_octave_repair_fixes_inserted_errors() -> None:
    f0, voiced = _contour()
    broken = f0.copy()
    broken[20:23] *= 2.0  # a 3-frame run an octave up
    broken[35] *= 0.5  # an isolated frame an octave down
    broken[70:72] *= 4.0  # two octaves up, right after the gap
    fixed = repair_octaves(broken, voiced)
    assert np.abs(cents(fixed[voiced], f0[voiced])).max() < 1.0
    assert np.all(fixed[~voiced] == 0.0)


def test_octave_repair_keeps_real_leaps() -> None:
    f0 = np.concatenate([np.full(40, 200.0), np.full(40, 400.0), np.full(40, 200.0)])
    voiced = np.ones(120, bool)
    np.testing.assert_allclose(repair_octaves(f0, voiced), f0, rtol=1e-6)
    fifth = f0 * np.where(np.arange(120) % 7 == 3, 1.5, 1.0)  # not an octave: untouched
    np.testing.assert_allclose(repair_octaves(fifth, voiced), fifth, rtol=1e-6)


def test_median_smooth_removes_a_spike_within_each_voiced_run_only() -> None:
    f0, voiced = _contour()
    spiky = f0.copy()
    spiky[30] *= 1.2
    out = median_smooth(spiky, voiced, 3)
    assert abs(cents(out[30], f0[30])) < 10.0
    assert np.all(out[~voiced] == 0.0)
    # Runs are smoothed separately: the frames next to the gap keep their own run's values.
    step = np.where(np.arange(120) < 50, 100.0, 300.0).astype(np.float32)
    out = median_smooth(step, voiced, 5)
    assert np.all(out[:50] == 100.0) and np.all(out[60:] == 300.0)
    np.testing.assert_array_equal(median_smooth(spiky, voiced, 1), spiky)
    with pytest.raises(ValueError):
        median_smooth(f0, voiced, 4)


def test_interpolate_unvoiced_is_linear_in_log_f0_and_holds_the_edges() -> None:
    f0 = np.zeros(11, np.float32)
    voiced = np.zeros(11, bool)
    f0[2], f0[8] = 200.0, 800.0
    voiced[[2, 8]] = True
    out = interpolate_unvoiced(f0, voiced)
    assert out[5] == pytest.approx(400.0, rel=1e-5)  # halfway in log-F0
    assert np.all(out[:3] == 200.0) and np.all(out[8:] == 800.0)  # edges held
    steps = np.diff(np.log2(out))
    np.testing.assert_allclose(steps[2:8], 2.0 / 6, rtol=1e-4)  # linear in log-F0
    assert np.all(interpolate_unvoiced(f0, np.zeros(11, bool)) == 200.0)
    assert np.all(interpolate_unvoiced(f0, np.zeros(11, bool), default_hz=123.0) == 123.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(st.just(0.0), st.floats(60.0, 1100.0, allow_nan=False)), min_size=1, max_size=80
    )
)
def test_interpolation_keeps_voiced_frames_and_stays_within_their_range(
    values: list[float],
) -> None:
    f0 = np.array(values, np.float32)
    voiced = f0 > 0
    out = interpolate_unvoiced(f0, voiced)
    assert out.shape == f0.shape and out.dtype == np.float32 and np.all(out > 0)
    np.testing.assert_allclose(out[voiced], f0[voiced], rtol=1e-5)
    if voiced.any():
        assert out.min() >= f0[voiced].min() * (1 - 1e-5)
        assert out.max() <= f0[voiced].max() * (1 + 1e-5)


@settings(max_examples=40, deadline=None)
@given(st.floats(-36.0, 36.0, allow_nan=False))
def test_transposing_up_then_down_gives_the_input_back(semitones: float) -> None:
    f0, _ = _contour(40)
    back = transpose(transpose(f0, semitones), -semitones)
    np.testing.assert_allclose(back, f0, rtol=1e-5)
    assert np.all((transpose(f0, semitones) == 0) == (f0 == 0))


def test_postprocess_repairs_an_octave_error_and_keeps_voicing_and_periodicity() -> None:
    f0, voiced = _contour()
    broken = f0.copy()
    broken[20] *= 2.0
    per = np.linspace(0, 1, f0.size).astype(np.float32)
    out = postprocess(F0Track(broken, voiced, per), F0Config())
    assert out.f0_hz.dtype == np.float32 and out.periodicity is per
    np.testing.assert_array_equal(out.voiced, voiced)
    assert abs(cents(out.f0_hz[20], f0[20])) < 10.0 and np.all(out.f0_hz[~voiced] == 0)
    plain = postprocess(F0Track(broken, voiced), F0Config(octave_repair=False, median_frames=1))
    np.testing.assert_array_equal(plain.f0_hz, broken)
