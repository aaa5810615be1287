"""Users' own vocoder weights: format detection and one entry point, :func:`load_external_vocoder`.

Formats (read from local paths only, nothing is downloaded):

* ``"bigvgan-nvidia"``: NVIDIA/BigVGAN v1 or v2, ``{"generator": state_dict}`` (e.g.
  ``bigvgan_generator.pt``, ``g_05000000``) with its ``config.json`` beside it;
* ``"hifigan"``: jik876/hifi-gan V1/V2/V3, ``{"generator": state_dict}`` (``g_02500000``) with
  ``config.json``;
* ``"bigvgan-amphion"`` / ``"hifigan-amphion"``: open-mmlab/Amphion GAN vocoders. Either the
  released ``.pt`` form (``{"generator_state_dict": state_dict}``, keys possibly prefixed
  ``module.``; e.g. ``400000.pt`` of Amphion Singing BigVGAN) with ``args.json`` beside it, or an
  accelerate checkpoint folder ``EXP/checkpoint/epoch-..._step-.../`` whose ``pytorch_model.bin``
  or ``model.safetensors`` holds the generator's state dict, with ``EXP/args.json``. Amphion keeps
  the generator's hyper-parameters under ``model.bigvgan`` / ``model.hifigan`` and the mel
  parameters under ``preprocess``. ``.safetensors`` files are parsed here (the format is a JSON
  header and raw little-endian tensors), so the ``safetensors`` package is not needed.

Weight norm (``weight_g``/``weight_v``, or ``parametrizations.weight.original0``/``original1``)
is folded into plain weights; files without weight norm load as they are. Files are read with
``torch.load(weights_only=True)`` (``comostream.models.checkpoint_io.load_checkpoint`` wants
comostream's own ``format``/``kind`` keys, which these files do not have) and loaded strictly.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from comostream.models.bigvgan import BigVGANConfig, BigVGANGenerator
from comostream.models.checkpoint_io import CheckpointError, load_state_strict
from comostream.models.config import AudioConfig
from comostream.models.hifigan import HiFiGANConfig, HiFiGANGenerator

__all__ = [
    "FORMATS",
    "AudioMismatchError",
    "ExternalVocoder",
    "VocoderAudio",
    "fold_weight_norm",
    "load_external_vocoder",
    "read_json_config",
]

FORMATS = ("bigvgan-nvidia", "bigvgan-amphion", "hifigan", "hifigan-amphion")
WEIGHT_FILES = ("bigvgan_generator.pt", "pytorch_model.bin", "model.safetensors")  # in a folder
_WN_PAIRS = (  # (gain, direction) name suffixes: torch.nn.utils.weight_norm, parametrizations
    ("weight_g", "weight_v"),
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),
)
_STRING = r'("(?:\\.|[^"\\])*")'
_COMMENTS = re.compile(_STRING + r"|//[^\n]*|/\*.*?\*/", re.S)
_TRAILING_COMMAS = re.compile(_STRING + r"|,(\s*[}\]])")
_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class AudioMismatchError(CheckpointError, ValueError):
    """The vocoder was trained on other mel parameters than comostream's model produces."""


@dataclass(frozen=True)
class VocoderAudio:
    """The mel parameters a vocoder was trained on (Hz, bins, samples)."""

    sample_rate: int
    n_mels: int
    hop_length: int
    n_fft: int
    win_length: int
    fmin: float
    fmax: float
    normalised: bool = False  # Amphion's mel_min_max_norm: mels rescaled, not raw log-mels

    def describe(self) -> str:
        return (
            f"{self.sample_rate} Hz / {self.n_mels} bands / hop {self.hop_length} / n_fft "
            f"{self.n_fft} / win {self.win_length} / {self.fmin:g}-{self.fmax:g} Hz"
        )

    def differences(self, ours: AudioConfig) -> list[str]:
        """What differs from ``ours``, one phrase per parameter (empty when compatible)."""
        pairs = [
            ("sample rate", self.sample_rate, ours.sample_rate, " Hz"),
            ("mel bands", self.n_mels, ours.n_mels, ""),
            ("hop", self.hop_length, ours.hop_length, " samples"),
            ("n_fft", self.n_fft, ours.n_fft, ""),
            ("window", self.win_length, ours.win_length, " samples"),
            ("fmin", self.fmin, ours.fmin, " Hz"),
            ("fmax", self.fmax, ours.fmax, " Hz"),
        ]
        out = [
            f"{name} {mine:g}{unit} (ours {theirs:g}{unit})"
            for name, mine, theirs, unit in pairs
            if abs(mine - theirs) > 1e-6
        ]
        if self.normalised:
            out.append("min-max normalised mels (ours are plain natural-log mels)")
        return out


