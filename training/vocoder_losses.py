"""Vocoder losses: multi-resolution STFT, mel L1, and a light GAN (LS-GAN + feature matching).

* STFT (Yamamoto et al. 2020, Parallel WaveGAN): per resolution ``n_fft`` (hop ``n_fft / 4``,
  Hann window ``n_fft``), spectral convergence ``||S - S^||_F / ||S||_F`` and log-magnitude L1,
  each averaged over the resolutions.
* mel: L1 between natural-log mels (:class:`comostream.models.mel.MelSpectrogram`).
* discriminators: a multi-period one (HiFi-GAN: the waveform folded into ``(T / p, p)``,
  2-D convs along time) and a multi-resolution spectrogram one (UnivNet: 2-D convs on linear
  magnitude spectrograms), both narrow. Least-squares objectives (Mao et al. 2017) and L1
  feature matching.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from comostream.models.config import VocoderConfig
from comostream.models.mel import MelSpectrogram

__all__ = [
    "MultiPeriodDiscriminator",
    "MultiResolutionDiscriminator",
    "Discriminators",
    "StftLoss",
    "discriminator_loss",
    "feature_matching",
    "generator_adv_loss",
    "mel_l1",
]

MAG_FLOOR = 1e-7  # magnitude floor before the log
LRELU = 0.1


def _magnitude(x: Tensor, n_fft: int, window: Tensor) -> Tensor:
    """``|STFT|`` of ``x (B, N)``: ``(B, n_fft / 2 + 1, frames)``, hop ``n_fft / 4``."""
    spec = torch.stft(x, n_fft, n_fft // 4, window=window, center=True, return_complex=True)
    return spec.abs().clamp(min=MAG_FLOOR)


class StftLoss(nn.Module):
    """``(pred, target (B, N)) -> (spectral convergence, log-magnitude L1)``, resolution means."""

    def __init__(self, ffts: tuple[int, ...]) -> None:
        super().__init__()
        self.ffts = tuple(ffts)
        for n in self.ffts:
            self.register_buffer(f"window_{n}", torch.hann_window(n), persistent=False)

    def forward(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        sc, mag = pred.new_zeros(()), pred.new_zeros(())
        for n in self.ffts:
            window = getattr(self, f"window_{n}")
            p, t = _magnitude(pred, n, window), _magnitude(target, n, window)
            sc = sc + torch.linalg.vector_norm(t - p) / torch.linalg.vector_norm(t).clamp(min=1e-6)
            mag = mag + (t.log() - p.log()).abs().mean()
        return sc / len(self.ffts), mag / len(self.ffts)


def mel_l1(mel: MelSpectrogram, pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute difference of the natural-log mels of two waveforms ``(B, N)``."""
    return (mel(pred) - mel(target)).abs().mean()


class _PeriodDisc(nn.Module):
    """One period ``p``: ``(B, N) -> (logits, feature maps)``."""

    def __init__(self, period: int, channels: int) -> None:
        super().__init__()
        self.period = period
        widths = [1, channels, 2 * channels, 4 * channels, 4 * channels]
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, (5, 1), (3, 1) if i < 3 else (1, 1), padding=(2, 0))
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True))
        )
        self.out = nn.Conv2d(widths[-1], 1, (3, 1), padding=(1, 0))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        b, n = x.shape
        pad = (-n) % self.period
        x = F.pad(x, (0, pad), mode="reflect" if pad < n else "constant")
        h = x.view(b, 1, -1, self.period)
        feats = []
        for conv in self.convs:
            h = F.leaky_relu(conv(h), LRELU)
            feats.append(h)
        return self.out(h).flatten(1), feats


class MultiPeriodDiscriminator(nn.Module):
    """HiFi-GAN-style discriminators on the waveform folded by each period."""

    def __init__(self, periods: tuple[int, ...], channels: int) -> None:
        super().__init__()
        self.discs = nn.ModuleList(_PeriodDisc(p, channels) for p in periods)

    def forward(self, x: Tensor) -> list[tuple[Tensor, list[Tensor]]]:
        return [d(x) for d in self.discs]


class _SpecDisc(nn.Module):
    """One resolution: 2-D convs on the log-compressed magnitude ``(B, 1, F, frames)``."""

    def __init__(self, n_fft: int, channels: int) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(1, channels, (7, 5), (2, 1), padding=(3, 2)),
                nn.Conv2d(channels, channels, (5, 3), (2, 1), padding=(2, 1)),
                nn.Conv2d(channels, channels, (5, 3), (2, 1), padding=(2, 1)),
                nn.Conv2d(channels, channels, (3, 3), padding=(1, 1)),
            ]
        )
        self.out = nn.Conv2d(channels, 1, (3, 3), padding=(1, 1))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        h = torch.log1p(_magnitude(x, self.n_fft, self.window)).unsqueeze(1)
        feats = []
        for conv in self.convs:
            h = F.leaky_relu(conv(h), LRELU)
            feats.append(h)
        return self.out(h).flatten(1), feats


class MultiResolutionDiscriminator(nn.Module):
    """UnivNet-style discriminators on magnitude spectrograms of several resolutions."""

    def __init__(self, ffts: tuple[int, ...], channels: int) -> None:
        super().__init__()
        self.discs = nn.ModuleList(_SpecDisc(n, channels) for n in ffts)

    def forward(self, x: Tensor) -> list[tuple[Tensor, list[Tensor]]]:
        return [d(x) for d in self.discs]


class Discriminators(nn.Module):
    """Both discriminators: ``(B, N) -> [(logits, feature maps), ...]``."""

    def __init__(self, cfg: VocoderConfig) -> None:
        super().__init__()
        self.mpd = MultiPeriodDiscriminator(cfg.disc_periods, cfg.disc_channels)
        self.mrd = MultiResolutionDiscriminator(cfg.disc_ffts, cfg.disc_channels)

    def forward(self, x: Tensor) -> list[tuple[Tensor, list[Tensor]]]:
        return self.mpd(x) + self.mrd(x)


def discriminator_loss(
    real: list[tuple[Tensor, list[Tensor]]], fake: list[tuple[Tensor, list[Tensor]]]
) -> Tensor:
    """LS-GAN discriminator loss: ``mean (D(x) - 1)^2 + mean D(G(z))^2``, summed over discs."""
    total = real[0][0].new_zeros(())
    for (r, _), (f, _) in zip(real, fake, strict=True):
        total = total + (r - 1.0).square().mean() + f.square().mean()
    return total


def generator_adv_loss(fake: list[tuple[Tensor, list[Tensor]]]) -> Tensor:
    """LS-GAN generator loss: ``mean (D(G(z)) - 1)^2``, summed over discriminators."""
    total = fake[0][0].new_zeros(())
    for f, _ in fake:
        total = total + (f - 1.0).square().mean()
    return total


def feature_matching(
    real: list[tuple[Tensor, list[Tensor]]], fake: list[tuple[Tensor, list[Tensor]]]
) -> Tensor:
    """Mean L1 between real (detached) and fake feature maps, averaged over all layers."""
    terms = [
        (rf.detach() - ff).abs().mean()
        for (_, rfs), (_, ffs) in zip(real, fake, strict=True)
        for rf, ff in zip(rfs, ffs, strict=True)
    ]
    return torch.stack(terms).mean()
