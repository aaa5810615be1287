"""Data for content-encoder training: a cache of WORLD-perturbed mels and its segment dataset.
(The ``content`` feature extractor, the trained encoder's output cached next to mel/F0/loudness,
is in :mod:`comostream.training.features`.)

Cache layout: ``CACHE_DIR/<settings hash>/<singer>/<utt>.npz`` with ``mel`` (n_mels, T) float32
(original), ``perturbed`` (P, n_mels, T) float32 (P = ``content.perturbations``), ``f0`` (T,)
Hz, ``voiced`` (T,) bool, ``loudness`` (T,) dB. The hash covers every setting the arrays
depend on (audio, F0, perturbation ranges), so changed settings never reuse stale arrays; each
utterance's perturbations are seeded by ``(train.seed, utterance id)``.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from comostream.models.audio import load_audio
from comostream.models.config import Config, ContentConfig, config_to_dict
from comostream.models.content import centre_level
from comostream.models.loudness import FLOOR_DB
from comostream.models.mel import mel_spectrogram
from comostream.models.streaming import centre_prefix_stats
from comostream.training.corpus import Utterance, load_corpus
from comostream.training.dataset import collate_segments
from comostream.training.feature_index import FeatureError
from comostream.training.features import EXTRACTORS, save_npz
from comostream.training.perturb import analyze_utterance, draw_perturbation, perturb

__all__ = [
    "CachedUtterance",
    "PerturbedSegments",
    "build_perturbation_cache",
    "corpus_singers",
]

PERTURB_KEYS = (
    "perturbations",
    "pitch_shift_min",
    "pitch_shift_max",
    "formant_alpha_min",
    "formant_alpha_max",
    "eq_bands",
    "eq_db",
    "breathiness_max",
)


@dataclass(frozen=True)
class CachedUtterance:
    """One cached utterance: id ``<singer>/<stem>``, singer, split, frames T, npz path."""

    utt: str
    singer: str
    split: str
    frames: int
    path: Path


def corpus_singers(data_dir: Path, utts: Sequence[Utterance]) -> list[str]:
    """Singers in corpus order: ``corpus.json``'s table order (synthetic corpus), else sorted."""
    present = {u.singer for u in utts}
    info = Path(data_dir) / "corpus.json"
    if info.is_file():
        names = [s.get("name") for s in json.loads(info.read_text("utf-8")).get("singers", [])]
        ordered = [n for n in names if n in present]
        return ordered + sorted(present - set(ordered))
    return sorted(present)


def _cache_key(cfg: Config) -> str:
    d = config_to_dict(cfg)
    settings = {
        "audio": d["audio"],
        "f0": d["f0"],
        "f0_source": cfg.features.f0_source,
        "content": {k: d["content"][k] for k in PERTURB_KEYS},
        "seed": cfg.train.seed,
    }
    if cfg.content.formant_jitter:  # only when on, so caches made before it stay valid
        settings["content"]["formant_jitter"] = cfg.content.formant_jitter
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _compute(utt: Utterance, cfg: Config) -> dict[str, np.ndarray]:
    """Original mel/F0/loudness and ``P`` perturbed mels of one utterance."""
    a = cfg.audio
    audio = load_audio(utt.path, a.sample_rate)
    arrays: dict[str, np.ndarray] = {}
    for name in ("mel", "f0", "loudness"):
        arrays.update(EXTRACTORS[name].fn(audio, utt, cfg))
    world = analyze_utterance(audio, a.sample_rate, a.hop_length, arrays["f0"].astype(np.float64))
    uid = f"{utt.singer}/{utt.path.stem}"
    rng = np.random.default_rng([cfg.train.seed, zlib.crc32(uid.encode())])
    mels = []
    for _ in range(cfg.content.perturbations):
        y = perturb(world, draw_perturbation(rng, cfg.content))
        mel = mel_spectrogram(y.astype(np.float32), a)
        mels.append(mel[:, : arrays["mel"].shape[-1]])
    arrays["perturbed"] = np.stack(mels).astype(np.float32)
    return arrays


def build_perturbation_cache(
    data_dir: Path,
    cache_dir: Path,
    cfg: Config,
    singers: Sequence[str],
    splits: Sequence[str] = ("train", "valid"),
    progress: bool = True,
) -> list[CachedUtterance]:
    """Cache (or reuse) the arrays of ``singers``' utterances of ``splits`` under ``cache_dir``.

    Raises CorpusError for a bad corpus, FeatureError if nothing is left to train on.
    """
    root = Path(cache_dir) / _cache_key(cfg)
    utts = [u for u in load_corpus(Path(data_dir)) if u.singer in singers and u.split in splits]
    if not utts:
        raise FeatureError(f"{data_dir}: no utterances of singers {list(singers)} in {splits}")
    out: list[CachedUtterance] = []
    for utt in tqdm(utts, desc="perturb", unit="utt", file=sys.stderr, disable=not progress):
        path = root / utt.singer / f"{utt.path.stem}.npz"
        if not path.is_file():
            save_npz(path, _compute(utt, cfg))
        with np.load(path) as data:
            frames = int(data["mel"].shape[-1])
        out.append(
            CachedUtterance(f"{utt.singer}/{utt.path.stem}", utt.singer, utt.split, frames, path)
        )
    return out


