"""GTA features (``prep gta``) and vocoder fine-tuning from them (``train vocoder --init``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import comostream
from comostream.models.acoustic import AcousticModel
from comostream.models.checkpoint_io import CheckpointError
from comostream.models.config import (
    Config,
    FeaturesConfig,
    config_from_dict,
    config_to_dict,
    load_config,
)
from comostream.models.noise import frame_noise
from comostream.models.vocoder import VOCODER_PRESETS, load_vocoder
from comostream.training.checkpoint import save_checkpoint
from comostream.training.feature_index import FeatureError, load_feature_index
from comostream.training.features import prepare_features
from comostream.training.vocoder import train_vocoder
from comostream.training.vocoder_data import VocoderSegments, corpus_of
from comostream.training.vocoder_gta import gta_mel, write_gta_features

from helpers import harmonic_tone

pytestmark = pytest.mark.usefixtures("one_thread")

SR, HOP = 24000, 256
SINGERS = {"low": 130.0, "high": 260.0}


@pytest.fixture(scope="module")
def feats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two singers x 6 one-second tones, features mel + F0 (corpus truth) + loudness."""
    root = tmp_path_factory.mktemp("gta")
    corpus = root / "corpus"
    for singer, base in SINGERS.items():
        (corpus / singer).mkdir(parents=True)
        for i in range(6):
            n = SR
            f0 = np.full(n, base * (1 + 0.05 * i))
            sf.write(corpus / singer / f"line{i:03d}.wav", harmonic_tone(f0), SR)
            np.save(
                corpus / singer / f"line{i:03d}.f0.npy",
                f0[::HOP][: n // HOP + 1].astype(np.float32),
            )
    cfg = Config(features=FeaturesConfig(extractors=("mel", "f0", "loudness"), f0_source="corpus"))
    prepare_features(corpus, root / "feat", cfg, progress=False)
    return root / "feat"


def _model(singers: list[str]) -> AcousticModel:
    """A tiny acoustic model without content input (the features hold none)."""
    torch.manual_seed(0)
    cfg = load_config("configs/tiny.toml")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, content_dim=0))
    return AcousticModel(cfg, singers).eval()


def _voc_cfg(max_steps: int, channels: int = 16) -> Config:
    base = config_to_dict(Config())
    base["vocoder"].update(
        {
            **VOCODER_PRESETS["tiny"],
            "channels": channels,
            "segment_frames": 16,
            "context_frames": 4,
            "adv_weight": 0.0,
        }
    )
    base["train"].update(
        {
            "batch_size": 2,
            "max_steps": max_steps,
            "lr": 2e-3,
            "warmup_steps": 0,
            "log_every": 1,
            "valid_every": 100,
            "ckpt_every": 100,
            "amp": False,
        }
    )
    return config_from_dict(base)


def test_gta_copy_replaces_only_the_mel(feats: Path, tmp_path: Path) -> None:
    model = _model(list(SINGERS))
    out = write_gta_features(model, feats, tmp_path / "gta", model_name="tiny.ckpt", progress=False)
    index, meta = load_feature_index(out)
    src_index, src_meta = load_feature_index(feats)
    assert [e.path for e in index.entries] == [e.path for e in src_index.entries]
    assert meta["gta_model"] == "tiny.ckpt" and meta["gta_seed"] == model.cfg.realtime.seed
    assert meta["gta_noise_scale"] == model.cfg.realtime.noise_scale == 0.5
    assert Path(meta["source"]).is_absolute()
    assert corpus_of(out, None) == corpus_of(feats, None).resolve()
    for e in index.entries:
        with np.load(feats / e.path) as a, np.load(out / e.path) as b:
            assert sorted(a.files) == sorted(b.files)
            for k in a.files:
                if k != "mel":
                    assert np.array_equal(a[k], b[k]), k
            assert b["mel"].shape == a["mel"].shape and b["mel"].dtype == np.float32
            assert not np.allclose(a["mel"], b["mel"])
            # the target's one-step output with the realtime path's frame noise
            feats_t = {
                "f0": torch.from_numpy(a["f0"])[None],
                "voiced": torch.from_numpy(a["voiced"])[None],
                "loudness": torch.from_numpy(a["loudness"])[None],
            }
            index_t = torch.arange(a["f0"].shape[0])[None]
            rt = model.cfg.realtime
            noise = rt.noise_scale * frame_noise(index_t, model.cfg.audio.n_mels, rt.seed)
            want = model.generate(feats_t, e.singer, noise)[0].numpy()
            np.testing.assert_allclose(b["mel"], want, rtol=0, atol=1e-5)
            np.testing.assert_array_equal(gta_mel(model, dict(a), e.singer, 0), b["mel"])
    # a normal vocoder training folder
    segs = VocoderSegments(out, corpus_of(out, None), "train", 12, Config().audio)
    assert segs[0]["mel"].shape == (100, 12)


