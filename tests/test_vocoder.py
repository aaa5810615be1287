"""The built-in vocoder: streaming equality, shapes, lookahead, determinism, state, synthesis,
files; and the quality metrics of ``bench vocoder`` on known signals."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from comostream.bench.vocoder import f0_rmse_cents, frame_db, mcd_db, pesq_wb
from comostream.models.checkpoint_io import CheckpointError
from comostream.models.config import ConfigError, VocoderConfig, load_config
from comostream.models.f0 import extract_f0
from comostream.models.streaming import state_tensors
from comostream.models.vocoder import (
    EXPORT_KIND,
    VOCODER_PRESETS,
    Vocoder,
    load_vocoder,
    vocoder_config,
)
from comostream.models.vocoder_synth import MelGrid, hash_uniform
from comostream.training.checkpoint import save_checkpoint

from helpers import chunk_bounds, run_stream, state_signature

pytestmark = pytest.mark.usefixtures("one_thread")

HOP, SR = 256, 24000
FRAMES = 40


def _random_vocoder(lookahead: int = 1, seed: int = 0) -> Vocoder:
    """A tiny vocoder with random weights (the control network matters, not only the mel)."""
    torch.manual_seed(seed)
    voc = Vocoder(vocoder_config("tiny", lookahead_frames=lookahead)).eval()
    with torch.no_grad():
        for p in voc.parameters():
            p.normal_(0.0, 0.2 if p.dim() > 1 else 0.05)
    return voc


def _inputs(
    batch: int = 2, frames: int = FRAMES, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel around -5 and a gliding F0 with unvoiced gaps and an octave jump."""
    g = torch.Generator().manual_seed(seed)
    mel = torch.randn(batch, 100, frames, generator=g) - 5.0
    f0 = 180.0 * torch.exp(0.04 * torch.randn(batch, frames, generator=g).cumsum(1))
    f0[:, 8:13] = 0.0  # unvoiced gap
    f0[0, 25:] *= 2.0  # octave jump
    f0[-1, -3:] = 0.0  # ends unvoiced
    return mel, f0


@pytest.mark.parametrize("lookahead", [0, 1, 2])
def test_streaming_equals_one_shot(lookahead: int) -> None:
    voc = _random_vocoder(lookahead)
    mel, f0 = _inputs()
    with torch.no_grad():
        ref = voc(mel, f0)
    peak = float(ref.abs().max())
    assert peak > 1e-3
    for block in (1, 2, 4, 8, [3, 1, 5]):
        state = voc.init_state(2)
        got = run_stream(
            lambda m, f, s=state: voc.step(m, f, s)[0],
            lambda s=state: voc.flush(s, 2),
            [mel, f0],
            chunk_bounds(FRAMES, block),
            lookahead * HOP,
        )
        assert got.shape == ref.shape
        assert float((got - ref).abs().max()) <= 1e-4 * peak, f"block {block}"


def test_output_is_hop_samples_per_frame_and_bad_inputs_are_value_errors() -> None:
    voc = _random_vocoder(2)
    mel, f0 = _inputs(batch=3, frames=7)
    with torch.no_grad():
        assert voc(mel, f0).shape == (3, 7 * HOP)
    state = voc.init_state(3)
    with torch.inference_mode():
        assert voc.step(mel[..., :5], f0[:, :5], state)[0].shape == (3, 5 * HOP)
        assert voc.flush(state, 3).shape == (3, 2 * HOP)
    assert (voc.hop_length, voc.sample_rate, voc.lookahead_frames) == (HOP, SR, 2)
    assert voc.left_frames >= 1
    with pytest.raises(ValueError, match="mel must be"):
        voc(mel[:, :50], f0)
    with pytest.raises(ValueError, match="f0_hz must be"):
        voc(mel, f0[:, :5])


