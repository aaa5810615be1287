"""The built-in vocoder: log-mel + F0 -> 24 kHz waveform, harmonic-plus-noise, streaming-native.

A frame-rate control network (a causal residual stack of dilated
:class:`~comostream.models.streaming.CausalConv1d` layers on the normalised log-mel plus log-F0 and
the voiced flag) predicts, per frame, two log-gain corrections on the mel grid: one for a harmonic
envelope, one for a noise envelope, each added to the input log-mel itself. The waveform is then
synthesised sample-exactly (:mod:`comostream.models.vocoder_synth`):

* harmonics ``h = 1 .. n_harmonics`` of F0, amplitude = the harmonic envelope at ``h * F0``
  (linear interpolation on the mel grid), scaled by ``min(F0, filter width) / (win / 2)`` (the
  mel value of harmonics of amplitude ``a`` is about ``a (win / 2) / F0`` in filters wider than
  F0 and ``a (win / 2) / width`` in narrower ones), muted above ``harmonic_max_hz`` and on
  unvoiced frames. Inside a frame, frequency and amplitudes move linearly from the previous
  frame's controls to the current frame's; the oscillator phase is carried in float64;
* noise: counter-hashed white noise filtered per frame by the noise envelope (FFT domain,
  Hann segments of ``2 * hop`` overlap-added), level ``bin_hz / (0.886 sqrt(0.375 win))`` times
  the envelope (white noise at that level reproduces the envelope's mel value).

Timing. As a causal system, the step that receives control frame ``tau`` emits the ``hop``
samples that move from frame ``tau - 1``'s controls to frame ``tau``'s. With
``lookahead_frames >= 1`` those samples are read as frame ``tau - 1``'s (samples
``[hop (tau - 1), hop tau)``, between the two frame centres: exact), which costs one frame of
delay, and the control network gets the remaining ``lookahead_frames - 1``. With
``lookahead_frames = 0`` they are read as frame ``tau``'s (the controls lag by one hop). One-shot
``forward`` pads ``lookahead_frames`` silent frames and drops the first
``lookahead_frames * hop`` samples; ``step`` is ``lookahead_frames`` frames late; ``flush`` feeds
the silence. Output samples ``[hop t, hop t + hop)`` belong to frame ``t``.

State (preallocated, updated in place): conv/delay histories, the oscillator phase (float64,
wrapped), the absolute sample counter (int64, the noise index) and the noise overlap tail.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from comostream.models.backbone import lookahead_schedule
from comostream.models.checkpoint_io import CheckpointError, load_checkpoint, load_state_strict
from comostream.models.conditioner import F0_REF_HZ
from comostream.models.config import AudioConfig, ConfigError, VocoderConfig, config_from_dict
from comostream.models.content import ContentLayer
from comostream.models.frames import periodic_hann
from comostream.models.streaming import (
    Delay,
    FrameLinear,
    StreamingStack,
    StreamState,
    child,
    store,
)
from comostream.models.vocoder_synth import (
    MelGrid,
    filter_matrices,
    frame_phase,
    harmonic_block,
    noise_block,
)

__all__ = [
    "CHECKPOINT_KIND",
    "EXPORT_KIND",
    "VOCODER_PRESETS",
    "Vocoder",
    "load_vocoder",
    "vocoder_config",
]

CHECKPOINT_KIND = "vocoder"  # `comostream train vocoder` checkpoints
EXPORT_KIND = "vocoder-export"  # a file holding only Vocoder.export_payload()
TAPER_HZ = 1000.0  # harmonics fade out linearly over this band below harmonic_max_hz
MAX_LOG_GAIN = 0.0  # amplitudes / noise gains are clamped to <= 1 (full scale)

VOCODER_PRESETS: Mapping[str, Mapping[str, Any]] = {
    "tiny": {"channels": 16, "layers": 2, "dilation_cycle": 2, "n_harmonics": 24},  # tests
    "default": {},  # ~real time x 10 on one CPU thread
    "large": {"channels": 256, "layers": 9, "n_harmonics": 200, "disc_channels": 32},  # GPU
}


def vocoder_config(preset: str = "default", **overrides: Any) -> VocoderConfig:
    """A :class:`VocoderConfig` of size ``preset`` (``tiny``, ``default``, ``large``)."""
    if preset not in VOCODER_PRESETS:
        raise ConfigError(f"unknown vocoder preset {preset!r}; known: {', '.join(VOCODER_PRESETS)}")
    return VocoderConfig(**{**VOCODER_PRESETS[preset], **overrides})


def _frame_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    return norm(x.transpose(1, 2)).transpose(1, 2)


class Vocoder(StreamingStack):
    """``mel (B, n_mels, T)`` natural-log + ``f0_hz (B, T)`` (0 = unvoiced) -> ``(B, T * hop)``."""

    harmonics: Tensor
    ramp: Tensor
    ramp64: Tensor
    window: Tensor
    noise_matrix: Tensor

    def __init__(self, cfg: VocoderConfig | None = None, audio: AudioConfig | None = None) -> None:
        super().__init__()
        self.cfg = c = cfg or VocoderConfig()
        self.audio = a = audio or AudioConfig()
        self.n_mels, self.hop_length, self.sample_rate = a.n_mels, a.hop_length, a.sample_rate
        self.log_floor = math.log(a.log_floor)
        self.synth_delay = 1 if c.lookahead_frames >= 1 else 0
        net_lookahead = c.lookahead_frames - self.synth_delay
        dilations = [2 ** (i % c.dilation_cycle) for i in range(c.layers)]
        lookaheads = lookahead_schedule(dilations, c.kernel_size, net_lookahead)
        self.input = FrameLinear(a.n_mels + 2, c.channels)
        self.layers = nn.ModuleList(
            ContentLayer(c.channels, c.kernel_size, d, la)
            for d, la in zip(dilations, lookaheads, strict=True)
        )
        self.out_norm = nn.LayerNorm(c.channels)
        self.head = FrameLinear(c.channels, 2 * a.n_mels)  # harmonic | noise log-gain deltas
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.zero_()
            self.head.bias[a.n_mels :] = c.noise_init_db * math.log(10.0) / 20.0
        self.cond_delay = Delay(a.n_mels + 1, net_lookahead)  # raw mel + F0, aligned to the net
        self.prev = Delay(2 * a.n_mels + 1, 1)  # the previous frame's controls
        convs = [layer.conv for layer in self.layers]
        self.lookahead_frames: int = c.lookahead_frames
        self.left_frames: int = sum(cv.left_frames for cv in convs) + 1 - self.synth_delay
        self.grid = MelGrid(a)
        hop = a.hop_length
        self.register_buffer(
            "harmonics", torch.arange(1, c.n_harmonics + 1, dtype=torch.float32), persistent=False
        )
        ramp = torch.arange(hop, dtype=torch.float64) / hop
        self.register_buffer("ramp", ramp.to(torch.float32), persistent=False)
        self.register_buffer("ramp64", ramp, persistent=False)
        self.register_buffer("window", periodic_hann(2 * hop, 2 * hop), persistent=False)
        for i, m in enumerate(filter_matrices(2 * hop)):  # the noise filter without complex ops
            self.register_buffer(f"noise_dft{i}", torch.from_numpy(m).float(), persistent=False)
        bins = torch.arange(hop + 1, dtype=torch.float64) * (a.sample_rate / (2 * hop))
        self.register_buffer("noise_matrix", self.grid.matrix(bins), persistent=False)
        # amplitude <-> mel magnitude (module docstring): harmonic a = mel * min(f0, B) / (win/2)
        self.harm_log_scale = -math.log(a.win_length / 2.0)
        bin_hz = a.sample_rate / a.n_fft
        mean_abs_bin = math.sqrt(math.pi / 4) * math.sqrt(0.375 * a.win_length)  # E|X|, unit noise
        self.noise_log_scale = math.log(bin_hz / mean_abs_bin)

    # ------------------------------------------------------------------ control network

    def _controls(self, mel: Tensor, f0_hz: Tensor, state: StreamState | None) -> Tensor:
        """Causal controls ``(B, 2 n_mels + 1, k)``: harmonic and noise log-envelopes, F0 (Hz)."""
        voiced = (f0_hz > 0).to(mel.dtype)
        log_f0 = torch.log2(f0_hz.clamp(min=1.0) / F0_REF_HZ) * voiced
        x = torch.cat(
            [
                (mel - self.cfg.mel_mean) / self.cfg.mel_std,
                log_f0.unsqueeze(1),
                voiced.unsqueeze(1),
            ],
            dim=1,
        )
        h = self.input(x)
        layers_state = child(state, "layers")
        for i, layer in enumerate(self.layers):
            h = layer.run(h, child(layers_state, str(i)))
        delta = self.head(_frame_norm(F.gelu(h), self.out_norm))  # (B, 2n, k)
        raw = torch.cat([mel, f0_hz.unsqueeze(1)], 1)
        cond = self.cond_delay.run(raw, child(state, "cond_delay"))
        n = self.n_mels
        env = cond[:, :n].repeat(1, 2, 1) + delta
        return torch.cat([env, cond[:, n:]], dim=1)

    # ------------------------------------------------------------------ synthesis

    def _harmonic_amps(self, env: Tensor, f0: Tensor, f_max: Tensor) -> Tensor:
        """Amplitudes ``(B, K, k)`` of the harmonics of ``f0 (B, k)`` from ``env (B, n, k)``;
        ``f_max (B, k)``: the highest F0 the frame pair reaches (sets the top-band taper)."""
        h = self.harmonics.view(1, -1, 1)
        freqs = h * f0.unsqueeze(1)  # (B, K, k) Hz
        log_env = self.grid.interp(env, self.grid.position(freqs))
        width = self.grid.width_hz(freqs)
        log_amp = log_env + torch.log(torch.minimum(f0.unsqueeze(1), width)) + self.harm_log_scale
        taper = ((self.cfg.harmonic_max_hz - h * f_max.unsqueeze(1)) / TAPER_HZ).clamp(0.0, 1.0)
        voiced = (f0 > 0).to(env.dtype).unsqueeze(1)
        return torch.exp(log_amp.clamp(max=MAX_LOG_GAIN)) * taper * voiced

    def _noise_dft(self) -> tuple[Tensor, ...]:
        """The noise filter's DFT matrices
        (:func:`~comostream.models.vocoder_synth.filter_matrices`, as float32)."""
        return tuple(getattr(self, f"noise_dft{i}") for i in range(6))

    def _synthesize(
        self, prev: Tensor, cur: Tensor, osc: StreamState | None, sample_offset: Tensor | None
    ) -> Tensor:
        """Samples ``(B, k * hop)`` moving from controls ``prev`` to ``cur`` (both (B, 2n+1, k))."""
        n, hop = self.n_mels, self.hop_length
        b, _, k = cur.shape
        f_prev, f_cur = prev[:, 2 * n], cur[:, 2 * n]
        fp = torch.where(f_prev > 0, f_prev, f_cur)  # an onset/offset holds the voiced F0
        fc = torch.where(f_cur > 0, f_cur, f_prev)
        f_max = torch.maximum(fp, fc)
        # both ends of every frame in one call (half the ops: an exported step's nodes cost
        # time each), then split
        amps = self._harmonic_amps(
            torch.cat([prev[:, :n], cur[:, :n]], -1),
            torch.cat([f_prev, f_cur], -1),
            torch.cat([f_max, f_max], -1),
        )
        amp_prev, amp_cur = amps[..., :k], amps[..., k:]
        if osc is None:
            phase0 = cur.new_zeros(b, 1, dtype=torch.float64)
            first = (
                sample_offset
                if sample_offset is not None
                else torch.zeros(b, dtype=torch.int64, device=cur.device)
            )
            tail = None
        else:
            phase0, first, tail = osc["phase"], osc["sample"], osc["noise_tail"]
        phase, phase_end = frame_phase(
            fp.detach(), fc.detach(), phase0, self.ramp64, self.sample_rate
        )
        harm = harmonic_block(phase, amp_prev, amp_cur, self.harmonics, self.ramp)
        log_gain = torch.matmul(self.noise_matrix, cur[:, n : 2 * n]) + self.noise_log_scale
        gain = torch.exp(log_gain.clamp(max=MAX_LOG_GAIN)).transpose(1, 2)  # (B, k, hop + 1)
        gain = F.pad(gain[..., 1:], (1, 0))  # no noise at DC
        noise, new_tail = noise_block(gain, first, tail, self.window, self._noise_dft())
        if osc is not None:
            store(osc, "phase", phase_end)
            osc["sample"].add_(k * hop)
            store(osc, "noise_tail", new_tail)
        return harm + noise

    def run(
        self,
        mel: Tensor,
        f0_hz: Tensor,
        state: StreamState | None,
        sample_offset: Tensor | None = None,
    ) -> Tensor:
        """The causal computation: ``(B, n_mels, k)``, ``(B, k)`` -> ``(B, k * hop)``.

        ``state`` None: a fresh run (zero past, phase 0, noise index from ``sample_offset``
        ``(B,)`` int64 or 0); otherwise the streaming state, updated in place.
        """
        if mel.shape[-1] == 0:  # e.g. flush with no lookahead
            return mel.new_zeros(mel.shape[0], 0)
        ctrl = self._controls(mel, f0_hz, state)
        prev = self.prev.run(ctrl, child(state, "prev"))
        return self._synthesize(prev, ctrl, None if state is None else state["osc"], sample_offset)

    # ------------------------------------------------------------------ the two schedules

    def _check(self, mel: Tensor, f0_hz: Tensor) -> None:
        if mel.dim() != 3 or mel.shape[1] != self.n_mels:
            raise ValueError(f"mel must be (B, {self.n_mels}, T), got {tuple(mel.shape)}")
        if f0_hz.shape != (mel.shape[0], mel.shape[2]):
            raise ValueError(
                f"f0_hz must be (B, T) = {(mel.shape[0], mel.shape[2])}, got {tuple(f0_hz.shape)}"
            )

    def forward(self, mel: Tensor, f0_hz: Tensor, sample_offset: Tensor | None = None) -> Tensor:
        """One-shot, aligned: ``(B, n_mels, T)``, ``(B, T)`` Hz -> ``(B, T * hop)``.

        ``sample_offset (B,)`` int64 shifts the noise index (training draws it at random).
        """
        self._check(mel, f0_hz)
        d = self.lookahead_frames
        x = F.pad(mel, (0, d), value=self.log_floor)
        f0 = F.pad(f0_hz.to(mel.dtype), (0, d))
        return self.run(x, f0, None, sample_offset)[..., d * self.hop_length :]

    def init_state(
        self,
        batch: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> StreamState:
        """Fresh state: histories, phase (float64), sample counter (int64), noise tail."""
        ref = self.head.weight
        device = ref.device if device is None else device
        dtype = ref.dtype if dtype is None else dtype
        state = super().init_state(batch, device, dtype)
        state["osc"] = {
            "phase": torch.zeros(batch, 1, dtype=torch.float64, device=device),
            "sample": torch.zeros(batch, dtype=torch.int64, device=device),
            "noise_tail": torch.zeros(batch, self.hop_length, dtype=dtype, device=device),
        }
        return state

    def step(self, mel: Tensor, f0_hz: Tensor, state: StreamState) -> tuple[Tensor, StreamState]:
        """``(B, n_mels, k)``, ``(B, k)`` -> ``(B, k * hop)``, ``lookahead_frames`` frames late."""
        self._check(mel, f0_hz)
        return self.run(mel, f0_hz.to(mel.dtype), state), state

    def flush(self, state: StreamState, batch: int) -> Tensor:
        """The last ``lookahead_frames * hop`` samples ``(B, L * hop)`` (feeds silent frames)."""
        ref = self.head.weight
        d = self.lookahead_frames
        mel = ref.new_full((batch, self.n_mels, d), self.log_floor)
        return self.run(mel, ref.new_zeros(batch, d), state)

    # ------------------------------------------------------------------ files

    def export_payload(self) -> dict[str, Any]:
        """``{"config": {"audio", "vocoder"}, "state_dict"}`` of plain data (weights_only-safe)."""
        return {
            "config": {
                "audio": dataclasses.asdict(self.audio),
                "vocoder": dataclasses.asdict(self.cfg),
            },
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_payload(cls, payload: Any, what: str) -> Vocoder:
        """The vocoder of an :meth:`export_payload` dict (eval mode); ``what`` names it in errors.

        Raises :class:`CheckpointError` for a malformed payload, a bad config or mismatching
        weights.
        """
        if not isinstance(payload, Mapping):
            raise CheckpointError(
                f"{what}: vocoder payload is a {type(payload).__name__}, not a dict"
            )
        config = payload.get("config")
        if not isinstance(config, Mapping) or not all(
            isinstance(config.get(s), Mapping) for s in ("audio", "vocoder")
        ):
            raise CheckpointError(f"{what}: no usable 'config.audio' / 'config.vocoder' tables")
        try:
            cfg = config_from_dict(
                {s: dict(config[s]) for s in ("audio", "vocoder")}, f"{what}: config"
            )
        except ConfigError as exc:
            raise CheckpointError(str(exc)) from None
        model = cls(cfg.vocoder, cfg.audio)
        load_state_strict(model, payload.get("state_dict"), f"{what}: vocoder")
        return model.eval()


def load_vocoder(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> Vocoder:
    """The vocoder of a ``train vocoder`` checkpoint (kind ``"vocoder"``) or of an export file
    (kind ``"vocoder-export"``), in eval mode on ``device``.

    Loaded with ``weights_only=True`` and strict keys; :class:`CheckpointError` naming the file
    for a missing, corrupt or wrong-kind file, a bad config or mismatching weights.
    """
    ck = load_checkpoint(path, kind=(CHECKPOINT_KIND, EXPORT_KIND))
    if ck["kind"] == EXPORT_KIND:
        payload: Any = ck
    else:
        models = ck.get("models")
        if not isinstance(models, Mapping) or "vocoder" not in models:
            raise CheckpointError(f"{path}: checkpoint has no 'models.vocoder' state")
        payload = {"config": ck.get("config"), "state_dict": models["vocoder"]}
    return Vocoder.from_payload(payload, str(path)).to(device)
