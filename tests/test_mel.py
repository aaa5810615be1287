"""Log-mel: filterbank, framing, reference agreement, and streaming == offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comostream.models.config import AudioConfig
from comostream.models.frames import Framer, num_frames
from comostream.models.mel import IncrementalMel, MelSpectrogram, mel_filterbank, mel_spectrogram

CFG = AudioConfig()
SIGNAL = (np.random.default_rng(0).standard_normal(6000) * 0.3).astype(np.float32)
OFFLINE = mel_spectrogram(SIGNAL, CFG)


def _stream(inc: IncrementalMel, x: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Push ``x (B, N)`` in chunks of ``sizes`` (cycled), flush, concatenate."""
    outs, i, j = [], 0, 0
    while i < x.shape[-1]:
        n = sizes[j % len(sizes)]
        outs.append(inc.push(torch.from_numpy(x[..., i : i + n])))
        i, j = i + n, j + 1
    outs.append(inc.flush())
    return torch.cat(outs, dim=-1).numpy()


def _reference(x: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """Direct float64 numpy computation of the documented definition."""
    librosa = pytest.importorskip("librosa")
    half = cfg.n_fft // 2
    padded = np.pad(x.astype(np.float64), (half, half))
    t = len(x) // cfg.hop_length + 1
    idx = np.arange(t)[:, None] * cfg.hop_length + np.arange(cfg.n_fft)[None, :]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(cfg.n_fft) / cfg.n_fft)
    spec = np.fft.rfft(padded[idx] * window, axis=-1)
    mag = np.sqrt(np.abs(spec) ** 2 + 1e-9)
    fb = librosa.filters.mel(
        sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax
    )
    return np.log(np.maximum(fb @ mag.T, cfg.log_floor))


def test_filterbank_matches_librosa_slaney() -> None:
    librosa = pytest.importorskip("librosa")
    ref = librosa.filters.mel(sr=24000, n_fft=1024, n_mels=100, fmin=0.0, fmax=12000.0)
    fb = mel_filterbank(CFG).numpy()
    assert fb.shape == (100, 513)
    np.testing.assert_allclose(fb, ref, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("n", [0, 1, 255, 256, 257, 511, 512, 1023, 1024, 1025, 4097])
def test_mel_has_100_bins_and_n_div_256_plus_1_finite_frames(n: int) -> None:
    x = np.zeros(n, dtype=np.float32)
    mel = mel_spectrogram(x, CFG)
    assert mel.shape == (CFG.n_mels, n // CFG.hop_length + 1) == (100, num_frames(n, 256))
    assert mel.dtype == np.float32
    assert np.all(np.isfinite(mel))


def test_batch_module_matches_single() -> None:
    x = torch.from_numpy(np.stack([SIGNAL, 0.5 * SIGNAL[::-1].copy()]))
    out = MelSpectrogram(CFG)(x)
    assert out.shape == (2, 100, len(SIGNAL) // 256 + 1) and out.dtype == torch.float32
    np.testing.assert_allclose(out[0].numpy(), OFFLINE, atol=1e-5)
    np.testing.assert_allclose(out[1].numpy(), mel_spectrogram(x[1].numpy()), atol=1e-5)


def test_matches_numpy_reference() -> None:
    ref = _reference(SIGNAL, CFG)
    assert ref.shape == OFFLINE.shape
    np.testing.assert_allclose(OFFLINE, ref, atol=5e-5)


def test_the_edges_are_zero_padded_not_reflected() -> None:
    # An impulse at the very start is seen by frame 0 only through zero padding on the left:
    # with reflect padding frame 0 would also contain mirrored samples.
    x = np.zeros(2048, dtype=np.float32)
    x[300] = 1.0
    np.testing.assert_allclose(mel_spectrogram(x), _reference(x, CFG), atol=5e-5)


def test_gradients_flow_back_to_the_waveform() -> None:
    x = torch.from_numpy(SIGNAL[:2000].copy()).unsqueeze(0).requires_grad_(True)
    MelSpectrogram(CFG)(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    "sizes", [[7], [300], [10000], [256], [0, 1, 0, 513, 0], [1000, 1, 2, 3, 0, 4096]]
)
def test_incremental_equals_offline(sizes: list[int]) -> None:
    out = _stream(IncrementalMel(CFG), SIGNAL[None], sizes)
    assert out.shape == (1, *OFFLINE.shape)
    assert np.abs(out[0] - OFFLINE).max() <= 1e-5


def test_incremental_fed_one_sample_at_a_time_equals_offline() -> None:
    x = SIGNAL[:1500]
    out = _stream(IncrementalMel(CFG), x[None], [1])
    np.testing.assert_allclose(out[0], mel_spectrogram(x), atol=1e-5, rtol=0)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 5000),
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=12).filter(lambda s: sum(s) >= 64),
    capacity=st.sampled_from([None, 1, 700]),
)
def test_incremental_equals_offline_for_random_chunkings_and_capacities(
    n: int, sizes: list[int], capacity: int | None
) -> None:
    x = SIGNAL[:n]
    out = _stream(IncrementalMel(CFG, capacity=capacity), x[None], sizes)
    ref = mel_spectrogram(x)
    assert out.shape == (1, *ref.shape)
    assert np.abs(out[0] - ref).max() <= 1e-5


