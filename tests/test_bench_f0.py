"""The F0 benchmark on a tiny fake corpus written into tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from comostream.bench.f0 import format_f0_table, run_f0_bench, score_f0, synthetic_singing
from comostream.models.f0_track import F0Track
from comostream.training.corpus import CorpusError, load_corpus, select

KEYS = {"rpa", "rca", "vde", "gross", "octave", "rpa_raw", "vde_raw", "gross_raw", "octave_raw"}
KEYS |= {"rtf", "lookahead_ms", "seconds", "frames"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three utterances (two test, one train) in the ``prep synth`` layout."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "wavs").mkdir()
    rows = []
    for i, (split, secs) in enumerate([("test", 1.0), ("test", 1.5), ("train", 0.8)]):
        audio, f0 = synthetic_singing(secs, seed=10 + i, base_midi=55 + 5 * i)
        sf.write(root / "wavs" / f"u{i}.wav", audio, 24000, subtype="PCM_16")
        np.save(root / "wavs" / f"u{i}.f0.npy", f0)
        rows.append(
            {
                "path": f"wavs/u{i}.wav",
                "f0": f"wavs/u{i}.f0.npy",
                "singer": f"s{i % 2}",
                "text": "la la",
                "melody": f"m{i}",
                "line": i,
                "split": split,
                "seconds": audio.shape[0] / 24000,
                "sample_rate": 24000,
            }
        )
    with open(root / "manifest.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return root


def test_bench_reports_every_key_in_range_and_a_table_row_per_backend(corpus: Path) -> None:
    names = ("harvest", "dio", "crepe-tiny", "yin-track")
    results = run_f0_bench(corpus, backends=names, progress=False, suite=False)
    assert list(results) == list(names)
    frames = sum(len(np.load(u.f0_path)) for u in select(load_corpus(corpus), split="test"))
    for name, r in results.items():
        assert set(r) == KEYS, name
        lookahead = r.pop("lookahead_ms")
        assert lookahead is None if name != "yin-track" else lookahead == pytest.approx(21.33, 0.01)
        assert all(isinstance(v, float) for v in r.values())
        assert 0.0 <= r["octave"] <= r["gross"] <= 1.0 - r["rpa"] + r["vde"], (name, r)
        assert r["seconds"] == pytest.approx(2.5, abs=1e-3)
        assert r["frames"] == frames
        assert 0.8 <= r["rpa"] <= r["rca"] <= 1.0, (name, r)
        assert 0.0 <= r["vde"] <= 0.15 and 0.0 <= r["vde_raw"] <= 0.15, (name, r)
        assert 0.0 <= r["rpa_raw"] <= 1.0 and r["rtf"] > 0.0
    json.dumps(results)  # JSON-able for --json
    table = format_f0_table(results)
    lines = table.splitlines()
    assert lines[0].startswith("| backend | RPA") and len(lines) == 2 + 4
    assert lines[2].startswith("| harvest |")


def test_bench_reads_the_asked_split_caps_utterances_and_refuses_bad_names(corpus: Path) -> None:
    train = run_f0_bench(corpus, backends=["dio"], split="train", progress=False)
    assert train["dio"]["seconds"] == pytest.approx(0.8, abs=1e-3)
    capped = run_f0_bench(corpus, backends=["dio"], max_utterances=1, progress=False)
    assert capped["dio"]["seconds"] == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(CorpusError, match="no 'valid' utterances"):
        run_f0_bench(corpus, backends=["dio"], split="valid", progress=False)
    with pytest.raises(ValueError, match="known"):
        run_f0_bench(corpus, backends=["nope"], progress=False)


def test_bench_refuses_a_corpus_without_exact_f0(tmp_path: Path) -> None:
    with pytest.raises(CorpusError):
        run_f0_bench(tmp_path / "missing", backends=["dio"], progress=False)
    user = tmp_path / "dataset" / "alice"
    user.mkdir(parents=True)
    sf.write(user / "take1.wav", synthetic_singing(0.5)[0], 24000)
    with pytest.raises(CorpusError, match="exact F0"):
        run_f0_bench(tmp_path / "dataset", backends=["dio"], progress=False)


def test_score_f0_counts_within_50_cents_and_octave_errors_as_chroma_only() -> None:
    ref = np.array([0, 0, 200, 210, 220, 230, 0, 240], np.float32)
    voiced = ref > 0
    perfect = score_f0(F0Track(ref, voiced), ref)
    assert perfect == {"rpa": 1.0, "rca": 1.0, "vde": 0.0, "gross": 0.0, "octave": 0.0}
    octave = score_f0(F0Track(ref * 2, voiced), ref)
    assert octave["rpa"] == 0.0 and octave["rca"] == 1.0 and octave["vde"] == 0.0
    assert octave["gross"] == 1.0 and octave["octave"] == 1.0
    fifth = score_f0(F0Track(ref * 1.5, voiced), ref)  # gross but not an octave error
    assert fifth["gross"] == 1.0 and fifth["octave"] == 0.0
    silent = score_f0(F0Track(np.zeros(8, np.float32), np.zeros(8, bool)), ref)
    assert silent["rpa"] == 0.0 and silent["vde"] == pytest.approx(5 / 8)
    sharp = score_f0(F0Track(ref * 2 ** (40 / 1200), voiced), ref)  # 40 cents: still correct
    assert sharp["rpa"] == 1.0
    flat = score_f0(F0Track(ref * 2 ** (-60 / 1200), voiced), ref)  # 60 cents: wrong
    assert flat["rpa"] == 0.0 and flat["gross"] == 1.0 and flat["octave"] == 0.0
    half_f0 = np.where(np.arange(8) < 4, ref, 0.0).astype(np.float32)  # 2 voiced, both right
    half = F0Track(half_f0, half_f0 > 0)
    assert score_f0(half, ref)["gross"] == 0.0  # voicing misses are VDE, not gross errors


def test_bench_suite_reports_each_condition_and_a_suite_table(corpus: Path) -> None:
    results = run_f0_bench(corpus, backends=["yin-track"], max_utterances=1, progress=False)
    suite = results["yin-track"]["suite"]
    assert list(suite) == ["leaps", "vibrato", "breathy", "low", "high"]
    for cond, r in suite.items():
        assert set(r) == {"gross", "octave", "vde", "frames"}, cond
        assert 0.0 <= r["octave"] <= r["gross"] <= 1.0 and r["frames"] > 100, cond
    json.dumps(results)
    table = format_f0_table(results)
    assert "Known-pitch suite" in table and "| yin-track | " in table.splitlines()[-1]
