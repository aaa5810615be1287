"""The cheaper per-block paths change nothing but float rounding: the front end's one-FFT numba
kernel (realtime/spectral.py) gives the offline mel and loudness, the vocoder's harmonics by angle
addition and its ONNX noise filter by a two-stage DFT (models/vocoder_synth.py) give the direct
sums, and the engine's short paths (a one-block push, a finished ramp, the state flattened once)
change no sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comostream.models.config import AudioConfig, RealtimeConfig
from comostream.models.frames import frame_signal, periodic_hann
from comostream.models.loudness import Loudness
from comostream.models.mel import MelSpectrogram
from comostream.models.vocoder_synth import (
    filter_by_matmul,
    filter_matrices,
    harmonic_block,
    harmonic_split,
    noise_block,
)
from comostream.realtime.engine import StreamingConverter, convert_array
from comostream.realtime.frontend import FrontEnd
from comostream.realtime.spectral import FrameSpectra

from helpers import sung

pytestmark = pytest.mark.usefixtures("one_thread")


def test_frame_spectra_equal_the_offline_mel_and_loudness() -> None:
    audio = AudioConfig()
    x = torch.from_numpy(sung(24000, 0.6)).unsqueeze(0)
    x[:, 2000:4000] = 0.0  # silence: the floors
    frames = frame_signal(x, audio.n_fft, audio.hop_length)
    mel, loud = FrameSpectra(audio)(frames)
    with torch.no_grad():
        mel_ref = MelSpectrogram(audio).from_frames(frames)[0].numpy()
        loud_ref = Loudness(audio).from_frames(frames)[0].numpy()
    assert mel.shape == mel_ref.shape and loud.shape == loud_ref.shape
    assert np.abs(mel - mel_ref).max() <= 1e-5  # natural log: relative 1e-5
    assert np.abs(loud - loud_ref).max() <= 1e-4  # dB
    assert mel.min() == pytest.approx(np.log(audio.log_floor)) and loud.min() == -100.0


def test_front_end_features_do_not_depend_on_the_chunking() -> None:
    x = sung(24000, 0.5)

    def run(sizes: list[int]) -> np.ndarray:
        fe, parts, pos, i = FrontEnd(), [], 0, 0
        while pos < len(x):
            f = fe.push(x[pos : pos + sizes[i % len(sizes)]])
            pos, i = pos + sizes[i % len(sizes)], i + 1
            if f is not None:
                parts.append(np.concatenate([f.mel, f.loudness[None], f.f0[None]]))
        return np.concatenate(parts, axis=1)

    a, b = run([512]), run([1, 700, 33, 2048])
    k = min(a.shape[1], b.shape[1])
    assert k > 40
    np.testing.assert_array_equal(a[:, :k], b[:, :k])


def test_harmonic_split_factors_the_count_and_the_sum_is_the_direct_one() -> None:
    assert harmonic_split(150) == (10, 15) and harmonic_split(24) == (4, 6)
    assert harmonic_split(7) == (1, 7)  # prime: computed directly
    g = torch.Generator().manual_seed(0)
    for count in (150, 24, 7):
        phase = torch.rand(2, 3, 256, generator=g, dtype=torch.float64) * 2 * np.pi
        prev, cur = (torch.rand(2, count, 3, generator=g) * 0.01 for _ in range(2))
        h = torch.arange(1, count + 1, dtype=torch.float32)
        ramp = torch.arange(256, dtype=torch.float32) / 256
        got = harmonic_block(phase, prev, cur, h, ramp).double()
        sines = torch.sin(phase.reshape(6, 256, 1) * h.double())
        amps = torch.stack([prev, cur], -1).permute(0, 2, 1, 3).double().reshape(6, count, 2)
        ends = torch.bmm(sines, amps)
        want = (ends[..., 0] + ramp.double() * (ends[..., 1] - ends[..., 0])).reshape(2, -1)
        assert (got - want).abs().max() <= 2e-5 * want.abs().max()


@pytest.mark.parametrize("n", [512, 600, 14])
def test_the_onnx_noise_filter_is_the_fft_filter(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    x = torch.randn(3, 2, n, generator=g)
    gain = torch.rand(3, 2, n // 2 + 1, generator=g)
    want = torch.fft.irfft(torch.fft.rfft(x) * gain, n=n)
    assert (filter_by_matmul(x, gain) - want).abs().max() <= 1e-5 * want.abs().max()


def test_the_compiled_noise_filter_has_no_fft() -> None:
    """Compiled (Inductor), the noise filter runs as matrix products: no FFT, which Inductor's
    C++ launcher would call back into Python (and the interpreter lock) for; the same noise."""
    seen: list[str] = []

    def record(gm: torch.fx.GraphModule, example: list[torch.Tensor]):  # a Dynamo backend
        seen.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    g = torch.Generator().manual_seed(3)
    gain, first = torch.rand(2, 3, 257, generator=g), torch.tensor([0, 999])
    window = periodic_hann(512, 512)
    dft = tuple(torch.from_numpy(m) for m in filter_matrices(512))
    got, tail = torch.compile(noise_block, backend=record, fullgraph=True)(
        gain, first, None, window, dft
    )
    assert any("matmul" in t for t in seen) and not any("fft" in t for t in seen)
    want, want_tail = noise_block(gain, first, None, window)  # eager: the FFT
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    assert (tail - want_tail).abs().max() <= 1e-5 * want_tail.abs().max()


def test_block_sized_pushes_and_a_reused_state_give_the_samples_of_any_chunking(models) -> None:
    """Pushes of exactly one block take the engine's short path (no concatenation, the traced
    step's flattened state reused); odd chunkings take the general one: the same samples."""
    model, vocoder = models
    x = sung(24000, 1.0)

    def engine() -> StreamingConverter:
        return StreamingConverter.from_models(model, vocoder, realtime=RealtimeConfig())

    eng = engine()
    assert eng.step_module.__class__.__name__ == "TracedStep"
    whole = convert_array(eng, x, chunk=eng.geometry.block_samples)
    again = convert_array(eng, x, chunk=eng.geometry.block_samples)  # after flush: a new state
    odd = convert_array(engine(), x, chunk=[1, 300, 700, 13])
    np.testing.assert_array_equal(whole, again)
    assert np.abs(whole).max() > 1e-3
    assert np.abs(whole - odd).max() <= 1e-5 * np.abs(whole).max()
