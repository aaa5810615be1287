"""HiFi-GAN V1/V2/V3 generator (Kong et al. 2020) laid out like jik876/hifi-gan's ``Generator``.

Parameter names and nesting follow the original (``conv_pre``, ``ups.N``, ``resblocks.N.convs1.M``
/ ``convs2.M`` or ``resblocks.N.convs.M``, ``conv_post``), so a state dict saved by the original
training code loads with ``load_state_dict(strict=True)`` once its weight norm has been folded
(``weight_g``/``weight_v`` -> ``weight``, see
:func:`comostream.models.ext_vocoder.fold_weight_norm`): these modules are plain convolutions, for
inference.

Also the shared pieces of the GAN vocoders: :class:`HiFiGANConfig` (the original config keys) and
the receptive-field arithmetic (:func:`conv_reach`, :func:`transposed_reach`) that
:mod:`comostream.models.bigvgan` reuses. Reaches are "context samples on each side" at a layer's
input rate; the generators convert them to mel frames.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LRELU_SLOPE",
    "HiFiGANConfig",
    "HiFiGANGenerator",
    "ResBlock1",
    "ResBlock2",
    "get_padding",
    "conv_reach",
    "transposed_reach",
]

LRELU_SLOPE = 0.1  # leaky ReLU slope inside the generator
FINAL_LRELU_SLOPE = 0.01  # the original's last F.leaky_relu(x) uses torch's default slope


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    """'Same' padding of an odd kernel: ``(kernel_size - 1) * dilation // 2`` samples per side."""
    return (kernel_size * dilation - dilation) // 2


def conv_reach(kernel_size: int, dilation: int = 1) -> float:
    """Context samples on each side of a 'same'-padded conv (its output depends on)."""
    return (kernel_size - 1) * dilation / 2


def transposed_reach(kernel_size: int, stride: int, padding: int) -> tuple[float, float]:
    """(left, right) context of a transposed conv, in its INPUT samples.

    Output ``n`` reads inputs ``i`` with ``0 <= n + padding - i * stride < kernel_size``, i.e.
    ``i / 1`` within ``[n / stride - (kernel_size - 1 - padding) / stride, n / stride +
    padding / stride]``.
    """
    return (kernel_size - 1 - padding) / stride, padding / stride


def _int_tuple(value: Any, key: str) -> tuple[int, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty list of integers, got {value!r}")
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or item <= 0:
            raise ValueError(f"{key} must hold positive integers, got {value!r}")
        out.append(item)
    return tuple(out)


@dataclass(frozen=True)
class HiFiGANConfig:
    """Generator hyper-parameters, named as in the original ``config.json``.

    ``resblock`` is ``"1"`` (ResBlock1: ``convs1``/``convs2``) or ``"2"`` (ResBlock2: ``convs``).
    """

    num_mels: int
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    upsample_initial_channel: int
    resblock: str
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes differ in length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        if self.resblock not in ("1", "2"):
            raise ValueError(f"resblock must be '1' or '2', got {self.resblock!r}")
        if any(k < u for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes, strict=True)):
            raise ValueError("each upsample kernel size must be >= its upsample rate")
        if self.upsample_initial_channel >> len(self.upsample_rates) < 1:
            raise ValueError("upsample_initial_channel is too small for that many upsamplers")

    @property
    def hop_length(self) -> int:
        """Output samples per mel frame: the product of the upsample rates."""
        return math.prod(self.upsample_rates)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], **overrides: Any) -> Self:
        """Build from an original config dict (extra keys ignored; ``overrides`` win).

        Raises ValueError naming a missing or malformed key.
        """
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in overrides:
                values[f.name] = overrides[f.name]
            elif f.name in raw:
                values[f.name] = raw[f.name]
            elif f.default is not MISSING:  # a field with a default may be absent
                continue
            else:
                raise ValueError(f"config has no {f.name!r}")
        return cls(**_coerce(values))


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    """Type-check and normalise the raw JSON values of a generator config."""
    out = dict(values)
    for key in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes"):
        out[key] = _int_tuple(values[key], key)
    dil = values["resblock_dilation_sizes"]
    if not isinstance(dil, Sequence) or isinstance(dil, str):
        raise ValueError(f"resblock_dilation_sizes must be a list of lists, got {dil!r}")
    out["resblock_dilation_sizes"] = tuple(_int_tuple(d, "resblock_dilation_sizes") for d in dil)
    for key in ("num_mels", "upsample_initial_channel"):
        v = values[key]
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{key} must be a positive integer, got {v!r}")
    out["resblock"] = str(values["resblock"])
    return out


