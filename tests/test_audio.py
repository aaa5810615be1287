"""Audio I/O and resampling: formats, rates, mono mixdown, accuracy, errors, atomic save."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from comostream.models.audio import (
    DEFAULT_SUBTYPES,
    AudioError,
    AudioWriter,
    check_finite,
    load_audio,
    output_format,
    read_audio,
    resample,
    save_audio,
    save_wav,
)

FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS")}


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def _peak_hz(x: np.ndarray, sr: int) -> float:
    """Dominant frequency with parabolic interpolation of the log-magnitude peak."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) + 1e-12
    k = int(np.argmax(spec))
    a, b, c = np.log(spec[k - 1 : k + 2])
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * sr / len(x)


@pytest.mark.parametrize("ext", sorted(FORMATS))
@pytest.mark.parametrize("sr", [16000, 44100, 48000])
def test_every_format_and_rate_loads_as_mono_float32_at_the_asked_rate(
    tmp_path: Path, ext: str, sr: int
) -> None:
    fmt, subtype = FORMATS[ext]
    path = tmp_path / f"tone.{ext}"
    sf.write(path, _sine(440.0, sr, 0.5), sr, format=fmt, subtype=subtype)
    audio = load_audio(path, 24000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 12000) <= 1
    assert _peak_hz(audio, 24000) == pytest.approx(440.0, abs=1.0)
    native, native_sr = read_audio(path)
    assert native_sr == sr and native.dtype == np.float32 and native.ndim == 1


def test_stereo_is_mixed_to_mono_by_the_mean(tmp_path: Path) -> None:
    left, right = _sine(300.0, 24000, 0.2), _sine(700.0, 24000, 0.2, amp=0.25)
    path = tmp_path / "st.wav"
    sf.write(path, np.stack([left, right], axis=1), 24000, subtype="FLOAT")
    audio = load_audio(path, 24000)
    np.testing.assert_allclose(audio, (left + right) / 2, atol=1e-7)
    sf.write(tmp_path / "st48.flac", np.stack([left, right], axis=1), 48000)
    assert load_audio(tmp_path / "st48.flac", 24000).shape == (len(left) // 2,)


@pytest.mark.parametrize(
    ("sr_in", "sr_out"), [(48000, 24000), (44100, 24000), (16000, 24000), (24000, 44100)]
)
def test_a_resampled_sine_matches_the_ideal_one_within_2e_3(sr_in: int, sr_out: int) -> None:
    freq = 1234.5
    y = resample(_sine(freq, sr_in, 0.5), sr_in, sr_out)
    assert y.dtype == np.float32 and len(y) == math.ceil(
        len(_sine(freq, sr_in, 0.5)) * sr_out / sr_in
    )
    ideal = _sine(freq, sr_out, len(y) / sr_out)[: len(y)]
    mid = slice(len(y) // 8, -len(y) // 8)  # away from the edge transients
    assert np.abs(y[mid] - ideal[mid]).max() < 2e-3
    assert _peak_hz(y, sr_out) == pytest.approx(freq, abs=0.5)


def test_resampling_to_the_same_rate_is_identity_and_channels_resample_alike() -> None:
    x = np.random.default_rng(0).standard_normal((2, 4410)).astype(np.float64)
    same = resample(x, 44100, 44100)
    assert same.dtype == np.float32 and np.allclose(same, x, atol=1e-6)
    y = resample(x, 44100, 24000)
    assert y.shape == (2, 2400)
    # float32: the batched resampler may sum in another order than the single-channel one
    np.testing.assert_allclose(y[1], resample(x[1], 44100, 24000), atol=1e-5)
    with pytest.raises(ValueError):
        resample(x, 0, 24000)


def test_a_missing_file_is_an_audio_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="nope.wav.*not found"):
        load_audio(tmp_path / "nope.wav")


@pytest.mark.parametrize("content", [b"", b"RIFF\x00\x00garbage" * 10, bytes(range(256)) * 4])
def test_a_corrupt_file_is_an_audio_error_naming_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match="bad.wav"):
        load_audio(path)


