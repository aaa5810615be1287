"""Tests for the corpus loader (comostream.training.corpus)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from comostream.training.corpus import (
    CorpusError,
    Utterance,
    load_corpus,
    select,
    singers,
    split_for_name,
)

SR = 24000


def _tone(path: Path, seconds: float = 0.5, fmt: str = "WAV") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(str(path), 0.3 * np.sin(2 * np.pi * 220 * t), SR, format=fmt)


def _manifest(root: Path, rows: list[dict | str]) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    (root / "manifest.jsonl").write_text(text)
    return root / "manifest.jsonl"


def _row(singer: str, i: int, split: str = "train") -> dict:
    return {
        "path": f"{singer}/{singer}_{i:04d}.wav",
        "f0": f"{singer}/{singer}_{i:04d}.f0.npy",
        "singer": singer,
        "text": "la la",
        "melody": f"m{i}",
        "line": i,
        "split": split,
        "seconds": 0.5,
        "sample_rate": SR,
    }


def test_manifest_is_read_and_resolved(tmp_path: Path) -> None:
    rows = [_row("a", 0), _row("a", 1, "test"), _row("b", 0), _row("b", 1, "valid")]
    for r in rows:
        _tone(tmp_path / r["path"])
    _manifest(tmp_path, rows)
    utts = load_corpus(tmp_path)
    assert len(utts) == 4 and all(isinstance(u, Utterance) for u in utts)
    u = utts[1]
    assert u.path == tmp_path / "a/a_0001.wav" and u.f0_path == tmp_path / "a/a_0001.f0.npy"
    assert (u.singer, u.split, u.text, u.melody, u.line, u.seconds) == (
        "a",
        "test",
        "la la",
        "m1",
        1,
        0.5,
    )
    assert singers(utts) == ["a", "b"]
    assert [x.path.name for x in select(utts, split="train")] == ["a_0000.wav", "b_0000.wav"]
    assert len(select(utts, singer="b")) == 2 and len(select(utts, ["test", "valid"], "b")) == 1
    with pytest.raises(ValueError, match="unknown split"):
        select(utts, split="training")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"singer": "a", "split": "train"}', "missing key 'path'"),
        ('{"path": "a/a_0000.wav", "singer": "a", "split": "dev"}', "split must be one of"),
        ('{"path": "a/nope.wav", "singer": "a", "split": "train"}', "audio file not found"),
        ('{"path": "a/a_0000.wav", "singer": 3, "split": "train"}', "'singer' must be str"),
    ],
)
def test_malformed_manifest_names_file_and_line(tmp_path: Path, bad: str, message: str) -> None:
    _tone(tmp_path / "a/a_0000.wav")
    manifest = _manifest(tmp_path, [_row("a", 0), "", bad])
    with pytest.raises(CorpusError, match=message) as err:
        load_corpus(tmp_path)
    assert f"{manifest}, line 3" in str(err.value)


def test_user_layout_is_scanned(tmp_path: Path) -> None:
    root = tmp_path / "dataset"
    names = [f"take{i:02d}" for i in range(30)]
    for n in names:
        _tone(root / "alice" / f"{n}.wav", 0.25)
    _tone(root / "bob" / "song.flac", 1.0, fmt="FLAC")
    _tone(root / "bob" / "other.ogg", 0.5, fmt="OGG")
    (root / "bob" / "notes.txt").write_text("not audio")
    np.save(root / "bob" / "song.f0.npy", np.zeros(5, np.float32))
    utts = load_corpus(root)
    assert singers(utts) == ["alice", "bob"] and len(utts) == 32
    song = next(u for u in utts if u.path.name == "song.flac")
    assert song.seconds == pytest.approx(1.0) and song.f0_path == root / "bob" / "song.f0.npy"
    assert next(u for u in utts if u.path.name == "other.ogg").f0_path is None
    assert all(u.melody is None and u.line is None and u.text == "" for u in utts)
    assert [u.split for u in utts] == [u.split for u in load_corpus(root)]  # deterministic
    assert {u.split for u in utts} <= {"train", "valid", "test"}
    assert sum(u.split == "train" for u in utts) > 16


def test_split_for_name_is_stable_and_gives_about_10_percent_valid_and_test() -> None:
    labels = [split_for_name(f"s/{i}.wav") for i in range(4000)]
    assert 0.08 < labels.count("valid") / 4000 < 0.12
    assert 0.08 < labels.count("test") / 4000 < 0.12
    assert split_for_name("x/y.wav") == split_for_name("x/y.wav")


def test_a_missing_or_empty_corpus_is_a_corpus_error(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="not found"):
        load_corpus(tmp_path / "missing")
    (tmp_path / "empty" / "singer").mkdir(parents=True)
    with pytest.raises(CorpusError, match=r"<singer>/<name>\.wav"):
        load_corpus(tmp_path / "empty")
