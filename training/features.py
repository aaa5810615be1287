"""Cached per-utterance training features (``comostream prep features DATA_DIR FEAT_DIR``).

For every utterance of ``load_corpus(DATA_DIR)`` the extractors named in ``cfg.features``
compute frame-aligned arrays (last axis = T = samples // hop + 1 at the model rate):

* ``mel``: (n_mels, T) float32, natural-log mel magnitude
  (:func:`comostream.models.mel.mel_spectrogram`);
* ``f0``: (T,) float32 Hz, 0 = unvoiced, and ``voiced``: (T,) bool. ``f0_source = "extract"``
  (the default: users' data has no ground truth) runs the ``cfg.f0`` backend and
  post-processing; ``"corpus"`` uses the corpus's ground-truth F0 file where there is one (the
  synthetic corpus) and extracts otherwise;
* ``loudness``: (T,) float32 dB (:func:`comostream.models.loudness.loudness`).
* ``content``: (content_dim, T) float32, the built-in content encoder
  (:mod:`comostream.models.content`) loaded from ``features.content_checkpoint``, or a user's
  HuBERT/ContentVec/Whisper encoder (:mod:`comostream.models.ext_content`) from
  ``features.content_model`` (``content_layer``, ``content_projection``).

Layout: ``FEAT_DIR/<singer>/<utt>.npz`` (one named array per key, so a later extractor such as
``content`` (C, T) adds a key), ``FEAT_DIR/index.jsonl`` (``utt``, ``singer``, ``split``,
``frames``, ``path`` relative to FEAT_DIR), ``FEAT_DIR/features.json`` (format, settings used,
sorted ``singers`` = speaker ids, array descriptions) and ``FEAT_DIR/skipped.jsonl`` (files that
were unreadable or silent, with the reason). Re-running skips utterances already done unless
``force``; a directory made with other settings is refused instead of being mixed.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from tqdm import tqdm

from comostream.models.audio import AudioError, load_audio
from comostream.models.config import Config, config_to_dict
from comostream.models.f0 import extract_f0
from comostream.models.f0_post import postprocess
from comostream.models.loudness import loudness
from comostream.models.mel import mel_spectrogram
from comostream.training.corpus import Utterance, load_corpus
from comostream.training.feature_index import (
    FEATURES_FORMAT,
    FeatureEntry,
    FeatureError,
    FeatureIndex,
    Skipped,
    read_jsonl,
    write_text_atomic,
)

__all__ = ["EXTRACTORS", "Extractor", "UnusableUtterance", "prepare_features", "save_npz"]


class UnusableUtterance(ValueError):
    """An utterance's data cannot be used (the run skips it and lists the reason)."""


@dataclass(frozen=True)
class Extractor:
    """A named feature: ``fn(audio (samples,) at the model rate, utt, cfg) -> {name: array}``.

    ``arrays`` describes each array it returns (shape, dtype, unit) for ``features.json``.
    """

    fn: Callable[[np.ndarray, Utterance, Config], dict[str, np.ndarray]]
    arrays: Mapping[str, str]


def _mel(audio: np.ndarray, utt: Utterance, cfg: Config) -> dict[str, np.ndarray]:
    return {"mel": mel_spectrogram(audio, cfg.audio).astype(np.float32)}


def _loudness(audio: np.ndarray, utt: Utterance, cfg: Config) -> dict[str, np.ndarray]:
    return {"loudness": np.asarray(loudness(audio, cfg.audio), dtype=np.float32)}


