"""Corpus loader for training and benchmarks.

Two layouts are understood:

* a synthetic corpus (``comostream.training.synth``): ``root/manifest.jsonl`` with one JSON object
  per line (keys ``path``, ``singer``, ``split`` required; ``f0``, ``text``, ``melody``, ``line``,
  ``seconds`` optional), paths relative to ``root``;
* a user dataset: ``root/<singer>/*.wav|*.flac|*.ogg``. The split is a deterministic hash of
  ``<singer>/<file name>`` (~10% valid, ~10% test); a sibling ``<stem>.f0.npy`` is used as F0.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile as sf

__all__ = [
    "AUDIO_EXTENSIONS",
    "SPLITS",
    "CorpusError",
    "Utterance",
    "load_corpus",
    "select",
    "singers",
    "split_for_name",
]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
SPLITS = ("train", "valid", "test")
MANIFEST = "manifest.jsonl"


_REQUIRED = object()  # sentinel: the manifest key must be present


class CorpusError(ValueError):
    """The corpus directory or its manifest is missing or malformed."""


@dataclass(frozen=True)
class Utterance:
    """One recording: audio path, singer, split, optional ground-truth F0 (.npy, Hz per frame)."""

    path: Path
    singer: str
    split: str
    f0_path: Path | None
    text: str
    melody: str | None
    line: int | None
    seconds: float  # duration in seconds (0.0 if the header is unreadable)


def split_for_name(name: str, valid_percent: int = 10, test_percent: int = 10) -> str:
    """Deterministic split of a file name (SHA-1 bucket 0-99: valid first, then test)."""
    bucket = int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[:4], "big") % 100
    if bucket < valid_percent:
        return "valid"
    if bucket < valid_percent + test_percent:
        return "test"
    return "train"


def _field(obj: dict[str, Any], key: str, types: tuple[type, ...], where: str, default: Any) -> Any:
    if key not in obj or obj[key] is None:
        if default is _REQUIRED:
            raise CorpusError(f"{where}: missing key '{key}'")
        return default
    value = obj[key]
    if not isinstance(value, types) or isinstance(value, bool):
        names = "/".join(t.__name__ for t in types)
        raise CorpusError(f"{where}: key '{key}' must be {names}, got {value!r}")
    return value


def _duration(path: Path) -> float:
    """Duration in seconds from the file header; 0.0 if unreadable (whoever reads the audio
    reports the problem, so one corrupt file does not stop a whole corpus from loading)."""
    try:
        return float(sf.info(str(path)).duration)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return 0.0


def _read_manifest(root: Path, manifest: Path) -> list[Utterance]:
    utts: list[Utterance] = []
    with open(manifest, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            where = f"{manifest}, line {lineno}"
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise CorpusError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            path = root / _field(obj, "path", (str,), where, _REQUIRED)
            singer = _field(obj, "singer", (str,), where, _REQUIRED)
            split = _field(obj, "split", (str,), where, _REQUIRED)
            if split not in SPLITS:
                raise CorpusError(f"{where}: split must be one of {SPLITS}, got {split!r}")
            if not path.is_file():
                raise CorpusError(f"{where}: audio file not found: {path}")
            f0 = _field(obj, "f0", (str,), where, None)
            seconds = _field(obj, "seconds", (int, float), where, None)
            utts.append(
                Utterance(
                    path=path,
                    singer=singer,
                    split=split,
                    f0_path=root / f0 if f0 is not None else None,
                    text=_field(obj, "text", (str,), where, ""),
                    melody=_field(obj, "melody", (str,), where, None),
                    line=_field(obj, "line", (int,), where, None),
                    seconds=float(seconds) if seconds is not None else _duration(path),
                )
            )
    if not utts:
        raise CorpusError(f"{manifest}: no utterances listed")
    return utts


def _scan(root: Path) -> list[Utterance]:
    utts: list[Utterance] = []
    for sdir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            p
            for p in sdir.iterdir()
            if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith(".")
        )
        for path in files:
            f0 = path.with_name(path.stem + ".f0.npy")
            utts.append(
                Utterance(
                    path=path,
                    singer=sdir.name,
                    split=split_for_name(f"{sdir.name}/{path.name}"),
                    f0_path=f0 if f0.is_file() else None,
                    text="",
                    melody=None,
                    line=None,
                    seconds=_duration(path),
                )
            )
    if not utts:
        raise CorpusError(
            f"no audio found under {root}: expected {root}/{MANIFEST} or the layout "
            f"{root}/<singer>/<name>.wav (also .flac, .ogg), one folder per singer"
        )
    return utts


def load_corpus(root: Path) -> list[Utterance]:
    """All utterances under ``root`` (manifest if present, else the per-singer folder layout).

    Raises CorpusError if ``root`` is missing, no audio is found, or a manifest line is malformed
    (the message names the manifest file and line number).
    """
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"corpus directory not found: {root}")
    manifest = root / MANIFEST
    if manifest.is_file():
        return _read_manifest(root, manifest)
    return _scan(root)


def singers(utts: Iterable[Utterance]) -> list[str]:
    """Sorted distinct singer names."""
    return sorted({u.singer for u in utts})


def select(
    utts: Iterable[Utterance],
    split: str | Iterable[str] | None = None,
    singer: str | Iterable[str] | None = None,
) -> list[Utterance]:
    """Utterances matching ``split`` and ``singer`` (each a name, a collection, or None = all)."""
    splits = {split} if isinstance(split, str) else set(split) if split is not None else None
    if splits is not None and not splits <= set(SPLITS):
        raise ValueError(f"unknown split(s) {sorted(splits - set(SPLITS))}; use {SPLITS}")
    names = {singer} if isinstance(singer, str) else set(singer) if singer is not None else None
    return [
        u
        for u in utts
        if (splits is None or u.split in splits) and (names is None or u.singer in names)
    ]
