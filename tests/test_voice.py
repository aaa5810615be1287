"""`comostream voice add|list|remove|rename`: material checks, adaptation, model-file edits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from comostream.cli import main
from comostream.models.acoustic import AcousticModel
from comostream.models.chain import ConversionChain
from comostream.models.checkpoint_io import load_checkpoint
from comostream.models.retrieval import INDEX_SIZE
from comostream.training import voice as V
from comostream.training.voice_file import backup_path, list_voices, remove_voice, rename_voice

from helpers import SINGERS, harmonic_tone, write_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = V.VoiceOptions(steps=6, batch=2, segment_frames=48, context_frames=8, checkpoint_every=2)


def _tone(seconds: float, f0: float = 220.0, rate: int = 24000, level: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    track = f0 * 2 ** (0.3 * np.sin(2 * np.pi * 0.7 * t))
    return harmonic_tone(track, rate) * level


def _write(folder: Path, name: str, audio: np.ndarray, rate: int = 24000) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    sf.write(path, audio, rate)
    return path


@pytest.fixture(scope="module")
def voice_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 s of a sung-like voice in several files, rates and formats."""
    d = tmp_path_factory.mktemp("voice")
    for i in range(4):
        _write(d, f"take{i}.wav", _tone(4.0, 200 + 10 * i))
    _write(d, "take4.flac", _tone(4.0, 230, 16000), 16000)
    _write(d, "take5.ogg", _tone(4.0, 240, 44100), 44100)
    return d


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.ckpt")


def _add(data: Path, model: Path, out: Path, **kw) -> V.VoiceResult:  # noqa: ANN003
    opts = kw.pop("opts", FAST)
    return V.add_voice([data], "me", model, out, opts, progress=False, log=lambda _: None, **kw)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unreadable", "unreadable recording"),
        ("short", "too short"),
        ("silence", "mostly silence"),
        ("clipped", "clipped"),
        ("empty", "no recordings"),
    ],
)
def test_bad_material_is_one_clear_error_and_writes_nothing(
    case: str, message: str, tmp_path: Path, tiny_file: Path
) -> None:
    d = tmp_path / "data"
    d.mkdir()
    if case == "unreadable":
        (d / "bad.wav").write_bytes(b"RIFF....WAVEfmt not really audio")
        _write(d, "ok.wav", _tone(25.0))
    elif case == "short":
        _write(d, "a.wav", _tone(6.0))
    elif case == "silence":
        _write(d, "a.wav", np.concatenate([_tone(3.0), np.zeros(24000 * 27, np.float32)]))
    elif case == "clipped":
        _write(d, "a.wav", np.clip(_tone(25.0, level=30.0), -1, 1))
    out = tmp_path / "out.ckpt"
    with pytest.raises(V.MaterialError, match=message) as info:
        _add(d, tiny_file, out, work=tmp_path / "work")
    assert "\n" not in str(info.value)
    assert not out.exists()


def test_several_voices_warn_by_default_and_fail_when_strict(
    voice_dir: Path, tiny_file: Path, tmp_path: Path
) -> None:
    def embed(audio: np.ndarray) -> np.ndarray:  # two clear groups: low vs high pieces
        return np.array([1.0, 0.0]) if np.abs(audio).mean() > 0.04 else np.array([0.0, 1.0])

    model = AcousticModel.from_checkpoint(tiny_file)
    files = V.audio_files([voice_dir])
    quiet = tmp_path / "quiet"
    for i, f in enumerate(files[:3]):  # half the takes at a third of the level: "another voice"
        audio, sr = sf.read(f)
        _write(quiet, f"q{i}.wav", (audio / 3).astype(np.float32), sr)
    mixed = files[3:] + V.audio_files([quiet])
    _, warnings = V.check_material(mixed, model, progress=False, embed=embed)
    assert any("several voices" in w for w in warnings)
    with pytest.raises(V.MaterialError, match="several voices"):
        V.check_material(mixed, model, progress=False, mixed_voices="error", embed=embed)
    _, warnings = V.check_material(files, model, progress=False, embed=lambda a: np.ones(2))
    assert warnings == []


def test_any_rate_and_format_is_read(voice_dir: Path, tiny_file: Path) -> None:
    model = AcousticModel.from_checkpoint(tiny_file)
    pieces, _ = V.check_material(V.audio_files([voice_dir]), model, progress=False)
    sources = {Path(p.source).suffix for p in pieces}
    assert sources == {".wav", ".flac", ".ogg"}
    assert sum(p.audio.shape[0] for p in pieces) == pytest.approx(24 * 24000, rel=0.01)


def _chain_out(model: AcousticModel, singer: str) -> torch.Tensor:
    chain = ConversionChain(model).eval()
    g = torch.Generator().manual_seed(1)
    frames = 40
    inputs = chain.zero_inputs(1, frames)
    inputs["mel"] = torch.randn(1, model.cfg.audio.n_mels, frames, generator=g) - 5
    inputs["f0"] = torch.full((1, frames), 220.0)
    inputs["voiced"] = torch.ones(1, frames)
    inputs["loudness"] = torch.full((1, frames), -20.0)
    inputs["speaker"] = model.conditioner.speaker_embedding(singer)
    if model.retrieval is not None:  # the index on, as a conversion uses it
        inputs["index_rate"] = torch.full((1, 1), 1.0)
        inputs["index_weights"] = model.retrieval.weights(singer).float().reshape(1, -1)
    with torch.inference_mode():
        return chain(inputs)


