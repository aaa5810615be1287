"""Tiny random-weight models and an inference file with them, for engine-level tests.

The vocoder is F0-driven (harmonic-plus-noise), so even untrained its output's pitch follows the
conditioning F0: tests of F0 tracking and timing can use these files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from comostream.models.acoustic import AcousticModel
from comostream.models.config import ContentConfig, load_config
from comostream.models.vocoder import Vocoder, vocoder_config

SINGERS = ["alto", "bass", "tenor"]


def tiny_models(
    lookahead: int = 1, singers: list[str] | None = None
) -> tuple[AcousticModel, Vocoder]:
    """A tiny acoustic model (with its content encoder) and a tiny vocoder, seeded, eval mode."""
    torch.manual_seed(0)
    cfg = load_config("configs/tiny.toml")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, lookahead_frames=lookahead))
    content = ContentConfig(channels=16, layers=2, content_dim=cfg.model.content_dim,
                            lookahead_frames=lookahead)  # fmt: skip
    model = AcousticModel(cfg, singers or SINGERS, content).eval()
    vocoder = Vocoder(vocoder_config("tiny", lookahead_frames=lookahead)).eval()
    return model, vocoder


def write_tiny_model(path: Path, lookahead: int = 1, singers: list[str] | None = None) -> Path:
    """An inference file (``comostream export`` format, vocoder included) of :func:`tiny_models`."""
    from comostream.training.checkpoint import save_checkpoint

    model, vocoder = tiny_models(lookahead, singers)
    return save_checkpoint(path, dict(model.export_payload(), vocoder=vocoder.export_payload()))
