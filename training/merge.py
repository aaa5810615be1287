"""Several corpora seen as one: ``comostream prep merge OUT_DIR CORPUS...``.

Writes ``OUT_DIR/manifest.jsonl`` listing the utterances of every corpus (a synthetic one from
``prep synth``, the real voices from ``prep real``, or ``DIR/<singer>/*.wav`` folders) with
paths relative to ``OUT_DIR`` (no audio is copied or linked: the manifest points into the
source corpora, which must stay where they are), and ``OUT_DIR/corpus.json`` (the sources,
their licences, the cap and the minutes kept per singer). Every utterance keeps its singer,
split, F0 file, text, melody and line, so :func:`comostream.training.corpus.load_corpus` and
every stage that reads a corpus (content encoder, features, vocoder, export) see one corpus.

``max_minutes`` caps each singer's material: its first utterances in the source manifest's
order, all splits, up to ``max_minutes`` minutes of train split (the valid and test ones among
them keep their share). For ``prep real`` that order is the package's, the order of ``prep real
--limit``, so a limited and a full real corpus give the same selection as long as the limit
covers the cap. Splits are never changed: what a source holds out stays held out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from comostream.training.corpus import SPLITS, CorpusError, Utterance, load_corpus

__all__ = ["cap_minutes", "merge_corpora"]

FORMAT = 1


def cap_minutes(utts: Sequence[Utterance], max_minutes: float) -> list[Utterance]:
    """Each singer's first utterances of ``utts`` (in order, all splits) up to the one that
    would bring its train split over ``max_minutes`` minutes (the first train utterance is
    always kept). A prefix per singer: the valid and test utterances among it keep their
    share, and a corpus limited to its first prompts gives the same selection as the whole
    corpus. Order is preserved."""
    if max_minutes <= 0:
        raise ValueError(f"max_minutes must be > 0 (got {max_minutes})")
    budget = 60.0 * max_minutes
    train: dict[str, float] = {}
    full: set[str] = set()
    kept = []
    for u in utts:
        if u.singer in full:
            continue
        if u.split == "train":
            used = train.get(u.singer, 0.0)
            if used > 0.0 and used + u.seconds > budget:
                full.add(u.singer)
                continue
            train[u.singer] = used + u.seconds
        kept.append(u)
    return kept


def _licence(root: Path) -> str | None:
    """The licence a corpus records in its ``corpus.json`` (None when it records none)."""
    path = root / "corpus.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = info.get("licence") if isinstance(info, dict) else None
    return value if isinstance(value, str) else None


def _minutes(utts: Sequence[Utterance]) -> dict[str, dict[str, float]]:
    """Minutes per singer and split."""
    seconds: dict[str, dict[str, float]] = {}
    for u in utts:
        per = seconds.setdefault(u.singer, dict.fromkeys(SPLITS, 0.0))
        per[u.split] += u.seconds
    return {s: {k: round(v / 60.0, 4) for k, v in per.items()} for s, per in seconds.items()}


def _record(u: Utterance, out_dir: Path) -> dict[str, Any]:
    def rel(p: Path) -> str:
        return Path(os.path.relpath(p.absolute(), out_dir.absolute())).as_posix()

    rec: dict[str, Any] = {
        "path": rel(u.path),
        "singer": u.singer,
        "split": u.split,
        "seconds": round(u.seconds, 6),
    }
    if u.f0_path is not None:
        rec["f0"] = rel(u.f0_path)
    if u.text:
        rec["text"] = u.text
    if u.melody is not None:
        rec["melody"] = u.melody
    if u.line is not None:
        rec["line"] = u.line
    return rec


def merge_corpora(out_dir: Path, corpora: Sequence[Path], max_minutes: float | None = None) -> Path:
    """Write the merged manifest of ``corpora`` into ``out_dir``; returns its path.

    Raises CorpusError when a corpus is missing or malformed, when two corpora share a singer
    name, or when they share lyric line numbers (their renditions would be taken for the same
    line by ``[features] content_swap`` and ``bench quality``).
    """
    out_dir = Path(out_dir)
    if not corpora:
        raise CorpusError("give at least one corpus to merge")
    if max_minutes is not None and max_minutes <= 0:
        raise CorpusError(f"max_minutes must be > 0 (got {max_minutes})")
    owner: dict[str, Path] = {}
    line_owner: dict[int, Path] = {}
    records: list[dict[str, Any]] = []
    sources: list[dict[str, Any]] = []
    for root in map(Path, corpora):
        if root.absolute() == out_dir.absolute():
            raise CorpusError(f"{root}: the output folder cannot be one of the corpora")
        utts = load_corpus(root)
        for s in sorted({u.singer for u in utts}):
            if s in owner:
                raise CorpusError(f"singer {s!r} is in both {owner[s]} and {root}; rename one")
            owner[s] = root
        lines = {u.line for u in utts if u.line is not None}
        for ln in sorted(lines):
            if ln in line_owner:
                raise CorpusError(
                    f"lyric line {ln} is in both {line_owner[ln]} and {root}: their renditions "
                    "would be taken for the same line; merge corpora with distinct line numbers"
                )
        line_owner.update(dict.fromkeys(lines, root))
        kept = cap_minutes(utts, max_minutes) if max_minutes is not None else list(utts)
        records += [_record(u, out_dir) for u in kept]
        sources.append(
            {
                "path": os.path.relpath(root.absolute(), out_dir.absolute()),
                "licence": _licence(root),
                "utterances": len(utts),
                "kept": len(kept),
                "minutes_kept": _minutes(kept),
            }
        )
    _check_target(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "manifest.jsonl"
    _write(manifest, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    info = {
        "format": FORMAT,
        "generator": "comostream training.merge",
        "max_minutes": max_minutes,
        "sources": sources,
    }
    _write(out_dir / "corpus.json", json.dumps(info, indent=2) + "\n")
    return manifest


def _check_target(out_dir: Path) -> None:
    """CorpusError if ``out_dir`` holds a corpus that is not a merge (it would be overwritten)."""
    info = out_dir / "corpus.json"
    if (out_dir / "manifest.jsonl").is_file() or info.is_file():
        try:
            generator = json.loads(info.read_text(encoding="utf-8")).get("generator")
        except (OSError, ValueError, AttributeError):
            generator = None
        if generator != "comostream training.merge":
            raise CorpusError(f"{out_dir} holds another corpus; choose an empty OUT_DIR")


def _write(path: Path, text: str) -> None:
    """Atomic write (temp file + rename), so a reader never sees half a manifest."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