class ResBlock1(nn.Module):
    """``x += conv2(lrelu(conv1_d(lrelu(x))))`` for each dilation ``d``: ``(B, C, T) -> same``."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.dilations = tuple(dilations)
        self.convs1 = nn.ModuleList(
            nn.Conv1d(
                channels, channels, kernel_size, dilation=d, padding=get_padding(kernel_size, d)
            )
            for d in self.dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=get_padding(kernel_size))
            for _ in self.dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            xt = c1(F.leaky_relu(x, LRELU_SLOPE))
            x = c2(F.leaky_relu(xt, LRELU_SLOPE)) + x
        return x

    def reach(self) -> float:
        """Context samples on each side at this block's rate."""
        k = self.kernel_size
        return sum(conv_reach(k, d) + conv_reach(k) for d in self.dilations)


class ResBlock2(nn.Module):
    """``x += conv_d(lrelu(x))`` for each dilation ``d``: ``(B, C, T) -> same``."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.dilations = tuple(dilations)
        self.convs = nn.ModuleList(
            nn.Conv1d(
                channels, channels, kernel_size, dilation=d, padding=get_padding(kernel_size, d)
            )
            for d in self.dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        for c in self.convs:
            x = c(F.leaky_relu(x, LRELU_SLOPE)) + x
        return x

    def reach(self) -> float:
        """Context samples on each side at this block's rate."""
        return sum(conv_reach(self.kernel_size, d) for d in self.dilations)


def upsampler(c_in: int, c_out: int, rate: int, kernel_size: int) -> nn.ConvTranspose1d:
    """The original upsampling layer: stride ``rate``, padding ``(kernel_size - rate) // 2``."""
    return nn.ConvTranspose1d(c_in, c_out, kernel_size, rate, padding=(kernel_size - rate) // 2)


def mean_of_blocks(blocks: Sequence[nn.Module], x: Tensor) -> Tensor:
    """The multi-receptive-field fusion: the average of the parallel blocks' outputs."""
    total = blocks[0](x)
    for block in blocks[1:]:
        total = total + block(x)
    return total / len(blocks)


def stage_reach(
    ups: Sequence[nn.ConvTranspose1d], blocks: Sequence[Sequence[Any]], pre: float, post: float
) -> tuple[float, float]:
    """(left, right) context in mel frames of ``conv_pre -> [up, blocks] * N -> post``.

    ``pre`` / ``post``: each-side reach (samples) of the layers before the first upsampler (at
    the frame rate) and after the last stage (at the output rate); the parallel blocks of a stage
    reach as far as the farthest of them.
    """
    left = right = pre
    rate = 1  # samples per mel frame at the current layer's input
    for up, stage in zip(ups, blocks, strict=True):
        a, b = transposed_reach(up.kernel_size[0], up.stride[0], up.padding[0])
        left, right = left + a / rate, right + b / rate
        rate *= up.stride[0]
        widest = max(block.reach() for block in stage) / rate
        left, right = left + widest, right + widest
    return left + post / rate, right + post / rate


class HiFiGANGenerator(nn.Module):
    """Mel -> waveform: ``(B, num_mels, T)`` log-mel -> ``(B, 1, T * hop_length)`` in [-1, 1]."""

    def __init__(self, cfg: HiFiGANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        c0 = cfg.upsample_initial_channel
        self.conv_pre = nn.Conv1d(cfg.num_mels, c0, 7, padding=3)
        self.ups = nn.ModuleList(
            upsampler(c0 >> i, c0 >> (i + 1), u, k)
            for i, (u, k) in enumerate(
                zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True)
            )
        )
        block = ResBlock1 if cfg.resblock == "1" else ResBlock2
        self.resblocks = nn.ModuleList(
            block(c0 >> (i + 1), k, d)
            for i in range(len(self.ups))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True)
        )
        self.conv_post = nn.Conv1d(c0 >> len(self.ups), 1, 7, padding=3)

    def _stage(self, i: int) -> list[nn.Module]:
        return list(self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels])

    def forward(self, mel: Tensor) -> Tensor:
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            x = mean_of_blocks(self._stage(i), x)
        x = self.conv_post(F.leaky_relu(x, FINAL_LRELU_SLOPE))
        return torch.tanh(x)

    def context_frames(self) -> tuple[float, float]:
        """(left, right) mel frames of context an output sample depends on (leaky ReLU and tanh
        are pointwise; residual paths do not widen it)."""
        ups = list(self.ups)
        stages = [self._stage(i) for i in range(len(ups))]
        return stage_reach(ups, stages, conv_reach(7), conv_reach(7))
