"""`comostream convert`, `comostream export --vocoder` and `comostream bench latency` end to end,
with tiny random-weight models written in the real file formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import comostream
from comostream.models.acoustic import AcousticModel
from comostream.models.audio import read_audio, save_wav
from comostream.realtime.load import load_models
from comostream.training.checkpoint import save_checkpoint

from helpers import ARCH1, SINGERS, original_state, sung, write_original

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(models, tmp_path_factory) -> dict[str, Path]:
    model, vocoder = models
    d = tmp_path_factory.mktemp("convert")
    full = dict(model.export_payload(), vocoder=vocoder.export_payload())
    paths = {
        "model": save_checkpoint(d / "model.ckpt", full),
        "bare": save_checkpoint(d / "bare.ckpt", model.export_payload()),
        "vocoder": save_checkpoint(
            d / "voc.ckpt", {"kind": "vocoder-export", **vocoder.export_payload()}
        ),
        "wav44": d / "in44.wav",
    }
    save_wav(paths["wav44"], sung(44100, 1.0), 44100, subtype="FLOAT")
    return paths


def test_export_file_holds_the_vocoder(files, models) -> None:
    model, voc = load_models(files["model"])
    assert isinstance(model, AcousticModel) and model.speakers == tuple(SINGERS)
    for a, b in zip(voc.state_dict().values(), models[1].state_dict().values(), strict=True):
        assert (a == b).all()


def test_convert_offline_and_streamed_agree(files, tmp_path: Path, capsys) -> None:
    out_off, out_blk = tmp_path / "off.wav", tmp_path / "blk.wav"
    base = [
        "convert",
        str(files["wav44"]),
        "--checkpoint",
        str(files["model"]),
        "--speaker",
        "bass",
        "--transpose",
        "2",
    ]
    assert comostream.main([*base, "-o", str(out_off)]) == 0
    assert comostream.main([*base, "-o", str(out_blk), "--block", "4"]) == 0
    out = capsys.readouterr().out
    assert "streamed in blocks of 4 frames" in out
    a, sr = read_audio(out_off)
    b, _ = read_audio(out_blk)
    assert sr == 44100 and a.shape == b.shape == (44100,)
    assert np.abs(a).max() > 1e-3
    assert np.abs(a - b).max() <= 2e-4  # float WAVs (the default): float rounding only


def test_convert_with_a_separate_vocoder_and_a_singer_mix(files, tmp_path: Path) -> None:
    out = tmp_path / "mix.wav"
    rc = comostream.main(
        [
            "convert",
            str(files["wav44"]),
            "-o",
            str(out),
            "--checkpoint",
            str(files["bare"]),
            "--vocoder",
            str(files["vocoder"]),
            "--speaker",
            "alto:0.3,tenor:0.7",
        ]
    )
    assert rc == 0 and sf.info(str(out)).frames == 44100


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--speaker", "soprano"], "unknown speaker"),
        (["--checkpoint", "BARE"], "holds no vocoder"),
        (["--checkpoint", "MISSING"], "not found"),
    ],
)
def test_convert_errors_are_clear(files, tmp_path: Path, capsys, extra, message) -> None:
    args = [
        "convert",
        str(files["wav44"]),
        "-o",
        str(tmp_path / "x.wav"),
        "--checkpoint",
        str(files["model"]),
    ]
    extra = [
        str(files["bare"]) if e == "BARE" else str(tmp_path / "no.ckpt") if e == "MISSING" else e
        for e in extra
    ]
    assert comostream.main(args + extra) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()


def test_convert_of_an_unreadable_input_fails_saying_so(files, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEfmt nonsense")
    rc = comostream.main(
        ["convert", str(bad), "-o", str(tmp_path / "y.wav"), "--checkpoint", str(files["model"])]
    )
    assert rc == 1 and "unreadable" in capsys.readouterr().err


def test_bench_latency_json_reports_every_key_and_the_tiny_models_latency(
    files, capsys, tmp_path: Path
) -> None:
    plot = tmp_path / "chunks.png"
    rc = comostream.main(
        [
            "bench",
            "latency",
            "--checkpoint",
            str(files["model"]),
            "--json",
            "--seconds",
            "1",
            "--block",
            "2",
            "--threads",
            "1",
            "--backends",
            "torch,onnxruntime",  # inductor's compilation: tests/test_onnx.py compares all three
            "--plot",
            str(plot),
        ]
    )
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert rc == 0
    captured = capsys.readouterr()
    r = json.loads(captured.out)
    # progress, step by step, on stderr (stdout stays one JSON object)
    steps = ("[1/6] streaming", "[3/6] end-to-end", "[5/6] teacher", "[6/6] the same stream")
    for step in ("model: ", *steps):
        assert f"bench latency: {step}" in captured.err, step
    for key in (
        "algorithmic_latency_ms",
        "block_ms",
        "chunk_ms_p50",
        "chunk_ms_p99",
        "stages",
        "rtf",
        "e2e_latency_ms",
        "teacher_steps",
        "teacher_ms",
        "onestep_ms",
        "window_recompute_rtf",
        "device",
        "threads",
        "backends",
        "faster_backend",
    ):
        assert key in r
    assert list(r["backends"]) == ["torch", "onnxruntime"]  # side by side, as --backends asked
    assert set(r["stages"]) == {
        "resample",
        "features",
        "f0",
        "content",
        "acoustic",
        "vocoder",
        "model",
    }
    assert r["traced"] and r["stages"]["model"]["p50"] > 0
    # tiny models: lookahead 1 (content) + 1 (target) + 1 (vocoder) frames, block 2, overhang
    # 1 frame = 64 ms at 24 kHz; the 48 <-> 24 kHz resamplers add a few ms
    assert 64.0 < r["algorithmic_latency_ms"] < 64.0 + 5.0
    assert r["block_ms"] == pytest.approx(21.333, abs=0.01)
    assert r["threads"] == 1 and r["rtf"] > 0 and r["teacher_ms"] > r["onestep_ms"]


def test_bench_latency_sweep_reports_a_row_per_block_and_refuses_block_0(files, capsys) -> None:
    rc = comostream.main(
        [
            "bench",
            "latency",
            "--checkpoint",
            str(files["model"]),
            "--seconds",
            "1",
            "--threads",
            "1",
            "--sweep",
            "1,4",
            "--backends",
            "torch",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "| 1 |" in out and "| 4 |" in out and "matmul cost per frame" in out
    rc = comostream.main(
        [
            "bench",
            "latency",
            "--checkpoint",
            str(files["model"]),
            "--seconds",
            "1",
            "--threads",
            "1",
            "--sweep",
            "2",
            "--backends",
            "torch",
            "--json",
        ]
    )
    r = json.loads(capsys.readouterr().out)
    assert list(r["backends"]) == ["torch"] and r["faster_backend"] == "torch"
    (row,) = r["block_sweep"]
    assert row["block_frames"] == 2
    assert row["algorithmic_latency_ms"] == pytest.approx(r["algorithmic_latency_ms"])
    assert row["window_vs_streaming"] == pytest.approx(r["window_recompute_rtf"] / row["rtf"])
    assert row["matmul_frame_cost_x"] > 0
    with pytest.raises(SystemExit):
        comostream.main(["bench", "latency", "--sweep", "1,0"])
    assert "expected frames like" in capsys.readouterr().err
    for bad in ("torch,tensorrt", "torch,torch"):
        with pytest.raises(SystemExit):
            comostream.main(["bench", "latency", "--backends", bad])
        assert "--backends" in capsys.readouterr().err


def test_convert_with_a_users_hifigan_runs_in_window_mode(files, tmp_path: Path) -> None:
    """--vocoder with a HiFi-GAN generator in its original format: loaded, run windowed."""
    voc = write_original(tmp_path, "nvidia", "hifigan", ARCH1, original_state("hifigan", ARCH1))
    out = tmp_path / "hifi.wav"
    rc = comostream.main(
        [
            "convert",
            str(files["wav44"]),
            "-o",
            str(out),
            "--checkpoint",
            str(files["bare"]),
            "--vocoder",
            str(voc),
            "--block",
            "2",
        ]
    )
    assert rc == 0
    y, sr = read_audio(out)
    assert sr == 44100 and y.shape == (44100,) and np.isfinite(y).all()


def test_windowed_vocoder_is_never_traced(files, tmp_path: Path) -> None:
    from comostream.realtime.engine import StreamingConverter
    from comostream.realtime.load import load_models
    from comostream.realtime.traced import TracedStep

    voc_path = write_original(
        tmp_path, "nvidia", "hifigan", ARCH1, original_state("hifigan", ARCH1)
    )
    model, voc = load_models(files["bare"], voc_path)
    eng = StreamingConverter.from_models(model, voc)
    assert not isinstance(eng.step_module, TracedStep)
    model, ours = load_models(files["model"])
    assert isinstance(StreamingConverter.from_models(model, ours).step_module, TracedStep)


def test_convert_keeps_an_odd_input_rate(files, tmp_path: Path) -> None:
    src = tmp_path / "in8k.wav"
    save_wav(src, sung(8000, 0.5), 8000, subtype="FLOAT")
    out = tmp_path / "out8k.wav"
    assert (
        comostream.main(["convert", str(src), "-o", str(out), "--checkpoint", str(files["model"])])
        == 0
    )
    info = sf.info(str(out))
    assert info.samplerate == 8000 and abs(info.frames - 4000) <= 1


# ---------------------------------------------------------------- the output's format


def _convert_to(files, out: Path, *extra: str) -> int:
    return comostream.main(
        [
            "convert",
            str(files["wav44"]),
            "-o",
            str(out),
            "--checkpoint",
            str(files["model"]),
            *extra,
        ]
    )


@pytest.mark.parametrize(
    "name,extra,fmt,subtype",
    [
        ("out.wav", [], "WAV", "FLOAT"),
        ("out.flac", [], "FLAC", "PCM_24"),
        ("out.ogg", [], "OGG", "VORBIS"),
        ("OUT.FLAC", [], "FLAC", "PCM_24"),
        ("out.wav", ["--subtype", "PCM_16"], "WAV", "PCM_16"),
        ("out.wav", ["--subtype", "pcm_24"], "WAV", "PCM_24"),
        ("out.flac", ["--subtype", "PCM_16"], "FLAC", "PCM_16"),
    ],
)
def test_convert_writes_the_format_of_the_extension(
    files, tmp_path: Path, capsys, name: str, extra: list[str], fmt: str, subtype: str
) -> None:
    out = tmp_path / name
    assert _convert_to(files, out, *extra) == 0
    info = sf.info(str(out))
    assert (info.format, info.subtype) == (fmt, subtype)
    assert info.samplerate == 44100 and info.frames == 44100 and info.channels == 1
    y, _ = sf.read(str(out), dtype="float32")
    assert np.abs(y).max() > 1e-3
    assert f"({fmt} {subtype})" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temp file left


@pytest.mark.parametrize(
    "name,extra,message",
    [
        ("out.mp3", [], "extension '.mp3'"),
        ("out", [], "no extension"),
        ("out.flac", ["--subtype", "FLOAT"], "FLAC files cannot hold subtype 'FLOAT'"),
        ("out.ogg", ["--subtype", "PCM_16"], "choose one of OPUS, VORBIS"),
        ("out.wav", ["--subtype", "NONSENSE"], "WAV files cannot hold subtype 'NONSENSE'"),
    ],
)
def test_an_output_format_it_cannot_write_is_refused_before_converting(
    files, tmp_path: Path, capsys, monkeypatch, name: str, extra: list[str], message: str
) -> None:
    import comostream.realtime.load

    def no_model(*args, **kwargs):
        raise AssertionError("the models were loaded: the format is checked too late")

    monkeypatch.setattr(comostream.realtime.load, "load_models", no_model)
    assert _convert_to(files, tmp_path / name, *extra) == 1
    err = capsys.readouterr().err
    assert message in err and name in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_offline_convert_reports_its_steps_and_compute_not_a_latency(
    files, tmp_path: Path, capsys
) -> None:
    from comostream.models.limits import OFFLINE_STEP_FRAMES

    assert _convert_to(files, tmp_path / "off.wav") == 0
    out = capsys.readouterr().out
    assert f"offline, in model steps of {OFFLINE_STEP_FRAMES} frames" in out
    assert "latency" not in out and "compute" in out and "RTF" in out
    assert _convert_to(files, tmp_path / "blk.wav", "--block", "2") == 0
    out = capsys.readouterr().out
    assert "streamed in blocks of 2 frames, algorithmic latency" in out and " ms" in out


def test_convert_prints_a_mix_as_typed(files, tmp_path: Path, capsys) -> None:
    mix = "alto:0.5,tenor:0.5"
    assert _convert_to(files, tmp_path / "mix.wav", "--speaker", mix) == 0
    out = capsys.readouterr().out
    assert f"as {mix}," in out and "{" not in out


def test_a_rate_the_codec_cannot_take_is_refused_before_converting(
    files, tmp_path: Path, capsys, monkeypatch
) -> None:
    import comostream.realtime.load

    def no_model(*args, **kwargs):
        raise AssertionError("the models were loaded: the rate is checked too late")

    src = tmp_path / "in384k.wav"
    save_wav(src, sung(384000, 0.05), 384000, subtype="FLOAT")
    monkeypatch.setattr(comostream.realtime.load, "load_models", no_model)
    out = tmp_path / "out.ogg"
    rc = comostream.main(["convert", str(src), "-o", str(out), "--checkpoint", str(files["model"])])
    assert rc == 1 and "Ogg Vorbis holds rates up to 192000 Hz" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in384k.wav"]


def test_client_writes_the_format_of_the_extension_and_prints_a_mix_as_typed(
    models, tmp_path: Path, capsys
) -> None:
    from comostream.models.config import RealtimeConfig
    from comostream.realtime.serve.config import ServerConfig
    from comostream.realtime.serve.engines import EngineFactory
    from comostream.realtime.serve.server import ServerThread

    src = tmp_path / "in.wav"
    save_wav(src, sung(48000, 0.3), 48000, subtype="FLOAT")
    out = tmp_path / "out.flac"
    factory = EngineFactory(*models, RealtimeConfig(block_frames=2))
    with ServerThread(factory, ServerConfig(port=0, max_queue_ms=3000.0)) as st:
        argv = ["client", str(src), "-o", str(out), "--url", st.url, "--fast"]
        rc = comostream.main([*argv, "--speaker", "alto:0.5,bass:0.5", "--subtype", "PCM_16"])
    assert rc == 0
    info = sf.info(str(out))
    assert (info.format, info.subtype, info.samplerate) == ("FLAC", "PCM_16", 48000)
    printed = capsys.readouterr().out
    assert "(FLAC PCM_16)" in printed and "as alto:0.5,bass:0.5;" in printed
