"""Models for the engine from files: an inference export, and a vocoder from the same file, a
``train vocoder`` checkpoint, or a user's BigVGAN / HiFi-GAN generator (window mode)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from comostream.models.acoustic import INFERENCE_KIND, AcousticModel
from comostream.models.checkpoint_io import CheckpointError, load_checkpoint
from comostream.models.config import RealtimeConfig
from comostream.models.vocoder import Vocoder, load_vocoder

__all__ = ["load_models", "load_vocoder_any", "load_voiceprints"]


def load_vocoder_any(
    path: str | os.PathLike[str],
    device: torch.device | str = "cpu",
    realtime: RealtimeConfig | None = None,
) -> nn.Module:
    """A built-in vocoder (``train vocoder`` checkpoint or export) or, for anything else, a
    user's generator through :func:`comostream.models.ext_vocoder.load_external_vocoder`, wrapped
    for window mode. Raises :class:`CheckpointError` naming the file when neither fits."""
    from comostream.models.ext_vocoder import load_external_vocoder
    from comostream.realtime.window import WindowedVocoder

    try:
        return load_vocoder(path, device)
    except CheckpointError as ours:
        try:
            ext = load_external_vocoder(path, device=device)
        except CheckpointError as theirs:
            raise CheckpointError(f"{path}: not a usable vocoder. As a comostream vocoder: "
                                  f"{ours}. As a BigVGAN/HiFi-GAN generator: {theirs}") from None
    return WindowedVocoder(ext, realtime).to(device)


def load_models(
    checkpoint: str | os.PathLike[str],
    vocoder: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
    realtime: RealtimeConfig | None = None,
) -> tuple[AcousticModel, nn.Module]:
    """The acoustic model of an inference export and its vocoder: ``vocoder`` when given, else
    the one stored in the export (``comostream export --vocoder``)."""
    model = AcousticModel.from_checkpoint(checkpoint, device)
    if vocoder is not None:
        return model, load_vocoder_any(vocoder, device, realtime)
    ck: dict[str, Any] = load_checkpoint(checkpoint, kind=INFERENCE_KIND)
    if "vocoder" not in ck:
        raise CheckpointError(
            f"{checkpoint}: the model file holds no vocoder; pass --vocoder (a `comostream train "
            "vocoder` checkpoint or your BigVGAN/HiFi-GAN generator) or re-export with "
            "`comostream export --vocoder`")  # fmt: skip
    voc = Vocoder.from_payload(ck["vocoder"], f"{Path(checkpoint)} (vocoder)").to(device)
    return model, voc


def load_voiceprints(checkpoint: str | os.PathLike[str]) -> dict[str, dict]:
    """The singers' voice prints stored by ``comostream export --corpus`` ({} if none)."""
    ck: dict[str, Any] = load_checkpoint(checkpoint, kind=INFERENCE_KIND)
    prints = ck.get("voiceprints") or {}
    if not isinstance(prints, dict):
        raise CheckpointError(f"{checkpoint}: malformed 'voiceprints'")
    return {str(k): dict(v) for k, v in prints.items()}
