"""The built-in content encoder: log-mel -> speaker-independent content frames, streaming-native.

A pre-norm residual stack of dilated :class:`~comostream.models.streaming.CausalConv1d` layers
(per-frame LayerNorm over channels, no utterance statistics), a narrow linear bottleneck and an
optional per-frame L2 normalisation (content frames of norm ``sqrt(content_dim)``, i.e. unit RMS)
and an optional codebook (:class:`~comostream.models.content_codebook.ContentCodebook`, fitted by
``comostream train codebook``): each frame replaced by a mix of codes shared by every singer.
The input is normalised with fixed constants, ``(mel - mel_mean) / mel_std``. The lookahead
(``ContentConfig.lookahead_frames``) is spread over the smallest dilations by
:func:`comostream.models.backbone.lookahead_schedule`; the residual paths around those layers get a
matching :class:`~comostream.models.streaming.Delay`, so the stack is one causal system delayed by
``lookahead_frames`` (see :mod:`comostream.models.streaming`). Past the end of the input (one-shot
padding, ``flush``) the encoder is fed silence (log-mel at the log floor).

Trained by ``comostream train content`` (:mod:`comostream.training.content`); loaded by
:func:`load_content_encoder`.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from comostream.models.backbone import lookahead_schedule
from comostream.models.checkpoint_io import CheckpointError, load_checkpoint, load_state_strict
from comostream.models.config import AudioConfig, ConfigError, ContentConfig, config_from_dict
from comostream.models.content_codebook import ContentCodebook
from comostream.models.streaming import (
    CausalConv1d,
    Delay,
    FrameLinear,
    RunningCentre,
    StreamingStack,
    StreamState,
    child,
)

__all__ = [
    "CHECKPOINT_KIND",
    "ContentEncoder",
    "ContentLayer",
    "centre_level",
    "load_content_encoder",
]

CHECKPOINT_KIND = "content"


def centre_level(cfg: ContentConfig) -> float:
    """The input centring's activity threshold (``centre_active_log_mel``) in normalised units."""
    return (cfg.centre_active_log_mel - cfg.mel_mean) / cfg.mel_std


def _frame_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    """LayerNorm over channels of each frame: ``(B, C, k) -> (B, C, k)`` (no time statistics)."""
    return norm(x.transpose(1, 2)).transpose(1, 2)


