"""``bench content`` on a model file: its built-in encoder against the corpus singers it lacks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from comostream.bench.content import format_content_report, run_content_bench
from comostream.models.checkpoint_io import CheckpointError
from comostream.models.config import load_config
from comostream.training.codebook import fit_codebook
from comostream.training.corpus import CorpusError

from helpers import harmonic_tone, write_tiny_model

SR = 24000
F0 = {"s1": 200.0, "s2": 260.0, "h1": 150.0, "h2": 330.0}  # the model has s1, s2; h1, h2 are new


def _corpus(root: Path) -> Path:
    """Four singers, four lines each (train, train, valid, test): a parallel corpus whose
    held-out singers ``h1`` (a partner of ``s1``: the same base voice) and ``h2`` the model
    never had."""
    recs = []
    for s, f0 in F0.items():
        for line, split in enumerate(["train", "train", "valid", "test"]):
            path = root / s / f"{s}_{line}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            glide = f0 * 2 ** (0.2 * np.sin(np.linspace(0, 3 + line, SR)))
            sf.write(path, harmonic_tone(glide, SR), SR)
            recs.append({"path": f"{s}/{s}_{line}.wav", "singer": s, "split": split, "line": line})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    base = {"s1": "a", "h1": "a", "s2": "b", "h2": "c"}
    table = [{"name": s, "base": base[s]} for s in F0]
    (root / "corpus.json").write_text(json.dumps({"singers": table}))
    return root


def test_a_model_file_is_measured_on_the_singers_it_lacks(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path / "corpus")
    model = write_tiny_model(tmp_path / "m.ckpt", lookahead=0, singers=["s1", "s2"])
    cfg = load_config("configs/tiny.toml")
    r = run_content_bench(model, corpus, cfg, progress=False)
    assert r["train_singers"] == ["s1", "s2"]
    assert r["held_out_singers"] == ["h1", "h2"]
    probe = r["speaker_probe"]
    assert probe["chance"] == 0.5 and 0.0 <= probe["content_accuracy"] <= 1.0
    assert probe["test_frames"] > 0 and "content_stream_accuracy" in probe
    pairwise = probe["pairwise"]["content"]
    assert pairwise["pairs"] == 1 and pairwise["min"] == pairwise["mean"] == pairwise["max"]
    assert pairwise["most_separated"][:2] == ["h1", "h2"]
    floor = probe["pairwise"]["timing_floor"]  # from a singer the model has
    assert floor["reference"] in ("s1", "s2") and floor["pairs"] == 1
    conf = probe["confusion"]
    assert conf["singers"] == ["h1", "h2"]
    for kind in ("content", "mel"):  # rows: each held-out singer's test frames, as fractions
        assert len(conf[kind]) == 2 and all(abs(sum(row) - 1.0) < 1e-9 for row in conf[kind])
    kept = r["content_kept"]
    assert kept["pairs"] == [["h1", "s1"]]  # the same base voice: frame-aligned renditions
    assert -1.0 <= kept["cosine_aligned"]["content"] <= 1.0
    assert kept["decoder_mel_l1"] is None  # a model file holds no training decoder
    report = format_content_report(r)
    assert "n/a (a model file" in report and "a model file's encoder)" in report
    assert "each pair of singers alone (1 pairs, chance 0.500)" in report
    assert "a content with only each rendition's timing (from s" in report
    assert r["step"] is None and r["compute"]["codebook_size"] == 0
    # the same model with a codebook: the report says so
    coded = fit_codebook(model, corpus, tmp_path / "coded.ckpt", size=3, progress=False)
    r = run_content_bench(coded, corpus, cfg, progress=False)
    assert r["compute"]["codebook_size"] == 3
    assert "encoder, codebook of 3 codes, temperature 4)" in format_content_report(r)
    with pytest.raises(CorpusError, match="--corpus"):  # a model file names no corpus
        run_content_bench(model, None, cfg, progress=False)


def test_a_model_file_without_a_built_in_encoder_is_a_clear_error(tmp_path: Path) -> None:
    from comostream.models.acoustic import AcousticModel
    from comostream.training.checkpoint import save_checkpoint

    cfg = load_config("configs/tiny.toml")
    model = AcousticModel(cfg, ["s1", "s2"], None)  # trained on a user's content features
    path = save_checkpoint(tmp_path / "m.ckpt", model.export_payload())
    with pytest.raises(CheckpointError, match="no built-in content encoder"):
        run_content_bench(path, _corpus(tmp_path / "c"), cfg, progress=False)


def test_with_no_arguments_it_measures_the_shipped_model_on_every_singer_it_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The defaults are resolved without running the benchmark."""
    import comostream
    import comostream.bench.content
    import comostream.bench.corpus
    from comostream.models.shipped import default_model_path

    if default_model_path() is None:
        pytest.skip("this installation ships no model")
    seen: dict[str, object] = {}

    def fake_corpus(cfg, *, every_singer: bool = False) -> Path:
        seen["every_singer"] = every_singer
        return tmp_path / "bench-corpus"

    def fake_run(checkpoint, corpus, cfg, **kwargs):
        seen.update(checkpoint=checkpoint, corpus=corpus)
        return {"fake": True}

    monkeypatch.setattr(comostream.bench.corpus, "default_bench_corpus", fake_corpus)
    monkeypatch.setattr(comostream.bench.content, "run_content_bench", fake_run)
    assert comostream.main(["bench", "content", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"fake": True}
    assert seen == {
        "every_singer": True,
        "checkpoint": default_model_path(),
        "corpus": tmp_path / "bench-corpus",
    }
    seen.clear()  # a checkpoint given: its own corpus (a content checkpoint names it)
    assert comostream.main(["bench", "content", "--checkpoint", "c.pt", "--json"]) == 0
    assert seen == {"checkpoint": Path("c.pt"), "corpus": None}


def test_the_every_singer_bench_corpus_has_every_row_and_its_own_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import comostream.training.synth
    from comostream.bench.corpus import default_bench_corpus
    from comostream.training.voices import EXTRA_SINGERS, SINGERS

    made: list[tuple[Path, object]] = []

    def fake_synth(folder: Path, corpus_cfg, audio) -> None:
        made.append((folder, corpus_cfg))
        folder.mkdir(parents=True)
        (folder / "manifest.jsonl").write_text("")

    monkeypatch.setattr(comostream.training.synth, "synthesize_corpus", fake_synth)
    cfg = load_config(None)
    every = default_bench_corpus(cfg, tmp_path, every_singer=True)
    plain = default_bench_corpus(cfg, tmp_path)
    assert every.name == f"s{len(SINGERS)}x{len(EXTRA_SINGERS)}-m1-seed0"
    assert plain.name == f"s{cfg.corpus.singers}-m1-seed0"
    assert made[0][1].extra_singers == len(EXTRA_SINGERS) and made[1][1].extra_singers == 0
    assert default_bench_corpus(cfg, tmp_path, every_singer=True) == every and len(made) == 2


def test_the_pairwise_probe_finds_the_one_singer_apart() -> None:
    from comostream.bench.content import _Utt, pairwise_probe

    rng = np.random.default_rng(0)

    def utt(singer: str, line: int, offset: float) -> _Utt:
        t = 200
        content = rng.normal(0.0, 1.0, (4, t)).astype(np.float32)
        content[0] += offset
        split = "test" if line == 3 else "train"
        z = np.zeros(t, np.float32)
        return _Utt(singer, line, split, content, content, z, z > 0, z, np.ones(t, bool))

    utts = [utt(s, line, 3.0 if s == "a" else 0.0) for s in "abc" for line in range(4)]
    r = pairwise_probe(utts, "content")
    assert r["pairs"] == 3 and r["max"] > 0.9 and r["min"] < 0.65  # b and c: the same voice
    assert "a" in r["most_separated"][:2] and r["min"] < r["mean"] < r["max"]


def test_the_timing_floor_reads_timing_and_nothing_else() -> None:
    """Renditions that differ only in who sings score chance; a singer who holds the first
    half of every line three times as long is found from the timing alone."""
    from comostream.bench.content import _Utt, pairwise_probe, timing_floor

    rng = np.random.default_rng(0)
    t = 200

    def utt(singer: str, line: int, boundary: int, offset: float) -> _Utt:
        content = rng.normal(0.0, 0.3, (4, t)).astype(np.float32)
        content[0, :boundary] += 1.0  # "what is sung": a first sound, then a second
        content[0, boundary:] -= 1.0
        content[1] += offset  # "who sings"
        split = "test" if line == 3 else "train"
        z = np.zeros(t, np.float32)
        return _Utt(singer, line, split, content, content, z, z > 0, z, np.ones(t, bool))

    ref = [utt("r", line, 100, 0.0) for line in range(4)]
    same = [utt("x", line, 100, 2.0) for line in range(4)] + [
        utt("y", line, 100, -2.0) for line in range(4)
    ]
    assert pairwise_probe(same, "content")["mean"] > 0.95  # the offset gives them away
    floor = timing_floor(same, ref)
    assert floor["reference"] == "r" and abs(floor["mean"] - 0.5) < 0.1
    timed = [utt("x", line, 150, 0.0) for line in range(4)] + [
        utt("y", line, 50, 0.0) for line in range(4)
    ]
    assert timing_floor(timed, ref)["mean"] > 0.7  # 3/4 of x's frames are the first sound
