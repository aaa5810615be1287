"""Hostile and careless files: `convert` in bounded memory, never over its input, refusing bogus
rates before resampling, clear errors on a full disk and for a damaged checkpoint, a warning for
a truncated WAV; and the audio reader fuzzed (a documented error or a valid result, nothing
else)."""

from __future__ import annotations

import errno
import io
import os
import shutil
import struct
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import comostream
import comostream.realtime.engine as engine_module
from comostream.bench.memory import run_memory_bench
from comostream.models.audio import AudioError, ChunkedResampler, read_audio, resample, save_wav
from comostream.models.checkpoint_io import load_checkpoint
from comostream.realtime.engine import StreamingConverter, convert_array
from comostream.realtime.files.convert import convert_file
from comostream.realtime.load import load_models
from comostream.training.checkpoint import save_checkpoint

from helpers import sung, write_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("hostile") / "model.ckpt")


def _wav(path: Path, seconds: float = 1.2, rate: int = 44100) -> Path:
    save_wav(path, sung(rate, seconds), rate)
    return path


def _convert(model_file: Path, src: Path, out: Path, *extra: str) -> int:
    args = ["convert", str(src), "-o", str(out), "--checkpoint", str(model_file), *extra]
    return comostream.main(args)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------- bounded memory, same output


def _one_step_reference(model_file: Path, src: Path, monkeypatch) -> np.ndarray:
    """Today's offline conversion: one model step over the whole file, in memory."""
    monkeypatch.setattr(engine_module, "OFFLINE_STEP_FRAMES", 10**9)
    audio, rate = read_audio(src)
    stream = 48000 if rate not in (16000, 22050, 24000, 32000, 44100, 48000) else rate
    model, voc = load_models(model_file)
    eng = StreamingConverter.from_models(model, voc, sample_rate=stream, offline=True)
    with torch.inference_mode():
        y = convert_array(eng, resample(audio, rate, stream))
    return resample(y, stream, rate)


@pytest.mark.parametrize("rate", [44100, 96000])
def test_offline_convert_in_bounded_steps_equals_one_step_over_the_file(
    model_file: Path, tmp_path: Path, monkeypatch, rate: int
) -> None:
    src = _wav(tmp_path / "in.wav", 7.0, rate)  # 656 frames: two steps of at most 512
    out = tmp_path / "out.wav"
    convert_file(src, out, checkpoint=model_file, subtype="PCM_16")
    got, sr = sf.read(str(out), dtype="int16")
    ref = _one_step_reference(model_file, src, monkeypatch)
    want = (np.clip(ref, -1, 1) * 32767).round()
    assert sr == rate and got.shape == ref.shape
    assert np.abs(got).max() > 30  # the chain makes sound
    assert np.abs(got - want).max() <= 2  # PCM16 rounding of outputs equal to float rounding


def test_peak_memory_of_a_2_minute_conversion_is_that_of_a_20_second_one(
    model_file: Path, tmp_path: Path
) -> None:
    result = run_memory_bench([20 / 60, 2.0], checkpoint=model_file, workdir=tmp_path)
    short, long = (r["peak_rss_mb"] for r in result["rows"])
    assert result["rows"][1]["written_s"] == pytest.approx(120.0, abs=1e-3)
    # one model step over the whole file took +560 MB more for the extra 100 s; pieces: none
    assert abs(long - short) < 60.0, result