@pytest.mark.parametrize("ext", ["wav", "flac"])
def test_an_empty_file_is_an_audio_error_naming_it(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"empty.{ext}"
    sf.write(path, np.zeros(0, np.float32), 24000)
    # libsndfile cannot even reopen a zero-frame FLAC; either way it is an AudioError
    why = "zero samples" if ext == "wav" else "zero samples|corrupt"
    with pytest.raises(AudioError, match=f"empty.{ext}.*({why})"):
        read_audio(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_samples_are_an_audio_error(tmp_path: Path, bad: float) -> None:
    x = np.zeros(1000, np.float32)
    x[500] = bad
    path = tmp_path / "nan.wav"
    sf.write(path, x, 24000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav.*non-finite"):
        load_audio(path)
    with pytest.raises(AudioError, match="thing"):
        check_finite(x, "thing")


def test_save_wav_round_trips_and_overwrites_atomically(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "out.wav"
    x = _sine(440.0, 24000, 0.1)
    save_wav(path, x, 24000)
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.wav"]
    back, sr = read_audio(path)
    assert sr == 24000 and sf.info(str(path)).subtype == "PCM_16"
    np.testing.assert_allclose(back, x, atol=1 / 16384)
    save_wav(path, 0.5 * x, 24000)  # overwrite in place
    np.testing.assert_allclose(read_audio(path)[0], 0.5 * x, atol=1 / 16384)
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.wav"]


def test_save_wav_clips_pcm_keeps_float_exact_and_writes_stereo(tmp_path: Path) -> None:
    x = np.array([0.0, 1.5, -2.0, 0.25], np.float32)
    save_wav(tmp_path / "pcm.wav", x, 16000)
    back, _ = sf.read(tmp_path / "pcm.wav", dtype="float32")
    assert back.max() <= 1.0 and back.min() == -1.0 and back[1] > 0.999
    save_wav(tmp_path / "f.wav", x, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(sf.read(tmp_path / "f.wav", dtype="float32")[0], x)
    st = np.stack([x, -x]) * 0.5
    save_wav(tmp_path / "st.wav", st, 16000, subtype="FLOAT")
    data, _ = sf.read(tmp_path / "st.wav", dtype="float32", always_2d=True)
    np.testing.assert_array_equal(data.T, st)


def test_save_nan_raises_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="x.wav"):
        save_wav(tmp_path / "x.wav", np.array([0.0, np.nan], np.float32), 24000)
    with pytest.raises(AudioError, match="y.wav"):
        save_wav(tmp_path / "y.wav", np.zeros(10, np.float32), 24000, subtype="NOT_A_SUBTYPE")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg"])
def test_save_audio_and_the_writer_follow_the_extension(tmp_path: Path, ext: str) -> None:
    x = _sine(440.0, 24000, 0.5)
    fmt = FORMATS[ext][0]
    save_audio(tmp_path / f"whole.{ext}", x, 24000)
    with AudioWriter(tmp_path / f"pieces.{ext}", 24000) as w:
        for i in range(0, len(x), 1000):
            w.write(x[i : i + 1000])
    for name in (f"whole.{ext}", f"pieces.{ext}"):
        info = sf.info(str(tmp_path / name))
        assert (info.format, info.subtype) == (fmt, DEFAULT_SUBTYPES[fmt])
        back, sr = read_audio(tmp_path / name)
        assert sr == 24000
        tol = {"wav": 0.0, "flac": 1e-6, "ogg": 0.05}[ext]  # float, 24-bit, lossy
        np.testing.assert_allclose(back[: len(x)], x, atol=tol)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"whole.{ext}", f"pieces.{ext}"])


def test_float_wav_keeps_peaks_flac_clips_them(tmp_path: Path) -> None:
    x = np.array([0.0, 1.5, -2.0, 0.25], np.float32)
    save_audio(tmp_path / "a.wav", x, 16000)
    np.testing.assert_array_equal(sf.read(tmp_path / "a.wav", dtype="float32")[0], x)
    save_audio(tmp_path / "a.flac", x, 16000)
    back = sf.read(tmp_path / "a.flac", dtype="float32")[0]
    assert back.max() <= 1.0 and back.min() == -1.0


def test_output_format_refuses_unknown_extensions_and_subtypes(tmp_path: Path) -> None:
    assert output_format("x.wav") == ("WAV", "FLOAT")
    assert output_format("x.FLAC", "pcm_16") == ("FLAC", "PCM_16")
    assert output_format("x.anything", format="wav") == ("WAV", "FLOAT")
    for path, subtype, message in [
        ("x.mp3", None, "extension '.mp3'"),
        ("x", None, "no extension"),
        ("x.flac", "FLOAT", "FLAC files cannot hold subtype 'FLOAT'"),
        ("x.ogg", "PCM_16", "OGG files cannot hold"),
    ]:
        with pytest.raises(AudioError, match=message):
            output_format(path, subtype)
        with pytest.raises(AudioError, match=message):
            save_audio(tmp_path / path, np.zeros(10, np.float32), 24000, subtype)
        with pytest.raises(AudioError, match=message):
            AudioWriter(tmp_path / path, 24000, subtype=subtype)
    # rates a codec cannot take are refused up front (libvorbis crashes the process at 256 kHz)
    for path, subtype, rate, message in [
        ("x.ogg", None, 384000, "Ogg Vorbis holds rates up to 192000 Hz, not 384000"),
        ("x.ogg", "OPUS", 44100, "Opus holds the rates"),
    ]:
        assert output_format(path, subtype) == ("OGG", subtype or "VORBIS")
        with pytest.raises(AudioError, match=message):
            output_format(path, subtype, sample_rate=rate)
        with pytest.raises(AudioError, match=message):
            AudioWriter(tmp_path / path, rate, subtype=subtype)
        with pytest.raises(AudioError, match=message):
            save_audio(tmp_path / path, np.zeros(10, np.float32), rate, subtype)
    assert output_format("x.flac", sample_rate=384000) == ("FLAC", "PCM_24")
    assert list(tmp_path.iterdir()) == []