def test_functional_step_on_a_batch_equals_offline_without_reallocating() -> None:
    x = np.stack([SIGNAL, -SIGNAL * 0.1])
    inc = IncrementalMel(CFG)
    state = inc.init_state(batch=2)
    buf = state.buf
    outs = []
    for i in range(0, x.shape[1], 256):
        frames, state = inc.step(torch.from_numpy(x[:, i : i + 256]), state)
        outs.append(frames)
    assert state.buf is buf  # preallocated: chunks within capacity never reallocate
    frames, state = inc.finish(state)
    outs.append(frames)
    out = torch.cat(outs, -1).numpy()
    ref = MelSpectrogram(CFG)(torch.from_numpy(x)).numpy()
    assert out.shape == ref.shape == (2, 100, len(SIGNAL) // 256 + 1)
    assert np.abs(out - ref).max() <= 1e-5
    with pytest.raises(RuntimeError):
        inc.step(torch.zeros(2, 10), state)


def test_a_frame_is_emitted_once_512_samples_past_its_centre_arrived() -> None:
    inc = IncrementalMel(CFG)
    assert inc.lookahead_samples == 512
    assert inc.push(np.zeros(511, np.float32)).shape == (1, 100, 0)
    assert inc.push(np.zeros(1, np.float32)).shape == (1, 100, 1)  # frame 0 needs samples <= 511
    assert inc.push(np.zeros(255, np.float32)).shape == (1, 100, 0)
    assert inc.push(np.zeros(1, np.float32)).shape == (1, 100, 1)  # frame 1 at sample 767
    assert inc.push(np.zeros((1, 0), np.float32)).shape == (1, 100, 0)
    # 768 samples -> T = 4 frames in all: two already out, two released by flush
    assert inc.flush().shape == (1, 100, 2)


def test_flush_and_reset_start_a_fresh_stream() -> None:
    inc = IncrementalMel(CFG)
    empty = inc.flush()  # nothing pushed: one all-padding frame, like the offline result
    np.testing.assert_allclose(empty[0].numpy(), mel_spectrogram(np.zeros(0, np.float32)))
    inc.push(np.ones(3000, np.float32))
    inc.reset()
    out = _stream(inc, SIGNAL[None], [999])
    assert np.abs(out[0] - OFFLINE).max() <= 1e-5


def test_framer_rejects_bad_chunk() -> None:
    framer = Framer(1024, 256)
    state = framer.init_state(batch=2)
    with pytest.raises(ValueError):
        framer.step(torch.zeros(3, 10), state)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_incremental_on_cuda_equals_offline() -> None:
    x = torch.from_numpy(SIGNAL).unsqueeze(0).cuda()
    inc = IncrementalMel(CFG, device="cuda")
    state = inc.init_state(batch=1)
    outs = []
    for i in range(0, x.shape[1], 300):
        frames, state = inc.step(x[:, i : i + 300], state)
        outs.append(frames)
    outs.append(inc.finish(state)[0])
    out = torch.cat(outs, -1)
    assert out.device.type == "cuda" and out.shape == (1, *OFFLINE.shape)
    ref = MelSpectrogram(CFG).cuda()(x)
    assert (out - ref).abs().max().item() <= 1e-4  # cuFFT plans may differ by batch size
    np.testing.assert_allclose(out[0].cpu().numpy(), OFFLINE, atol=1e-3)
