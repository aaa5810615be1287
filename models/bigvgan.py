"""BigVGAN generator (Lee et al. 2023), laid out like NVIDIA/BigVGAN v1/v2 and Amphion's copy.

HiFi-GAN's layout with anti-aliased multi-periodicity (AMP) blocks: every activation is a
Snake/SnakeBeta (``x + sin^2(alpha x) / beta``, ``alpha``/``beta`` stored as logs when
``snake_logscale``) run at twice the rate between kaiser-windowed sinc filters (ratio 2, 12 taps).
Parameter names follow the original: ``conv_pre``, ``ups.N.0``, ``resblocks.N.convs1.M`` /
``convs2.M`` (AMPBlock1) or ``convs.M`` (AMPBlock2), ``resblocks.N.activations.K.act.alpha``
(``.beta``), ``...activations.K.upsample.filter``, ``...activations.K.downsample.lowpass.filter``,
``activation_post``, ``conv_post``. The filters are persistent buffers, so they are loaded from a
checkpoint like the original does (not regenerated). Convolutions are plain (weight norm folded
at load time, :func:`comostream.models.ext_vocoder.fold_weight_norm`): inference only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from comostream.models.hifigan import (
    HiFiGANConfig,
    conv_reach,
    get_padding,
    mean_of_blocks,
    stage_reach,
    upsampler,
)

__all__ = [
    "BigVGANConfig",
    "BigVGANGenerator",
    "AMPBlock1",
    "AMPBlock2",
    "AntiAliasedActivation",
    "Snake",
    "SnakeBeta",
    "kaiser_sinc_filter",
]

SNAKE_EPS = 1e-9  # added to the Snake divisor, as in the original
AA_RATIO = 2  # anti-aliasing resampling ratio
AA_TAPS = 12  # taps of the anti-aliasing filters


@dataclass(frozen=True)
class BigVGANConfig(HiFiGANConfig):
    """HiFi-GAN's keys plus ``activation`` ("snake"/"snakebeta"), ``snake_logscale`` and the v2
    output options (absent in v1 configs: tanh at the end, bias in ``conv_post``)."""

    activation: str = "snakebeta"
    snake_logscale: bool = True
    use_tanh_at_final: bool = True
    use_bias_at_final: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.activation not in ("snake", "snakebeta"):
            raise ValueError(f"activation must be 'snake' or 'snakebeta', got {self.activation!r}")
        for key in ("snake_logscale", "use_tanh_at_final", "use_bias_at_final"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be true or false, got {getattr(self, key)!r}")


class Snake(nn.Module):
    """``x + sin^2(alpha x) / alpha`` per channel: ``(B, C, T) -> (B, C, T)``.

    With ``logscale`` the stored parameter is ``log(alpha)``.
    """

    def __init__(self, channels: int, logscale: bool) -> None:
        super().__init__()
        self.logscale = logscale
        self.alpha = nn.Parameter(torch.zeros(channels) if logscale else torch.ones(channels))

    def _scale(self, p: Tensor) -> Tensor:
        p = p.view(1, -1, 1)
        return torch.exp(p) if self.logscale else p

    def forward(self, x: Tensor) -> Tensor:
        alpha = self._scale(self.alpha)
        return x + torch.sin(x * alpha).pow(2) / (alpha + SNAKE_EPS)


class SnakeBeta(Snake):
    """``x + sin^2(alpha x) / beta`` per channel (frequency and magnitude apart)."""

    def __init__(self, channels: int, logscale: bool) -> None:
        super().__init__(channels, logscale)
        self.beta = nn.Parameter(torch.zeros(channels) if logscale else torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        alpha, beta = self._scale(self.alpha), self._scale(self.beta)
        return x + torch.sin(x * alpha).pow(2) / (beta + SNAKE_EPS)


def kaiser_sinc_filter(cutoff: float, half_width: float, taps: int) -> Tensor:
    """Kaiser-windowed sinc low-pass ``(1, 1, taps)``, unit DC gain.

    ``cutoff`` and ``half_width`` (transition half-width) are in cycles per sample; the Kaiser
    beta follows Kaiser's empirical formula for the attenuation the width allows.
    """
    half = taps // 2
    attenuation = 2.285 * (half - 1) * math.pi * 4 * half_width + 7.95  # dB
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21.0) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(taps, periodic=False, beta=beta)
    t = torch.arange(-half, half) + 0.5 if taps % 2 == 0 else torch.arange(taps) - half
    h = 2 * cutoff * window * torch.sinc(2 * cutoff * t)
    return (h / h.sum()).view(1, 1, taps)


class UpSample(nn.Module):
    """Zero-stuffing upsampler by ``ratio`` then low-pass: ``(B, C, T) -> (B, C, ratio T)``.

    Edges are replicate-padded by ``taps // ratio - 1`` input samples, then trimmed.
    """

    filter: Tensor

    def __init__(self, ratio: int = AA_RATIO, taps: int = AA_TAPS) -> None:
        super().__init__()
        self.ratio = ratio
        self.pad = taps // ratio - 1
        self.trim_left = self.pad * ratio + (taps - ratio) // 2
        self.trim_right = self.pad * ratio + (taps - ratio + 1) // 2
        self.register_buffer("filter", kaiser_sinc_filter(0.5 / ratio, 0.6 / ratio, taps))

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        kernel = self.filter.expand(channels, -1, -1)
        y = self.ratio * F.conv_transpose1d(x, kernel, stride=self.ratio, groups=channels)
        return y[..., self.trim_left : y.shape[-1] - self.trim_right]

    def reach(self) -> tuple[float, float]:
        """(left, right) context in input samples."""
        taps = self.filter.shape[-1]
        left = self.pad + (taps - 1 - self.trim_left) / self.ratio
        return left, self.trim_left / self.ratio - self.pad


class LowPass(nn.Module):
    """Replicate-padded FIR low-pass with stride: ``(B, C, T) -> (B, C, ceil(T / stride))``."""

    filter: Tensor

    def __init__(self, cutoff: float, half_width: float, stride: int, taps: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_left = taps // 2 - (1 if taps % 2 == 0 else 0)
        self.pad_right = taps // 2
        self.register_buffer("filter", kaiser_sinc_filter(cutoff, half_width, taps))

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        x = F.pad(x, (self.pad_left, self.pad_right), mode="replicate")
        return F.conv1d(
            x, self.filter.expand(channels, -1, -1), stride=self.stride, groups=channels
        )


class DownSample(nn.Module):
    """Low-pass then keep every ``ratio``-th sample: ``(B, C, ratio T) -> (B, C, T)``."""

    def __init__(self, ratio: int = AA_RATIO, taps: int = AA_TAPS) -> None:
        super().__init__()
        self.ratio = ratio
        self.lowpass = LowPass(0.5 / ratio, 0.6 / ratio, ratio, taps)

    def forward(self, x: Tensor) -> Tensor:
        return self.lowpass(x)

    def reach(self) -> tuple[float, float]:
        """(left, right) context in OUTPUT samples."""
        taps = self.lowpass.filter.shape[-1]
        pad = self.lowpass.pad_left
        return pad / self.ratio, (taps - 1 - pad) / self.ratio


class AntiAliasedActivation(nn.Module):
    """Upsample x2, periodic activation, low-pass and downsample x2: ``(B, C, T) -> same``."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.act = act
        self.upsample = UpSample()
        self.downsample = DownSample()

    def forward(self, x: Tensor) -> Tensor:
        return self.downsample(self.act(self.upsample(x)))

    def reach(self) -> float:
        """Context samples on each side (the larger of left and right)."""
        (ul, ur), (dl, dr) = self.upsample.reach(), self.downsample.reach()
        return max(ul + dl, ur + dr)