class ExternalVocoder(nn.Module):
    """A loaded third-party generator: log-mel ``(B, n_mels, T)`` -> waveform ``(B, T * hop)``.

    Attributes: ``format`` (one of :data:`FORMATS`), ``sample_rate`` (Hz), ``n_mels``,
    ``hop_length`` (samples per frame), ``receptive_field_frames`` (mel frames of context on
    each side that an output sample can depend on, an upper bound computed from the layers: the
    left context the window-recompute mode needs), ``audio`` (:class:`VocoderAudio`),
    ``audio_differences``
    (mismatches with comostream's mels, empty unless loaded with ``strict_audio=False``),
    ``source`` (the weights file). Not streaming-native.
    """

    def __init__(
        self,
        generator: HiFiGANGenerator | BigVGANGenerator,
        fmt: str,
        audio: VocoderAudio,
        source: Path,
        audio_differences: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.generator = generator
        self.format = fmt
        self.audio = audio
        self.source = source
        self.audio_differences = audio_differences
        self.sample_rate = audio.sample_rate
        self.n_mels = audio.n_mels
        self.hop_length = audio.hop_length
        self.receptive_field_frames = math.ceil(max(generator.context_frames()))

    def forward(self, mel: Tensor) -> Tensor:
        """``mel (B, n_mels, T)`` natural-log mel -> ``(B, T * hop_length)`` samples in [-1, 1]."""
        if mel.dim() != 3 or mel.shape[1] != self.n_mels:
            raise ValueError(f"expected a mel (B, {self.n_mels}, T), got {tuple(mel.shape)}")
        ref = self.generator.conv_pre.weight
        wav = self.generator(mel.to(device=ref.device, dtype=ref.dtype))
        return wav[:, 0, : mel.shape[-1] * self.hop_length]

    def extra_repr(self) -> str:
        return f"format={self.format!r}, {self.audio.describe()}, source={str(self.source)!r}"


def load_external_vocoder(
    path: str | os.PathLike[str],
    config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    device: torch.device | str = "cpu",
    *,
    strict_audio: bool = True,
    expected: AudioConfig | None = None,
) -> ExternalVocoder:
    """Load a BigVGAN / HiFi-GAN generator from ``path`` (a weights file or a folder holding one).

    ``config``: the training config (a path or a parsed dict); by default ``config.json`` or
    ``args.json`` beside the weights (or ``EXP/args.json`` for an Amphion accelerate checkpoint
    folder). The weights are folded (weight norm) and loaded strictly; the result is in eval mode
    on ``device`` without gradients. Raises :class:`CheckpointError` naming the file for a
    missing, unreadable or unrecognised file, a config that does not describe the weights, or
    mismatching keys/shapes; :class:`AudioMismatchError` when the vocoder's mel parameters differ
    from ``expected`` (default: comostream's :class:`AudioConfig`) unless ``strict_audio=False``.
    """
    weights = _resolve_weights(Path(path))
    state = _generator_state(_read_weights(weights), weights)
    family = "bigvgan" if any(_is_bigvgan_key(k) for k in state) else "hifigan"
    cfg, cfg_src = _config_dict(weights, config)
    fmt, arch, audio = _parse_config(cfg, cfg_src, family)
    ours = expected or AudioConfig()
    diffs = audio.differences(ours)
    if diffs and strict_audio:
        raise AudioMismatchError(_mismatch_message(cfg_src, fmt, audio, ours, diffs))
    generator = (
        BigVGANGenerator(arch) if isinstance(arch, BigVGANConfig) else HiFiGANGenerator(arch)
    )
    load_state_strict(
        generator, fold_weight_norm(state, str(weights)), f"{weights}: {fmt} generator"
    )
    vocoder = ExternalVocoder(generator, fmt, audio, weights, tuple(diffs))
    return vocoder.to(device).eval().requires_grad_(False)


def fold_weight_norm(state: Mapping[str, Tensor], what: str) -> dict[str, Tensor]:
    """Replace each weight-norm pair by ``weight = g * v / ||v||`` (norm over all but dim 0).

    Accepts the old ``X.weight_g``/``X.weight_v`` names and the parametrization names
    ``X.parametrizations.weight.original0`` (g) / ``original1`` (v); other entries pass through,
    floating ones as float32. ``what`` names the state in a :class:`CheckpointError` (a half
    pair, or shapes that are not a dim-0 weight norm).
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        value = value.float() if value.is_floating_point() else value
        match = next(
            ((g, v, s) for g, v in _WN_PAIRS for s in (g, v) if key == s or key.endswith("." + s)),
            None,
        )
        if match is None:
            out[key] = value
            continue
        g_suffix, v_suffix, suffix = match
        base = key[: -len(suffix)]  # "" or "module.path."
        if suffix == v_suffix:
            if base + g_suffix not in state:
                raise CheckpointError(f"{what}: {key} has no matching {base + g_suffix}")
            continue
        v = state.get(base + v_suffix)
        if v is None:
            raise CheckpointError(f"{what}: {key} has no matching {base + v_suffix}")
        g, v = value, v.float()
        if g.dim() != v.dim() or g.shape[0] != v.shape[0] or g[0].numel() != 1:
            raise CheckpointError(
                f"{what}: {key} {tuple(g.shape)} is not a weight-norm gain for {tuple(v.shape)}"
            )
        norm = v.flatten(1).norm(dim=1).view_as(g)
        out[base + "weight"] = v * (g / norm)
    return out


def read_json_config(path: Path) -> dict[str, Any]:
    """Read a JSON config, tolerating ``//`` and ``/* */`` comments and trailing commas (the
    JSON5 subset of Amphion's configs). Raises :class:`CheckpointError` naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
        text = _COMMENTS.sub(lambda m: m.group(1) or "", text)
        text = _TRAILING_COMMAS.sub(lambda m: m.group(1) or m.group(2), text)
        cfg = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON config ({exc})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: a JSON config must be an object, got {type(cfg).__name__}")
    return cfg


def _resolve_weights(p: Path) -> Path:
    """The weights file: ``p`` itself, or in a folder one of :data:`WEIGHT_FILES` or else the
    newest ``g_NNNNNNNN`` (the jik876 / NVIDIA training folders)."""
    if not p.exists():
        raise CheckpointError(f"{p}: vocoder checkpoint not found")
    if not p.is_dir():
        return p
    for name in WEIGHT_FILES:
        if (p / name).is_file():
            return p / name
    steps = [f for f in p.glob("g_*") if f.is_file() and f.name[2:].isdigit()]
    if steps:
        return max(steps, key=lambda f: int(f.name[2:]))
    raise CheckpointError(
        f"{p}: a folder without a vocoder weights file ({', '.join(WEIGHT_FILES)} or g_NNNNNNNN)"
    )


def _read_weights(p: Path) -> Any:
    """The file's payload: ``torch.load(weights_only=True)``, or a safetensors dict."""
    if p.suffix == ".safetensors":
        return _read_safetensors(p)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged zip/pickle stream
        text = str(exc)
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if unsafe:
            reason = (
                f"refusing to load: the file pickles code ({unsafe.group(1)}), not only tensors "
                "(in an environment you trust, re-save just the generator: "
                "torch.save({'generator': state_dict}, PATH))"
            )
        else:
            first = (text.strip().splitlines() or [""])[0]
            reason = f"unreadable (truncated or corrupt file?): {type(exc).__name__}: {first}"
        raise CheckpointError(f"{p}: {reason}") from None


def _read_safetensors(p: Path) -> dict[str, Tensor]:
    """Parse a ``.safetensors`` file: 8-byte little-endian header size, JSON header, tensors."""
    data = p.read_bytes()
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    try:
        if not 0 < size <= len(data) - 8:
            raise ValueError("header size out of range")
        header = json.loads(data[8 : 8 + size])
        body = memoryview(data)[8 + size :]
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype, shape = _ST_DTYPES[info["dtype"]], [int(n) for n in info["shape"]]
            start, end = (int(n) for n in info["data_offsets"])
            nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
            if not 0 <= start <= end <= len(body) or end - start != nbytes:
                raise ValueError(f"tensor {name!r} lies outside the file")
            flat = torch.frombuffer(bytearray(body[start:end]), dtype=dtype) if nbytes else None
            out[name] = torch.empty(shape, dtype=dtype) if flat is None else flat.reshape(shape)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{p}: unreadable safetensors file (truncated?): {exc}") from None
    return out


def _unprefixed(key: str) -> str:
    """``key`` without DistributedDataParallel's ``module.`` prefixes."""
    while key.startswith("module."):
        key = key[len("module.") :]
    return key


def _is_bigvgan_key(key: str) -> bool:
    return key.startswith("activation_post.") or ".activations." in key


def _generator_state(payload: Any, p: Path) -> dict[str, Tensor]:
    """The generator's state dict inside a payload, ``module.`` prefixes removed."""
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"{p}: not a vocoder checkpoint (a {type(payload).__name__})")
    for entry in ("generator", "generator_state_dict"):
        if isinstance(payload.get(entry), Mapping):
            state = payload[entry]
            break
    else:
        state = payload  # a bare state dict (accelerate's pytorch_model.bin, model.safetensors)
    tensors = all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items())
    out = {_unprefixed(k): v for k, v in state.items()} if tensors else {}
    if any(k.startswith("conv_pre.") for k in out):
        return out
    listed = ", ".join(map(str, list(payload)[:8]))
    raise CheckpointError(
        f"{p}: no HiFi-GAN/BigVGAN generator weights found (expected a 'generator' or "
        f"'generator_state_dict' entry, or a state dict with conv_pre.* keys); keys: {listed}"
    )


