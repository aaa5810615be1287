"""`comostream bench quality`'s real part: the real voices' held-out prompts, measured apart
(fixtures only: no package is fetched)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from comostream.bench.quality import (
    _Line,
    _persons,
    _real_lines,
    format_quality_table,
    real_conversions,
    run_quality_bench,
)
from comostream.training.corpus import Utterance, load_corpus

from helpers import sung, write_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

SR = 24000
PEOPLE = {
    "allison": "Allison Smith",
    "allison_sung": "Allison Smith",
    "allison_es": "Allison Smith",
    "june": "June Wallack",
    "june_sung": "June Wallack",
}


def _utt(singer: str, line: int, split: str = "test") -> Utterance:
    return Utterance(Path(f"{singer}/{line}.wav"), singer, split, None, "", None, line, 1.0)


def test_real_lines_take_each_voice_in_turn_and_only_the_held_out_split() -> None:
    utts = [
        _utt(s, base + i, split)
        for s, base in (("allison", 100000), ("allison_sung", 100000), ("june", 120000))
        for i, split in enumerate(["test", "train", "test", "test"])
    ]
    lines = _real_lines(utts, "test", None)
    assert [ln.line for ln in lines] == [100000, 120000, 100002, 120002, 100003, 120003]
    assert sorted(lines[0].renditions) == ["allison", "allison_sung"]  # spoken and sung
    assert [ln.line for ln in _real_lines(utts, "test", 3)] == [100000, 120000, 100002]
    assert all(u.split == "test" for ln in lines for u in ln.renditions.values())


def test_real_sources_go_to_other_people_recorded_voices_first_in_rotation() -> None:
    lines = [
        _Line(
            100000,
            {"allison": _utt("allison", 100000), "allison_sung": _utt("allison_sung", 100000)},
        ),
        _Line(120000, {"june": _utt("june", 120000)}),
    ]
    targets = ["s1", "s2", "allison", "allison_sung", "allison_es", "june", "june_sung"]
    real = set(PEOPLE)
    todo = real_conversions(lines, targets, PEOPLE, real, per_source=2)
    pairs = [(src, tgt) for _, src, _, tgt in todo]
    assert len(pairs) == 6  # 3 renditions x 2 targets
    for src, tgt in pairs:
        assert PEOPLE.get(tgt, tgt) != PEOPLE[src]  # never the source's own person
    # Allison's renditions: June first (the recorded voices), then the synthetic singers, in turn
    assert pairs[:4] == [
        ("allison", "june"),
        ("allison", "june_sung"),
        ("allison_sung", "s1"),
        ("allison_sung", "s2"),
    ]
    assert ("june", "s2") in pairs and ("june", "allison") in pairs  # the rotation goes on
    assert real_conversions(lines, ["allison"], PEOPLE, real)[0][3] == "allison"  # June's only
    assert real_conversions(lines[:1], ["allison_es"], PEOPLE, real) == []  # all Allison


def _write(root: Path, recs: list[dict], seconds: float = 1.0) -> Path:
    for r in recs:
        path = root / r["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        x = sung(SR, seconds) * (0.5 + 0.1 * len(r["singer"]) % 0.5)
        sf.write(path, x, SR)
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return root


@pytest.fixture
def corpora(tmp_path: Path) -> tuple[Path, Path]:
    synth = _write(
        tmp_path / "synth",
        [
            {"path": f"{s}/{s}_{i}.wav", "singer": s, "split": split, "line": i}
            for s in ("s1", "s2")
            for i, split in enumerate(["train", "test"])
        ],
    )
    real = _write(
        tmp_path / "real",
        [
            {
                "path": f"{s}/{i}.wav",
                "singer": s,
                "split": split,
                "line": base + i,
                "speaker": PEOPLE[s],
                "kind": "sung" if s.endswith("_sung") else "spoken",
            }
            for s, base in (("allison", 100000), ("allison_sung", 100000), ("june", 120000))
            for i, split in enumerate(["train", "test", "test"])
        ],
    )
    return synth, real


class _FakeSpeaker:
    """Stands in for Resemblyzer (slow on a shared CPU): an embedding from the spectrum."""

    encoder = True

    def embed(self, audio: np.ndarray) -> np.ndarray:
        return np.abs(np.fft.rfft(audio[:4096], n=4096))[:64] + 1e-3


def test_quality_bench_reports_the_real_held_out_sources_apart(
    corpora: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import comostream.bench.quality as q

    monkeypatch.setattr(q, "_dnsmos", lambda y: float(np.abs(y).mean()))  # DNSMOS stand-in
    monkeypatch.setattr(q, "_Speaker", _FakeSpeaker)
    synth, real = corpora
    assert _persons(real)["allison_sung"] == "Allison Smith" and "s1" not in _persons(synth)
    singers = ["s1", "s2", "allison", "allison_sung", "june"]
    model = write_tiny_model(tmp_path / "m.ckpt", lookahead=0, singers=singers)
    r = run_quality_bench(
        model, corpus=synth, real=real, real_lines=1, max_conversions=1, progress=False
    )
    assert r["onestep"]["n_conversions"] == 1 and r["singers"] == ["s1", "s2"]
    part = r["real"]
    assert part["corpus"] == str(real) and part["split"] == "test" and part["lines"] == 1
    # 1 prompt, Allison's, spoken and sung: 2 recordings x 2 targets, none of them Allison
    assert part["sources"] == 2 and part["onestep"]["n_conversions"] == 4
    assert part["streaming"]["n_conversions"] == 4 and part["teacher"]["n_conversions"] == 0
    assert not {"allison", "allison_sung"} & set(part["singers"])
    # the targets' own recordings are scored too, once per target singer
    assert part["onestep"]["dnsmos_target_own"] is not None
    # ... and resynthesised by the model's vocoder: the vocoder's share of the naturalness
    resynth = part["onestep"]["dnsmos_target_resynth"]
    assert resynth is not None and resynth != part["onestep"]["dnsmos_target_own"]
    assert r["onestep"]["dnsmos_target_own"] is not None and r["eval_packages"] in (True, False)
    assert part["onestep"]["mcd_db"] is None  # no other person sings the same prompt
    assert set(part["singers"]) <= set(singers)
    # the targets: the synthetic corpus's singers in turn, whatever else the model has
    assert part["target_list"] == ["s1", "s2"] and part["off_list_conversions"] == 0
    assert part["singers"] == ["s1", "s2"]
    assert part["f0_resynth_floor"]["f0_gross"] is not None  # the exact pitch-follower's score
    assert r["f0_resynth_floor"]["f0_octave"] is not None
    table = format_quality_table(r)
    assert "Synthetic held-out lines" in table and "Real held-out sources" in table
    assert "dnsmos_target_own" in table and "Resynthesis floor" in table
    assert "dnsmos_target_resynth" in table
    # the train prompts are never converted: the real part reads the test split only
    test = {u.path.name for u in load_corpus(real) if u.split == "test"}
    assert {"1.wav", "2.wav"} == test


def test_no_argument_run_reuses_or_makes_the_real_cache_and_skips_without_packages(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import comostream.bench.corpus as bc
    import comostream.bench.quality
    import comostream.training.real
    from comostream.models.shipped import default_model_path
    from comostream.training.debs import PackageError

    made: list[Path] = []

    def fake_prepare(out: Path, **kwargs) -> Path:
        made.append(out)
        assert kwargs["limit"] == bc.REAL_PROMPTS
        (out / "manifest.jsonl").parent.mkdir(parents=True)
        (out / "manifest.jsonl").write_text("")
        return out / "manifest.jsonl"

    monkeypatch.setattr(comostream.training.real, "prepare_real_corpus", fake_prepare)
    reuse, cache = tmp_path / "real", tmp_path / "cache"
    assert bc.default_real_corpus(reuse, cache) == cache and made == [cache]
    assert bc.default_real_corpus(reuse, cache) == cache and made == [cache]  # made once
    reuse.mkdir()
    (reuse / "manifest.jsonl").write_text("")
    assert bc.default_real_corpus(reuse, cache) == reuse  # a prepared out/real is reused

    if default_model_path() is None:
        pytest.skip("this installation ships no model")
    seen: dict[str, object] = {}

    def fake_run(checkpoint, data, corpus, **kwargs):
        seen.update(kwargs)
        return {"fake": True}

    def no_packages(*args, **kwargs) -> Path:
        raise PackageError("asterisk-core-sounds-en-g722: apt-get download failed")

    monkeypatch.setattr(bc, "default_bench_corpus", lambda cfg: tmp_path / "bench")
    monkeypatch.setattr(comostream.bench.quality, "run_quality_bench", fake_run)
    monkeypatch.setattr(bc, "default_real_corpus", lambda: reuse)
    assert comostream.main(["bench", "quality", "--json"]) == 0
    assert seen["real"] == reuse and seen["real_lines"] == bc.REAL_LINES
    capsys.readouterr()
    assert comostream.main(["bench", "quality", "--no-real", "--json"]) == 0
    assert seen["real"] is None
    capsys.readouterr()
    monkeypatch.setattr(bc, "default_real_corpus", no_packages)
    assert comostream.main(["bench", "quality", "--json"]) == 0
    out = capsys.readouterr()
    assert seen["real"] is None and "apt-get download failed" in out.err
    assert "asterisk-core-sounds-en-g722" in json.loads(out.out)["real"]["skipped"]
    # a corpus named: the real part only with --real
    argv = ["bench", "quality", "--corpus", "c", "--json"]
    assert comostream.main(argv) == 0 and seen["real"] is None
    assert comostream.main([*argv, "--real", "r", "--real-lines", "3"]) == 0
    assert seen["real"] == Path("r") and seen["real_lines"] == 3
    capsys.readouterr()
    assert comostream.main(["bench", "quality", "--real", "r", "--no-real"]) == 1
    assert "choose one" in capsys.readouterr().err


def test_the_real_part_follows_the_split(
    corpora: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``split="valid"``: both parts convert the valid material (to choose settings on), never
    a test or train prompt."""
    import comostream.bench.quality as q

    monkeypatch.setattr(q, "_dnsmos", lambda y: None)
    monkeypatch.setattr(q, "_Speaker", _FakeSpeaker)
    synth, real = corpora
    for root, valid_line in ((synth, lambda n: n == 1), (real, lambda n: n % 10 == 2)):
        recs = [json.loads(x) for x in (root / "manifest.jsonl").read_text().splitlines()]
        for r in recs:
            if valid_line(r["line"]):
                r["split"] = "valid"
        (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    valid = {(u.singer, u.line) for u in load_corpus(real) if u.split == "valid"}
    assert len(valid) == 3
    model = write_tiny_model(tmp_path / "m.ckpt", lookahead=0, singers=["s1", "s2", "june"])
    r = run_quality_bench(
        model, corpus=synth, real=real, split="valid", real_lines=3, progress=False
    )
    assert r["split"] == "valid" and r["onestep"]["n_conversions"] == 2
    part = r["real"]
    assert part["split"] == "valid" and (part["lines"], part["sources"]) == (2, 3)
    assert {(c["source"], c["line"]) for c in part["conversions"]} == valid
    assert "(valid split, by prompt)" in format_quality_table(r)
