"""``train vocoder`` end to end on a tiny generated corpus: checkpoint, exact resume, the GAN
branch, loading and exporting; ``bench vocoder`` on the result; the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import comostream
from comostream.bench.vocoder import run_vocoder_bench
from comostream.models.checkpoint_io import CheckpointError, load_checkpoint
from comostream.models.config import Config, FeaturesConfig, config_from_dict, config_to_dict
from comostream.models.vocoder import VOCODER_PRESETS, load_vocoder
from comostream.training.corpus import split_for_name
from comostream.training.feature_index import FeatureError
from comostream.training.features import prepare_features
from comostream.training.vocoder import export_vocoder, train_vocoder
from comostream.training.vocoder_data import VocoderSegments

from helpers import harmonic_tone

pytestmark = pytest.mark.usefixtures("one_thread")

SR, HOP = 24000, 256
SINGERS = {"low": 130.0, "high": 260.0}  # base F0 (Hz) of each generated singer
PER_SPLIT = {"train": 3, "valid": 1, "test": 1}  # files per singer and split


def _names(singer: str) -> list[str]:
    """File stems of ``singer`` filling PER_SPLIT (the user-layout corpus splits by a hash of
    ``<singer>/<file name>``)."""
    out: dict[str, list[str]] = {s: [] for s in PER_SPLIT}
    i = 0
    while any(len(out[s]) < n for s, n in PER_SPLIT.items()):
        name = f"line{i:03d}"
        split = split_for_name(f"{singer}/{name}.wav")
        if len(out[split]) < PER_SPLIT[split]:
            out[split].append(name)
        i += 1
    return [n for names in out.values() for n in names]


@pytest.fixture(scope="module")
def feats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-singer corpus of 1.2 s tones with vibrato and ground-truth F0, and its features."""
    root = tmp_path_factory.mktemp("vocoder")
    corpus = root / "corpus"
    for singer, base in SINGERS.items():
        (corpus / singer).mkdir(parents=True)
        for stem in _names(singer):
            n = int(1.2 * SR)
            t = np.arange(n) / SR
            f0 = base * (1 + 0.02 * np.sin(2 * np.pi * 5.5 * t)) * (1 + 0.1 * (int(stem[4:]) % 3))
            sf.write(corpus / singer / f"{stem}.wav", harmonic_tone(f0), SR)
            frames = n // HOP + 1
            np.save(corpus / singer / f"{stem}.f0.npy", f0[::HOP][:frames].astype(np.float32))
    cfg = Config(features=FeaturesConfig(extractors=("mel", "f0"), f0_source="corpus"))
    index = prepare_features(corpus, root / "feat", cfg, progress=False)
    assert index.split("train") and index.split("test")
    return root / "feat"


def _cfg(max_steps: int, **vocoder: object) -> Config:
    base = config_to_dict(Config())
    base["vocoder"].update(
        {
            **VOCODER_PRESETS["tiny"],
            "segment_frames": 16,
            "context_frames": 4,
            "adv_weight": 0.0,
            **vocoder,
        }
    )
    base["train"].update(
        {
            "batch_size": 2,
            "max_steps": max_steps,
            "lr": 2e-3,
            "warmup_steps": 0,
            "lr_schedule": "constant",
            "log_every": 1,
            "valid_every": 3,
            "ckpt_every": 2,
            "amp": False,
        }
    )
    return config_from_dict(base)


