"""Log-mel spectrogram compatible with BigVGAN / Vocos / Amphion 24 kHz 100-band vocoders.

``log(clamp(M @ sqrt(|STFT|^2 + 1e-9), min=log_floor))`` (natural log), where ``M`` is the
librosa-default mel filterbank (slaney mel scale, slaney area norm) and the STFT uses the
project framing of :mod:`comostream.models.frames` (zero padding, ``T = N // hop + 1`` frames,
periodic Hann). Offline (:class:`MelSpectrogram`) and streaming (:class:`IncrementalMel`) outputs
agree.
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio.functional as AF
from torch import Tensor, nn

from comostream.models.config import AudioConfig
from comostream.models.frames import (
    Framer,
    IncrementalFeature,
    as_batch,
    frame_signal,
    periodic_hann,
    stft_power,
)

__all__ = ["MAG_EPS", "mel_filterbank", "MelSpectrogram", "mel_spectrogram", "IncrementalMel"]

MAG_EPS = 1e-9  # added to |X|^2 before the square root (BigVGAN / Vocos convention)


def mel_filterbank(cfg: AudioConfig) -> Tensor:
    """Slaney-scale, slaney-normalised mel filterbank ``(n_mels, n_fft // 2 + 1)`` (= librosa)."""
    fb = AF.melscale_fbanks(
        n_freqs=cfg.n_fft // 2 + 1,
        f_min=cfg.fmin,
        f_max=cfg.fmax,
        n_mels=cfg.n_mels,
        sample_rate=cfg.sample_rate,
        norm="slaney",
        mel_scale="slaney",
    )
    return fb.T.contiguous().to(torch.float32)


class MelSpectrogram(nn.Module):
    """Offline log-mel: ``(B, samples)`` -> ``(B, n_mels, T)`` float32, ``T = N // hop + 1``.

    A 1-D input ``(samples,)`` gives ``(n_mels, T)``. Differentiable (usable as a training loss).
    Window and filterbank are non-persistent buffers (not in ``state_dict``).
    """

    window: Tensor
    mel_basis: Tensor

    def __init__(self, cfg: AudioConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or AudioConfig()
        self.register_buffer(
            "window", periodic_hann(self.cfg.win_length, self.cfg.n_fft), persistent=False
        )
        self.register_buffer("mel_basis", mel_filterbank(self.cfg), persistent=False)

    def forward(self, audio: Tensor) -> Tensor:
        x, squeeze = as_batch(audio)
        frames = frame_signal(x.to(self.window.device), self.cfg.n_fft, self.cfg.hop_length)
        mel = self.from_frames(frames)
        return mel[0] if squeeze else mel

    def from_frames(self, frames: Tensor) -> Tensor:
        """Log-mel of raw (unwindowed) frames ``(B, k, n_fft)`` -> ``(B, n_mels, k)``."""
        return self.from_power(stft_power(frames, self.window))

    def from_power(self, power: Tensor) -> Tensor:
        """Log-mel from a power spectrum ``(B, k, n_fft // 2 + 1)`` -> ``(B, n_mels, k)``."""
        mag = torch.sqrt(power + MAG_EPS)
        mel = torch.matmul(self.mel_basis, mag.transpose(-1, -2))
        return torch.log(torch.clamp(mel, min=self.cfg.log_floor))


def mel_spectrogram(audio: np.ndarray, cfg: AudioConfig | None = None) -> np.ndarray:
    """Numpy convenience: ``audio (samples,)`` -> log-mel ``(n_mels, T)`` float32.

    A 2-D input ``(B, samples)`` gives ``(B, n_mels, T)``.
    """
    with torch.no_grad():
        return MelSpectrogram(cfg)(torch.from_numpy(np.asarray(audio))).numpy()


class IncrementalMel(IncrementalFeature):
    """Streaming log-mel, identical to :class:`MelSpectrogram` once flushed.

    Frame ``t`` is emitted once sample ``t * hop + lookahead_samples - 1`` has arrived
    (``lookahead_samples = n_fft // 2``). Functional core: ``state = init_state(batch)``,
    ``mel, state = step(chunk (B, L), state)`` -> ``(B, n_mels, k)``,
    ``mel, state = finish(state)``; or stateful ``push(chunk)`` / ``flush()`` / ``reset()``.
    ``capacity`` (samples) sizes the preallocated buffer; larger chunks grow it once.
    """

    def __init__(
        self,
        cfg: AudioConfig | None = None,
        device: torch.device | str | None = None,
        capacity: int | None = None,
    ) -> None:
        self.cfg = cfg or AudioConfig()
        self.mel = MelSpectrogram(self.cfg)
        framer = Framer(self.cfg.n_fft, self.cfg.hop_length, capacity)
        super().__init__(framer, self.mel.from_frames, module=self.mel, device=device)