def _f0(audio: np.ndarray, utt: Utterance, cfg: Config) -> dict[str, np.ndarray]:
    frames = audio.shape[0] // cfg.audio.hop_length + 1
    if cfg.features.f0_source == "corpus" and utt.f0_path is not None:
        try:
            f0 = np.load(utt.f0_path).astype(np.float32)
        except (OSError, ValueError) as exc:
            raise UnusableUtterance(f"ground-truth F0 {utt.f0_path} unreadable ({exc})") from None
        if f0.shape != (frames,) or not np.all(np.isfinite(f0)) or np.any(f0 < 0):
            raise UnusableUtterance(
                f"ground-truth F0 {utt.f0_path}: shape {f0.shape} or values do not fit "
                f"{frames} frames of Hz >= 0"
            )
        return {"f0": f0, "voiced": f0 > 0}
    track = postprocess(extract_f0(audio, cfg.audio.sample_rate, cfg.f0), cfg.f0)
    voiced = np.asarray(track.voiced, dtype=bool)
    return {"f0": np.where(voiced, track.f0_hz, 0.0).astype(np.float32), "voiced": voiced}


def _content(audio: np.ndarray, utt: Utterance, cfg: Config) -> dict[str, np.ndarray]:
    if cfg.features.content_swap:
        audio = _swapped(audio, utt, cfg)
    if cfg.features.content_perturb:
        audio = _perturbed(audio, utt, cfg)
    if cfg.features.content_model:
        return _external_content(audio, cfg)
    return _builtin_content(audio, cfg)


def _utt_seed(utt: Utterance) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(str(utt.path).encode()).digest()[:8], "little")


@functools.lru_cache(maxsize=4)
def _renditions(root: str) -> dict[int, list[Utterance]]:
    """The utterances of the corpus at ``root`` by lyric line (lines of unknown number left out)."""
    by_line: dict[int, list[Utterance]] = {}
    for u in load_corpus(Path(root)):
        if u.line is not None:
            by_line.setdefault(u.line, []).append(u)
    return by_line


def _swapped(audio: np.ndarray, utt: Utterance, cfg: Config) -> np.ndarray:
    """Another singer's rendition of ``utt``'s line, of the same length (the synthetic corpus
    warps every rendition onto the same notes, so it is frame-aligned to within phonemes),
    chosen by a draw seeded with the utterance's path; ``audio`` itself when there is none.
    Content computed from it carries the words and timing of the line in a *different* voice,
    so the acoustic model learns to take the timbre from the singer table only."""
    if utt.line is None:
        return audio
    others = [
        u
        for u in _renditions(str(utt.path.parent.parent)).get(utt.line, [])
        if u.singer != utt.singer
    ]
    rng = np.random.default_rng([_utt_seed(utt), cfg.train.seed, 1])
    for k in rng.permutation(len(others)):
        try:
            other = load_audio(others[k].path, cfg.audio.sample_rate)
        except AudioError:
            continue
        if other.shape == audio.shape:
            return other
    return audio


def _perturbed(audio: np.ndarray, utt: Utterance, cfg: Config) -> np.ndarray:
    """``audio`` resung by a random other singer (WORLD: pitch, formants, EQ, breathiness in
    the ``[content]`` ranges), same frames; the draw is seeded by the utterance's path, so a
    re-run gives the same features. Content from such a copy carries the words and timing but
    not the singer, so the acoustic model must take timbre from its singer embedding."""
    from comostream.training.perturb import analyze_utterance, draw_perturbation, perturb

    rng = np.random.default_rng([_utt_seed(utt), cfg.train.seed])
    hop = cfg.audio.hop_length
    world = analyze_utterance(audio, cfg.audio.sample_rate, hop, f0_cfg=cfg.f0)
    y = perturb(world, draw_perturbation(rng, cfg.content)).astype(np.float32)
    return np.pad(y, (0, max(0, audio.shape[0] - y.shape[0])))[: audio.shape[0]]


@functools.lru_cache(maxsize=2)
def _cached_external(
    path: str,
    stamp: tuple[int, int],
    layer: int,
    projection: bool,
    sample_rate: int,
    hop_length: int,
) -> Any:
    from comostream.models.ext_content import (
        load_content_model,  # torch model: loaded only when asked
    )

    return load_content_model(
        path, layer=layer, projection=projection, sample_rate=sample_rate, hop_length=hop_length
    )