def _rows(run: Path, split: str) -> list[dict]:
    rows = [json.loads(x) for x in (run / "stats.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == split]


def test_segments_are_aligned_and_reproducible(feats: Path, tmp_path: Path) -> None:
    ds = VocoderSegments(feats, feats.parent / "corpus", "train", 20, Config().audio, seed=3)
    a, b = ds[7], ds[7]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["mel"].shape == (100, 20) and a["f0"].shape == (20,)
    assert a["audio"].shape == (20 * HOP,) and a["offset"].dtype == torch.int64
    assert float(a["audio"].abs().max()) > 0.01
    shutil.copytree(feats.parent / "corpus" / "low", tmp_path / "other" / "low")
    with pytest.raises(FeatureError, match="not in corpus"):  # the other singer is missing
        VocoderSegments(feats, tmp_path / "other", "train", 20, Config().audio)


def test_training_resumes_exactly_and_its_export_and_bench_agree(
    feats: Path, tmp_path: Path
) -> None:
    full = tmp_path / "full"
    train_vocoder(_cfg(6), feats, full, progress=False)
    assert (full / "last.pt").is_file() and (full / "ckpt_00000004.pt").is_file()
    rows = _rows(full, "train")
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert {"stft_sc", "stft_mag", "mel", "loss"} <= set(rows[0])
    assert _rows(full, "valid")  # valid split present
    ck = load_checkpoint(full / "last.pt", kind="vocoder")
    assert ck["meta"]["data"] == str(feats) and ck["step"] == 6

    part = tmp_path / "part"
    train_vocoder(_cfg(4), feats, part, progress=False)
    train_vocoder(_cfg(6), feats, part, resume=part / "last.pt", progress=False)
    a = load_checkpoint(full / "last.pt")["models"]["vocoder"]
    b = load_checkpoint(part / "last.pt")["models"]["vocoder"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # resume is bit-exact on CPU
    init = load_checkpoint(full / "ckpt_00000002.pt")["models"]["vocoder"]
    assert any(not torch.equal(a[k], init[k]) for k in a)  # and training moves the weights

    voc = load_vocoder(full / "last.pt")
    exported = export_vocoder(full / "last.pt", tmp_path / "voc.pt")
    mel = torch.randn(1, 100, 9) - 5
    f0 = torch.full((1, 9), 200.0)
    with torch.no_grad():
        assert torch.equal(load_vocoder(exported)(mel, f0), voc(mel, f0))
    assert exported.stat().st_size < (full / "last.pt").stat().st_size

    result = run_vocoder_bench(full / "last.pt", items=1, baseline=True)
    assert result["utterances"] == 1 and result["split"] == "test"
    assert np.isfinite(result["mcd_db"]) and result["mcd_db"] > 0
    assert result["f0_rmse_cents"] is not None and result["voiced_frames"] > 0
    assert result["compute"]["stream_ms_per_s"] > 0
    assert result["compute"]["stream_max_rel_diff"] < 1e-4
    assert "mcd_db" in result["baseline_untrained"]


def test_adversarial_branch_trains_the_discriminator(feats: Path, tmp_path: Path) -> None:
    run = tmp_path / "gan"
    state = train_vocoder(
        _cfg(
            3,
            adv_weight=1.0,
            adv_start=1,
            disc_periods=[2, 3],
            disc_ffts=[64, 128],
            disc_channels=4,
        ),
        feats,
        run,
        progress=False,
    )
    rows = _rows(run, "train")
    assert "disc" not in rows[0]  # step 1 < adv_start
    assert {"adv_g", "fm", "disc"} <= set(rows[1]) and rows[1]["grad_norm_discriminator"] > 0
    first = load_checkpoint(run / "ckpt_00000002.pt")["models"]["discriminator"]
    final = state.models["discriminator"].state_dict()
    assert any(not torch.equal(first[k], final[k]) for k in first)


def test_wrong_checkpoint_kind_is_a_clear_error(feats: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    train_vocoder(_cfg(1), feats, run, progress=False)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        train_vocoder(_cfg(2), feats, run, resume=bad, progress=False)


def test_train_and_bench_vocoder_commands_run_and_refuse_a_missing_checkpoint(
    feats: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["train", "vocoder", "--help"], ["bench", "vocoder", "--help"]):
        with pytest.raises(SystemExit) as exc:
            comostream.main(argv)
        assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--corpus" in out and "--block" in out and "--max-steps" in out
    toml = tmp_path / "tiny.toml"
    toml.write_text(
        "[vocoder]\nchannels = 16\nlayers = 2\ndilation_cycle = 2\n"
        "n_harmonics = 24\nsegment_frames = 16\nadv_weight = 0.0\n"
        "[train]\nbatch_size = 2\n"
    )
    run = tmp_path / "cli"
    rc = comostream.main(
        [
            "train",
            "vocoder",
            "--config",
            str(toml),
            "--data",
            str(feats),
            "--out",
            str(run),
            "--dry-run",
        ]
    )
    assert rc == 0 and (run / "last.pt").is_file()
    capsys.readouterr()
    rc = comostream.main(
        ["bench", "vocoder", "--checkpoint", str(run / "last.pt"), "--items", "1", "--json"]
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["utterances"] == 1
    assert comostream.main(["bench", "vocoder", "--checkpoint", str(tmp_path / "nope.pt")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
