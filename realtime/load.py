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

__all__ = ["load_models", "load_vocoder_any", "load_voiceprints", "read_export"]


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
            raise CheckpointError(
                f"{path}: not a usable vocoder. As a comostream vocoder: "
                f"{ours}. As a BigVGAN/HiFi-GAN generator: {theirs}"
            ) from None
    return WindowedVocoder(ext, realtime).to(device)


def read_export(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """The contents of an inference export (``comostream export``): read once, then given to
    :func:`load_models` and :func:`load_voiceprints` as ``payload``."""
    return load_checkpoint(checkpoint, kind=INFERENCE_KIND)


def load_models(
    checkpoint: str | os.PathLike[str],
    vocoder: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
    realtime: RealtimeConfig | None = None,
    payload: dict[str, Any] | None = None,
) -> tuple[AcousticModel, nn.Module]:
    """The acoustic model of an inference export and its vocoder: ``vocoder`` when given, else
    the one stored in the export (``comostream export --vocoder``). ``payload``: the export
    already read by :func:`read_export` (else the file is read here, once)."""
    ck = read_export(checkpoint) if payload is None else payload
    model = AcousticModel.from_payload(ck, str(checkpoint)).to(device)
    if vocoder is not None:
        return model, load_vocoder_any(vocoder, device, realtime)
    if "vocoder" not in ck:
        raise CheckpointError(
            f"{checkpoint}: the model file holds no vocoder; pass --vocoder (a `comostream train "
            "vocoder` checkpoint or your BigVGAN/HiFi-GAN generator) or re-export with "
            "`comostream export --vocoder`"
        )
    voc = Vocoder.from_payload(ck["vocoder"], f"{Path(checkpoint)} (vocoder)").to(device)
    return model, voc


def load_voiceprints(
    checkpoint: str | os.PathLike[str], payload: dict[str, Any] | None = None
) -> dict[str, dict]:
    """The singers' voice prints stored by ``comostream export --corpus`` ({} if none);
    ``payload`` as in :func:`load_models`."""
    ck = read_export(checkpoint) if payload is None else payload
    prints = ck.get("voiceprints") or {}
    if not isinstance(prints, dict):
        raise CheckpointError(f"{checkpoint}: malformed 'voiceprints'")
    return {str(k): dict(v) for k, v in prints.items()}
