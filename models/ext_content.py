"""Users' own content encoders: HuBERT / ContentVec and Whisper, loaded from explicit paths.

:func:`load_content_model` reads a checkpoint (never downloads), detects its layout from the
keys and returns an :class:`ExternalContent`: 24 kHz audio ``(B, N)`` -> content frames
``(B, D, T)`` aligned with our mel frames (T = N // 256 + 1, frame t centred at sample 256 t).

Layouts: fairseq (``{"args", "cfg", "model", ...}``: HuBERT, ContentVec, RVC's
``hubert_base.pt``), a bare fairseq, torchaudio or Hugging Face ``HubertModel`` state dict
(``.pt`` / ``.bin`` / ``.safetensors``, or a Hugging Face folder with ``config.json``), and
openai-whisper files (``{"dims", "model_state_dict"}``); see :mod:`comostream.models.hubert` and
:mod:`comostream.models.whisper_encoder`.

Safe loading: files are read with ``torch.load(weights_only=True)``. fairseq pickles an
``argparse.Namespace`` (allowed: plain data) and often objects of fairseq/omegaconf classes
(``fairseq.data.dictionary.Dictionary``, ``omegaconf.DictConfig`` ...). Globals from the modules
in :data:`PLACEHOLDER_MODULES` are replaced by inert :class:`OpaqueObject` placeholders that only
record what the pickle stored: those modules are never imported and no code of theirs runs;
model sizes are read back from the recorded data where possible (:func:`plain`). Any other
class is refused with a :class:`~comostream.models.checkpoint_io.CheckpointError` naming it.

The encoders are not streaming-native (bidirectional attention): the realtime engine runs them
on a window of :attr:`ExternalContent.left_context_frames` of past audio with SOLA cross-fade.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torchaudio.functional as AF
from torch import Tensor, nn

from comostream.models.checkpoint_io import CheckpointError
from comostream.models.hubert import hubert_content, rename_fairseq, rename_hf, rename_torchaudio
from comostream.models.whisper_encoder import whisper_content

__all__ = [
    "FORMATS",
    "PLACEHOLDER_MODULES",
    "ExternalContent",
    "OpaqueObject",
    "align_frames",
    "detect_format",
    "load_content_model",
    "plain",
    "read_payload",
]

ENCODER_RATE = 16000  # Hz: every supported encoder's input rate
FORMATS = ("fairseq", "torchaudio", "hf", "whisper")
PLACEHOLDER_MODULES = ("fairseq", "omegaconf", "typing", "enum", "collections", "numpy", "pathlib")
_MAX_PLACEHOLDERS = 64
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
}


class OpaqueObject:
    """Inert stand-in for a pickled object of a class that is not imported.

    Records the constructor arguments (``args``), the pickled state (``state``) and items set on
    it (``items``); it has no other behaviour. :attr:`pickled_name` is the class's full name.
    """

    pickled_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> OpaqueObject:
        obj = super().__new__(cls)
        obj.args, obj.state, obj.items = args, None, {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def __repr__(self) -> str:
        return f"<opaque {self.pickled_name}>"


def _placeholder(name: str) -> type[OpaqueObject]:
    return type(name.rsplit(".", 1)[-1], (OpaqueObject,), {"pickled_name": name})


def _may_replace(name: str) -> bool:
    return "." in name and name.split(".", 1)[0] in PLACEHOLDER_MODULES


def _load_torch(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with Namespace allowed and placeholders (see above)."""
    names: list[str] = []
    try:  # statically listed globals first (zip checkpoints), then one more per refusal
        names = [
            n
            for n in torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
            if n != "argparse.Namespace"
        ]
    except Exception:  # legacy (non-zip) or damaged file: found out by torch.load below
        names = []
    for _ in range(_MAX_PLACEHOLDERS):
        refused = sorted(n for n in names if not _may_replace(n))
        if refused:
            raise CheckpointError(
                f"{path}: refusing to load: the file pickles {', '.join(refused)}, which is "
                "neither tensor data nor fairseq/omegaconf metadata (objects of "
                f"{'/'.join(PLACEHOLDER_MODULES)} classes are read as inert placeholders; "
                "nothing else is accepted, and nothing from the file is executed)"
            )
        allowed: list[Any] = [argparse.Namespace, *((_placeholder(n), n) for n in names)]
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a damaged zip/pickle stream
            text = str(exc)
            unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
            if unsafe and unsafe.group(1) not in names:
                names.append(unsafe.group(1))
                continue
            blocked = re.search(r"unsupported GLOBAL (\S+) whose module", text)
            detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
            reason = (
                f"refusing to load {blocked.group(1)}"
                if blocked
                else (detail.group(1) if detail else (text.splitlines() or [""])[0])
            )
            raise CheckpointError(
                f"{path}: unreadable checkpoint (truncated or corrupt file?): "
                f"{type(exc).__name__}: {reason.strip()}"
            ) from None
    raise CheckpointError(f"{path}: too many pickled classes ({len(names)})")


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    """A ``.safetensors`` file (a JSON header + raw little-endian tensors; no code)."""
    data = path.read_bytes()
    try:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            raw = bytearray(data[8 + n + begin : 8 + n + end])
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            t = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            out[name] = t.reshape(info["shape"]).clone()
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: unreadable .safetensors file (truncated or corrupt?): "
            f"{type(exc).__name__}: {exc}"
        ) from None
    return out


