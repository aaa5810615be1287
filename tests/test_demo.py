"""`comostream demo`: the bundled examples stream through the front-end like the offline path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import comostream
from comostream.models.audio import load_audio
from comostream.models.config import load_config
from comostream.models.shipped import example_files
from comostream.realtime.files.demo import analyse


def test_examples_ship_with_the_package() -> None:
    examples = example_files()
    assert len(examples) >= 3  # two sung phrases and a real recorded voice
    for path in examples:
        audio = load_audio(path)
        assert 2.0 < audio.shape[0] / 24000 < 10.0


def test_streamed_features_equal_offline() -> None:
    cfg = load_config(overrides={"f0": {"backend": "dio"}})
    sung = [p for p in example_files() if p.stem == "alto_line2"][0]
    report, features = analyse(sung, cfg, block_frames=3)
    assert report.mel_stream_max_diff <= 1e-5
    assert report.loudness_stream_max_diff <= 1e-5
    assert features["mel"].shape == (100, report.frames)
    assert features["f0_hz"].shape == (report.frames,)
    assert 0.5 < report.voiced_fraction < 1.0
    assert 80.0 < report.f0_median_hz < 600.0


def test_demo_command_writes_features(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import comostream.models.shipped

    monkeypatch.setattr(comostream.models.shipped, "default_model_path", lambda: None)  # no model
    cfg_file = tmp_path / "fast.toml"
    cfg_file.write_text("[f0]\nbackend = 'dio'\n")
    example = [p for p in example_files() if p.stem == "bass_line11"][0]
    rc = comostream.main(
        ["demo", "--config", str(cfg_file), "--input", str(example), "--out", str(tmp_path)]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert example.name in out and "ships no model" in out
    assert "stream vs offline mel: largest difference" in out  # the columns explained
    assert "window lookahead:" in out and "RTF: compute time / audio time" in out
    saved = np.load(tmp_path / f"{example.stem}.features.npz")
    assert set(saved.files) == {"mel", "loudness", "f0_hz", "voiced"}


def test_demo_bad_input_is_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF not really a wav")
    assert comostream.main(["demo", "--input", str(bad), "--out", str(tmp_path)]) == 1
    assert "broken.wav" in capsys.readouterr().err


def test_shipped_model_loads_and_converts() -> None:
    from comostream.models.shipped import default_model_path
    from comostream.realtime.load import load_models, load_voiceprints

    path = default_model_path()
    assert path is not None and path.stat().st_size <= 25e6
    model, vocoder = load_models(path)
    assert len(model.speakers) >= 8 and set(load_voiceprints(path)) == set(model.speakers)


def test_demo_converts_with_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from helpers import write_tiny_model

    model = write_tiny_model(tmp_path / "m.ckpt")
    example = example_files()[0]
    argv = [
        "demo",
        "--checkpoint",
        str(model),
        "--speaker",
        "alto",
        "--speaker",
        "alto:1,bass:3",
        "--input",
        str(example),
        "--out",
        str(tmp_path / "demo"),
    ]
    rc = comostream.main(argv)
    assert rc == 0
    out = capsys.readouterr().out
    assert "| F0 RMSE (cents) |" in out and "2 conversions streamed" in out
    assert "| alto |" in out and "| alto:1,bass:3 |" in out  # a mix, as the user typed it
    notes = out[out.index("| closest singer |") :]  # the columns explained under the table
    for column in ("transpose:", "latency (ms):", "RTF:", "F0 RMSE (cents):"):
        assert f"\n{column}" in notes, column
    assert "\ntimbre similarity: cosine" in notes and "\nclosest singer:" in notes
    outputs = []
    for stem in ("alto", "alto-1+bass-3"):
        y = load_audio(tmp_path / "demo" / f"{example.stem}_to_{stem}.wav")
        assert abs(y.shape[0] - load_audio(example).shape[0]) <= 1
        assert np.abs(y).max() > 1e-3
        outputs.append(y)
    assert not np.allclose(outputs[0], outputs[1])


def test_demo_voice_print_of_a_mix_is_the_weighted_mean() -> None:
    from comostream.realtime.files.demo_convert import _target_print

    prints = {
        "a": {"mcep": [1.0, 0.0], "f0_median": 100.0},
        "b": {"mcep": [0.0, 1.0], "f0_median": 400.0},
    }
    mix = _target_print(prints, {"a": 1.0, "b": 1.0})
    assert mix is not None
    assert np.allclose(mix["mcep"], [0.5, 0.5]) and mix["f0_median"] == pytest.approx(200.0)
    assert _target_print(prints, "a") is prints["a"]
    assert _target_print(prints, {"a": 1.0, "c": 1.0}) is None  # c has no print


def test_demo_plot_draws_the_spectrograms_and_the_signal_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from comostream.realtime.engine import StreamingConverter
    from comostream.realtime.files.demo_plot import latency_parts
    from comostream.realtime.load import load_models

    from helpers import write_tiny_model

    model_path = write_tiny_model(tmp_path / "m.ckpt")
    example = [p for p in example_files() if p.stem == "bass_line11"][0]
    argv = ["demo", "--checkpoint", str(model_path), "--speaker", "alto", "--input", str(example)]
    rc = comostream.main([*argv, "--out", str(tmp_path / "demo"), "--plot", str(tmp_path / "img")])
    assert rc == 0 and "pictures:" in capsys.readouterr().out
    for name in ("spectrogram.png", "signal_path.png"):
        png = (tmp_path / "img" / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(png) < 150_000
    # the diagram's parts are the engine's latency, stage by stage
    model, vocoder = load_models(model_path)
    eng = StreamingConverter.from_models(model, vocoder, sample_rate=48000, chunk=1024)
    parts = latency_parts(eng)
    assert sum(p.ms for p in parts) == pytest.approx(eng.latency_ms, abs=1e-6)
    by_stage = {p.stage: p.ms for p in parts if p.what == "lookahead"}
    frame = 1000 * 256 / 24000
    assert by_stage["vocoder"] == pytest.approx(frame)  # the tiny model's vocoder: 1 frame
    assert [p.ms for p in parts if p.what == "block"] == [pytest.approx(eng.block_ms)]
    assert min(p.ms for p in parts) > -1e-6
