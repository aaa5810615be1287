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


def test_no_default_checkpoint_says_how_to_measure_the_shipped_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import comostream

    monkeypatch.chdir(tmp_path)  # no out/content/last.pt here
    assert comostream.main(["bench", "content"]) == 1
    err = capsys.readouterr().err
    assert "no out/content/last.pt" in err and "--checkpoint MODEL.ckpt --corpus DIR" in err
