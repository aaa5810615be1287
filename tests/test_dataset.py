"""Segment dataset over cached features: shapes, determinism, padding, speakers, with the loop."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from comostream.models.config import Config, TrainConfig
from comostream.training.dataset import SegmentDataset, collate_segments
from comostream.training.feature_index import FeatureError
from comostream.training.features import prepare_features
from comostream.training.loop import Trainer, make_state

SR = 24000


@pytest.fixture(scope="module")
def feat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train: singer 'b' (0.5 s tone at 150 Hz = 47 frames), 'a' (1.5 s at 300 Hz = 141
    frames); valid: one 'a' file."""
    root = tmp_path_factory.mktemp("ds")
    rows = []
    for singer, name, seconds, hz, split in (
        ("b", "x", 0.5, 150.0, "train"),
        ("a", "x", 1.5, 300.0, "train"),
        ("a", "v", 0.4, 300.0, "valid"),
    ):
        t = np.arange(int(seconds * SR)) / SR
        (root / "data" / singer).mkdir(parents=True, exist_ok=True)
        sf.write(str(root / "data" / singer / f"{name}.wav"), 0.3 * np.sin(2 * np.pi * hz * t), SR)
        rows.append({"path": f"{singer}/{name}.wav", "singer": singer, "split": split})
    (root / "data" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare_features(root / "data", root / "feat", Config(), progress=False)
    return root / "feat"


def _train(feat_dir: Path) -> SegmentDataset:
    return SegmentDataset(feat_dir, "train", segment_frames=32, seed=5)


def test_collated_segments_have_their_shapes_and_the_speaker_of_their_tone(feat_dir: Path) -> None:
    ds = _train(feat_dir)
    assert ds.singers == ["a", "b"]
    batch = collate_segments([ds[k] for k in range(6)])
    assert batch["mel"].shape == (6, 100, 32) and batch["mel"].dtype == torch.float32
    for key in ("f0", "voiced", "loudness", "mask"):
        assert batch[key].shape == (6, 32)
    assert batch["voiced"].dtype == torch.bool and batch["speaker"].dtype == torch.int64
    assert batch["mask"].all()  # both utterances are longer than 32 frames
    for k in range(6):  # speaker id matches the pitch of the tone it came from
        f0 = batch["f0"][k][batch["voiced"][k]].median()
        assert float(f0) == pytest.approx(300.0 if batch["speaker"][k] == 0 else 150.0, rel=0.02)


def test_deterministic_per_seed_and_sample_id(feat_dir: Path) -> None:
    ds = _train(feat_dir)
    again = SegmentDataset(feat_dir, "train", segment_frames=32, seed=5, cache=False)
    for k in (7, 0, 123456, 3):
        a, b = ds[k], again[k]
        assert all(torch.equal(a[n], b[n]) for n in a)
    other = SegmentDataset(feat_dir, "train", segment_frames=32, seed=6)
    assert not all(torch.equal(ds[k]["mel"], other[k]["mel"]) for k in range(4))
    picks = torch.stack([ds[k]["speaker"] for k in range(600)])
    assert float((picks == 0).float().mean()) == pytest.approx(141 / 188, abs=0.06)  # by frames


def test_short_utterance_is_padded_and_masked(feat_dir: Path) -> None:
    ds = _train(feat_dir)
    long = SegmentDataset(feat_dir, "train", segment_frames=100, seed=0)
    item = next(long[k] for k in range(50) if long[k]["speaker"] == 1)  # the 47-frame tone
    assert int(item["mask"].sum()) == 47 and not item["mask"][47:].any()
    assert torch.all(item["mel"][:, 47:] == math.log(1e-5))
    assert not item["voiced"][47:].any() and torch.all(item["f0"][47:] == 0)
    assert torch.all(item["loudness"][47:] == -100.0) and ds.segment_frames == 32


def test_missing_split_or_directory_is_a_clear_error(feat_dir: Path, tmp_path: Path) -> None:
    assert len(SegmentDataset(feat_dir, "valid", 32).entries) == 1
    with pytest.raises(FeatureError, match="no utterances in split 'test'"):
        SegmentDataset(feat_dir, "test", 32)
    with pytest.raises(FeatureError, match="not a feature directory"):
        SegmentDataset(tmp_path, "train", 32)


def test_trainer_on_segments_resumes_exactly(feat_dir: Path, tmp_path: Path) -> None:
    cfg = Config(
        train=TrainConfig(
            batch_size=2,
            segment_frames=16,
            max_steps=4,
            lr=1e-2,
            warmup_steps=0,
            ckpt_every=100,
            log_every=2,
        )
    )
    ds = SegmentDataset(feat_dir, "train", cfg.train.segment_frames, seed=cfg.train.seed)

    def step(state, batch):  # type: ignore[no-untyped-def]
        pred = state.models["net"](batch["mel"] / 10.0).squeeze(1)
        return {"f0": torch.mean((pred - batch["f0"] / 300.0) ** 2)}

    def run(stop: int | None, resume: Path | None, run_dir: Path) -> torch.Tensor:
        torch.manual_seed(0)
        state = make_state({"net": torch.nn.Conv1d(100, 1, 3, padding=1)}, cfg.train)
        trainer = Trainer(
            cfg,
            state,
            step,
            ds,
            run_dir,
            kind="teacher",
            progress=False,
            collate_fn=collate_segments,
            tensorboard=False,
        )
        if resume is not None:
            trainer.resume(resume)
        trainer.fit(stop_at=stop)
        return state.models["net"].weight.detach().clone()

    full = run(None, None, tmp_path / "a")
    run(2, None, tmp_path / "b")
    assert torch.equal(run(None, tmp_path / "b" / "last.pt", tmp_path / "b"), full)