class PerturbedSegments(Dataset[dict[str, Tensor]]):
    """Segments of ``segment_frames`` frames, indexed by global sample id (see
    :class:`comostream.training.dataset.SegmentDataset` for the sampling scheme).

    Item: ``src`` (n_mels, S) a randomly chosen perturbed mel with a random level change of up
    to ``gain_db`` dB (what the encoder sees), ``mel`` (n_mels, S) the original, ``f0`` (S,) Hz,
    ``voiced`` (S,) bool, ``loudness`` (S,) dB, ``speaker`` () int64 (index into ``singers``),
    ``mask`` (S,) bool (real frames; short utterances are padded with silence); with
    ``centre`` (a content config whose ``centre_tau_frames > 0``) also ``centre_num`` (n_mels,),
    ``centre_den`` and ``centre_age`` (1,): the encoder's input-centring state after the frames
    of the utterance before the segment (same ``src`` version and level), so a segment is
    centred as it would be inside the whole utterance. With ``pair``, also ``src2`` (another
    perturbed version of the same frames, its own level change; ``centre2_*`` its centring
    state): what the encoder must map to the same content (``content.consistency_weight``).
    """

    def __init__(
        self,
        entries: Sequence[CachedUtterance],
        singers: Sequence[str],
        segment_frames: int,
        gain_db: float,
        log_floor: float,
        seed: int = 0,
        centre: ContentConfig | None = None,
        pair: bool = False,
    ) -> None:
        if not entries:
            raise FeatureError("PerturbedSegments: no utterances")
        self.entries, self.singers = list(entries), list(singers)
        self.segment_frames, self.gain_db, self.seed = segment_frames, gain_db, seed
        self.floor = math.log(log_floor)
        self.centre = centre if centre is not None and centre.centre_tau_frames > 0 else None
        self.pair = pair
        frames = np.array([e.frames for e in self.entries], dtype=np.float64)
        self._cdf = np.cumsum(frames) / frames.sum()
        self._store: dict[int, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return max(1, sum(e.frames for e in self.entries) // self.segment_frames)

    def _load(self, i: int) -> dict[str, np.ndarray]:
        if i not in self._store:
            with np.load(self.entries[i].path) as data:
                self._store[i] = {k: data[k] for k in data.files}
        return self._store[i]

    def __getitem__(self, sample_id: int) -> dict[str, Tensor]:
        rng = np.random.default_rng([self.seed, int(sample_id)])
        i = min(int(np.searchsorted(self._cdf, rng.random(), side="right")), len(self._cdf) - 1)
        data, seg = self._load(i), self.segment_frames
        total = self.entries[i].frames
        start = int(rng.integers(0, total - seg + 1)) if total > seg else 0
        stop = min(total, start + seg)
        version = int(rng.integers(0, data["perturbed"].shape[0]))
        gain = rng.uniform(-self.gain_db, self.gain_db) / 20.0 * math.log(10.0)
        src = np.maximum(data["perturbed"][version, :, start:stop] + gain, self.floor)
        versions = [(version, gain)]
        pieces = {"src": src}
        if self.pair:  # another version (drawn after the first's draws: those stay as they were)
            count = data["perturbed"].shape[0]
            other = (version + 1 + int(rng.integers(0, max(1, count - 1)))) % count
            gain2 = rng.uniform(-self.gain_db, self.gain_db) / 20.0 * math.log(10.0)
            pieces["src2"] = np.maximum(data["perturbed"][other, :, start:stop] + gain2, self.floor)
            versions.append((other, gain2))
        pieces.update(
            {
                "mel": data["mel"][:, start:stop],
                "f0": data["f0"][start:stop],
                "voiced": data["voiced"][start:stop],
                "loudness": data["loudness"][start:stop],
            }
        )
        pad = {"src": self.floor, "src2": self.floor, "mel": self.floor, "loudness": FLOOR_DB}
        item = {}
        for name, arr in pieces.items():
            if arr.shape[-1] < seg:
                width = [(0, 0)] * (arr.ndim - 1) + [(0, seg - arr.shape[-1])]
                arr = np.pad(arr, width, constant_values=pad.get(name, 0))
            item[name] = torch.from_numpy(np.ascontiguousarray(arr))
        for name in ("src", "src2", "mel"):
            if name in item:
                item[name] = item[name].float()
        mask = torch.zeros(seg, dtype=torch.bool)
        mask[: stop - start] = True
        item["mask"] = mask
        speaker = self.singers.index(self.entries[i].singer)
        item["speaker"] = torch.tensor(speaker, dtype=torch.int64)
        if self.centre is not None:  # the encoder's input centring, warmed up on the frames before
            c = self.centre
            for tag, (v, g) in zip(("centre", "centre2"), versions, strict=False):
                prefix = np.maximum(data["perturbed"][v, :, :start] + g, self.floor)
                x = torch.from_numpy((prefix - c.mel_mean) / c.mel_std).float()
                stats = centre_prefix_stats(x, c.centre_tau_frames, centre_level(c))
                for key, value in stats.items():
                    item[f"{tag}_{key}"] = value
        return item

    def batch(self, sample_ids: Sequence[int]) -> dict[str, Tensor]:
        """Collated items ``sample_ids`` (e.g. ``range(n)``: a fixed validation set)."""
        return collate_segments([self[k] for k in sample_ids])