def _activation(cfg: BigVGANConfig, channels: int) -> AntiAliasedActivation:
    kind = SnakeBeta if cfg.activation == "snakebeta" else Snake
    return AntiAliasedActivation(kind(channels, cfg.snake_logscale))


class AMPBlock1(nn.Module):
    """Per dilation ``d``: ``x += conv2(act(conv1_d(act(x))))``: ``(B, C, T) -> same``.

    ``activations`` interleave: ``2 i`` precedes ``convs1.i``, ``2 i + 1`` precedes ``convs2.i``.
    """

    def __init__(
        self, cfg: BigVGANConfig, channels: int, kernel_size: int, dilations: Sequence[int]
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.dilations = tuple(dilations)
        k = kernel_size
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, k, dilation=d, padding=get_padding(k, d))
            for d in self.dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, k, padding=get_padding(k)) for _ in self.dilations
        )
        self.activations = nn.ModuleList(
            _activation(cfg, channels) for _ in range(2 * len(self.dilations))
        )

    def forward(self, x: Tensor) -> Tensor:
        acts = list(self.activations)
        for c1, c2, a1, a2 in zip(self.convs1, self.convs2, acts[::2], acts[1::2], strict=True):
            x = c2(a2(c1(a1(x)))) + x
        return x

    def reach(self) -> float:
        """Context samples on each side at this block's rate."""
        act = sum(a.reach() for a in self.activations)  # type: ignore[operator]
        k = self.kernel_size
        return act + sum(conv_reach(k, d) + conv_reach(k) for d in self.dilations)