def _config_dict(
    weights: Path, config: str | os.PathLike[str] | Mapping[str, Any] | None
) -> tuple[dict[str, Any], str]:
    """The config as a dict and a label naming it in errors."""
    if isinstance(config, Mapping):
        return dict(config), f"{weights} (config dict)"
    if config is not None:
        p = Path(config)
        if not p.is_file():
            raise CheckpointError(f"{p}: vocoder config not found")
        return read_json_config(p), str(p)
    candidates = [weights.parent / "config.json", weights.parent / "args.json"]
    if weights.parent.parent.name == "checkpoint":  # Amphion: EXP/checkpoint/epoch-.../
        candidates.append(weights.parent.parent.parent / "args.json")
    for c in candidates:
        if c.is_file():
            return read_json_config(c), str(c)
    raise CheckpointError(
        f"{weights}: no config.json or args.json beside it; pass the vocoder's training config "
        "(config=PATH)"
    )


def _parse_config(
    cfg: Mapping[str, Any], src: str, family: str
) -> tuple[str, HiFiGANConfig, VocoderAudio]:
    """(format, generator config, mel parameters) from an NVIDIA/jik876 or Amphion config."""
    kind = "BigVGAN" if family == "bigvgan" else "HiFi-GAN"
    if isinstance(cfg.get("model"), Mapping):  # Amphion args.json / exp_config.json
        model, pre = cfg["model"], cfg.get("preprocess", {})
        named = model.get("generator")
        if (isinstance(named, str) and named != family) or not isinstance(
            model.get(family), Mapping
        ):
            raise CheckpointError(
                f"{src}: the weights are a {kind} generator but the config has no model.{family} "
                f"section (model.generator = {named!r})"
            )
        keys = ("sample_rate", "n_mel", "hop_size", "n_fft", "win_size")
        audio = _audio(pre, keys, src, "preprocess.", "mel_min_max_norm")
        fixed = (
            {"use_tanh_at_final": True, "use_bias_at_final": True} if family == "bigvgan" else {}
        )
        arch_raw, fmt, overrides = model[family], f"{family}-amphion", {"num_mels": audio.n_mels}
        overrides.update(fixed)
    elif "upsample_rates" in cfg:  # NVIDIA BigVGAN / jik876 HiFi-GAN config.json
        says = "BigVGAN" if "activation" in cfg else "HiFi-GAN (no 'activation' key)"
        if ("activation" in cfg) != (family == "bigvgan"):
            raise CheckpointError(f"{src}: a {says} config but the weights are a {kind} generator")
        keys = ("sampling_rate", "num_mels", "hop_size", "n_fft", "win_size")
        audio = _audio(cfg, keys, src, "", None)
        arch_raw, fmt, overrides = cfg, "bigvgan-nvidia" if family == "bigvgan" else "hifigan", {}
    else:
        raise CheckpointError(
            f"{src}: not a vocoder config (neither a BigVGAN/HiFi-GAN config.json with "
            "upsample_rates nor an Amphion args.json with model.bigvgan / model.hifigan)"
        )
    try:
        config_cls = BigVGANConfig if family == "bigvgan" else HiFiGANConfig
        arch = config_cls.from_dict(arch_raw, **overrides)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{src}: bad generator config: {exc}") from None
    if arch.hop_length != audio.hop_length:
        raise CheckpointError(
            f"{src}: hop size {audio.hop_length} but the upsample rates "
            f"{list(arch.upsample_rates)} multiply to {arch.hop_length}"
        )
    return fmt, arch, audio