class ContentLayer(nn.Module):
    """Pre-norm residual layer: ``x + W gelu(conv(norm(x)))``, conv with lookahead ``L``."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, lookahead: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.conv = CausalConv1d(channels, channels, kernel_size, dilation, lookahead)
        self.out = FrameLinear(channels, channels)
        self.res_delay = Delay(channels, lookahead)

    def run(self, x: Tensor, state: StreamState | None) -> Tensor:
        """Causal step ``(B, C, k) -> (B, C, k)``, output ``L`` frames late."""
        h = self.conv.run(_frame_norm(x, self.norm), child(state, "conv"))
        return self.res_delay.run(x, child(state, "res_delay")) + self.out(F.gelu(h))


class ContentEncoder(StreamingStack):
    """``log-mel (B, n_mels, T)`` (natural log, as :mod:`comostream.models.mel`) -> ``(B,
    content_dim, T)``.

    One-shot ``forward`` is aligned; ``step`` outputs are ``lookahead_frames`` frames late and
    ``flush`` returns the last ones. ``lookahead_frames`` and ``left_frames`` (reach into the
    past) are computed from the layers.
    """

    def __init__(self, cfg: ContentConfig | None = None, audio: AudioConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or ContentConfig()
        audio = audio or AudioConfig()
        c = self.cfg
        self.n_mels, self.content_dim = audio.n_mels, c.content_dim
        # silence (the log floor), normalised: what the encoder sees past the end of the input
        self.pad_value = (math.log(audio.log_floor) - c.mel_mean) / c.mel_std
        dilations = [2 ** (i % c.dilation_cycle) for i in range(c.layers)]
        lookaheads = lookahead_schedule(dilations, c.kernel_size, c.lookahead_frames)
        self.centre: RunningCentre | None = None  # speaker normalisation of the input
        self.centre_out: RunningCentre | None = None  # ... and of the content frames
        if c.centre_tau_frames > 0:
            level = centre_level(c)
            self.centre = RunningCentre(
                audio.n_mels, c.centre_tau_frames, c.centre_prior_frames, level
            )
            if c.centre_output:  # prior 0; activity from the input frames
                self.centre_out = RunningCentre(
                    c.content_dim, c.centre_tau_frames, c.centre_prior_frames, level
                )
        self.input = FrameLinear(audio.n_mels, c.channels)
        self.layers = nn.ModuleList(
            ContentLayer(c.channels, c.kernel_size, d, la)
            for d, la in zip(dilations, lookaheads, strict=True)
        )
        self.out_norm = nn.LayerNorm(c.channels)
        self.bottleneck = FrameLinear(c.channels, c.content_dim)
        convs = [layer.conv for layer in self.layers]
        self.lookahead_frames: int = sum(cv.lookahead_frames for cv in convs)
        if self.centre_out is not None:  # the input frames' activity, aligned with the output
            self.centre_delay = Delay(1, self.lookahead_frames)
        self.left_frames: int = sum(cv.left_frames for cv in convs)
        self.codebook: ContentCodebook | None = None  # frames -> a mix of shared codes
        if c.codebook_size > 0:
            self.codebook = ContentCodebook(
                c.content_dim, c.codebook_size, c.codebook_temperature, c.l2_normalize
            )

    def normalize_input(self, mel: Tensor) -> Tensor:
        """``(mel - mel_mean) / mel_std`` (fixed constants)."""
        return (mel - self.cfg.mel_mean) / self.cfg.mel_std

    def run(
        self, x: Tensor, state: StreamState | None, centre: StreamState | None = None
    ) -> Tensor:
        """Causal computation on NORMALISED input ``(B, n_mels, k)`` -> ``(B, content_dim, k)``.

        ``centre``: the input centring's starting state for a one-shot run (``state is None``)
        over a piece cut from inside a longer input (training segments); default nothing heard.
        """
        active = None
        if self.centre is not None:
            active = self.centre.activity(x)
            x = self.centre.run(x, child(state, "centre") if state is not None else centre, active)
        h = self.input(x)
        layers_state = child(state, "layers")
        for i, layer in enumerate(self.layers):
            h = layer.run(h, child(layers_state, str(i)))
        z = self.bottleneck(_frame_norm(F.gelu(h), self.out_norm))
        if self.centre_out is not None and active is not None:  # lookahead: activity delayed
            a = self.centre_delay.run(active, child(state, "centre_delay"))
            z = self.centre_out.run(z, child(state, "centre_out"), a)
        if self.cfg.l2_normalize:
            z = F.normalize(z, dim=1) * math.sqrt(self.content_dim)
        if self.codebook is not None:
            z = self.codebook(z)
        return z

    def forward(self, mel: Tensor, centre: StreamState | None = None) -> Tensor:
        """One-shot, aligned: ``(B, n_mels, T) -> (B, content_dim, T)`` (``centre``: see
        :meth:`run`)."""
        d = self.lookahead_frames
        x = F.pad(self.normalize_input(mel), (0, d), value=self.pad_value)
        return self.run(x, None, centre)[..., d:]

    def step(self, mel: Tensor, state: StreamState) -> tuple[Tensor, StreamState]:
        """``mel (B, n_mels, k)`` -> ``(B, content_dim, k)``, ``lookahead_frames`` late."""
        return self.run(self.normalize_input(mel), state), state

    def flush(self, state: StreamState, batch: int) -> Tensor:
        """The last ``lookahead_frames`` outputs ``(B, content_dim, L)`` (feeds silence)."""
        ref = self.input.weight
        x = ref.new_full((batch, self.n_mels, self.lookahead_frames), self.pad_value)
        return self.run(x, state)


def _section(config: Any, name: str, path: os.PathLike[str] | str) -> dict[str, Any]:
    if not isinstance(config, dict) or not isinstance(config.get(name, {}), dict):
        raise CheckpointError(f"{path}: checkpoint has no usable 'config.{name}' table")
    return dict(config.get(name, {}))


def load_content_encoder(
    path: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> ContentEncoder:
    """The encoder of a ``"content"`` checkpoint (from ``comostream train content``), in eval mode.

    Loaded with ``weights_only=True`` and strict keys. Raises :class:`CheckpointError` naming
    the file for a missing, corrupt or wrong-kind file, a bad config or mismatching weights.
    """
    ck = load_checkpoint(path, kind=CHECKPOINT_KIND)
    config = ck.get("config")
    sections = {name: _section(config, name, path) for name in ("audio", "content")}
    try:
        cfg = config_from_dict(sections, f"{path}: config")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    models = ck.get("models")
    if not isinstance(models, dict) or "encoder" not in models:
        raise CheckpointError(f"{path}: checkpoint has no 'models.encoder' state")
    encoder = ContentEncoder(cfg.content, cfg.audio)
    load_state_strict(encoder, models["encoder"], f"{path}: model 'encoder'")
    return encoder.to(device).eval()
