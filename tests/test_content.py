"""The built-in content encoder: streaming equality, reach, checkpoints, training, extractor,
WORLD perturbation."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from comostream.models.checkpoint_io import CheckpointError
from comostream.models.config import (
    Config,
    ContentConfig,
    CorpusConfig,
    TrainConfig,
    config_to_dict,
)
from comostream.models.content import ContentEncoder, centre_level, load_content_encoder
from comostream.models.f0 import extract_f0
from comostream.models.mel import mel_spectrogram
from comostream.models.streaming import RunningCentre, centre_prefix_stats
from comostream.training.checkpoint import save_checkpoint
from comostream.training.content import (
    ContentDecoder,
    SingerAdversary,
    content_losses,
    train_content,
)
from comostream.training.features import prepare_features
from comostream.training.perturb import Perturbation, analyze_utterance, draw_perturbation, perturb

from helpers import chunk_bounds, measured_reach, random_chunkings, run_stream

SR, HOP = 24000, 256
TINY = ContentConfig(
    channels=16,
    layers=3,
    content_dim=8,
    perturbations=1,
    decoder_channels=16,
    decoder_layers=2,
    speaker_dim=4,
    adversary_hidden=16,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _mel(frames: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 100, frames, generator=g) * 2.5 - 5.0


CENTRED = dataclasses.replace(TINY, lookahead_frames=2, centre_tau_frames=20.0)


@pytest.mark.parametrize(
    ("cfg", "frames"),
    [
        (ContentConfig(), 45),
        (dataclasses.replace(TINY, lookahead_frames=3), 45),
        (CENTRED, 150),  # longer than a closed-form piece of the centring (64 frames)
        (dataclasses.replace(CENTRED, centre_output=True), 150),
    ],
)
def test_chunked_equals_one_shot(cfg: ContentConfig, frames: int) -> None:
    torch.manual_seed(0)
    enc = ContentEncoder(cfg).eval()
    if enc.centre is not None:
        enc.centre.prior.normal_()
    x = _mel(frames)
    with torch.no_grad():
        ref = enc(x)
    assert ref.shape == (2, cfg.content_dim, frames)
    chunkings: list = [1, 2, 4, 8, *random_chunkings(frames, 2)]
    for sizes in chunkings:
        state = enc.init_state(2)
        out = run_stream(
            lambda c, s=state: enc.step(c, s)[0],
            lambda s=state: enc.flush(s, 2),
            [x],
            chunk_bounds(frames, sizes),
            enc.lookahead_frames,
        )
        assert out.shape == ref.shape
        assert (out - ref).abs().max() <= 1e-5


def test_declared_reach_is_measured() -> None:
    torch.manual_seed(0)
    for cfg in (ContentConfig(), dataclasses.replace(TINY, lookahead_frames=1, kernel_size=5)):
        enc = ContentEncoder(cfg).eval()
        assert enc.lookahead_frames == cfg.lookahead_frames
        x = _mel(90, batch=1)
        assert measured_reach(enc, x, 50) == (enc.lookahead_frames, enc.left_frames)
    assert ContentEncoder().left_frames == 28  # 2 * (1 + 2 + 4) * 2 frames


def test_running_centre_removes_a_constant_offset_and_ignores_silence() -> None:
    """Two singers whose log-mel differs by a fixed envelope (a constant per bin) give the same
    centred frames once the running mean has converged; silence does not move the mean."""
    centre = RunningCentre(4, tau_frames=10.0, prior_frames=5.0, active_level=-3.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 300, generator=g)
    offset = torch.tensor([0.5, -0.3, 0.2, 0.1])[None, :, None]
    a, b = centre(x), centre(x + offset)
    assert (a[..., :5] - b[..., :5]).abs().max() > 0.05  # at the start: the prior
    assert (a[..., 200:] - b[..., 200:]).abs().max() < 1e-4  # converged: offset gone
    state = centre.init_state(1)
    centre.run(x[..., :50], state)
    before = {k: v.clone() for k, v in state.items()}
    centre.run(torch.full((1, 4, 30), -5.0), state)  # silence: below active_level
    assert torch.allclose(state["den"], before["den"] * centre.decay**30)
    # the training data's warm start equals the module's state after the same frames
    warm = centre_prefix_stats(x[0, :, :50], 10.0, -3.0)
    for key in ("num", "den", "age"):
        assert torch.allclose(warm[key], before[key][0], atol=1e-5)
    enc = ContentEncoder(CENTRED).eval()  # a one-shot run from a warm start = the stream's tail
    mel = _mel(80, batch=1)
    with torch.no_grad():
        whole = enc(mel)
        xn = enc.normalize_input(mel)[0, :, :30]
        warm = centre_prefix_stats(xn, 20.0, centre_level(CENTRED))
        tail = enc(mel[..., 30:], {k: v[None] for k, v in warm.items()})
    assert (tail[..., 12:] - whole[..., 42:]).abs().max() < 1e-4  # past the convs' reach


def test_content_frames_are_unit_rms() -> None:
    enc = ContentEncoder(TINY).eval()
    with torch.no_grad():
        z = enc(_mel(20))
    assert torch.allclose(z.square().mean(1), torch.ones(2, 20), atol=1e-5)


def _save_encoder(path: Path, cfg: Config, seed: int = 0) -> ContentEncoder:
    torch.manual_seed(seed)
    enc = ContentEncoder(cfg.content, cfg.audio)
    save_checkpoint(
        path,
        {"kind": "content", "config": config_to_dict(cfg), "models": {"encoder": enc.state_dict()}},
    )
    return enc.eval()


def test_encoder_checkpoint_round_trips_and_bad_files_are_checkpoint_errors(tmp_path: Path) -> None:
    cfg = Config(content=TINY)
    enc = _save_encoder(tmp_path / "c.pt", cfg)
    loaded = load_content_encoder(tmp_path / "c.pt")
    assert not loaded.training and loaded.cfg == TINY
    x = _mel(30)
    with torch.no_grad():
        assert torch.equal(loaded(x), enc(x))
    (tmp_path / "bad.pt").write_bytes((tmp_path / "c.pt").read_bytes()[:200])
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_content_encoder(tmp_path / "bad.pt")
    save_checkpoint(tmp_path / "t.pt", {"kind": "teacher", "models": {}})
    with pytest.raises(CheckpointError, match="expected 'content'"):
        load_content_encoder(tmp_path / "t.pt")
    wrong = config_to_dict(cfg)
    wrong["content"]["content_dim"] = 9
    save_checkpoint(
        tmp_path / "w.pt",
        {"kind": "content", "config": wrong, "models": {"encoder": enc.state_dict()}},
    )
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_content_encoder(tmp_path / "w.pt")


def _batch(frames: int = 24) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ones = torch.ones(2, frames, dtype=torch.bool)
    return {
        "src": _mel(frames),
        "mel": _mel(frames, seed=2),
        "f0": torch.full((2, frames), 220.0),
        "voiced": ones,
        "loudness": torch.rand(2, frames, generator=g) * 40 - 60,
        "mask": ones,
        "speaker": torch.tensor([0, 2]),
    }


@pytest.mark.parametrize("mode", ["confusion", "reverse"])
def test_adversarial_terms_route_gradients(mode: str) -> None:
    """The classifier learns only from its own cross-entropy; the encoder's term reaches only
    the encoder (and vanishes with weight 0)."""
    grads = {}
    for weight in (0.0, 1.0):
        cfg = dataclasses.replace(TINY, adversary_mode=mode, adversary_weight=weight)
        torch.manual_seed(0)
        enc, dec, adv = ContentEncoder(cfg), ContentDecoder(cfg, 3, 100), SingerAdversary(cfg, 3)
        out = content_losses(enc, dec, adv, _batch(), cfg)
        assert set(out) == {"loss", "recon", "adv_ce", "adv_acc", "adv_enc"}
        assert 0.0 <= float(out["adv_acc"]) <= 1.0
        if mode == "confusion":
            assert float(out["adv_enc"]) >= -1e-6  # CE to uniform minus log(n)
        out["loss"].backward()
        grads[weight] = (
            [p.grad.clone() for p in adv.parameters()],
            [p.grad.clone() for p in enc.parameters()],
        )
    for a, b in zip(grads[0.0][0], grads[1.0][0], strict=True):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(grads[0.0][1], grads[1.0][1], strict=True))


def _harmonic(seconds: float, hz: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return 0.1 * sum(np.sin(2 * np.pi * k * hz * t) / k for k in range(1, 12))


def test_perturbation_shifts_pitch_and_keeps_frames() -> None:
    x = _harmonic(0.6, 200.0)
    frames = x.shape[0] // HOP + 1
    world = analyze_utterance(x, SR, HOP)
    assert world.f0.shape == (frames,)
    p = Perturbation(semitones=5.0, formant_alpha=0.08, eq=((1000.0, 4.0),), breathiness=0.2)
    y = perturb(world, p)
    assert y.shape[0] == (frames - 1) * HOP
    assert mel_spectrogram(y.astype(np.float32)).shape[-1] == frames
    f0_in, f0_out = (extract_f0(s.astype(np.float32), SR, backend="dio") for s in (x, y))
    both = f0_in.voiced & f0_out.voiced
    assert both.mean() > 0.6
    shift = 12 * np.log2(np.median(f0_out.f0_hz[both]) / np.median(f0_in.f0_hz[both]))
    assert shift == pytest.approx(5.0, abs=0.3)
    cfg = ContentConfig()
    draws = [draw_perturbation(np.random.default_rng(i), cfg) for i in range(20)]
    assert all(3.0 <= abs(d.semitones) <= 7.0 for d in draws)
    assert {d.semitones > 0 for d in draws} == {True, False}
    assert all(0.02 <= abs(d.formant_alpha) <= 0.12 and len(d.eq) == 3 for d in draws)


def test_formant_jitter_moves_one_region_and_is_off_by_default() -> None:
    from comostream.models.config import ConfigError
    from comostream.training.world_ops import jitter_envelope

    hz = np.linspace(0.0, SR / 2.0, 513)
    peaks = (800.0, 3000.0)  # two "formants"; the jitter band sits on the first
    sp = sum(np.exp(-0.5 * ((hz - f) / 60.0) ** 2) for f in peaks)[None] + 1e-6
    out = jitter_envelope(sp, ((800.0, 0.1),), SR)
    lo, hi = hz < 2000.0, hz >= 2000.0
    assert hz[lo][out[0, lo].argmax()] == pytest.approx(800.0 / np.exp(0.1), abs=15.0)
    assert hz[hi][out[0, hi].argmax()] == pytest.approx(3000.0, abs=25.0)  # far band: put
    assert jitter_envelope(sp, (), SR) is sp
    # off by default, and then the other draws are those of before (cached perturbations stay)
    plain = draw_perturbation(np.random.default_rng(3), ContentConfig())
    on = draw_perturbation(np.random.default_rng(3), ContentConfig(formant_jitter=0.15))
    assert plain.jitter == () and len(on.jitter) == 3
    assert dataclasses.replace(on, jitter=()) == plain
    assert all(300.0 <= c <= 5000.0 and abs(a) <= 0.15 for c, a in on.jitter)
    with pytest.raises(ConfigError, match="formant_jitter"):
        ContentConfig(formant_jitter=0.5)


def test_content_extractor_aligned_with_mel(tmp_path: Path) -> None:
    cfg = Config(content=TINY)
    _save_encoder(tmp_path / "c.pt", cfg)
    for name, hz, seconds in (("a1", 220.0, 0.5), ("a2", 330.0, 0.37)):
        (tmp_path / "data" / "alto").mkdir(parents=True, exist_ok=True)
        sf.write(str(tmp_path / "data" / "alto" / f"{name}.wav"), _harmonic(seconds, hz), SR)
    feats = dataclasses.replace(
        cfg.features, extractors=("mel", "content"), content_checkpoint=str(tmp_path / "c.pt")
    )
    index = prepare_features(
        tmp_path / "data",
        tmp_path / "feat",
        dataclasses.replace(cfg, features=feats),
        progress=False,
    )
    assert len(index.entries) == 2
    for e in index.entries:
        with np.load(tmp_path / "feat" / e.path) as d:
            assert d["content"].shape == (8, d["mel"].shape[-1]) == (8, e.frames)
            assert d["content"].dtype == np.float32
    missing = dataclasses.replace(feats, content_checkpoint="")
    with pytest.raises(ValueError, match="content_checkpoint"):
        prepare_features(
            tmp_path / "data",
            tmp_path / "feat2",
            dataclasses.replace(cfg, features=missing),
            progress=False,
        )


def test_consistency_term_compares_two_versions_and_reaches_the_encoder() -> None:
    """With ``consistency_weight`` the loss adds the mean squared difference of the content of
    ``src`` and ``src2`` over active frames: 0 for identical versions, positive otherwise,
    weighted into the loss, and absent without the weight or without ``src2``."""
    cfg = dataclasses.replace(TINY, consistency_weight=2.0)
    torch.manual_seed(0)
    enc, dec, adv = ContentEncoder(cfg), ContentDecoder(cfg, 3, 100), SingerAdversary(cfg, 3)
    same = {**_batch(), "src2": _batch()["src"]}
    assert float(content_losses(enc, dec, adv, same, cfg)["consistency"]) == 0.0
    other = {**_batch(), "src2": _mel(24, seed=5)}
    out = content_losses(enc, dec, adv, other, cfg)
    assert float(out["consistency"]) > 0.0
    plain = content_losses(enc, dec, adv, _batch(), cfg)
    assert "consistency" not in plain
    torch.testing.assert_close(out["loss"], plain["loss"] + 2.0 * out["consistency"])
    off = dataclasses.replace(cfg, consistency_weight=0.0)
    assert "consistency" not in content_losses(enc, dec, adv, other, off)
    grads = []
    for c in (off, cfg):  # the term's gradient reaches the encoder
        enc.zero_grad()
        content_losses(enc, dec, adv, other, c)["loss"].backward()
        grads.append([p.grad.clone() for p in enc.parameters()])
    assert any(not torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_bottleneck_noise_reaches_the_decoder_in_training_only() -> None:
    """The decoder reads noisy content while training (a different reconstruction from the
    same batch), the clean content in evaluation, and the noise scale is checked."""
    from comostream.models.config import ConfigError

    cfg = dataclasses.replace(TINY, bottleneck_noise=1.0)
    torch.manual_seed(0)
    enc, dec, adv = ContentEncoder(cfg), ContentDecoder(cfg, 3, 100), SingerAdversary(cfg, 3)
    dec.eval()
    clean = content_losses(enc, dec, adv, _batch(), cfg)["recon"]
    off = content_losses(enc, dec, adv, _batch(), dataclasses.replace(cfg, bottleneck_noise=0.0))
    assert float(clean) == float(off["recon"])
    dec.train()
    noisy = [float(content_losses(enc, dec, adv, _batch(), cfg)["recon"]) for _ in range(2)]
    assert noisy[0] != noisy[1] and float(clean) not in noisy
    with pytest.raises(ConfigError, match="bottleneck_noise"):
        ContentConfig(bottleneck_noise=-0.5)


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed")
def test_tiny_training_run_gives_loadable_checkpoint(tmp_path: Path) -> None:
    from comostream.training.synth import synthesize_corpus

    synthesize_corpus(
        tmp_path / "corpus",
        CorpusConfig(singers=2, minutes=0.2, seed=3),
        progress=False,
        max_lines=3,
    )
    train = TrainConfig(
        batch_size=2,
        segment_frames=32,
        max_steps=2,
        warmup_steps=1,
        log_every=1,
        valid_every=1,
        ckpt_every=1,
        amp=False,
    )
    cfg = Config(content=dataclasses.replace(CENTRED, consistency_weight=0.5), train=train)
    run = tmp_path / "run"
    last = train_content(cfg, tmp_path / "corpus", run, dry_run=True, progress=False)
    assert last == run / "last.pt" and (run / "ckpt_00000001.pt").is_file()
    enc = load_content_encoder(last)
    assert enc.content_dim == 8
    assert enc.centre is not None and enc.centre.prior.abs().sum() > 0  # set from the corpus
    payload = torch.load(last, weights_only=True)
    assert set(payload["models"]) == {"encoder", "decoder", "adversary"}
    assert payload["meta"]["singers"] == ["flite_slt_alto", "flite_rms_baritone"]
    train_content(cfg, tmp_path / "corpus", run, resume=last, progress=False)  # cache reused
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 2
    rows = (run / "stats.jsonl").read_text()
    assert '"recon"' in rows and '"adv_enc"' in rows and '"split": "valid"' in rows
    assert '"consistency"' in rows  # two perturbed versions per segment


def test_bench_probes_separate_known_classes_and_fit_known_maps() -> None:
    from comostream.bench.content import stream_rtf
    from comostream.bench.probes import (
        confusion,
        logreg_accuracy,
        mlp_accuracy,
        retrieval_hits,
        ridge_fit,
        ridge_predict,
    )

    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    x = torch.randn(300, 4, generator=g) + 4.0 * torch.nn.functional.one_hot(y, 4)
    assert logreg_accuracy(x[:200], y[:200], x[200:], y[200:], 3) > 0.95
    truth, pred = torch.tensor([0, 0, 0, 1, 2, 2]), torch.tensor([0, 1, 0, 1, 2, 0])
    assert confusion(truth, pred, 4) == [
        [2 / 3, 1 / 3, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.5, 0.0, 0.5, 0.0],
        [0.0, 0.0, 0.0, 0.0],  # a class without frames
    ]
    noise = torch.randn(300, 4, generator=g)
    assert logreg_accuracy(noise[:200], y[:200], noise[200:], y[200:], 3) < 0.6
    # classes on a ring (|x| tells them apart): linear probe at chance, MLP probe not
    radius = 1.0 + 2.0 * y.float()
    angle = torch.rand(300, generator=g) * 2 * torch.pi
    ring = torch.stack([radius * angle.cos(), radius * angle.sin()], 1)
    assert logreg_accuracy(ring[:200], y[:200], ring[200:], y[200:], 3) < 0.6
    assert mlp_accuracy(ring[:200], y[:200], ring[200:], y[200:], 3) > 0.9
    w = torch.randn(4, 2, generator=g)
    norm, fit = ridge_fit(x, x @ w + 1.0, l2=1e-6)
    assert torch.allclose(ridge_predict(norm, fit, x), x @ w + 1.0, atol=1e-3)
    assert retrieval_hits(x[:50], x[:50] + 0.01, tolerance=0) == (50, 50)
    assert 0.0 < stream_rtf(ContentEncoder(TINY).eval(), 4, seconds=0.3)


def test_held_note_measure_sees_the_centring_forget_a_held_note() -> None:
    from comostream.bench.content import _Utt, held_note

    g = np.random.default_rng(0)
    frames = 200
    mel = (g.normal(-5.0, 2.0, (100, frames))).astype(np.float32)
    ones = np.ones(frames, bool)
    utt = _Utt("s", 0, "test", mel, mel, np.full(frames, 200.0), ones, np.zeros(frames), ones)
    torch.manual_seed(0)
    plain = held_note(ContentEncoder(TINY).eval(), [utt])
    fast = dataclasses.replace(CENTRED, centre_output=True, centre_prior_frames=1.0)
    centred = held_note(ContentEncoder(fast).eval(), [utt])
    assert min(plain.values()) > 0.95  # no centring: a held note keeps its content
    assert centred["4s"] < plain["4s"] - 0.2  # tau 20 frames: the hold becomes the mean
