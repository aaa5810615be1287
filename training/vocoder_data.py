"""Vocoder training data: aligned (log-mel, F0, waveform) segments.

Features (mel, F0) come from a feature folder (``comostream prep features``); the waveform of
each utterance comes from its corpus (``features.json`` names it as ``source``; ``--corpus``
overrides), matched by the utterance id ``<singer>/<file stem>``. Frame ``t`` of the features
owns samples ``[hop t, hop t + hop)`` (the vocoder's convention), so a segment of frames
``[s, s + S)`` pairs with samples ``[hop s, hop (s + S))``.

:class:`VocoderSegments` is indexed by global sample id (see :mod:`comostream.training.sampler`):
item ``k`` draws its utterance (probability proportional to frames), start frame and noise offset
from ``numpy.random.default_rng([seed, k])``. Segments running past the end of an utterance
are padded with silence (mel at the log floor, F0 0, zero samples).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from comostream.models.audio import load_audio
from comostream.models.config import AudioConfig
from comostream.training.corpus import load_corpus
from comostream.training.feature_index import FeatureEntry, FeatureError, load_feature_index

__all__ = ["VocoderSegments", "collate", "corpus_of", "load_utterances"]

NOISE_OFFSET_MAX = 2**31  # noise index offsets are drawn from [0, this)


def corpus_of(feat_dir: Path, corpus: Path | None) -> Path:
    """The corpus folder of ``feat_dir``: ``corpus`` if given, else ``features.json``'s
    ``source`` (a relative path is tried from the working directory, then from ``feat_dir``)."""
    if corpus is not None:
        return Path(corpus)
    _, meta = load_feature_index(feat_dir)
    source = meta.get("source")
    if not isinstance(source, str) or not source:
        raise FeatureError(f"{feat_dir}/features.json names no corpus ('source'); pass --corpus")
    path = Path(source)
    if not path.is_dir() and not path.is_absolute() and (feat_dir / path).is_dir():
        path = feat_dir / path
    return path


def load_utterances(
    feat_dir: Path, corpus: Path, split: str, audio: AudioConfig, limit: int | None = None
) -> list[tuple[FeatureEntry, dict[str, np.ndarray]]]:
    """``(entry, {"mel" (n_mels, T), "f0" (T,), "audio" (T * hop,)})`` for split ``split``.

    ``audio`` is the corpus recording at the model rate, zero-padded (or cut) to ``T * hop``
    samples. Raises FeatureError when a recording is missing from the corpus or its length does
    not fit the features' frame count (``samples // hop + 1``).
    """
    index, _ = load_feature_index(feat_dir)
    entries = index.split(split)[:limit]
    by_id = {f"{u.singer}/{u.path.stem}": u for u in load_corpus(corpus)}
    out = []
    hop = audio.hop_length
    for e in entries:
        utt = by_id.get(e.utt)
        if utt is None:
            raise FeatureError(
                f"{feat_dir}: utterance {e.utt} is not in corpus {corpus} "
                "(pass the corpus the features were made from with --corpus)"
            )
        wav = load_audio(utt.path, audio.sample_rate)
        if wav.shape[0] // hop + 1 != e.frames:
            raise FeatureError(
                f"{utt.path}: {wav.shape[0]} samples do not fit the {e.frames} "
                f"frames of {feat_dir / e.path}"
            )
        with np.load(feat_dir / e.path) as data:
            mel, f0 = data["mel"].astype(np.float32), data["f0"].astype(np.float32)
        wav = np.pad(wav, (0, e.frames * hop - wav.shape[0]))
        out.append((e, {"mel": mel, "f0": f0, "audio": wav.astype(np.float32)}))
    return out


class VocoderSegments(Dataset[dict[str, Tensor]]):
    """Segments of ``frames`` frames: ``{"mel": (n_mels, S), "f0": (S,) Hz, "audio":
    (S * hop,), "offset": () int64 noise index offset}``, all utterances held in memory."""

    def __init__(
        self,
        feat_dir: str | Path,
        corpus: str | Path,
        split: str,
        frames: int,
        audio: AudioConfig,
        seed: int = 0,
    ) -> None:
        if frames < 1:
            raise ValueError("frames must be >= 1")
        self.utts = load_utterances(Path(feat_dir), Path(corpus), split, audio)
        if not self.utts:
            raise FeatureError(f"{feat_dir}: no utterances in split {split!r}")
        self.frames, self.seed, self.hop = frames, seed, audio.hop_length
        self.log_floor = math.log(audio.log_floor)
        sizes = np.array([e.frames for e, _ in self.utts], dtype=np.float64)
        self._cdf = np.cumsum(sizes) / sizes.sum()

    def __len__(self) -> int:
        """Nominal epoch: total frames // segment frames (every id >= 0 is an item)."""
        return max(1, sum(e.frames for e, _ in self.utts) // self.frames)

    def __getitem__(self, sample_id: int) -> dict[str, Tensor]:
        if sample_id < 0:
            raise IndexError(f"sample id must be >= 0, got {sample_id}")
        rng = np.random.default_rng([self.seed, int(sample_id)])
        i = min(int(np.searchsorted(self._cdf, rng.random(), side="right")), len(self._cdf) - 1)
        entry, data = self.utts[i]
        seg, hop = self.frames, self.hop
        start = int(rng.integers(0, entry.frames - seg + 1)) if entry.frames > seg else 0
        n = min(seg, entry.frames - start)
        mel = np.full((data["mel"].shape[0], seg), self.log_floor, dtype=np.float32)
        mel[:, :n] = data["mel"][:, start : start + n]
        f0 = np.zeros(seg, dtype=np.float32)
        f0[:n] = data["f0"][start : start + n]
        wav = np.zeros(seg * hop, dtype=np.float32)
        wav[: n * hop] = data["audio"][start * hop : (start + n) * hop]
        return {
            "mel": torch.from_numpy(mel),
            "f0": torch.from_numpy(f0),
            "audio": torch.from_numpy(wav),
            "offset": torch.tensor(int(rng.integers(0, NOISE_OFFSET_MAX))),
        }

    def batch(self, sample_ids: Iterable[int]) -> dict[str, Tensor]:
        """Collated items ``sample_ids`` (e.g. a fixed validation set)."""
        return collate([self[k] for k in sample_ids])


def collate(items: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack items: ``mel (B, n_mels, S)``, ``f0 (B, S)``, ``audio (B, S hop)``, ``offset (B,)``."""
    if not items:
        raise ValueError("collate: empty batch")
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}
