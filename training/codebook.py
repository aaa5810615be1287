"""Fit a content codebook (``comostream train codebook``): k-means on training singers' content.

The content encoder of a ``train content`` checkpoint or of an inference file encodes the
train-split recordings of a corpus, of the singers it was trained on (a content checkpoint's
``meta.singers``, a model file's singer table), one utterance at a time as ``prep features``
does. Its active frames (loudness above ``content.active_db``) are standardised per channel,
at most ``max_frames`` of them (a seeded draw) are clustered into ``size`` codes (k-means++
seeding, Lloyd iterations), and the same kind of file is written with the codebook in its
encoder (``content.codebook_size``, ``content.codebook_temperature``; see
:mod:`comostream.models.content_codebook`). A codebook already there is fitted anew.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from comostream.models.acoustic import INFERENCE_KIND, AcousticModel
from comostream.models.audio import load_audio
from comostream.models.checkpoint_io import CheckpointError, load_checkpoint
from comostream.models.config import (
    CODEBOOK_MAX_FRAMES,
    CODEBOOK_SIZE,
    AudioConfig,
    Config,
    ContentConfig,
    config_from_dict,
    config_to_dict,
    load_config,
)
from comostream.models.content import CHECKPOINT_KIND, ContentEncoder, load_content_encoder
from comostream.models.loudness import loudness
from comostream.models.mel import mel_spectrogram
from comostream.training.checkpoint import save_checkpoint
from comostream.training.corpus import CorpusError, load_corpus

__all__ = ["fit_codebook", "kmeans"]

ITERATIONS = 30  # Lloyd iterations


def kmeans(x: Tensor, size: int, seed: int = 0, iterations: int = ITERATIONS) -> Tensor:
    """``size`` centroids ``(size, D)`` of the rows of ``x (N, D)``: k-means++ seeding from a
    ``seed``-ed generator, then Lloyd iterations; a code left empty moves to the row farthest
    from its own code. Deterministic for a seed."""
    if x.shape[0] < size:
        raise ValueError(f"{x.shape[0]} frames for {size} codes: need at least one per code")
    g = torch.Generator().manual_seed(seed)
    x = x.double()
    codes = x[torch.randint(x.shape[0], (1,), generator=g)]
    nearest = ((x - codes[0]) ** 2).sum(1)
    for _ in range(1, size):  # k-means++: the next code drawn in proportion to d^2
        pick = torch.multinomial(nearest / nearest.sum(), 1, generator=g)
        codes = torch.cat([codes, x[pick]])
        nearest = torch.minimum(nearest, ((x - x[pick]) ** 2).sum(1))
    for _ in range(iterations):
        d2 = torch.cdist(x, codes) ** 2
        assign = d2.argmin(1)
        sums = torch.zeros_like(codes).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=size).to(x.dtype)
        empty = counts == 0
        codes = torch.where(empty[:, None], codes, sums / counts.clamp(min=1.0)[:, None])
        if empty.any():  # re-seed on the worst-fitting rows
            worst = d2.gather(1, assign[:, None])[:, 0].argsort(descending=True)
            codes[empty] = x[worst[: int(empty.sum())]]
    return codes.float()


def _load_encoder(ck: dict[str, Any], path: Path) -> tuple[ContentEncoder, list[str], Config]:
    """The plain encoder of ``ck`` (without any codebook), the singers it was trained on and
    the config its frames are computed with."""
    if ck["kind"] == INFERENCE_KIND:
        model = AcousticModel.from_payload(ck, str(path))
        if model.content_encoder is None or model.content_cfg is None:
            raise CheckpointError(f"{path}: the model has no built-in content encoder")
        encoder, content_cfg, audio = model.content_encoder, model.content_cfg, model.cfg.audio
        singers = list(model.speakers)
    else:
        encoder = load_content_encoder(path)
        content_cfg, audio = encoder.cfg, _audio(ck)
        meta = ck.get("meta") if isinstance(ck.get("meta"), dict) else {}
        singers = [str(s) for s in (meta or {}).get("singers", [])]
    plain = ContentEncoder(dataclasses.replace(content_cfg, codebook_size=0), audio)
    state = {k: v for k, v in encoder.state_dict().items() if not k.startswith("codebook.")}
    plain.load_state_dict(state)
    cfg = dataclasses.replace(load_config(None), audio=audio, content=plain.cfg)
    return plain.eval(), singers, cfg


def _audio(ck: dict[str, Any]) -> AudioConfig:
    return config_from_dict({"audio": dict(ck["config"].get("audio", {}))}).audio


def _frames(encoder: ContentEncoder, cfg: Config, paths: list[Path], progress: bool) -> Tensor:
    """Active content frames ``(N, D)`` of the recordings at ``paths``."""
    rows = []
    bar = tqdm(paths, desc="codebook: encoding", unit="utt", file=sys.stderr, disable=not progress)
    for path in bar:
        audio = load_audio(path, cfg.audio.sample_rate)
        mel = torch.from_numpy(mel_spectrogram(audio, cfg.audio).astype(np.float32))
        active = np.asarray(loudness(audio, cfg.audio)) > cfg.content.active_db
        with torch.inference_mode():
            z = encoder(mel[None])[0]
        n = min(z.shape[1], active.shape[0])
        rows.append(z[:, :n][:, torch.from_numpy(active[:n])].T)
    return torch.cat(rows)


def fit_codebook(
    source: Path,
    corpus: Path,
    out: Path,
    size: int = CODEBOOK_SIZE,
    temperature: float = ContentConfig.codebook_temperature,
    seed: int = 0,
    max_frames: int = CODEBOOK_MAX_FRAMES,
    progress: bool = True,
) -> Path:
    """Write ``out``: ``source`` (a content checkpoint or an inference file) with a codebook of
    ``size`` codes fitted on ``corpus``'s train split (see the module docstring)."""
    source, out = Path(source), Path(out)
    same = out.resolve() == source.resolve()
    if not same and out.exists() and source.exists():
        same = os.path.samefile(source, out)  # a hard link of the input
    if same:
        raise ValueError(f"{out}: the output would replace the input; give another file")
    ContentConfig(codebook_size=size, codebook_temperature=temperature)  # checks the values
    ck = load_checkpoint(source, kind=(CHECKPOINT_KIND, INFERENCE_KIND))
    encoder, singers, cfg = _load_encoder(ck, source)
    utts = [u for u in load_corpus(corpus) if u.split == "train"]
    mine = [u for u in utts if u.singer in singers] if singers else utts
    if not mine:
        raise CorpusError(
            f"{corpus}: no train-split recordings of the singers {source} was trained on "
            f"({', '.join(singers) or 'none named'})"
        )
    frames = _frames(encoder, cfg, [u.path for u in mine], progress)
    g = torch.Generator().manual_seed(seed)
    if frames.shape[0] > max_frames:
        frames = frames[torch.randperm(frames.shape[0], generator=g)[:max_frames]]
    mean, std = frames.mean(0), frames.std(0).clamp(min=1e-6)
    codes = kmeans((frames - mean) / std, size, seed)
    content_cfg = dataclasses.replace(
        encoder.cfg, codebook_size=size, codebook_temperature=temperature
    )
    fitted = ContentEncoder(content_cfg, cfg.audio)
    fitted.load_state_dict(encoder.state_dict(), strict=False)
    assert fitted.codebook is not None
    fitted.codebook.mean.copy_(mean)
    fitted.codebook.std.copy_(std)
    fitted.codebook.codes.copy_(codes)
    payload = dict(ck)
    if ck["kind"] == INFERENCE_KIND:  # a model file: its encoder and that encoder's config
        payload["content_config"] = config_to_dict(content_cfg)
        payload["content_encoder"] = fitted.state_dict()
    else:  # a content checkpoint: also where the codebook came from (meta.codebook)
        config = dict(ck["config"])
        config["content"] = config_to_dict(content_cfg)
        payload["config"] = config
        payload["models"] = {**ck["models"], "encoder": fitted.state_dict()}
        meta = ck.get("meta")
        payload["meta"] = {
            **(meta if isinstance(meta, dict) else {}),
            "codebook": {
                "corpus": str(corpus),
                "singers": sorted({u.singer for u in mine}),
                "frames": int(frames.shape[0]),
                "seed": seed,
            },
        }
    return save_checkpoint(out, payload)
