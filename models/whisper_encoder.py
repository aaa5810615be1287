"""The Whisper audio encoder and its log-mel front end, for openai-whisper checkpoint files.

A checkpoint is ``{"dims": {n_mels, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer,
...}, "model_state_dict": {...}}``; the encoder's keys (``encoder.conv1``, ``encoder.conv2``,
``encoder.positional_embedding``, ``encoder.blocks.N.{attn.{query,key,value,out}, attn_ln,
mlp.0, mlp.2, mlp_ln}``, ``encoder.ln_post``) load into :class:`AudioEncoder` under the same
names; decoder keys are ignored; a missing positional embedding is Whisper's sinusoids.

Front end (:class:`WhisperLogMel`): 16 kHz, n_fft 400 (Hann), hop 160, centred frames with
reflect padding, the last STFT frame dropped, power spectrum, slaney-scale and slaney-normalised
mel filterbank (80 or 128 bands, 0-8 kHz), ``log10(max(x, 1e-10))`` floored at its maximum - 8,
then ``(x + 4) / 4``.

Length: Whisper itself pads every input to 30 s. Here the encoder runs on the actual length
with the positional embedding sliced (as so-vits-svc's Whisper-PPG model does), so a short
realtime window costs a short window's compute; longer inputs are cut into 30 s segments
(``n_audio_ctx`` frames each) encoded independently, the floor "maximum - 8" taken per segment
as Whisper does per 30 s window. Output frame j is centred at 16 kHz sample ``320 j``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import Tensor, nn

from comostream.models.checkpoint_io import CheckpointError, load_state_strict

__all__ = [
    "AudioEncoder",
    "WhisperContent",
    "WhisperDims",
    "WhisperLogMel",
    "sinusoids",
    "whisper_content",
]

SAMPLE_RATE = 16000  # Hz
N_FFT = 400  # samples
HOP = 160  # samples per mel frame (10 ms)


@dataclass(frozen=True)
class WhisperDims:
    """The encoder half of Whisper's ``ModelDimensions``."""

    n_mels: int
    n_audio_ctx: int  # encoder frames per 30 s (1500)
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int

    @classmethod
    def from_dict(cls, dims: Mapping[str, Any], what: str) -> WhisperDims:
        """Read the encoder fields of a checkpoint's ``dims`` dict (positive ints)."""
        values = {}
        for f in fields(cls):
            v = dims.get(f.name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise CheckpointError(f"{what}: dims[{f.name!r}] = {v!r} is not a positive int")
            values[f.name] = v
        if values["n_audio_state"] % values["n_audio_head"]:
            raise CheckpointError(f"{what}: n_audio_head does not divide n_audio_state")
        return cls(**values)


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """Whisper's sinusoidal positional embedding: ``(length, channels)``, sin half then cos."""
    half = channels // 2
    inv = torch.exp(-math.log(max_timescale) / (half - 1) * torch.arange(half, dtype=torch.float64))
    t = torch.arange(length, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1).float()


class WhisperLogMel(nn.Module):
    """16 kHz waveform -> Whisper log-mel: ``(B, M) -> (B, n_mels, M // 160)``."""

    def __init__(self, n_mels: int) -> None:
        super().__init__()
        fb = AF.melscale_fbanks(
            N_FFT // 2 + 1,
            0.0,
            SAMPLE_RATE / 2,
            n_mels,
            SAMPLE_RATE,
            norm="slaney",
            mel_scale="slaney",
        )
        self.register_buffer("filters", fb.T.contiguous(), persistent=False)  # (n_mels, 201)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    def forward(self, wav: Tensor) -> Tensor:
        """``wav`` (B, M), M > 200 -> (B, n_mels, M // 160) float32."""
        spec = torch.stft(
            wav.float(),
            N_FFT,
            HOP,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        power = spec[..., :-1].abs() ** 2
        log = torch.clamp(self.filters @ power, min=1e-10).log10()
        floor = log.amax(dim=(1, 2), keepdim=True) - 8.0
        return (torch.maximum(log, floor) + 4.0) / 4.0


class MultiHeadAttention(nn.Module):
    """Whisper's self-attention (key projection without bias): ``(B, T, C) -> (B, T, C)``."""

    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape

        def heads(y: Tensor) -> Tensor:
            return y.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)

        y = F.scaled_dot_product_attention(
            heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        )
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: ``x + attn(attn_ln(x))``, then ``x + mlp(mlp_ln(x))`` (GELU MLP, 4x)."""

    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.mlp = nn.Sequential(
            nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state)
        )
        self.mlp_ln = nn.LayerNorm(n_state)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.attn_ln(x))
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    """Whisper's encoder: log-mel ``(B, n_mels, F)`` -> ``(B, ceil(F / 2), n_audio_state)``.

    ``layer`` (1-based) returns the hidden state after that block; 0 the encoder output
    (last block, then ``ln_post``). ``F <= 2 * n_audio_ctx``; the positional embedding is
    sliced to the frames present.
    """

    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.dims = dims
        self.conv1 = nn.Conv1d(dims.n_mels, dims.n_audio_state, 3, padding=1)
        self.conv2 = nn.Conv1d(dims.n_audio_state, dims.n_audio_state, 3, stride=2, padding=1)
        self.register_buffer(
            "positional_embedding", sinusoids(dims.n_audio_ctx, dims.n_audio_state)
        )
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(dims.n_audio_state, dims.n_audio_head)
            for _ in range(dims.n_audio_layer)
        )
        self.ln_post = nn.LayerNorm(dims.n_audio_state)

    def forward(self, mel: Tensor, layer: int = 0) -> Tensor:
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        if x.shape[1] > self.dims.n_audio_ctx:
            raise ValueError(f"{mel.shape[-1]} mel frames exceed Whisper's 30 s window")
        x = x + self.positional_embedding[: x.shape[1]]
        for block in self.blocks[: layer or None]:
            x = block(x)
        return self.ln_post(x) if layer == 0 else x


class WhisperContent(nn.Module):
    """16 kHz waveform -> Whisper encoder frames: ``(B, M) -> (B, J, D)``, frame j centred at
    sample ``320 j`` (:attr:`first_centre_16k` = 0). The input is zero-padded at the end so the
    last frame lies past its last sample (J ~ M / 320 + 3); see the module docstring for the
    length policy."""

    def __init__(self, encoder: AudioEncoder, layer: int) -> None:
        super().__init__()
        n = encoder.dims.n_audio_layer
        if not 0 <= layer <= n:
            raise ValueError(
                f"layer {layer} out of range: the encoder has {n} blocks "
                "(1-based; 0 = the encoder output after ln_post)"
            )
        self.mel = WhisperLogMel(encoder.dims.n_mels)
        self.encoder = encoder
        self.layer = layer
        self.hop_16k = 2 * HOP
        self.first_centre_16k = 0.0
        self.lookahead_16k = N_FFT // 2 + 2 * HOP  # STFT half window + one frame of each conv
        self.dim = encoder.dims.n_audio_state
        self.segment_16k = encoder.dims.n_audio_ctx * self.hop_16k  # 30 s

    def forward(self, wav: Tensor) -> Tensor:
        """``wav`` (B, M) float -> (B, J, dim)."""
        wav = F.pad(wav, (0, N_FFT // 2 + 2 * self.hop_16k))  # last frame past the end
        out = []
        for start in range(0, wav.shape[-1], self.segment_16k):
            seg = wav[:, start : start + self.segment_16k]
            if seg.shape[-1] <= N_FFT // 2:  # a few samples past the last full segment
                seg = F.pad(seg, (0, N_FFT // 2 + 1 - seg.shape[-1]))
            out.append(self.encoder(self.mel(seg), self.layer))
        return torch.cat(out, dim=1)


def whisper_content(payload: Mapping[str, Any], layer: int, what: str) -> WhisperContent:
    """Build and load (strict keys and shapes) the encoder of an openai-whisper checkpoint."""
    dims_raw, sd = payload.get("dims"), payload.get("model_state_dict")
    if not isinstance(dims_raw, Mapping) or not isinstance(sd, Mapping):
        raise CheckpointError(f"{what}: a Whisper checkpoint needs 'dims' and 'model_state_dict'")
    dims = WhisperDims.from_dict(dims_raw, what)
    encoder = AudioEncoder(dims)
    state = {k[len("encoder.") :]: v for k, v in sd.items() if k.startswith("encoder.")}
    state = {
        k: v.float() if isinstance(v, Tensor) and v.is_floating_point() else v
        for k, v in state.items()
    }
    state.setdefault("positional_embedding", encoder.positional_embedding.clone())
    load_state_strict(encoder, state, f"{what}: Whisper encoder")
    try:
        return WhisperContent(encoder, layer).eval()
    except ValueError as exc:
        raise CheckpointError(f"{what}: {exc}") from None