@pytest.mark.parametrize("rates", [(96000, 48000), (8000, 48000), (48000, 44100), (24000, 24000)])
def test_resampling_in_pieces_equals_resampling_the_whole(rates: tuple[int, int]) -> None:
    x = np.random.default_rng(0).standard_normal(50_001).astype(np.float32) * 0.1
    rs = ChunkedResampler(*rates)
    sizes = np.random.default_rng(1).integers(1, 7000, 100)
    bounds = np.minimum(np.cumsum(np.concatenate([[0], sizes])), x.shape[0])
    parts = [rs.push(x[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    y = np.concatenate([*parts, rs.flush()])
    ref = resample(x, *rates)
    assert y.shape == ref.shape
    assert np.abs(y - ref).max() <= 1e-6


# ---------------------------------------------------------------- never over the input


def _same_paths(src: Path) -> dict[str, Path]:
    folder = src.parent
    link = folder / "link.wav"
    link.symlink_to(src)
    hard = folder / "hard.wav"
    os.link(src, hard)
    return {
        "same": src,
        "dotted": folder / "." / src.name,
        "symlink": link,
        "hardlink": hard,
        "via_dir_symlink": _dir_link(folder) / src.name,
    }


def _dir_link(folder: Path) -> Path:
    d = folder.parent / f"{folder.name}-alias"
    if not d.exists():
        d.symlink_to(folder, target_is_directory=True)
    return d


@pytest.mark.parametrize("kind", ["same", "dotted", "symlink", "hardlink", "via_dir_symlink"])
def test_convert_onto_its_own_input_is_refused_and_the_input_kept(
    model_file: Path, tmp_path: Path, capsys, kind: str
) -> None:
    src = _wav(tmp_path / "song.wav")
    before = src.read_bytes()
    out = _same_paths(src)[kind]
    assert _convert(model_file, src, out) == 1
    err = capsys.readouterr().err
    assert "is the input file" in err and "Traceback" not in err
    assert src.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_convert_to_a_directory_is_refused(model_file: Path, tmp_path: Path, capsys) -> None:
    src = _wav(tmp_path / "song.wav")
    assert _convert(model_file, src, tmp_path) == 1
    assert "is a directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["song.wav"]


# ---------------------------------------------------------------- bogus sample rates


def _wav_claiming_rate(path: Path, rate: int) -> Path:
    """A 6 KB 16-bit WAV whose header claims ``rate`` Hz."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes((np.sin(np.arange(3000) * 0.3) * 8000).astype("<i2").tobytes())
    data = bytearray(buf.getvalue())
    data[24:28] = struct.pack("<I", rate)
    data[28:32] = struct.pack("<I", rate * 2)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("rate", [1, 7999, 384001, 4_000_000])
def test_a_file_claiming_an_absurd_rate_is_refused_before_any_resampling(
    model_file: Path, tmp_path: Path, capsys, monkeypatch, rate: int
) -> None:
    src = _wav_claiming_rate(tmp_path / "odd.wav", rate)

    def no_resampling(*a, **k):
        raise AssertionError("resampled a file it should have refused")

    monkeypatch.setattr("comostream.models.audio.AF.resample", no_resampling)
    monkeypatch.setattr("comostream.realtime.load.load_models", no_resampling)
    assert _convert(model_file, src, tmp_path / "out.wav") == 1
    err = capsys.readouterr().err
    assert f"sample rate {rate} Hz is outside the supported 8-384 kHz" in err
    assert "odd.wav" in err and not (tmp_path / "out.wav").exists()
    with pytest.raises(AudioError, match="outside the supported"):
        read_audio(src)


# ---------------------------------------------------------------- a full disk


def _mount_tiny_tmpfs(where: Path) -> bool:
    where.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    return r.returncode == 0


def test_convert_onto_a_full_disk_keeps_the_old_file_and_leaves_no_temp(
    model_file: Path, tmp_path: Path, capsys
) -> None:
    disk = tmp_path / "disk"
    if shutil.which("mount") is None or not _mount_tiny_tmpfs(disk):
        pytest.skip("cannot mount a 64 KB tmpfs here (needs root)")
    try:
        old = disk / "out.wav"
        old.write_bytes(b"the previous take")
        src = _wav(tmp_path / "song.wav", 2.0)  # 176 KB of PCM16 at 44.1 kHz: will not fit
        assert _convert(model_file, src, old) == 1
        err = capsys.readouterr().err
        assert "could not write audio" in err and "Traceback" not in err
        assert old.read_bytes() == b"the previous take"
        assert sorted(p.name for p in disk.iterdir()) == ["out.wav"]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_write_failing_with_enospc_is_a_clear_error_and_changes_nothing(
    model_file: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    old = tmp_path / "out.wav"
    old.write_bytes(b"the previous take")
    src = _wav(tmp_path / "song.wav")

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sf.SoundFile, "write", full)
    assert _convert(model_file, src, old) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert old.read_bytes() == b"the previous take"
    assert _leftovers(tmp_path) == []


def test_a_short_write_from_soundfile_is_blamed_on_the_disk(tmp_path: Path, monkeypatch) -> None:
    def short(self, data):
        raise AssertionError  # soundfile asserts when libsndfile writes fewer frames

    monkeypatch.setattr(sf.SoundFile, "write", short)
    with pytest.raises(AudioError, match="disk full"):
        save_wav(tmp_path / "x.wav", np.zeros(100, np.float32), 24000)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- damaged inputs


def test_a_checkpoint_with_nan_weights_is_blamed_not_the_wav(
    model_file: Path, tmp_path: Path, capsys
) -> None:
    payload = load_checkpoint(model_file)
    state = payload["target"]
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key] = state[key].clone()
    state[key][0] = float("nan")
    bad = save_checkpoint(tmp_path / "nan.ckpt", payload)
    src = _wav(tmp_path / "song.wav")
    assert _convert(bad, src, tmp_path / "out.wav") == 1
    err = capsys.readouterr().err
    assert "nan.ckpt" in err and "NaN or Inf" in err and key in err
    assert "song.wav" not in err and not (tmp_path / "out.wav").exists()


def test_a_truncated_wav_is_converted_with_a_warning_saying_how_much_is_missing(
    model_file: Path, tmp_path: Path, capsys
) -> None:
    full = _wav(tmp_path / "full.wav", 1.0)
    data = full.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: 44 + 2 * 30000])  # header + 30000 of 44100 samples
    assert _convert(model_file, cut, tmp_path / "out.wav") == 0
    err = capsys.readouterr().err
    assert "cut.wav" in err and "truncated" in err and "14100 samples (0.32 s)" in err
    assert sf.info(str(tmp_path / "out.wav")).frames == 30000
    assert cut.read_bytes() == data[: 44 + 2 * 30000]


def test_a_whole_wav_gets_no_warning(model_file: Path, tmp_path: Path, capsys) -> None:
    assert _convert(model_file, _wav(tmp_path / "ok.wav"), tmp_path / "out.wav") == 0
    assert "warning" not in capsys.readouterr().err


# ---------------------------------------------------------------- the reader, fuzzed


def _valid_wav(rate: int, channels: int, frames: int, subtype: str) -> bytes:
    buf = io.BytesIO()
    x = np.sin(np.arange(frames * channels) * 0.01).reshape(frames, channels) * 0.5
    sf.write(buf, x.astype(np.float32), rate, subtype=subtype, format="WAV")
    return buf.getvalue()


@st.composite
def damaged_files(draw) -> bytes:
    kind = draw(st.sampled_from(["random", "garbled", "truncated", "header"]))
    if kind == "random":
        return draw(st.binary(max_size=2048))
    base = _valid_wav(
        draw(st.sampled_from([8000, 24000, 44100])),
        draw(st.integers(1, 3)),
        draw(st.integers(1, 400)),
        draw(st.sampled_from(["PCM_16", "PCM_24", "FLOAT", "PCM_U8"])),
    )
    data = bytearray(base)
    if kind == "truncated":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if kind == "header":  # a header field (size, format, channels, rate, ...) set to anything
        off = draw(st.sampled_from([4, 16, 20, 22, 24, 28, 32, 34, 40]))
        width = 2 if off in (20, 22, 32, 34) else 4
        value = draw(st.integers(0, 2 ** (8 * width) - 1))
        data[off : off + width] = value.to_bytes(width, "little")
        return bytes(data)
    for _ in range(draw(st.integers(1, 8))):  # garbled: random bytes overwritten
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    return bytes(data)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(blob=damaged_files())
def test_the_reader_gives_a_documented_error_or_valid_audio(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "fuzz.wav"
    path.write_bytes(blob)
    try:
        audio, rate = read_audio(path)
    except AudioError as exc:
        assert str(path) in str(exc)
        return
    assert audio.dtype == np.float32 and audio.ndim == 1 and audio.shape[0] > 0
    assert np.all(np.isfinite(audio)) and 8000 <= rate <= 384000