def read_payload(path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any] | None]:
    """Load ``path`` safely: ``(payload, Hugging Face config.json next to it or None)``.

    ``path`` is a checkpoint file or a Hugging Face model folder (``model.safetensors`` or
    ``pytorch_model.bin``). Raises CheckpointError naming the file.
    """
    p = Path(path)
    if p.is_dir():
        files = [p / n for n in ("model.safetensors", "pytorch_model.bin") if (p / n).is_file()]
        if not files:
            raise CheckpointError(f"{p}: folder without model.safetensors or pytorch_model.bin")
        p = files[0]
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint not found")
    if not p.is_file():
        raise CheckpointError(f"{p}: not a regular file")
    payload = _load_safetensors(p) if p.suffix == ".safetensors" else _load_torch(p)
    config = None
    if (p.parent / "config.json").is_file():
        try:
            config = json.loads((p.parent / "config.json").read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{p.parent / 'config.json'}: unreadable ({exc})") from None
    return payload, config if isinstance(config, dict) else None


def plain(obj: Any, depth: int = 0) -> Any:
    """Plain data (dict/list/str/number/bool/None) from a pickled config: Namespaces become
    dicts, omegaconf placeholders their content, enum placeholders their value; anything
    else (tensors, unknown objects) becomes None."""
    if depth > 32:
        return None
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, OpaqueObject):
        state = obj.state[0] if isinstance(obj.state, tuple) and obj.state else obj.state
        if isinstance(state, dict) and "_content" in state:  # omegaconf DictConfig / ListConfig
            return plain(state["_content"], depth + 1)
        if isinstance(state, dict) and "_val" in state:  # omegaconf value node
            return plain(state["_val"], depth + 1)
        if len(obj.args) == 1 and state is None:  # enum member: EnumClass(value)
            return plain(obj.args[0], depth + 1)
        return None
    if isinstance(obj, Mapping):
        return {str(k): plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v, depth + 1) for v in obj]
    return obj if obj is None or isinstance(obj, str | int | float | bool) else None


def _fairseq_cfg(payload: Mapping[str, Any]) -> dict[str, Any]:
    """fairseq's model + task options (``args`` Namespace and/or ``cfg`` sections) as one dict."""
    merged: dict[str, Any] = {}
    args = plain(payload.get("args"))
    if isinstance(args, dict):
        merged.update(args)
    cfg = plain(payload.get("cfg"))
    if isinstance(cfg, dict):
        for section in ("task", "model"):
            if isinstance(cfg.get(section), dict):
                merged.update(cfg[section])
    return merged