@pytest.mark.parametrize("lookahead", [0, 1, 2])
def test_no_sample_depends_on_frames_beyond_its_lookahead(lookahead: int) -> None:
    """Inputs of frame t + L + 1 never reach samples of frames <= t; frame t + L does."""
    voc = _random_vocoder(lookahead)
    mel, f0 = _inputs(batch=1)
    t = 20
    with torch.no_grad():
        base = voc(mel, f0)
        for name in ("mel", "f0"):
            m2, f2 = mel.clone(), f0.clone()
            (m2 if name == "mel" else f2)[..., t + lookahead + 1] += 1.0 if name == "mel" else 40.0
            out = voc(m2, f2)
            assert torch.equal(out[:, : (t + 1) * HOP], base[:, : (t + 1) * HOP]), name
            assert not torch.equal(out, base)
        m3 = mel.clone()
        m3[..., t + lookahead] += 1.0
        assert not torch.equal(voc(m3, f0)[:, : (t + 1) * HOP], base[:, : (t + 1) * HOP])


def test_noise_is_deterministic_moves_with_its_offset_and_sounds_when_unvoiced() -> None:
    voc = _random_vocoder()
    mel, f0 = _inputs()
    with torch.no_grad():
        a, b = voc(mel, f0), voc(mel, f0)
        c = voc(mel, f0, torch.tensor([12345, 999], dtype=torch.int64))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)  # the noise index offset changes the noise
    silent = torch.zeros_like(f0)
    with torch.no_grad():
        noise_only = voc(mel, silent)
    assert float(noise_only.abs().max()) > 0  # unvoiced frames still carry noise


def test_state_is_preallocated_and_updated_in_place() -> None:
    voc = _random_vocoder(2)
    mel, f0 = _inputs(batch=1)
    state = voc.init_state(1)
    sig = state_signature(list(state_tensors(state)))
    assert state["osc"]["phase"].dtype == torch.float64
    assert state["osc"]["sample"].dtype == torch.int64
    with torch.inference_mode():
        for a, b in chunk_bounds(FRAMES, [4, 1, 3]):
            voc.step(mel[..., a:b], f0[:, a:b], state)
    assert state_signature(list(state_tensors(state))) == sig
    assert int(state["osc"]["sample"]) == FRAMES * HOP
    assert 0.0 <= float(state["osc"]["phase"]) < 2 * math.pi


def test_harmonics_sit_at_multiples_of_f0() -> None:
    """Untrained (mel-driven) synthesis of a flat envelope at 300 Hz: energy at k * 300 Hz
    (between the harmonics: only the noise, initially 12 dB below the envelope)."""
    voc = Vocoder(vocoder_config("tiny")).eval()
    frames = 60
    mel = torch.full((1, 100, frames), -3.0)
    f0 = torch.full((1, frames), 300.0)
    with torch.no_grad():
        y = voc(mel, f0)[0, 20 * HOP : 52 * HOP].numpy()
    spec = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    bin_hz = SR / y.size
    at = [spec[round(k * 300 / bin_hz)] for k in range(1, 6)]
    between = [spec[round((k + 0.5) * 300 / bin_hz)] for k in range(1, 6)]
    assert min(at) > 5 * max(between)


def test_hash_noise_is_uniform_and_uncorrelated_and_the_mel_grid_interpolates() -> None:
    idx = torch.arange(-1000, 200_000, dtype=torch.int64)
    u = hash_uniform(idx)
    assert torch.equal(u, hash_uniform(idx.clone()))
    assert float(u.min()) >= -1.0 and float(u.max()) < 1.0
    assert abs(float(u.mean())) < 0.01 and abs(float(u.var()) - 1 / 3) < 0.01
    assert abs(float(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1])) < 0.01
    grid = MelGrid(load_config().audio)
    env = torch.arange(100, dtype=torch.float32).view(1, 100, 1)
    pos = torch.tensor([[[0.0], [10.25], [99.0]]])
    assert torch.allclose(grid.interp(env, pos).flatten(), torch.tensor([0.0, 10.25, 99.0]))


def test_presets_order_by_size_match_their_config_files_and_bad_ones_are_refused() -> None:
    assert vocoder_config() == VocoderConfig() == load_config().vocoder
    assert (
        vocoder_config("tiny").channels
        < VocoderConfig().channels
        < vocoder_config("large").channels
    )
    large = load_config(Path(__file__).resolve().parent.parent / "configs" / "vocoder-large.toml")
    for key, value in VOCODER_PRESETS["large"].items():
        assert getattr(large.vocoder, key) == value
    with pytest.raises(ConfigError, match="unknown vocoder preset"):
        vocoder_config("huge")
    with pytest.raises(ConfigError):
        VocoderConfig(lookahead_frames=-1)


