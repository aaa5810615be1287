"""`comostream prep merge`: several corpora seen as one, with a per-singer cap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import comostream
from comostream.training.corpus import CorpusError, load_corpus
from comostream.training.merge import cap_minutes, merge_corpora

SR = 24000


def _corpus(
    root: Path, singers: list[str], splits: list[str], line_base: int, seconds: float = 0.5
) -> Path:
    """A manifest corpus: every singer sings lines ``line_base + i`` (split ``splits[i]``),
    each ``seconds`` long, with an F0 file."""
    recs = []
    for s in singers:
        (root / s).mkdir(parents=True)
        for i, split in enumerate(splits):
            stem = f"{s}_{i:04d}"
            n = int(seconds * SR)
            sf.write(root / s / f"{stem}.wav", np.zeros(n, np.float32), SR)
            np.save(root / s / f"{stem}.f0.npy", np.zeros(n // 256 + 1, np.float32))
            recs.append(
                {
                    "path": f"{s}/{stem}.wav",
                    "f0": f"{s}/{stem}.f0.npy",
                    "singer": s,
                    "split": split,
                    "line": line_base + i,
                    "text": f"line {i}",
                    "seconds": seconds,
                }
            )
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (root / "corpus.json").write_text(json.dumps({"licence": f"licence of {root.name}"}))
    return root


SPLITS = ["train", "test", "train", "valid", "train", "train", "test", "train"]


@pytest.fixture
def two(tmp_path: Path) -> tuple[Path, Path]:
    synth = _corpus(tmp_path / "synth", ["a", "b"], ["train", "valid", "test"], 0)
    real = _corpus(tmp_path / "real", ["allison", "allison_sung"], SPLITS, 100000)
    return synth, real


def test_merged_corpus_lists_every_utterance_with_its_split_f0_and_line(
    two: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "runs" / "all"
    merge_corpora(out, list(two))
    merged = load_corpus(out)
    sources = load_corpus(two[0]) + load_corpus(two[1])
    key = [(u.singer, u.path.name, u.split, u.line, u.text) for u in sources]
    assert [(u.singer, u.path.name, u.split, u.line, u.text) for u in merged] == key
    assert all(u.path.resolve() == v.path.resolve() for u, v in zip(merged, sources, strict=True))
    assert all(u.f0_path is not None and u.f0_path.is_file() for u in merged)
    # paths are relative to the merged folder: nothing is copied, and it moves with its run
    rec = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert rec["path"].startswith("../../synth/") and not (out / "a").exists()
    info = json.loads((out / "corpus.json").read_text())
    assert [s["licence"] for s in info["sources"]] == ["licence of synth", "licence of real"]


def test_cap_keeps_each_singers_first_utterances_up_to_the_train_minutes(
    two: tuple[Path, Path], tmp_path: Path
) -> None:
    utts = load_corpus(two[1])  # 0.5 s each; per singer: train, test, train, valid, train, ...
    kept = cap_minutes(utts, 1.0 / 60)  # one second of train: two train utterances
    for singer in ("allison", "allison_sung"):
        mine = [u.path.stem for u in kept if u.singer == singer]
        # a prefix: the held-out ones before the cap keep their share, nothing after it
        assert mine == [f"{singer}_{i:04d}" for i in range(4)]
        assert [u.split for u in kept if u.singer == singer] == SPLITS[:4]
    assert kept == [u for u in utts if u in kept]  # order preserved
    tiny = cap_minutes(utts, 0.001)  # less than one utterance: the first train one stays
    assert [u.split for u in tiny if u.singer == "allison"] == ["train", "test"]
    with pytest.raises(ValueError):
        cap_minutes(utts, 0)
    # the synthetic corpus is under the cap: merged whole
    out = tmp_path / "all"
    merge_corpora(out, list(two), max_minutes=1.0 / 60)
    singers = [u.singer for u in load_corpus(out)]
    assert singers.count("a") == 3 and singers.count("allison") == 4
    info = json.loads((out / "corpus.json").read_text())
    assert info["max_minutes"] == pytest.approx(1.0 / 60)
    assert info["sources"][1]["minutes_kept"]["allison"]["train"] == pytest.approx(1 / 60, abs=1e-4)


def test_merge_refuses_shared_singers_lines_and_another_corpus_as_output(
    two: tuple[Path, Path], tmp_path: Path
) -> None:
    synth, real = two
    with pytest.raises(CorpusError, match="singer 'a' is in both"):
        merge_corpora(tmp_path / "o1", [synth, synth])
    other = _corpus(tmp_path / "other", ["c"], ["train", "test"], 1)  # line 1 is synth's too
    with pytest.raises(CorpusError, match="lyric line 1 is in both"):
        merge_corpora(tmp_path / "o2", [synth, other])
    with pytest.raises(CorpusError, match="holds another corpus"):
        merge_corpora(real, [synth])  # would overwrite the real corpus's manifest
    with pytest.raises(CorpusError, match="at least one"):
        merge_corpora(tmp_path / "o3", [])
    merge_corpora(tmp_path / "o4", [synth])
    merge_corpora(tmp_path / "o4", [synth, real])  # a merge folder is rewritten
    assert len(load_corpus(tmp_path / "o4")) == len(load_corpus(synth)) + len(load_corpus(real))


def test_prep_merge_command(two: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "all"
    argv = ["prep", "merge", str(out), *map(str, two), "--max-minutes", "0.02"]
    assert comostream.main(argv) == 0
    printed = capsys.readouterr().out
    assert "allison: 4 utterances" in printed and f"wrote {out / 'manifest.jsonl'}" in printed
    assert comostream.main(["prep", "merge", str(out), str(two[0]), "--max-minutes", "0"]) == 1
    assert "--max-minutes must be > 0" in capsys.readouterr().err
    assert comostream.main(["prep", "merge", str(out), str(tmp_path / "nowhere")]) == 1
    assert "not found" in capsys.readouterr().err