def test_gta_resumes_and_refuses_unknown_singers(feats: Path, tmp_path: Path) -> None:
    model = _model(list(SINGERS))
    out = write_gta_features(model, feats, tmp_path / "gta", progress=False)
    first = load_feature_index(out)[0].entries[0]
    kept = load_feature_index(out)[0].entries[1]
    (out / first.path).unlink()
    stamp = (out / kept.path).stat().st_mtime_ns
    write_gta_features(model, feats, out, progress=False)
    assert (out / first.path).is_file()
    assert (out / kept.path).stat().st_mtime_ns == stamp  # not rewritten
    with pytest.raises(FeatureError, match="high"):
        write_gta_features(_model(["low"]), feats, tmp_path / "x", progress=False)


def test_gta_refuses_to_resume_with_another_noise(feats: Path, tmp_path: Path) -> None:
    """A folder begun at one noise scale is not finished at another (two kinds of mel in one
    folder): a clear error, and nothing in it changes."""
    model = _model(list(SINGERS))
    out = write_gta_features(model, feats, tmp_path / "gta", progress=False)
    (out / load_feature_index(out)[0].entries[0].path).unlink()  # as if interrupted
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*"))
    other = _model(list(SINGERS))
    other.cfg = dataclasses.replace(
        other.cfg, realtime=dataclasses.replace(other.cfg.realtime, noise_scale=1.0)
    )
    with pytest.raises(FeatureError, match="noise_scale"):
        write_gta_features(other, feats, out, progress=False)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*")) == before
    write_gta_features(model, feats, out, progress=False)  # the same noise resumes
    assert json.loads((out / "features.json").read_text())["gta_noise_scale"] == 0.5


def test_init_starts_from_the_given_vocoder(feats: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    train_vocoder(_voc_cfg(2), feats, base, progress=False)
    init = load_vocoder(base / "last.pt")
    state = train_vocoder(
        _voc_cfg(0), feats, tmp_path / "ft", init=base / "last.pt", progress=False
    )
    assert state.step == 0
    got = state.models["vocoder"].state_dict()
    assert all(torch.equal(got[k], v) for k, v in init.state_dict().items())
    state = train_vocoder(
        _voc_cfg(2), feats, tmp_path / "ft2", init=base / "last.pt", progress=False
    )
    assert state.step == 2 and state.meta["init"] == str(base / "last.pt")
    with pytest.raises(CheckpointError, match="--init"):  # other sizes
        train_vocoder(
            _voc_cfg(1, channels=24), feats, tmp_path / "bad", init=base / "last.pt", progress=False
        )


def test_prep_gta_command_writes_features_naming_the_model_and_refuses_a_missing_one(
    feats: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _model(list(SINGERS))
    ckpt = save_checkpoint(tmp_path / "m.ckpt", model.export_payload())
    rc = comostream.main(
        ["prep", "gta", str(ckpt), "--data", str(feats), "--out", str(tmp_path / "gta")]
    )
    assert rc == 0 and "--init" in capsys.readouterr().out
    meta = json.loads((tmp_path / "gta" / "features.json").read_text())
    assert meta["gta_model"] == str(ckpt)
    assert (
        comostream.main(
            [
                "prep",
                "gta",
                str(tmp_path / "nope.ckpt"),
                "--data",
                str(feats),
                "--out",
                str(tmp_path / "g2"),
            ]
        )
        == 1
    )
    assert "not found" in capsys.readouterr().err