def _audio(
    raw: Mapping[str, Any], keys: tuple[str, ...], src: str, prefix: str, norm_key: str | None
) -> VocoderAudio:
    """Mel parameters from ``raw``: ``keys`` name sample rate, bands, hop, n_fft and window."""
    values = []
    for key in keys:
        v = raw.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            hint = " (give the run's merged args.json)" if prefix else ""
            raise CheckpointError(f"{src}: {prefix}{key} missing or not a positive integer{hint}")
        values.append(v)
    sample_rate = values[0]
    fmin, fmax = raw.get("fmin", 0), raw.get("fmax")
    fmax = sample_rate / 2 if fmax is None else fmax  # null fmax: up to Nyquist (librosa)
    if not all(isinstance(f, int | float) and not isinstance(f, bool) for f in (fmin, fmax)):
        raise CheckpointError(f"{src}: {prefix}fmin/fmax must be numbers, got {fmin!r}/{fmax!r}")
    normalised = bool(raw.get(norm_key, False)) if norm_key else False
    return VocoderAudio(*values, float(fmin), float(fmax), normalised)


def _mismatch_message(
    src: str, fmt: str, audio: VocoderAudio, ours: AudioConfig, diffs: list[str]
) -> str:
    ours_text = (
        f"{ours.sample_rate} Hz / {ours.n_mels} bands / hop {ours.hop_length} / n_fft "
        f"{ours.n_fft} / win {ours.win_length} / {ours.fmin:g}-{ours.fmax:g} Hz"
    )
    if (audio.sample_rate, audio.n_mels) != (ours.sample_rate, ours.n_mels):
        verdict = (
            f"a {audio.sample_rate / 1000:g} kHz / {audio.n_mels}-band vocoder cannot drive the "
            f"{ours.sample_rate / 1000:g} kHz / {ours.n_mels}-band model"
        )
    else:
        verdict = "its input mels are not the ones our model produces"
    return (
        f"{src}: this {fmt} vocoder was trained on {audio.describe()} mels, comostream's model "
        f"makes {ours_text}; differs: {'; '.join(diffs)}. {verdict[0].upper()}{verdict[1:]}: use "
        "one trained on the same mel parameters (or pass strict_audio=False to load it for "
        "inspection only)"
    )