def _external_content(audio: np.ndarray, cfg: Config) -> dict[str, np.ndarray]:
    """``{"content": (D, T) float32}`` from the user's encoder at ``features.content_model``."""
    import torch

    f, p = cfg.features, Path(cfg.features.content_model)
    stat = p.stat() if p.exists() else None
    stamp = (stat.st_mtime_ns, stat.st_size) if stat else (0, 0)
    model = _cached_external(
        str(p),
        stamp,
        f.content_layer,
        f.content_projection,
        cfg.audio.sample_rate,
        cfg.audio.hop_length,
    )
    with torch.inference_mode():
        content = model(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None])
    return {"content": content[0].numpy().astype(np.float32)}


@functools.lru_cache(maxsize=2)
def _cached_encoder(path: str, mtime_ns: int, size: int) -> Any:
    """The encoder at ``path``, loaded once per (path, mtime, size) (a changed file reloads)."""
    from comostream.models.content import load_content_encoder  # torch: loaded only when asked

    return load_content_encoder(path)


def _builtin_content(audio: np.ndarray, cfg: Config) -> dict[str, np.ndarray]:
    """``{"content": (content_dim, T) float32}`` of ``audio`` (samples at the model rate),
    frame-aligned with its mel, from the built-in encoder at ``features.content_checkpoint``."""
    import torch

    ckpt = cfg.features.content_checkpoint
    if not ckpt:
        raise FeatureError(
            "the 'content' extractor needs features.content_checkpoint (a checkpoint from "
            "`comostream train content`)"
        )
    p = Path(ckpt)
    stat = p.stat() if p.is_file() else None
    encoder = _cached_encoder(str(p), stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)
    mel = torch.from_numpy(mel_spectrogram(audio, cfg.audio))
    if mel.shape[0] != encoder.n_mels:
        raise FeatureError(
            f"{p}: encoder takes {encoder.n_mels} mel bins, the config has {mel.shape[0]}"
        )
    with torch.inference_mode():
        content = encoder(mel.unsqueeze(0))[0]
    return {"content": content.numpy().astype(np.float32)}


EXTRACTORS: Mapping[str, Extractor] = MappingProxyType(
    {
        "mel": Extractor(_mel, {"mel": "(n_mels, T) float32 natural-log mel magnitude"}),
        "f0": Extractor(
            _f0, {"f0": "(T,) float32 Hz, 0 = unvoiced", "voiced": "(T,) bool voiced flag"}
        ),
        "loudness": Extractor(_loudness, {"loudness": "(T,) float32 A-weighted dB"}),
        "content": Extractor(
            _content, {"content": "(content_dim, T) float32 content frames (built-in or external)"}
        ),
    }
)


def _settings(cfg: Config) -> dict[str, Any]:
    """The config sections the cached features depend on."""
    d = config_to_dict(cfg)
    return json.loads(json.dumps({k: d[k] for k in ("audio", "f0", "features")}))


