"""The denoiser backbone ``F``: a streaming-native dilated residual conv stack (WaveNet family).

Per layer: a gated dilated :class:`~comostream.models.streaming.CausalConv1d` with the per-frame
condition added, then residual and skip 1x1 outputs. The lookahead
(``ModelConfig.lookahead_frames``) is spread over a few layers by :func:`lookahead_schedule`; around
each lookahead layer the residual, the running skip sum and the condition get a matching
:class:`~comostream.models.streaming.Delay`, so the stack is one causal system delayed by
``lookahead_frames`` (see :mod:`comostream.models.streaming`).

The backbone never sees sigma: the preconditioning wrapper
(:class:`comostream.models.edm.EDMPrecond`) passes ``c_noise``, which is embedded and added to the
condition (a per-channel bias after each conv). Teacher, student and target are three instances of
:class:`Backbone`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from comostream.models.config import ModelConfig
from comostream.models.streaming import (
    CausalConv1d,
    Delay,
    FrameLinear,
    StreamingStack,
    StreamState,
    child,
    pad_future,
    per_item,
)

__all__ = ["Backbone", "NoiseEmbedding", "ResidualLayer", "lookahead_schedule"]

NOISE_FREQUENCIES = 32  # sinusoid pairs embedding c_noise (angular frequencies 1 .. 100 rad)


def lookahead_schedule(dilations: Sequence[int], kernel_size: int, total: int) -> list[int]:
    """Per-layer lookahead frames summing to ``total``.

    Smallest dilations first (earliest layer on ties): first up to a centred kernel (half the
    span ``(k-1)*d``), then, if still needed, up to the whole span.
    """
    spans = [(kernel_size - 1) * d for d in dilations]
    order = sorted(range(len(dilations)), key=lambda i: (dilations[i], i))
    out = [0] * len(dilations)
    remaining = total
    for cap in (lambda i: spans[i] // 2, lambda i: spans[i]):
        for i in order:
            take = min(remaining, cap(i) - out[i])
            out[i] += take
            remaining -= take
    if remaining:
        raise ValueError(f"lookahead {total} frames exceeds the stack's span {sum(spans)} frames")
    return out


class NoiseEmbedding(nn.Module):
    """``c_noise (B, 1, T')`` -> ``(B, C, T')`` by sinusoids and a 2-layer MLP (``T'`` = 1 or T)."""

    def __init__(self, channels: int, frequencies: int = NOISE_FREQUENCIES) -> None:
        super().__init__()
        freqs = torch.exp(torch.linspace(0.0, math.log(100.0), frequencies))
        self.register_buffer("freqs", freqs.view(1, -1, 1), persistent=False)
        self.mlp = nn.Sequential(
            FrameLinear(2 * frequencies, channels), nn.SiLU(), FrameLinear(channels, channels)
        )

    def forward(self, c_noise: Tensor) -> Tensor:
        angle = c_noise * self.freqs
        return self.mlp(torch.cat([torch.cos(angle), torch.sin(angle)], dim=1))


class ResidualLayer(nn.Module):
    """Gated dilated conv + condition -> residual and skip; lookahead ``L`` frames."""

    def __init__(
        self,
        channels: int,
        cond_channels: int,
        kernel_size: int,
        dilation: int,
        lookahead_frames: int,
        first: bool,
    ) -> None:
        super().__init__()
        self.conv = CausalConv1d(channels, 2 * channels, kernel_size, dilation, lookahead_frames)
        self.cond_proj = FrameLinear(cond_channels, 2 * channels)
        self.out_proj = FrameLinear(channels, 2 * channels)
        self.res_delay = Delay(channels, lookahead_frames)
        self.skip_delay = Delay(channels, 0 if first else lookahead_frames)
        self.cond_delay = Delay(cond_channels, lookahead_frames)

    def run(
        self,
        x: Tensor,
        skip: Tensor | None,
        g: Tensor,
        state: StreamState | None,
        g_proj: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Causal step: ``x, skip (B, C, k)``, ``g (B, Cg, k)`` in; all three out ``L`` later.

        ``g_proj``: ``cond_proj(g)`` computed already (a layer without lookahead)."""
        g = self.cond_delay.run(g, child(state, "cond_delay"))
        if g_proj is None:
            g_proj = self.cond_proj(g)
        h = self.conv.run(x, child(state, "conv")) + g_proj
        a, b = h.chunk(2, dim=1)
        res, s = self.out_proj(torch.tanh(a) * torch.sigmoid(b)).chunk(2, dim=1)
        x = (self.res_delay.run(x, child(state, "res_delay")) + res) * math.sqrt(0.5)
        skip = s if skip is None else self.skip_delay.run(skip, child(state, "skip_delay")) + s
        return x, skip, g


class Backbone(StreamingStack):
    """``F(x (B, n_mels, T), c_noise, cond (B, cond_channels, T)) -> (B, n_mels, T)``.

    ``c_noise`` is ``(B,)``, a scalar, or per frame ``(B, 1, T)``. One-shot ``forward`` is aligned;
    ``step`` outputs are ``lookahead_frames`` frames late and ``flush`` returns the last ones.
    ``lookahead_frames`` and ``left_frames`` (reach into the past, frames) come from the layers.
    """

    def __init__(self, cfg: ModelConfig, n_mels: int = 100) -> None:
        super().__init__()
        dilations = [2 ** (i % cfg.dilation_cycle) for i in range(cfg.layers)]
        lookaheads = lookahead_schedule(dilations, cfg.kernel_size, cfg.lookahead_frames)
        self.n_mels = n_mels
        self.cond_channels = cfg.cond_channels
        self.input = FrameLinear(n_mels, cfg.channels)
        self.noise = NoiseEmbedding(cfg.cond_channels)
        self.layers = nn.ModuleList(
            ResidualLayer(cfg.channels, cfg.cond_channels, cfg.kernel_size, d, la, i == 0)
            for i, (d, la) in enumerate(zip(dilations, lookaheads, strict=True))
        )
        self.skip_out = FrameLinear(cfg.channels, cfg.channels)
        self.output = FrameLinear(cfg.channels, n_mels)
        convs = [layer.conv for layer in self.layers]
        self.lookahead_frames = sum(c.lookahead_frames for c in convs)
        self.left_frames = sum(c.left_frames for c in convs)  # the longest path: through every conv

    def run(
        self, x: Tensor, c_noise: Tensor | float, cond: Tensor, state: StreamState | None
    ) -> Tensor:
        """Causal computation over ``k`` frames (output ``lookahead_frames`` late)."""
        g = cond + self.noise(per_item(c_noise, x, "c_noise"))
        h = F.relu(self.input(x))
        skip: Tensor | None = None
        layers_state = child(state, "layers")
        projections = self._cond_projections(g)
        for i, layer in enumerate(self.layers):
            h, skip, g = layer.run(h, skip, g, child(layers_state, str(i)), projections[i])
        assert skip is not None
        skip = skip * (1.0 / math.sqrt(len(self.layers)))
        return self.output(F.relu(self.skip_out(skip)))

    def _cond_projections(self, g: Tensor) -> list[Tensor | None]:
        """Each layer's ``cond_proj(g)`` as one matrix product when no layer delays the
        condition (no lookahead: every layer sees the same ``g``), else None (each its own):
        on a CPU one product of 12 x 256 outputs costs less than twelve of 256."""
        if self.lookahead_frames or not self.layers:
            return [None] * len(self.layers)
        projs = [layer.cond_proj for layer in self.layers]
        weight = torch.cat([p.weight for p in projs])
        bias = torch.cat([p.bias for p in projs])
        out = F.linear(g.transpose(1, 2), weight, bias).transpose(1, 2)  # (B, layers * 2C, k)
        return list(out.split(projs[0].out_features, dim=1))

    def forward(self, x: Tensor, c_noise: Tensor | float, cond: Tensor) -> Tensor:
        """One-shot, aligned: ``(B, n_mels, T) -> (B, n_mels, T)``."""
        delay = self.lookahead_frames
        c = per_item(c_noise, x, "c_noise")
        if c.shape[-1] > 1 and delay:  # per-frame: hold the last value over the padding
            c = F.pad(c, (0, delay), mode="replicate")
        return self.run(pad_future(x, delay), c, pad_future(cond, delay), None)[..., delay:]

    def step(
        self, x: Tensor, c_noise: Tensor | float, cond: Tensor, state: StreamState
    ) -> tuple[Tensor, StreamState]:
        """``x (B, n_mels, k)``, ``cond (B, Cg, k)`` -> ``(B, n_mels, k)``, ``lookahead`` late."""
        return self.run(x, c_noise, cond, state), state

    def flush(self, c_noise: Tensor | float, state: StreamState, batch: int) -> Tensor:
        """The last ``lookahead_frames`` outputs ``(B, n_mels, L)``: feeds zero frames."""
        ref = self.output.weight
        delay = self.lookahead_frames
        x = ref.new_zeros(batch, self.n_mels, delay)
        if delay == 0:
            return x
        c = per_item(c_noise, x, "c_noise")[..., -1:]
        return self.run(x, c, ref.new_zeros(batch, self.cond_channels, delay), state)