def _hf_cfg(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """A Hugging Face ``config.json`` in fairseq's option names."""
    c = config or {}
    out: dict[str, Any] = {}
    if isinstance(c.get("num_attention_heads"), int):
        out["encoder_attention_heads"] = c["num_attention_heads"]
    if all(isinstance(c.get(k), list) for k in ("conv_dim", "conv_kernel", "conv_stride")):
        out["conv_feature_layers"] = repr(
            list(zip(c["conv_dim"], c["conv_kernel"], c["conv_stride"], strict=False))
        )
    if isinstance(c.get("do_stable_layer_norm"), bool):
        out["layer_norm_first"] = c["do_stable_layer_norm"]
    return out


_PATTERNS = (
    (
        "fairseq",
        re.compile(
            r"(w2v_encoder\.)?(w2v_model\.)?(post_extract_proj\.|"
            r"encoder\.layers\.\d+\.self_attn\.|encoder\.pos_conv\.0\.)"
        ),
    ),
    ("torchaudio", re.compile(r"(wav2vec2\.)?encoder\.transformer\.layers\.\d+\.attention\.")),
    ("hf", re.compile(r"(hubert\.|wav2vec2\.)?encoder\.layers\.\d+\.attention\.")),
)


def detect_format(payload: Any, what: str) -> tuple[str, Mapping[str, Any]]:
    """``(format, state dict)`` of a loaded payload: one of :data:`FORMATS`."""
    if not isinstance(payload, Mapping):
        raise CheckpointError(
            f"{what}: not a content-encoder checkpoint (a "
            f"{type(payload).__name__}, expected a dict)"
        )
    if "dims" in payload and "model_state_dict" in payload:
        return "whisper", payload
    candidates = [payload] + [
        payload[k]
        for k in ("model", "state_dict", "model_state_dict")
        if isinstance(payload.get(k), Mapping)
    ]
    for sd in candidates:
        keys = [k for k in sd if isinstance(k, str)]
        for name, pattern in _PATTERNS:
            if any(pattern.match(k) for k in keys):
                return name, sd
    shown = ", ".join(sorted(map(str, payload))[:8])
    raise CheckpointError(
        f"{what}: not a HuBERT/ContentVec (fairseq, torchaudio or Hugging Face) or Whisper "
        f"checkpoint: no known keys (top-level keys: {shown or 'none'})"
    )


def align_frames(
    feats: Tensor, first_centre: float, hop: float, frames: int, step: float
) -> Tensor:
    """Linear interpolation in time: ``feats`` (B, J, D), frame j centred at ``first_centre +
    hop j`` -> ``(B, D, frames)`` at centres ``step t`` (all in the same sample units); held
    constant outside the first/last centre."""
    j = feats.shape[1]
    pos = (torch.arange(frames, dtype=torch.float64) * step - first_centre) / hop
    pos = pos.clamp(0.0, j - 1)
    i0 = pos.floor().long().clamp(max=max(j - 2, 0))
    w = (pos - i0).to(feats.dtype).to(feats.device)[None, :, None]
    i0 = i0.to(feats.device)
    i1 = (i0 + 1).clamp(max=j - 1)
    out = feats[:, i0] * (1 - w) + feats[:, i1] * w
    return out.transpose(1, 2)


class ExternalContent(nn.Module):
    """A user's content encoder at our frame rate: ``(B, N)`` audio -> ``(B, D, N // hop + 1)``.

    The audio (``sample_rate``, 24 kHz) is resampled to 16 kHz, encoded (``encoder``: ``(B, M)
    -> (B, J, D)`` with attributes ``dim``, ``hop_16k``, ``first_centre_16k``,
    ``lookahead_16k``) and its 20 ms frames are interpolated to our frame centres (sample
    ``hop t``). Window-mode estimates for the realtime engine: :attr:`left_context_frames`
    (``left_context_s`` of past audio) and :attr:`lookahead_frames` (the future a frame's
    receptive field and the interpolation need; the attention sees further, which the
    engine's cross-fade absorbs).
    """

    def __init__(
        self,
        encoder: nn.Module,
        kind: str,
        sample_rate: int = 24000,
        hop_length: int = 256,
        left_context_s: float = 2.0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.kind = kind
        self.dim: int = encoder.dim
        self.sample_rate = sample_rate
        self.hop_length = hop_length
        self.left_context_frames = math.ceil(left_context_s * sample_rate / hop_length)
        future = (encoder.lookahead_16k + encoder.hop_16k) * sample_rate / ENCODER_RATE
        self.lookahead_frames = math.ceil(future / hop_length)

    def forward(self, audio: Tensor) -> Tensor:
        """``audio`` (B, N) float at :attr:`sample_rate` -> (B, dim, N // hop_length + 1)."""
        if audio.dim() != 2 or audio.shape[-1] < 1:
            raise ValueError(
                f"audio must be (batch, samples) with samples >= 1, got {tuple(audio.shape)}"
            )
        frames = audio.shape[-1] // self.hop_length + 1
        wav = audio.float()
        if self.sample_rate != ENCODER_RATE:
            wav = AF.resample(wav, self.sample_rate, ENCODER_RATE)
        feats = self.encoder(wav)
        step = self.hop_length * ENCODER_RATE / self.sample_rate
        return align_frames(
            feats, self.encoder.first_centre_16k, self.encoder.hop_16k, frames, step
        )


def load_content_model(
    path: str | os.PathLike[str],
    layer: int | None = None,
    projection: bool | None = None,
    device: str | torch.device = "cpu",
    *,
    sample_rate: int = 24000,
    hop_length: int = 256,
) -> ExternalContent:
    """Load a user's HuBERT/ContentVec/Whisper checkpoint as an :class:`ExternalContent`.

    ``layer``: 1-based transformer layer whose hidden state is used (fairseq's
    ``output_layer``); None/0: the encoder's final output (HuBERT/ContentVec base: layer 12;
    Whisper: after ``ln_post``). ``projection``: apply HuBERT/ContentVec's ``final_proj``
    (so-vits-svc 4.0 / RVC v1: layer 9 + projection, 256 channels). Raises CheckpointError
    naming the file for unreadable/unsafe files, unknown layouts, missing keys, mismatched
    shapes, a layer out of range or a projection the checkpoint lacks. Eval mode on ``device``.
    """
    what = str(path)
    payload, hf_config = read_payload(path)
    kind, sd = detect_format(payload, what)
    layer = 0 if layer is None else int(layer)
    if kind == "whisper":
        if projection:
            raise CheckpointError(
                f"{what}: a Whisper encoder has no final_proj (projection "
                "applies to HuBERT/ContentVec only)"
            )
        encoder: nn.Module = whisper_content(payload, layer, what)
    else:
        if kind == "fairseq":
            state, proj = rename_fairseq(sd, what)
            cfg = _fairseq_cfg(payload) if sd is not payload else {}
        elif kind == "hf":
            state, proj = rename_hf(sd, what)
            cfg = _hf_cfg(hf_config)
        else:
            state, proj = rename_torchaudio(sd, what)
            cfg = {}
        encoder = hubert_content(state, proj, cfg, layer, bool(projection), what)
    model = ExternalContent(encoder, kind, sample_rate, hop_length)
    return model.to(device).eval()