def test_added_voice_keeps_every_earlier_singer_bit_identical(
    voice_dir: Path, tiny_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.ckpt"
    res = _add(voice_dir, tiny_file, out, work=tmp_path / "work")
    before, after = AcousticModel.from_checkpoint(tiny_file), AcousticModel.from_checkpoint(out)
    assert after.speakers == (*SINGERS, "me")
    assert after.retrieval is not None and after.retrieval.names == ("me",)
    assert 0 < after.retrieval.sizes()["me"] <= INDEX_SIZE
    for s in SINGERS:
        assert torch.equal(_chain_out(before, s), _chain_out(after, s))
    assert not torch.equal(_chain_out(after, "me"), _chain_out(after, SINGERS[0]))
    vp = load_checkpoint(out)["voiceprints"]["me"]
    assert 150 < vp["f0_low"] < vp["f0_median"] < vp["f0_high"] < 350
    assert vp["adaptation"]["steps"] == FAST.steps
    assert res.heldout  # the resynthesis check has held-out pieces
    with pytest.raises(ValueError, match="already has a singer"):
        V.add_voice([voice_dir], "me", out, tmp_path / "again.ckpt", FAST, progress=False)
    with pytest.raises(ValueError, match="overwrite the input"):
        V.add_voice([voice_dir], "you", out, out, FAST, progress=False)


def test_adaptation_is_deterministic_and_resumes_exactly(
    voice_dir: Path, tiny_file: Path, tmp_path: Path
) -> None:
    whole = tmp_path / "whole.ckpt"
    _add(voice_dir, tiny_file, whole)
    again = tmp_path / "again.ckpt"
    _add(voice_dir, tiny_file, again)
    row = load_checkpoint(whole)["conditioner"]["speakers.embedding.weight"][-1]
    assert torch.equal(row, load_checkpoint(again)["conditioner"]["speakers.embedding.weight"][-1])
    # interrupted after 4 steps (state saved every 2): nothing written, then the rerun resumes
    out, work = tmp_path / "resumed.ckpt", tmp_path / "work"
    _add(voice_dir, tiny_file, out, work=work, stop_after=4)
    assert not out.exists()
    assert load_checkpoint(work / "state.pt")["step"] == 4
    _add(voice_dir, tiny_file, out, work=work)
    assert torch.equal(row, load_checkpoint(out)["conditioner"]["speakers.embedding.weight"][-1])
    other = tmp_path / "seed1.ckpt"
    opts = V.VoiceOptions(**{**FAST.__dict__, "seed": 1})
    _add(voice_dir, tiny_file, other, opts=opts)
    assert not torch.equal(
        row, load_checkpoint(other)["conditioner"]["speakers.embedding.weight"][-1]
    )


def test_remove_and_rename_write_atomically_and_keep_a_backup(
    tiny_file: Path, tmp_path: Path
) -> None:
    model = tmp_path / "m.ckpt"
    model.write_bytes(tiny_file.read_bytes())
    old = load_checkpoint(model)
    out = tmp_path / "removed.ckpt"
    remove_voice(model, SINGERS[0], out)
    removed = load_checkpoint(out)
    assert removed["speakers"] == SINGERS[1:]
    w_old, w_new = (c["conditioner"]["speakers.embedding.weight"] for c in (old, removed))
    assert torch.equal(w_new, w_old[1:])
    rename_voice(model, SINGERS[1], "bob", None)  # in place: the previous file is the backup
    assert load_checkpoint(model)["speakers"] == [SINGERS[0], "bob", SINGERS[2]]
    assert backup_path(model).read_bytes() == tiny_file.read_bytes()
    with pytest.raises(ValueError, match="already a singer"):
        rename_voice(model, "bob", SINGERS[0], tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match="the output is the input"):
        remove_voice(model, "bob", model)
    assert [v.name for v in list_voices(model)] == [SINGERS[0], "bob", SINGERS[2]]
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind


def test_voice_cli_lists_and_refuses_bad_edits(
    tiny_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["voice", "list", str(tiny_file)]) == 0
    listed = capsys.readouterr().out
    assert all(s in listed for s in SINGERS)
    assert main(["voice", "remove", "nobody", "--model", str(tiny_file), "-o", "x.ckpt"]) == 1
    assert "no singer 'nobody'" in capsys.readouterr().err
    assert main(["voice", "rename", "alto", "x", "--model", str(tiny_file)]) == 1
    assert "-o OUT.ckpt or --in-place" in capsys.readouterr().err


def test_voice_add_cli_writes_the_model_and_reports_the_register(
    voice_dir: Path, tiny_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "me.ckpt"
    argv = ["voice", "add", str(voice_dir), "--name", "me", "--model", str(tiny_file)]
    assert main([*argv, "-o", str(out), "--steps", "2", "--no-check", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "register: median" in printed and "time taken" in printed
    assert main(["voice", "list", str(out)]) == 0
    assert "me  " in capsys.readouterr().out
    assert main([*argv, "-o", str(tiny_file), "--quiet"]) == 1  # never over the input
    assert "overwrite the input" in capsys.readouterr().err


def test_bench_voice_reports_similarities_win_rate_and_adaptation(
    voice_dir: Path, tiny_file: Path, tmp_path: Path
) -> None:
    from comostream.bench.voice import format_voice_table, run_voice_bench

    out = tmp_path / "me.ckpt"
    _add(voice_dir, tiny_file, out)
    src = voice_dir / "take0.wav"
    r = run_voice_bench(out, "me", voice_dir, [src], examples=False, progress=False)
    assert r["n_conversions"] == 1 and r["adaptation"]["steps"] == FAST.steps
    assert {"spk_win_rate", "spk_sim_target", "spk_sim_source", "f0_rmse_cents"} <= set(r)
    assert "| me |" in format_voice_table(r)
