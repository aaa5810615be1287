"""Feature caching: frame alignment, skipped files, index contents, idempotence, F0 source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from comostream.models.config import Config, CorpusConfig, FeaturesConfig
from comostream.training.feature_index import FeatureError, load_feature_index
from comostream.training.features import EXTRACTORS, Extractor, prepare_features

SR = 24000


def _tone(path: Path, seconds: float, hz: float = 220.0, sr: int = SR, amp: float = 0.3) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(str(path), amp * np.sin(2 * np.pi * hz * t), sr)
    return int(seconds * SR) // 256 + 1  # frames at the model rate


def _user_corpus(root: Path) -> dict[str, int]:
    """Two singers of tones (one file at 16 kHz), plus a corrupt and a silent file."""
    frames = {
        "alto/a1": _tone(root / "alto" / "a1.wav", 0.6, 330.0),
        "alto/a2": _tone(root / "alto" / "a2.wav", 0.45, 294.0, sr=16000),
        "bass/b1": _tone(root / "bass" / "b1.wav", 0.5, 110.0),
    }
    (root / "bass" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    sf.write(str(root / "bass" / "quiet.wav"), np.zeros(SR // 2), SR)
    return frames


def test_features_are_frame_aligned_unusable_files_listed_and_the_index_written(
    tmp_path: Path,
) -> None:
    frames = _user_corpus(tmp_path / "data")
    feat = tmp_path / "feat"
    index = prepare_features(tmp_path / "data", feat, Config(), progress=False)
    assert index.singers == ["alto", "bass"] and (index.computed, index.reused) == (3, 0)
    assert {e.utt: e.frames for e in index.entries} == frames
    for e in index.entries:
        with np.load(feat / e.path) as d:
            assert sorted(d.files) == ["f0", "loudness", "mel", "voiced"]
            mel, f0, voiced, loud = d["mel"], d["f0"], d["voiced"], d["loudness"]
        assert mel.shape == (100, e.frames) and mel.dtype == np.float32
        assert f0.shape == voiced.shape == loud.shape == (e.frames,) and voiced.dtype == bool
        assert np.all(f0[~voiced] == 0) and voiced[5:-5].mean() > 0.9
    with np.load(feat / "alto" / "a1.npz") as d:
        assert np.median(d["f0"][d["voiced"]]) == pytest.approx(330.0, rel=0.01)
    reasons = {Path(s.path).name: s.reason for s in index.skipped}
    assert set(reasons) == {"broken.wav", "quiet.wav"}
    assert "unreadable" in reasons["broken.wav"] and "silent" in reasons["quiet.wav"]
    skipped_rows = [json.loads(x) for x in (feat / "skipped.jsonl").read_text().splitlines()]
    assert sorted(Path(r["path"]).name for r in skipped_rows) == ["broken.wav", "quiet.wav"]
    assert "broken.wav" in index.summary() and "2 skipped" in index.summary()
    loaded, meta = load_feature_index(feat)
    assert loaded.entries == index.entries and meta["singers"] == ["alto", "bass"]
    assert meta["settings"]["f0"]["backend"] == Config().f0.backend and meta["utterances"] == 3
    row = json.loads((feat / "index.jsonl").read_text().splitlines()[0])
    assert row == {
        "utt": "alto/a1",
        "singer": "alto",
        "split": row["split"],
        "frames": frames["alto/a1"],
        "path": "alto/a1.npz",
    }


def test_a_rerun_reuses_force_recomputes_and_other_settings_are_refused(tmp_path: Path) -> None:
    data, feat = tmp_path / "data", tmp_path / "feat"
    _tone(data / "alto" / "a1.wav", 0.3)
    _tone(data / "bass" / "b1.wav", 0.3, 110.0)
    prepare_features(data, feat, Config(), progress=False)
    stamp = (feat / "alto" / "a1.npz").stat().st_mtime_ns
    again = prepare_features(data, feat, Config(), progress=False)
    assert (again.computed, again.reused) == (0, 2)
    assert (feat / "alto" / "a1.npz").stat().st_mtime_ns == stamp
    _tone(data / "bass" / "b2.wav", 0.3, 130.0)
    more = prepare_features(data, feat, Config(), progress=False)
    assert (more.computed, more.reused, len(more.entries)) == (1, 2, 3)
    forced = prepare_features(data, feat, Config(), progress=False, force=True)
    assert (forced.computed, forced.reused) == (3, 0)
    other = Config(features=FeaturesConfig(silence_dbfs=-50.0))
    with pytest.raises(FeatureError, match=r"other settings \(features.silence_dbfs\).*--force"):
        prepare_features(data, feat, other, progress=False)


def test_f0_source_corpus_uses_ground_truth_only_when_asked(tmp_path: Path) -> None:
    data = tmp_path / "data"
    t = _tone(data / "a" / "a_0.wav", 0.5, 200.0)
    truth = np.where(np.arange(t) % 10 < 7, 200.0, 0.0).astype(np.float32)
    np.save(data / "a" / "a_0.f0.npy", truth)
    row = {"path": "a/a_0.wav", "f0": "a/a_0.f0.npy", "singer": "a", "split": "train"}
    (data / "manifest.jsonl").write_text(json.dumps(row) + "\n")
    gt = Config(features=FeaturesConfig(f0_source="corpus"))
    prepare_features(data, tmp_path / "gt", gt, progress=False)
    prepare_features(data, tmp_path / "ex", Config(), progress=False)
    with np.load(tmp_path / "gt" / "a" / "a_0.npz") as d:
        assert np.array_equal(d["f0"], truth) and np.array_equal(d["voiced"], truth > 0)
    with np.load(tmp_path / "ex" / "a" / "a_0.npz") as d:
        assert not np.array_equal(d["f0"], truth)  # extracted: a steady tone, no 30% gaps
    np.save(data / "a" / "a_0.f0.npy", truth[:-3])
    bad = prepare_features(data, tmp_path / "bad", gt, progress=False)
    assert not bad.entries and "ground-truth F0" in bad.skipped[0].reason


def test_registered_extractor_adds_a_named_array(tmp_path: Path) -> None:
    data = tmp_path / "data"
    frames = _tone(data / "a" / "x.wav", 0.3)

    def energy(audio, utt, cfg):  # type: ignore[no-untyped-def]
        t = audio.shape[0] // cfg.audio.hop_length + 1
        return {"energy": np.ones((3, t), np.float32)}

    cfg = Config(features=FeaturesConfig(extractors=("mel", "f0", "loudness", "energy")))
    with pytest.raises(FeatureError, match="unknown feature extractor.*energy"):
        prepare_features(data, tmp_path / "f", cfg, progress=False)
    registry = {**EXTRACTORS, "energy": Extractor(energy, {"energy": "(3, T) test"})}
    prepare_features(data, tmp_path / "f", cfg, progress=False, extractors=registry)
    with np.load(tmp_path / "f" / "a" / "x.npz") as d:
        assert d["energy"].shape == (3, frames)
    assert "energy" in json.loads((tmp_path / "f" / "features.json").read_text())["arrays"]
    short = {**EXTRACTORS, "energy": Extractor(lambda a, u, c: {"energy": np.ones(2)}, {})}
    with pytest.raises(FeatureError, match="misaligned"):
        prepare_features(data, tmp_path / "g", cfg, progress=False, extractors=short)


def test_f0_source_corpus_copies_the_synthetic_corpus_ground_truth(tmp_path: Path) -> None:
    from comostream.training.synth import synthesize_corpus

    synthesize_corpus(
        tmp_path / "syn", CorpusConfig(singers=2, minutes=0.05), progress=False, max_lines=2
    )
    cfg = Config(features=FeaturesConfig(f0_source="corpus"))
    index = prepare_features(tmp_path / "syn", tmp_path / "feat", cfg, progress=False)
    assert len(index.singers) == 2 and not index.skipped and index.entries
    for e in index.entries:
        truth = np.load(tmp_path / "syn" / (e.path[: -len(".npz")] + ".f0.npy"))
        with np.load(tmp_path / "feat" / e.path) as d:
            assert d["mel"].shape[1] == truth.shape[0] == e.frames
            assert np.array_equal(d["f0"], truth.astype(np.float32))


def test_prep_features_command_reports_and_refuses_other_settings_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from comostream import main

    _tone(tmp_path / "data" / "alto" / "a1.wav", 0.3)
    feat = str(tmp_path / "feat")
    assert main(["prep", "features", str(tmp_path / "data"), feat]) == 0
    assert "1 utterances of 1 singers" in capsys.readouterr().out
    assert main(["prep", "features", str(tmp_path / "data"), feat, "--backend", "harvest"]) == 1
    assert "other settings (f0.backend)" in capsys.readouterr().err
    assert (
        main(["prep", "features", str(tmp_path / "data"), feat, "--backend", "harvest", "--force"])
        == 0
    )
