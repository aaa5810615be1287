"""Window mode (left context + SOLA) for models that are not streaming-native."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from comostream.models.config import RealtimeConfig
from comostream.realtime.window import WindowedContent, WindowedVocoder, sola_offset

pytestmark = pytest.mark.usefixtures("one_thread")


class ToyVocoder(nn.Module):
    """Non-causal, time-invariant mel -> waveform: a +-3-frame conv, then a transposed conv."""

    sample_rate, hop_length, n_mels = 24000, 256, 100

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(100, 8, 7, padding=3)
        self.up = nn.ConvTranspose1d(8, 1, 512, stride=256, padding=128)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.up(torch.tanh(self.conv(mel + 5.0)))[:, 0]


class ToyContent(nn.Module):
    """Non-causal audio -> frames: RMS of a centred 1024 window, in 4 channels."""

    dim, sample_rate = 4, 24000

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.pad(audio, (512, 512))
        frames = x.unfold(-1, 1024, 256)  # (S, N // 256 + 1, 1024)
        rms = frames.pow(2).mean(-1).sqrt()
        return torch.stack([rms, 2 * rms, rms**2, -rms], dim=1)


def test_sola_finds_a_known_shift() -> None:
    g = torch.Generator().manual_seed(0)
    sig = torch.randn(400, generator=g)
    ref = sig[13 : 13 + 64]
    assert sola_offset(ref, sig[3:], 10) == 10
    assert sola_offset(torch.zeros(64), sig, 10) == 10  # silence: no shift


@pytest.mark.parametrize("block", [1, 2, 4])
def test_windowed_vocoder_tracks_the_one_shot_output(block: int) -> None:
    model = ToyVocoder().eval()
    # the window lookahead must cover the model's right reach (+-4 frames here)
    rt = RealtimeConfig(window_context_ms=200.0, window_lookahead_frames=4)
    win = WindowedVocoder(model, rt)
    t_frames = 120
    mel = torch.randn(1, 100, t_frames) * 0.5 - 5.0
    with torch.no_grad():
        ref = model(mel)[0]
        state = win.init_state(1)
        outs = [
            win.step(mel[..., a : a + block], None, state)[0] for a in range(0, t_frames, block)
        ]
    y = torch.cat(outs, dim=-1)[0]
    assert y.shape[0] == t_frames * 256
    late = win.lookahead_frames * 256
    aligned = y[late:]
    interior = slice(40 * 256, (t_frames - win.lookahead_frames - 4) * 256)
    err = (aligned[interior] - ref[: aligned.shape[0]][interior]).abs().max()
    assert err <= 1e-5 * ref.abs().max()  # time-invariant model, enough context: exact


def test_windowed_content_matches_one_shot_frames_inside_the_context() -> None:
    model = ToyContent()
    win = WindowedContent(model, RealtimeConfig(window_context_ms=100.0, window_lookahead_frames=3))
    audio = torch.randn(1, 256 * 60) * 0.1
    ref = model(audio)  # frame t centred at 256 t
    state = win.init_state(1)
    outs = [win.step(audio[:, a : a + 512], state)[0] for a in range(0, audio.shape[1], 512)]
    y = torch.cat(outs, dim=-1)
    late = win.lookahead_frames
    torch.testing.assert_close(y[..., late + 10 : 60], ref[..., 10 : 60 - late])
