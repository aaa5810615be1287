"""Tests for the synthetic singing corpus (comostream.training.synth, voices, melody, world_ops)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from comostream.models.config import CorpusConfig
from comostream.training import voices
from comostream.training import world_ops as wo
from comostream.training.corpus import load_corpus, select
from comostream.training.melody import f0_contour, make_line, make_lines
from comostream.training.synth import assign_splits, synthesize_corpus

HOP, SR = 256, 24000
KEYS = {"path", "f0", "singer", "text", "melody", "line", "split", "seconds", "sample_rate"}
CFG = CorpusConfig(singers=2, minutes=0.2, seed=3)

needs_tts = pytest.mark.skipif(
    shutil.which("flite") is None, reason="flite not installed (apt-get install flite)"
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("flite") is None:
        pytest.skip("flite not installed")
    out = tmp_path_factory.mktemp("corpus")
    synthesize_corpus(out, CFG, progress=False, max_lines=3)
    return out


def _records(root: Path) -> list[dict]:
    return [json.loads(s) for s in (root / "manifest.jsonl").read_text().splitlines()]


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@needs_tts
def test_corpus_layout_manifest_and_corpus_json_list_every_file(corpus: Path) -> None:
    recs = _records(corpus)
    assert len(recs) == 2 * 3
    assert all(set(r) == KEYS for r in recs)
    assert recs == sorted(recs, key=lambda r: (r["singer"], r["line"]))
    names = [s.name for s in voices.SINGERS[:2]]
    assert sorted({r["singer"] for r in recs}) == sorted(names)
    for r in recs:
        assert (corpus / r["path"]).is_file() and (corpus / r["f0"]).is_file()
        assert r["path"].startswith(r["singer"] + "/") and r["sample_rate"] == SR
    info = json.loads((corpus / "corpus.json").read_text())
    assert info["seed"] == 3 and [s["name"] for s in info["singers"]] == names
    assert "flite" in info["tool_versions"] and len(info["lines"]) == 3


@needs_tts
def test_audio_is_mono_pcm16_at_minus_3_dbfs_with_an_f0_per_frame(corpus: Path) -> None:
    for r in _records(corpus):
        x, sr = sf.read(corpus / r["path"], always_2d=True)
        info = sf.info(str(corpus / r["path"]))
        assert sr == SR and x.shape[1] == 1 and info.subtype == "PCM_16"
        n = x.shape[0]
        assert r["seconds"] == pytest.approx(n / SR, abs=1e-5)
        assert 3.0 < r["seconds"] < 6.5
        assert 20 * np.log10(np.abs(x).max()) == pytest.approx(-3.0, abs=0.1)
        f0 = np.load(corpus / r["f0"])
        assert f0.dtype == np.float32 and f0.shape == (n // HOP + 1,)
        voiced = f0 > 0
        assert 0.4 < voiced.mean() < 0.95
        assert np.all(f0[voiced] > 60) and np.all(f0[voiced] < 1100)


@needs_tts
def test_ground_truth_f0_recoverable(corpus: Path) -> None:
    import pyworld as pw

    hits = total = 0
    for r in _records(corpus):
        x, sr = sf.read(corpus / r["path"])
        gt = np.load(corpus / r["f0"]).astype(np.float64)
        est, _ = pw.harvest(x, sr, f0_floor=50.0, f0_ceil=1100.0, frame_period=1000 * HOP / sr)
        assert est.shape == gt.shape
        v = gt > 0
        ok = (est[v] > 0) & (np.abs(1200 * np.log2(np.maximum(est[v], 1e-3) / gt[v])) < 50)
        assert ok.mean() >= 0.85, r["path"]
        hits += int(ok.sum())
        total += int(v.sum())
    assert hits / total >= 0.90


@needs_tts
def test_every_singer_sings_each_line_alike_and_splits_go_by_line(corpus: Path) -> None:
    recs = _records(corpus)
    by_line: dict[int, list[dict]] = {}
    for r in recs:
        by_line.setdefault(r["line"], []).append(r)
    for rs in by_line.values():  # same text, melody, split and length for every singer
        assert len({(r["text"], r["melody"], r["split"], r["seconds"]) for r in rs}) == 1
    assert sorted(rs[0]["split"] for rs in by_line.values()) == ["test", "train", "valid"]
    utts = load_corpus(corpus)
    assert len(utts) == len(recs) and all(u.f0_path is not None for u in utts)
    assert {u.line for u in select(utts, split="test")} & {
        u.line for u in select(utts, "train")
    } == set()


@needs_tts
def test_the_corpus_is_the_same_bytes_for_any_jobs_and_differs_by_seed(
    corpus: Path, tmp_path: Path
) -> None:
    again = tmp_path / "again"
    synthesize_corpus(again, CFG, progress=False, jobs=2, max_lines=3)
    assert _tree_bytes(again) == _tree_bytes(corpus)
    other = tmp_path / "other"
    synthesize_corpus(
        other, CorpusConfig(singers=1, minutes=0.1, seed=4), progress=False, max_lines=1
    )
    a, b = _records(other)[0], _records(corpus)[0]
    assert a["text"] != b["text"] or a["melody"] != b["melody"]
    assert (other / a["path"]).read_bytes() != (corpus / b["path"]).read_bytes()


def test_missing_tool_names_debian_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(voices.shutil, "which", lambda name: None)
    with pytest.raises(voices.ToolMissingError, match="apt-get install flite"):
        synthesize_corpus(tmp_path / "c", CorpusConfig(singers=2), progress=False, max_lines=1)
    with pytest.raises(voices.ToolMissingError, match="festvox-kallpc16k"):
        voices.check_tools([voices.BASE_VOICES["festival_kal"]])
    with pytest.raises(voices.ToolMissingError, match="espeak-ng"):
        voices.check_tools([voices.BASE_VOICES["espeak_f2"]])


def test_singer_table_is_fixed_distinct_and_refuses_too_many() -> None:
    names = [s.name for s in voices.SINGERS]
    assert len(names) >= 12 and len(set(names)) == len(names)
    assert all(
        s.base in voices.BASE_VOICES and s.register in voices.REGISTERS for s in voices.SINGERS
    )
    assert len({(s.base, s.register, s.warp_alpha) for s in voices.SINGERS}) == len(names)
    for n in range(8, 13):
        assert [s.name for s in voices.singer_table(n)] == names[:n]
    with pytest.raises(ValueError, match="--singers"):
        voices.singer_table(len(names) + 1)


def test_extra_singers_are_other_people_after_the_table_and_are_refused_beyond_it() -> None:
    extra = voices.EXTRA_SINGERS
    names = [s.name for s in voices.SINGERS + extra]
    assert len(extra) == 11 and len(set(names)) == len(names)
    bases = [voices.BASE_VOICES[s.base] for s in extra]
    assert all(b.engine == "festival" and b.package.startswith("festvox-") for b in bases)
    assert len({b.voice for b in bases}) == len(extra)  # one recorded person each
    assert not {b.voice for b in bases} & {
        v.voice for v in voices.BASE_VOICES.values() if not v.package
    }
    table = voices.singer_table(3, 2)
    assert table == list(voices.SINGERS[:3]) + list(extra[:2])
    assert voices.singer_table(4) == list(voices.SINGERS[:4])  # none by default
    with pytest.raises(ValueError, match="--extra-singers"):
        voices.singer_table(2, len(extra) + 1)
    with pytest.raises(ValueError, match="extra_singers"):
        CorpusConfig(extra_singers=-1)


def test_a_missing_festival_voice_names_its_own_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import subprocess

    def festival_without_the_voice(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 255, "", "SIOD ERROR: unbound variable : voice_x")

    monkeypatch.setattr(voices.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(voices.subprocess, "run", festival_without_the_voice)
    person = voices.BASE_VOICES[voices.EXTRA_SINGERS[2].base]
    with pytest.raises(voices.ToolMissingError, match=f"apt-get install {person.package}"):
        voices.tts_batch(person, ["la la"], tmp_path)
    with pytest.raises(voices.ToolMissingError, match="festvox-kallpc16k"):
        voices.tts_batch(voices.BASE_VOICES["festival_kal"], ["la la"], tmp_path)


@pytest.mark.skipif(
    not Path("/usr/share/festival/voices/english/ked_diphone").is_dir(),
    reason="festival's ked voice not installed (apt-get install festvox-kdlpc16k)",
)
def test_an_extra_singer_is_rendered_like_the_others(tmp_path: Path) -> None:
    cfg = CorpusConfig(singers=1, extra_singers=1, minutes=0.1, seed=3)
    synthesize_corpus(tmp_path, cfg, progress=False, max_lines=1)
    recs = {r["singer"]: r for r in _records(tmp_path)}
    person = voices.EXTRA_SINGERS[0].name
    assert sorted(recs) == sorted([voices.SINGERS[0].name, person])
    info = json.loads((tmp_path / "corpus.json").read_text())
    assert [s["name"] for s in info["singers"]] == [voices.SINGERS[0].name, person]
    assert info["singers"][1]["base_voice"]["package"] == "festvox-kdlpc16k"
    y, sr = sf.read(tmp_path / recs[person]["path"])
    f0 = np.load(tmp_path / recs[person]["f0"])
    assert sr == SR and np.abs(y).max() > 0.1 and (f0 > 0).mean() > 0.3


def test_an_output_that_is_a_file_is_a_clear_error_and_is_kept(tmp_path: Path, capsys) -> None:
    import comostream

    out = tmp_path / "notes.txt"
    out.write_text("mine")
    argv = ["prep", "synth", str(out), "--singers", "1", "--minutes", "0.1"]
    assert comostream.main(argv) == 1
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Traceback" not in err
    assert out.read_text() == "mine"


def test_splits_are_seeded_and_sized_by_their_fractions() -> None:
    a = assign_splits(40, 0.1, 0.15, seed=1)
    assert a == assign_splits(40, 0.1, 0.15, seed=1) and a != assign_splits(40, 0.1, 0.15, 2)
    assert (a.count("test"), a.count("valid"), a.count("train")) == (6, 4, 30)
    assert sorted(assign_splits(3, 0.0, 0.0, 0)) == ["test", "train", "valid"]
    assert assign_splits(2, 0.1, 0.15, 0) == ["train", "train"]


def test_lines_fill_the_minutes_and_melodies_have_vibrato_and_portamento() -> None:
    lines = make_lines(5, 60.0)
    total = sum((ln.melody.n_frames(SR, HOP) - 1) * HOP / SR for ln in lines)
    assert 60.0 <= total < 66.5 and make_lines(5, 60.0) == lines
    assert make_lines(5, 600.0)[: len(lines)] == lines  # line i does not depend on corpus size
    for ln in lines:
        assert 6 <= len(ln.text.split()) <= 12 and 5 <= len(ln.melody.notes) <= 12
        assert 3.0 < ln.melody.seconds < 6.0
    mel = make_line(5, 0).melody
    n = mel.n_frames(SR, HOP)
    hz = f0_contour(mel, 57, n, HOP / SR)
    cents = 1200 * np.log2(hz / 440.0) + 6900 - 100 * (57 + mel.key)
    on = (mel.onsets() * SR / HOP).astype(int)
    j = int(np.argmax(np.diff(on)))  # the longest note: vibrato around its pitch
    seg = cents[on[j] + 40 : on[j + 1] - 8] - 100 * mel.notes[j][0]
    if len(seg) > 20:
        assert 15 < np.abs(seg).max() < 60
    assert np.abs(np.diff(cents)).max() < 400  # portamento: no instantaneous jumps


def test_time_map_sings_on_onsets() -> None:
    segs = [(10, 20), (25, 40), (45, 50)]
    onsets = np.array([30.0, 60.0, 90.0, 120.0, 150.0])
    pos, voiced = wo.time_map(segs, 70, onsets, 200)
    assert pos.shape == voiced.shape == (200,)
    starts = [s for s, _ in wo.runs(voiced)]
    assert len(starts) == 3 and starts[0] == 30 and set(starts) <= set(onsets.astype(int))
    assert np.all(np.diff(pos) >= -1e-9) and pos.min() >= 0 and pos.max() <= 69
    assert not voiced[:30].any() and not voiced[150:].any() and voiced[30:150].mean() > 0.7


def test_envelope_warp_moves_formants() -> None:
    bins = np.arange(513)
    sp = np.exp(-0.5 * ((bins - 100) / 10.0) ** 2)[None, :] + 1e-6
    assert wo.warp_envelope(sp, 0.0) is sp
    assert np.argmax(wo.warp_envelope(sp, 0.05)) > 105
    assert np.argmax(wo.warp_envelope(sp, -0.05)) < 95
