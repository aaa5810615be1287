"""The index of a feature directory (``index.jsonl``, ``skipped.jsonl``, ``features.json``).

Written by :func:`comostream.training.features.prepare_features`, read by :func:`load_feature_index`
(the dataset). See :mod:`comostream.training.features` for the layout.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FEATURES_FORMAT",
    "FeatureEntry",
    "FeatureError",
    "FeatureIndex",
    "Skipped",
    "load_feature_index",
    "read_jsonl",
    "write_text_atomic",
]

FEATURES_FORMAT = 1


class FeatureError(ValueError):
    """A feature directory is missing, malformed or was made with other settings."""


@dataclass(frozen=True)
class FeatureEntry:
    """One cached utterance: id ``<singer>/<stem>``, frames T, ``path`` relative to FEAT_DIR."""

    utt: str
    singer: str
    split: str
    frames: int
    path: str

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> FeatureEntry:
        try:
            return cls(
                str(row["utt"]),
                str(row["singer"]),
                str(row["split"]),
                int(row["frames"]),
                str(row["path"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FeatureError(f"malformed index row {row!r} ({exc})") from None


@dataclass(frozen=True)
class Skipped:
    """A file left out, with the reason (unreadable, silent, unusable ground truth, ...)."""

    path: str
    singer: str
    reason: str


@dataclass
class FeatureIndex:
    """What a feature directory holds; ``singers[i]`` is speaker id ``i``."""

    feat_dir: Path
    singers: list[str]
    entries: list[FeatureEntry]
    skipped: list[Skipped] = field(default_factory=list)
    computed: int = 0  # utterances computed by the run that returned this index
    reused: int = 0  # utterances found already done

    def split(self, name: str) -> list[FeatureEntry]:
        """Entries of split ``name`` ("train", "valid", "test")."""
        return [e for e in self.entries if e.split == name]

    def speaker_id(self, singer: str) -> int:
        return self.singers.index(singer)

    def summary(self) -> str:
        """A human-readable report (counts, minutes per split, every skipped file)."""
        total = sum(e.frames for e in self.entries)
        lines = [
            f"{len(self.entries)} utterances of {len(self.singers)} singers in "
            f"{self.feat_dir} ({self.computed} computed, {self.reused} already done), "
            f"{total} frames"
        ]
        for name in ("train", "valid", "test"):
            part = self.split(name)
            if part:
                lines.append(
                    f"  {name}: {len(part)} utterances, {sum(e.frames for e in part)} frames"
                )
        if self.skipped:
            lines.append(f"{len(self.skipped)} skipped (listed in skipped.jsonl):")
            lines += [f"  {s.path}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)

    def write(self) -> None:
        """Write ``index.jsonl`` and ``skipped.jsonl`` atomically."""
        rows = "".join(json.dumps(asdict(e)) + "\n" for e in self.entries)
        write_text_atomic(self.feat_dir / "index.jsonl", rows)
        rows = "".join(json.dumps(asdict(s)) + "\n" for s in self.skipped)
        write_text_atomic(self.feat_dir / "skipped.jsonl", rows)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a ``.jsonl`` file; FeatureError naming the file and line if bad."""
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise FeatureError(f"{path}, line {lineno}: not valid JSON ({exc.msg})") from None
    return rows


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_feature_index(feat_dir: str | Path) -> tuple[FeatureIndex, dict[str, Any]]:
    """Read a feature directory: ``(index, features.json as a dict)``.

    Raises FeatureError if ``features.json`` or ``index.jsonl`` is missing or malformed.
    """
    feat_dir = Path(feat_dir)
    meta_path, index_path = feat_dir / "features.json", feat_dir / "index.jsonl"
    if not meta_path.is_file() or not index_path.is_file():
        raise FeatureError(
            f"{feat_dir}: not a feature directory (needs features.json and index.jsonl; "
            "make one with `comostream prep features DATA_DIR FEAT_DIR`)"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FeatureError(f"{meta_path}: not valid JSON ({exc.msg})") from None
    if meta.get("format") != FEATURES_FORMAT or not isinstance(meta.get("singers"), list):
        raise FeatureError(f"{meta_path}: unknown format {meta.get('format')!r} or no singers")
    entries = [FeatureEntry.from_dict(r) for r in read_jsonl(index_path)]
    skipped_path = feat_dir / "skipped.jsonl"
    skipped = [Skipped(**r) for r in read_jsonl(skipped_path)] if skipped_path.is_file() else []
    return FeatureIndex(feat_dir, list(meta["singers"]), entries, skipped), meta
