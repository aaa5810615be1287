"""Random fixed-length training segments over a feature directory
(``comostream.training.features``).

:class:`SegmentDataset` is indexed by *global sample id* (any int >= 0, see
:mod:`comostream.training.sampler`): item ``k`` picks an utterance with probability proportional to
its frames (every frame equally likely) and a uniform start frame, both drawn from
``numpy.random.default_rng([seed, k])``. The same ``(seed, k)`` always gives the same segment,
whatever the worker, rank or resume point. Utterances shorter than ``segment_frames`` are
padded with silence (mel at the log floor, F0 0, unvoiced, loudness at its floor) and ``mask``
marks the real frames.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from comostream.models.loudness import FLOOR_DB
from comostream.training.feature_index import FeatureError, load_feature_index

__all__ = ["DEFAULT_ARRAYS", "SegmentDataset", "collate_segments"]

DEFAULT_ARRAYS = ("mel", "f0", "voiced", "loudness")


class SegmentDataset(Dataset[dict[str, Tensor]]):
    """Segments of ``segment_frames`` frames from split ``split`` of ``feat_dir``.

    An item is ``{"mel": (n_mels, S) float32, "f0": (S,) float32 Hz, "voiced": (S,) bool,
    "loudness": (S,) float32 dB, "speaker": () int64, "mask": (S,) bool}`` (plus any other
    array named in ``arrays``, e.g. ``content`` (C, S)). Speaker ids index the sorted singer
    list of ``features.json`` (``self.singers``). Loaded utterances are cached in memory when
    ``cache`` (per DataLoader worker). ``singer``: only that singer's utterances.
    """

    def __init__(
        self,
        feat_dir: str | Path,
        split: str,
        segment_frames: int,
        seed: int = 0,
        arrays: Sequence[str] = DEFAULT_ARRAYS,
        cache: bool = True,
        singer: str | None = None,
    ) -> None:
        if segment_frames < 1:
            raise ValueError("segment_frames must be >= 1")
        index, meta = load_feature_index(feat_dir)
        self.feat_dir, self.split = Path(feat_dir), split
        self.entries = index.split(split)
        if singer is not None:
            if singer not in index.singers:
                raise FeatureError(
                    f"{feat_dir}: no singer {singer!r} (has {', '.join(index.singers)})"
                )
            self.entries = [e for e in self.entries if e.singer == singer]
        if not self.entries:
            where = f"split {split!r}" + (f" of singer {singer!r}" if singer else "")
            raise FeatureError(f"{feat_dir}: no utterances in {where}")
        self.singers: list[str] = index.singers
        self.segment_frames, self.seed = segment_frames, seed
        self.arrays, self.cache = tuple(arrays), cache
        log_floor = float(meta.get("settings", {}).get("audio", {}).get("log_floor", 1e-5))
        self.pad_value = {"mel": math.log(log_floor), "loudness": FLOOR_DB}
        frames = np.array([e.frames for e in self.entries], dtype=np.float64)
        self._cdf = np.cumsum(frames) / frames.sum()
        self._speaker = [self.singers.index(e.singer) for e in self.entries]
        self._store: dict[int, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        """Nominal epoch: total frames // segment_frames (items exist for every id >= 0)."""
        total = sum(e.frames for e in self.entries)
        return max(1, total // self.segment_frames)

    def _load(self, i: int) -> dict[str, np.ndarray]:
        if i in self._store:
            return self._store[i]
        path = self.feat_dir / self.entries[i].path
        try:
            with np.load(path) as data:
                missing = [a for a in self.arrays if a not in data.files]
                if missing:
                    raise FeatureError(f"{path}: no array(s) {missing} (has {data.files})")
                arrays = {a: data[a] for a in self.arrays}
        except (OSError, ValueError) as exc:
            if isinstance(exc, FeatureError):
                raise
            raise FeatureError(f"{path}: unreadable feature file ({exc})") from None
        if self.cache:
            self._store[i] = arrays
        return arrays

    def __getitem__(self, sample_id: int) -> dict[str, Tensor]:
        if sample_id < 0:
            raise IndexError(f"sample id must be >= 0, got {sample_id}")
        rng = np.random.default_rng([self.seed, int(sample_id)])
        i = min(int(np.searchsorted(self._cdf, rng.random(), side="right")), len(self._cdf) - 1)
        data = self._load(i)
        total, seg = self.entries[i].frames, self.segment_frames
        start = int(rng.integers(0, total - seg + 1)) if total > seg else 0
        valid = min(seg, total - start)
        item: dict[str, Tensor] = {}
        for name, arr in data.items():
            piece = arr[..., start : start + valid]
            if valid < seg:
                pad = np.full(
                    (*arr.shape[:-1], seg - valid), self.pad_value.get(name, 0), dtype=arr.dtype
                )
                piece = np.concatenate([piece, pad], axis=-1)
            item[name] = torch.from_numpy(np.ascontiguousarray(piece))
        mask = torch.zeros(seg, dtype=torch.bool)
        mask[:valid] = True
        item["mask"] = mask
        item["speaker"] = torch.tensor(self._speaker[i], dtype=torch.int64)
        return item

    def batch(self, sample_ids: Iterable[int]) -> dict[str, Tensor]:
        """Collated items ``sample_ids`` (e.g. ``range(n)`` as a fixed validation set)."""
        return collate_segments([self[k] for k in sample_ids])


def collate_segments(items: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
    """Stack items: ``mel`` (B, n_mels, S), ``f0``/``voiced``/``loudness``/``mask`` (B, S),
    ``speaker`` (B,)."""
    if not items:
        raise ValueError("collate_segments: empty batch")
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}