def test_export_round_trips_and_bad_files_are_checkpoint_errors(tmp_path: Path) -> None:
    voc = _random_vocoder(2)
    path = save_checkpoint(tmp_path / "voc.pt", {"kind": EXPORT_KIND, **voc.export_payload()})
    loaded = load_vocoder(path)
    mel, f0 = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded(mel, f0), voc(mel, f0))
    assert loaded.lookahead_frames == 2 and not loaded.training
    wrong = save_checkpoint(tmp_path / "teacher.pt", {"kind": "teacher", "models": {}})
    with pytest.raises(CheckpointError, match="expected"):
        load_vocoder(wrong)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_vocoder(corrupt)
    with pytest.raises(CheckpointError, match="not found"):
        load_vocoder(tmp_path / "missing.pt")
    payload = voc.export_payload()
    payload["config"]["vocoder"]["channels"] = 8  # weights no longer fit
    misfit = save_checkpoint(tmp_path / "misfit.pt", {"kind": EXPORT_KIND, **payload})
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_vocoder(misfit)
    payload["config"]["vocoder"]["bogus"] = 1
    bad = save_checkpoint(tmp_path / "bad.pt", {"kind": EXPORT_KIND, **payload})
    with pytest.raises(CheckpointError, match="bogus"):
        load_vocoder(bad)


# ---------------------------------------------------------------------------- bench metrics


def _voice(f0_hz: float, seconds: float = 1.0, bright: bool = True) -> np.ndarray:
    """A vowel-like harmonic tone (1/h amplitudes, or steeper when not ``bright``)."""
    t = np.arange(int(SR * seconds)) / SR
    h = np.arange(1, int(11000 // f0_hz) + 1)
    amps = (1.0 / h) if bright else (1.0 / h**2.5)
    return (0.3 * np.sin(2 * np.pi * f0_hz * np.outer(t, h)) @ amps / amps.sum() * 3).astype(
        np.float32
    )


def test_mcd_is_zero_for_identical_and_positive_for_another_envelope() -> None:
    x = _voice(220.0)
    frames = x.size // HOP + 1
    f0 = np.full(frames, 220.0)
    assert mcd_db(x, x, f0) == pytest.approx(0.0, abs=1e-9)
    assert mcd_db(x, _voice(220.0, bright=False), f0) > 3.0
    assert math.isnan(mcd_db(np.zeros_like(x), x, f0))  # nothing active
    assert frame_db(x, frames, HOP)[frames // 2] == pytest.approx(
        10 * np.log10(np.mean(x.astype(np.float64) ** 2)), abs=1.0
    )


def test_f0_rmse_of_a_semitone_is_100_cents() -> None:
    ref = np.array([0.0, 100.0, 220.0, 440.0, 0.0, 300.0])
    est = ref * 2 ** (1 / 12)
    est[5] = 0.0
    rmse, n = f0_rmse_cents(ref, est)
    assert rmse == pytest.approx(100.0) and n == 3
    assert math.isnan(f0_rmse_cents(ref, np.zeros_like(ref))[0])
    # end to end, as the bench measures it: harvest re-estimates a tone one semitone up
    x = _voice(220.0 * 2 ** (1 / 12))
    frames = x.size // HOP + 1
    est_f0 = extract_f0(x, SR, backend="harvest").f0_hz.astype(np.float64)
    rmse, n = f0_rmse_cents(np.full(frames, 220.0), est_f0)
    assert n > frames // 2 and rmse == pytest.approx(100.0, abs=5.0)


def test_pesq_wb_is_none_without_pesq_and_lower_for_a_noisy_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x = _voice(200.0, seconds=2.0)
    noisy = x + 0.05 * np.random.default_rng(0).standard_normal(x.size).astype(np.float32)
    monkeypatch.setitem(sys.modules, "pesq", None)  # not installed -> None (reported as null)
    assert pesq_wb(x, x, SR) is None
    monkeypatch.undo()
    pytest.importorskip("pesq")
    clean, degraded = pesq_wb(x, x, SR), pesq_wb(x, noisy, SR)
    assert clean is not None and degraded is not None
    assert clean > 4.0 and degraded < clean - 0.5
