"""Acoustic stages end to end on a tiny synthetic corpus: teacher, distill, resume, finetune,
export; the inference file loads and generates; bad checkpoints give clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import comostream
from comostream.models.acoustic import AcousticModel, hold_unvoiced
from comostream.models.checkpoint_io import CheckpointError, load_checkpoint
from comostream.models.config import Config, CorpusConfig, load_config
from comostream.training.acoustic import (
    RunOptions,
    export_model,
    train_distill,
    train_finetune,
    train_teacher,
)
from comostream.training.checkpoint import save_checkpoint
from comostream.training.features import prepare_features
from comostream.training.synth import synthesize_corpus

ROOT = Path(__file__).resolve().parent.parent
TRAIN = {
    "batch_size": 4,
    "segment_frames": 48,
    "log_every": 20,
    "valid_every": 60,
    "ckpt_every": 1000,
    "warmup_steps": 5,
    "lr": 2e-3,
}


def _cfg(max_steps: int, **train: float) -> Config:
    overrides = {"model": {"content_dim": 0}, "train": {**TRAIN, "max_steps": max_steps, **train}}
    return load_config(ROOT / "configs" / "tiny.toml", overrides=overrides)


def _rows(run: Path, split: str) -> list[dict]:
    rows = [json.loads(x) for x in (run / "stats.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == split]


@pytest.fixture(scope="module")
def feats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("acoustic")
    corpus = root / "corpus"
    synthesize_corpus(corpus, CorpusConfig(singers=3, minutes=0.3), progress=False, max_lines=4)
    prepare_features(corpus, root / "feat", _cfg(1), progress=False)
    return root / "feat"


@pytest.fixture(scope="module")
def teacher(feats: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("teacher")
    train_teacher(_cfg(120), RunOptions(feats, run, progress=False))
    return run / "last.pt"


def test_teacher_loss_falls(teacher: Path) -> None:
    rows = _rows(teacher.parent, "train")
    assert rows[-1]["edm"] < 0.9 * rows[0]["edm"]
    assert all(torch.isfinite(torch.tensor(r["edm"])) for r in rows)
    assert "teacher_mel_l1" in _rows(teacher.parent, "valid")[-1]


def test_distillation_resumes_exactly_and_its_export_generates_deterministically(
    feats: Path, teacher: Path, tmp_path: Path
) -> None:
    straight = train_distill(
        _cfg(8, valid_every=8), teacher, RunOptions(feats, tmp_path / "a", progress=False)
    )
    cfg_part = _cfg(8, ckpt_every=4, valid_every=8)
    train_distill(cfg_part, teacher, RunOptions(feats, tmp_path / "b", progress=False))
    resumed = train_distill(
        cfg_part,
        teacher,
        RunOptions(
            feats, tmp_path / "c", resume=tmp_path / "b" / "ckpt_00000004.pt", progress=False
        ),
    )
    for name in ("student", "target"):
        for p, q in zip(
            straight.models[name].parameters(), resumed.models[name].parameters(), strict=True
        ):
            assert torch.equal(p, q), name
    valid = _rows(tmp_path / "a", "valid")[-1]
    assert {"target_mel_l1", "teacher_mel_l1", "target_to_teacher_l1"} <= set(valid)

    ckpt = tmp_path / "a" / "last.pt"
    model_file = export_model(ckpt, tmp_path / "model.ckpt")
    assert model_file.stat().st_size <= 0.4 * ckpt.stat().st_size
    model = AcousticModel.from_checkpoint(model_file)
    assert model.speakers == tuple(straight.meta["speakers"])
    torch.testing.assert_close(model.target.state_dict(), straight.models["target"].state_dict())
    frames = 30
    feats_in = {
        "f0": torch.full((1, frames), 220.0),
        "voiced": torch.ones(1, frames, dtype=bool),
        "loudness": torch.full((1, frames), -20.0),
    }
    noise = torch.randn(1, 100, frames, generator=torch.Generator().manual_seed(0))
    mel = model.generate(feats_in, [model.speakers[0]], noise)
    assert mel.shape == (1, 100, frames) and torch.isfinite(mel).all()
    assert torch.equal(mel, model.generate(feats_in, [model.speakers[0]], noise))
    with pytest.raises(KeyError, match="known"):
        model.generate(feats_in, ["nobody"], noise)


def test_finetune_trains_only_the_new_row(feats: Path, teacher: Path, tmp_path: Path) -> None:
    """Rename the distilled model's last singer, then finetune that singer's data back in
    under its real name: a new row is learnt; every other weight stays bit-identical."""
    newcomer = json.loads((feats / "features.json").read_text())["singers"][-1]
    cfg = _cfg(4)
    train_distill(cfg, teacher, RunOptions(feats, tmp_path / "d", progress=False))
    ck = load_checkpoint(tmp_path / "d" / "last.pt")
    ck["meta"]["speakers"][-1] = "someone_else"
    save_checkpoint(tmp_path / "renamed.pt", ck)
    before = AcousticModel.from_checkpoint(
        export_model(tmp_path / "renamed.pt", tmp_path / "before.ckpt")
    )
    train_finetune(
        _cfg(30),
        tmp_path / "renamed.pt",
        newcomer,
        RunOptions(feats, tmp_path / "ft", progress=False),
    )
    with pytest.raises(ValueError, match="already"):
        train_finetune(
            cfg,
            tmp_path / "renamed.pt",
            before.speakers[0],
            RunOptions(feats, tmp_path / "x", progress=False),
        )
    after = AcousticModel.from_checkpoint(
        export_model(tmp_path / "ft" / "last.pt", tmp_path / "after.ckpt")
    )
    assert after.speakers == (*before.speakers, newcomer)
    old_rows = before.conditioner.speakers.embedding.weight
    new_table = after.conditioner.speakers.embedding.weight
    assert torch.equal(new_table[: len(before.speakers)], old_rows)
    assert not torch.equal(new_table[-1], torch.zeros_like(new_table[-1]))
    for (k, v), (k2, v2) in zip(
        before.target.state_dict().items(), after.target.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2)
    for k, v in before.conditioner.state_dict().items():
        if "embedding" not in k:
            assert torch.equal(v, after.conditioner.state_dict()[k]), k


def test_bad_checkpoints_are_clear_errors(teacher: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="expected 'inference'"):
        AcousticModel.from_checkpoint(teacher)  # a teacher is not an inference file
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(teacher.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="broken.ckpt"):
        AcousticModel.from_checkpoint(broken)
    assert comostream.main(["export", str(broken), "-o", str(tmp_path / "x.ckpt")]) == 1
    assert not (tmp_path / "x.ckpt").exists()


def test_train_teacher_dry_run_writes_a_checkpoint_and_its_config(
    feats: Path, tmp_path: Path
) -> None:
    cfg = tmp_path / "tiny.toml"
    text = (ROOT / "configs" / "tiny.toml").read_text()
    cfg.write_text(text.replace("content_dim = 8", "content_dim = 0"))
    rc = comostream.main(
        [
            "train",
            "teacher",
            "--config",
            str(cfg),
            "--data",
            str(feats),
            "--out",
            str(tmp_path / "run"),
            "--dry-run",
        ]
    )
    assert rc == 0
    assert (tmp_path / "run" / "last.pt").is_file()
    assert (tmp_path / "run" / "config.json").is_file()


def test_hold_unvoiced_is_causal() -> None:
    f0 = torch.tensor([[0.0, 200.0, 0.0, 0.0, 300.0, 0.0]])
    held = hold_unvoiced(f0, f0 > 0, initial_hz=100.0)
    assert held.tolist() == [[100.0, 200.0, 200.0, 200.0, 300.0, 300.0]]
    # Causal: the prefix's output does not depend on later frames.
    assert torch.equal(hold_unvoiced(f0[:, :3], f0[:, :3] > 0, 100.0), held[:, :3])


def test_hold_unvoiced_continues_from_a_per_row_initial_value() -> None:
    f0 = torch.tensor([[0.0, 0.0, 250.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    held = hold_unvoiced(f0, f0 > 0, torch.tensor([[180.0], [90.0]]))
    assert held.tolist() == [[180.0, 180.0, 250.0, 250.0], [90.0, 90.0, 90.0, 90.0]]
    # Two halves, the second starting from the first's last value, equal one call.
    first = hold_unvoiced(f0[:, :2], f0[:, :2] > 0, torch.tensor([[180.0], [90.0]]))
    second = hold_unvoiced(f0[:, 2:], f0[:, 2:] > 0, first[:, -1:])
    assert torch.equal(torch.cat([first, second], dim=1), held)


def test_export_carries_the_content_encoder(feats: Path, tmp_path: Path) -> None:
    """A model trained on content features exports a copy of the encoder that made them."""
    import dataclasses

    from comostream.models.config import ContentConfig, config_to_dict
    from comostream.models.content import ContentEncoder

    content_cfg = ContentConfig(channels=16, layers=2, content_dim=8)
    base = load_config(ROOT / "configs" / "tiny.toml")
    encoder = ContentEncoder(content_cfg, base.audio)
    enc_path = save_checkpoint(
        tmp_path / "content.pt",
        {
            "kind": "content",
            "models": {"encoder": encoder.state_dict()},
            "config": config_to_dict(dataclasses.replace(base, content=content_cfg)),
        },
    )
    cfg = load_config(
        ROOT / "configs" / "tiny.toml",
        overrides={
            "features": {
                "extractors": ["mel", "f0", "loudness", "content"],
                "content_checkpoint": str(enc_path),
            },
            "train": {**TRAIN, "max_steps": 2, "valid_every": 2},
        },
    )
    assert cfg.model.content_dim == 8
    corpus = Path(json.loads((feats / "features.json").read_text())["source"])
    prepare_features(corpus, tmp_path / "feat", cfg, progress=False)
    train_teacher(cfg, RunOptions(tmp_path / "feat", tmp_path / "t", progress=False))
    train_distill(
        cfg,
        tmp_path / "t" / "last.pt",
        RunOptions(tmp_path / "feat", tmp_path / "d", progress=False),
    )
    model = AcousticModel.from_checkpoint(
        export_model(tmp_path / "d" / "last.pt", tmp_path / "m.ckpt")
    )
    assert model.content_encoder is not None
    torch.testing.assert_close(model.content_encoder.state_dict(), encoder.state_dict())


def test_finetune_from_a_folder_of_recordings(feats: Path, teacher: Path, tmp_path: Path) -> None:
    """`--data SINGER_DIR` of plain recordings: features are prepared with the model's settings."""
    corpus = Path(json.loads((feats / "features.json").read_text())["source"])
    singer_dir = tmp_path / "my_recordings"
    singer_dir.mkdir()
    for wav in sorted((corpus / "flite_slt_alto").glob("*.wav")):
        (singer_dir / wav.name).write_bytes(wav.read_bytes())
    train_distill(_cfg(2), teacher, RunOptions(feats, tmp_path / "d", progress=False))
    state = train_finetune(
        _cfg(3),
        tmp_path / "d" / "last.pt",
        "alto_two",
        RunOptions(singer_dir, tmp_path / "ft", progress=False),
    )
    assert state.meta["speakers"][-1] == "alto_two"
    assert (tmp_path / "ft" / "features" / "index.jsonl").is_file()
