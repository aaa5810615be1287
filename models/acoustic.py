"""The acoustic model as inference sees it: conditioner + one-step consistency target.

Training (``training/acoustic.py``) builds the same pieces with :func:`build_conditioner` and
:func:`build_denoiser`; an *inference export* (kind ``"inference"``) holds only the conditioner,
the EMA target denoiser, the singer table and the config, and loads with
:meth:`AcousticModel.from_checkpoint` (``weights_only=True``, strict keys).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from comostream.models.backbone import Backbone
from comostream.models.checkpoint_io import CheckpointError, load_checkpoint, load_state_strict
from comostream.models.conditioner import Conditioner, SpeakerSpec
from comostream.models.config import (
    DEFAULT_F0_HZ,
    Config,
    ConfigError,
    ContentConfig,
    config_from_dict,
    config_to_dict,
)
from comostream.models.content import ContentEncoder
from comostream.models.edm import EDMPrecond, denormalise_mel
from comostream.models.retrieval import RetrievalIndex
from comostream.models.samplers import consistency_onestep

__all__ = [
    "INFERENCE_KIND",
    "AcousticModel",
    "build_conditioner",
    "build_denoiser",
    "condition_from_features",
    "hold_unvoiced",
]

INFERENCE_KIND = "inference"


def build_conditioner(cfg: Config, speakers: Sequence[str]) -> Conditioner:
    """The conditioner for ``speakers`` (table rows in this order)."""
    return Conditioner(cfg.model, speakers)


def build_denoiser(cfg: Config, consistency: bool) -> EDMPrecond:
    """A denoiser: EDM preconditioning (teacher) or consistency preconditioning (student/target)."""
    return EDMPrecond(Backbone(cfg.model, n_mels=cfg.audio.n_mels), cfg.edm, consistency)


def hold_unvoiced(
    f0_hz: Tensor, voiced: Tensor, initial_hz: Tensor | float = DEFAULT_F0_HZ
) -> Tensor:
    """Causal gap filling ``(B, T) -> (B, T)`` Hz: unvoiced frames repeat the last voiced F0.

    Frames before any voiced one get ``initial_hz``: a number, or ``(B, 1)`` per row (a stream's
    last voiced F0 so far). Causal on purpose: a stream holds one number of state and calls this
    block by block (:class:`comostream.models.chain.ConversionChain`), so conditioning is identical
    offline and streamed. No data-dependent branch: traceable and CUDA-graph capturable.
    """
    v = voiced.to(torch.bool) & (f0_hz > 0)
    frames = torch.arange(f0_hz.shape[-1], device=f0_hz.device).expand_as(f0_hz)
    last = torch.where(v, frames, torch.full_like(frames, -1)).cummax(dim=-1).values
    held = torch.gather(f0_hz, -1, last.clamp(min=0))
    if not isinstance(initial_hz, Tensor):
        initial_hz = torch.full_like(f0_hz, initial_hz)
    return torch.where(last >= 0, held, initial_hz.to(f0_hz.dtype))


def condition_from_features(
    conditioner: Conditioner,
    features: Mapping[str, Tensor],
    speaker: Tensor | SpeakerSpec | Sequence[SpeakerSpec],
    transpose_semitones: float = 0.0,
) -> Tensor:
    """Per-frame condition ``(B, cond_channels, T)`` from cached/extracted features.

    ``features``: ``f0`` (B, T) Hz (0 = unvoiced), ``voiced`` (B, T), ``loudness`` (B, T) dB and,
    when the model takes content, ``content`` (B, content_dim, T). Transposition is applied to F0
    here, before the conditioner.
    """
    f0, voiced, loud = features["f0"], features["voiced"], features["loudness"]
    content_dim = conditioner.input.weight.shape[1] - 3
    if content_dim > 0:
        if "content" not in features:
            raise ValueError(
                f"the model takes {content_dim} content channels but the features have no "
                "'content' (prepare features with a content encoder)"
            )
        content = features["content"]
    else:
        content = f0.new_zeros(f0.shape[0], 0, f0.shape[-1])
    if transpose_semitones:
        f0 = f0 * 2.0 ** (transpose_semitones / 12.0)
    return conditioner(content, hold_unvoiced(f0, voiced), voiced, loud, speaker)


class AcousticModel(nn.Module):
    """Inference: features -> log-mel ``(B, n_mels, T)`` in one network evaluation.

    ``content_encoder`` (built from ``content_cfg``) is the encoder whose features the model was
    trained on; None for a model without content input.
    """

    def __init__(
        self, cfg: Config, speakers: Sequence[str], content_cfg: ContentConfig | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.conditioner = build_conditioner(cfg, speakers)
        self.target = build_denoiser(cfg, consistency=True)
        self.content_cfg = content_cfg
        self.content_encoder = ContentEncoder(content_cfg, cfg.audio) if content_cfg else None
        if content_cfg is not None and content_cfg.content_dim != cfg.model.content_dim:
            raise ConfigError(
                f"content encoder gives {content_cfg.content_dim} channels, the "
                f"model takes {cfg.model.content_dim}"
            )
        self.lookahead_frames = self.conditioner.lookahead_frames + self.target.lookahead_frames
        self.retrieval: RetrievalIndex | None = None  # the singers' content banks, if any

    def set_index(self, banks: Mapping[str, Tensor]) -> None:
        """Use retrieval banks ``{singer: (K, content_dim)}`` (none: no index)."""
        dim = self.cfg.model.content_dim
        self.retrieval = RetrievalIndex(self.speakers, banks, dim) if banks else None

    @property
    def speakers(self) -> tuple[str, ...]:
        """Singer names, in table order."""
        return self.conditioner.speakers.names

    def resolve_speaker(self, spec: SpeakerSpec | None = None) -> SpeakerSpec:
        """The singer a conversion uses: ``spec`` with its names checked
        (:class:`~comostream.models.conditioner.UnknownSpeakerError`), or the default singer (the
        first) for None."""
        return self.conditioner.speakers.resolve(spec)

    @torch.inference_mode()
    def generate(
        self,
        features: Mapping[str, Tensor],
        speaker: Tensor | SpeakerSpec | Sequence[SpeakerSpec],
        noise: Tensor,
        transpose_semitones: float = 0.0,
    ) -> Tensor:
        """Log-mel ``(B, n_mels, T)``; ``noise (B, n_mels, T)`` standard normal, passed in."""
        cond = condition_from_features(self.conditioner, features, speaker, transpose_semitones)
        x = consistency_onestep(self.target, noise, cond, self.cfg.edm.sigma_max)
        return denormalise_mel(x, self.cfg.edm)

    def export_payload(self) -> dict[str, Any]:
        """The inference checkpoint's contents (see :mod:`comostream.training.checkpoint` for
        writing)."""
        payload: dict[str, Any] = {
            "kind": INFERENCE_KIND,
            "config": config_to_dict(self.cfg),
            "speakers": list(self.speakers),
            "conditioner": self.conditioner.state_dict(),
            "target": self.target.state_dict(),
        }
        if self.content_encoder is not None and self.content_cfg is not None:
            payload["content_config"] = config_to_dict(self.content_cfg)
            payload["content_encoder"] = self.content_encoder.state_dict()
        if self.retrieval is not None:
            payload["index"] = self.retrieval.banks()
        return payload

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device | str = "cpu") -> AcousticModel:
        """Load an inference export: eval mode, on ``device``; CheckpointError if unusable."""
        return cls.from_payload(load_checkpoint(path, kind=INFERENCE_KIND), str(path)).to(device)

    @classmethod
    def from_payload(cls, ck: dict[str, Any], what: str) -> AcousticModel:
        """The model of an already loaded inference export ``ck`` (eval mode, on the CPU);
        ``what`` (the file) names it in errors. CheckpointError if unusable."""
        try:
            cfg = config_from_dict(ck["config"], f"{what} (config)")
            speakers = [str(s) for s in ck["speakers"]]
            content = ck.get("content_config")
            content_cfg = config_from_dict({"content": content}).content if content else None
            model = cls(cfg, speakers, content_cfg)
        except (KeyError, TypeError, ConfigError) as exc:
            raise CheckpointError(f"{what}: malformed inference checkpoint ({exc})") from None
        load_state_strict(model.conditioner, ck["conditioner"], f"{what}: conditioner")
        load_state_strict(model.target, ck["target"], f"{what}: target")
        if model.content_encoder is not None:
            load_state_strict(model.content_encoder, ck["content_encoder"], f"{what}: content")
        try:
            model.set_index(dict(ck.get("index") or {}))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{what}: malformed retrieval index ({exc})") from None
        return model.eval()