def _changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section, {}), new.get(section, {})
        keys += [f"{section}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return keys


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Atomically write ``arrays`` to ``path`` (uncompressed .npz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _extract(utt: Utterance, cfg: Config, extractors: Mapping[str, Extractor]) -> dict:
    """All arrays of one utterance; raises AudioError/UnusableUtterance for unusable data."""
    audio = load_audio(utt.path, cfg.audio.sample_rate)
    rms_db = 10.0 * np.log10(max(float(np.mean(np.square(audio, dtype=np.float64))), 1e-30))
    if rms_db < cfg.features.silence_dbfs:
        raise UnusableUtterance(
            f"{utt.path}: silent (RMS {rms_db:.1f} dBFS < {cfg.features.silence_dbfs:g} dBFS)"
        )
    frames = audio.shape[0] // cfg.audio.hop_length + 1
    arrays: dict[str, np.ndarray] = {}
    for name in cfg.features.extractors:
        for key, value in extractors[name].fn(audio, utt, cfg).items():
            if value.shape[-1] != frames:
                raise FeatureError(
                    f"extractor {name!r} returned {key} with {value.shape[-1]} frames for "
                    f"{utt.path}, expected {frames} (samples // hop + 1): frames are misaligned"
                )
            arrays[key] = value
    return arrays


def prepare_features(
    data_dir: Path,
    feat_dir: Path,
    cfg: Config,
    progress: bool = True,
    force: bool = False,
    extractors: Mapping[str, Extractor] = EXTRACTORS,
) -> FeatureIndex:
    """Compute (or reuse) the features of every utterance under ``data_dir`` into ``feat_dir``.

    Unreadable or silent files are skipped and listed (``index.skipped``, ``skipped.jsonl``).
    Raises CorpusError for a missing/malformed corpus, FeatureError for an unknown extractor
    name or a ``feat_dir`` prepared with other settings (unless ``force``).
    """
    data_dir, feat_dir = Path(data_dir), Path(feat_dir)
    unknown = [n for n in cfg.features.extractors if n not in extractors]
    if unknown:
        raise FeatureError(
            f"unknown feature extractor(s) {unknown}; known: {', '.join(sorted(extractors))}"
        )
    utts = load_corpus(data_dir)
    settings = _settings(cfg)
    meta_path = feat_dir / "features.json"
    previous: dict[str, FeatureEntry] = {}
    if meta_path.is_file() and not force:
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        diff = _changed(old.get("settings", {}), settings)
        if diff or old.get("format") != FEATURES_FORMAT:
            raise FeatureError(
                f"{feat_dir} holds features made with other settings ({', '.join(diff) or 'format'}"
                "); use --force to recompute them, or another directory"
            )
        if (feat_dir / "index.jsonl").is_file():
            previous = {
                e.utt: e for e in map(FeatureEntry.from_dict, read_jsonl(feat_dir / "index.jsonl"))
            }
    singers = sorted({u.singer for u in utts})
    arrays_doc = {k: v for n in cfg.features.extractors for k, v in extractors[n].arrays.items()}
    meta = {
        "format": FEATURES_FORMAT,
        "settings": settings,
        "singers": singers,
        "arrays": arrays_doc,
        "source": str(data_dir),
    }
    feat_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(meta_path, json.dumps(meta, indent=2) + "\n")  # settings first: see above
    entries: list[FeatureEntry] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    computed = reused = 0
    for utt in tqdm(utts, desc="features", unit="utt", file=sys.stderr, disable=not progress):
        uid, rel = f"{utt.singer}/{utt.path.stem}", f"{utt.singer}/{utt.path.stem}.npz"
        if uid in seen:
            skipped.append(Skipped(str(utt.path), utt.singer, f"duplicate utterance id {uid}"))
            continue
        seen.add(uid)
        out = feat_dir / rel
        if out.is_file() and not force:
            frames = previous[uid].frames if uid in previous else _frames_of(out)
            reused += 1
        else:
            try:
                arrays = _extract(utt, cfg, extractors)
            except (AudioError, UnusableUtterance) as exc:
                skipped.append(Skipped(str(utt.path), utt.singer, str(exc)))
                continue
            save_npz(out, arrays)
            frames = int(arrays[next(iter(arrays))].shape[-1])
            computed += 1
        entries.append(FeatureEntry(uid, utt.singer, utt.split, frames, rel))
    index = FeatureIndex(feat_dir, singers, entries, skipped, computed, reused)
    index.write()
    meta.update(
        utterances=len(entries), frames=sum(e.frames for e in entries), skipped=len(skipped)
    )
    write_text_atomic(meta_path, json.dumps(meta, indent=2) + "\n")
    return index


def _frames_of(path: Path) -> int:
    with np.load(path) as data:
        return int(data[data.files[0]].shape[-1])