class AMPBlock2(nn.Module):
    """Per dilation ``d``: ``x += conv_d(act(x))``: ``(B, C, T) -> same``."""

    def __init__(
        self, cfg: BigVGANConfig, channels: int, kernel_size: int, dilations: Sequence[int]
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.dilations = tuple(dilations)
        k = kernel_size
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, k, dilation=d, padding=get_padding(k, d))
            for d in self.dilations
        )
        self.activations = nn.ModuleList(_activation(cfg, channels) for _ in self.dilations)

    def forward(self, x: Tensor) -> Tensor:
        for conv, act in zip(self.convs, self.activations, strict=True):
            x = conv(act(x)) + x
        return x

    def reach(self) -> float:
        """Context samples on each side at this block's rate."""
        act = sum(a.reach() for a in self.activations)  # type: ignore[operator]
        return act + sum(conv_reach(self.kernel_size, d) for d in self.dilations)


class BigVGANGenerator(nn.Module):
    """Mel -> waveform: ``(B, num_mels, T)`` log-mel -> ``(B, 1, T * hop_length)`` in [-1, 1]."""

    def __init__(self, cfg: BigVGANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        c0 = cfg.upsample_initial_channel
        self.conv_pre = nn.Conv1d(cfg.num_mels, c0, 7, padding=3)
        rates = zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True)
        self.ups = nn.ModuleList(
            nn.ModuleList([upsampler(c0 >> i, c0 >> (i + 1), u, k)])
            for i, (u, k) in enumerate(rates)
        )
        block = AMPBlock1 if cfg.resblock == "1" else AMPBlock2
        self.resblocks = nn.ModuleList(
            block(cfg, c0 >> (i + 1), k, d)
            for i in range(len(self.ups))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True)
        )
        channels = c0 >> len(self.ups)
        self.activation_post = _activation(cfg, channels)
        self.conv_post = nn.Conv1d(channels, 1, 7, padding=3, bias=cfg.use_bias_at_final)

    def _stage(self, i: int) -> list[nn.Module]:
        return list(self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels])

    def forward(self, mel: Tensor) -> Tensor:
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            for layer in up:
                x = layer(x)
            x = mean_of_blocks(self._stage(i), x)
        x = self.conv_post(self.activation_post(x))
        return torch.tanh(x) if self.cfg.use_tanh_at_final else x.clamp(-1.0, 1.0)

    def context_frames(self) -> tuple[float, float]:
        """(left, right) mel frames of context an output sample depends on."""
        ups = [up[0] for up in self.ups]
        stages = [self._stage(i) for i in range(len(ups))]
        post = self.activation_post.reach() + conv_reach(7)
        return stage_reach(ups, stages, conv_reach(7), post)
