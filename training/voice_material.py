"""The material of ``comostream voice add``: recordings read, checked and analysed into pieces
with the engine's own features, cached per file.

Each check that fails raises one :class:`MaterialError` (a ValueError) whose message is one line
naming the problem: unreadable file, clipping, mostly silence, too little voiced audio, several
voices mixed (with a speaker embedding, Resemblyzer's, given by the caller). Features are those
the realtime engine computes (:class:`comostream.realtime.frontend.FrontEnd`: mel, streaming F0,
loudness) plus the model's content encoder on the mel, one frame per output frame of the engine.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from comostream.models.acoustic import AcousticModel
from comostream.models.audio import AudioError, read_audio, resample
from comostream.models.voiceprint import voice_print
from comostream.realtime.frontend import FrameFeatures, FrontEnd

__all__ = [
    "AUDIO_EXTENSIONS",
    "MaterialError",
    "Piece",
    "audio_files",
    "check_material",
    "features_tag",
    "piece_prints",
    "split_similarity",
]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
SAMPLE_RATE = 24000  # Hz, the model rate
MIN_VOICED_S = 20.0  # seconds of voiced audio needed in all
MIN_ACTIVE_FRACTION = 0.2  # below this share of active frames the material is "mostly silence"
ACTIVE_DB = -45.0  # dB loudness: quieter frames are silence
CLIP_LEVEL = 0.999  # |sample| at or above this is at full scale
MAX_CLIPPED = 0.01  # share of samples at full scale that counts as clipping
PIECE_S = 4.0  # seconds: longer files are cut into pieces of at most this (hold-out units)
PRINT_S = 2.0  # seconds: shorter pieces are left out of the several-voices check
FEATURES_VERSION = 1


class MaterialError(ValueError):
    """The recordings cannot make a voice (one line saying why); nothing was written."""


@dataclass
class Piece:
    """One piece (<= ``PIECE_S``) of a recording, 24 kHz mono, and its engine features:
    ``mel (n_mels, T)``, ``f0 (T,)`` Hz (0 unvoiced), ``voiced (T,)``, ``loudness (T,)`` dB,
    ``content (content_dim, T)``."""

    source: str
    audio: np.ndarray
    mel: np.ndarray = field(repr=False)
    f0: np.ndarray = field(repr=False)
    voiced: np.ndarray = field(repr=False)
    loudness: np.ndarray = field(repr=False)
    content: np.ndarray = field(repr=False)

    @property
    def frames(self) -> int:
        return int(self.f0.shape[0])


# ------------------------------------------------------------------------------ material


def audio_files(data: Sequence[str | Path]) -> list[Path]:
    """The recordings of ``data`` (folders searched recursively, or files), sorted; MaterialError
    when a path is missing or nothing is found."""
    found: list[Path] = []
    for item in data:
        p = Path(item)
        if p.is_dir():
            found += [f for f in p.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS]
        elif p.is_file():
            found.append(p)
        else:
            raise MaterialError(f"{p}: no such file or folder")
    if not found:
        raise MaterialError(
            f"no recordings ({', '.join(AUDIO_EXTENSIONS)}) in {', '.join(map(str, data))}"
        )
    return sorted(set(found))


def _read(path: Path) -> np.ndarray:
    """24 kHz mono float32 of ``path``; MaterialError for an unreadable file or clipping."""
    try:
        audio, sr = read_audio(path)
    except (AudioError, OSError, ValueError) as exc:
        raise MaterialError(f"unreadable recording: {exc}") from None
    clipped = float(np.mean(np.abs(audio) >= CLIP_LEVEL))
    if clipped > MAX_CLIPPED:
        raise MaterialError(
            f"{path}: clipped ({100 * clipped:.1f}% of samples at full scale, at most "
            f"{100 * MAX_CLIPPED:.0f}% allowed): record at a lower level"
        )
    return resample(audio, sr, SAMPLE_RATE)


def _pieces(audio: np.ndarray) -> list[np.ndarray]:
    """``audio`` cut into near-equal pieces of at most ``PIECE_S`` seconds."""
    n = max(1, math.ceil(audio.shape[0] / (PIECE_S * SAMPLE_RATE)))
    return [p for p in np.array_split(audio, n) if p.shape[0] > 0]


def _frontend_features(fe: FrontEnd, audio: np.ndarray) -> dict[str, np.ndarray]:
    """The engine's per-frame features of ``audio`` (one frame per hop, aligned with the
    engine's output frames)."""
    fe.reset()
    hop = fe.hop
    frames = -(-audio.shape[0] // hop)
    tail = np.zeros(frames * hop - audio.shape[0] + fe.lookahead_samples + hop, np.float32)
    parts = [f for f in (fe.push(audio), fe.push(tail)) if f is not None]
    f = FrameFeatures.concat(parts)
    k = min(frames, f.frames)
    return {
        "mel": f.mel[:, :k].astype(np.float32),
        "f0": np.where(f.voiced[:k], f.f0[:k], 0.0).astype(np.float32),
        "voiced": f.voiced[:k].astype(np.float32),
        "loudness": f.loudness[:k].astype(np.float32),
    }


def split_similarity(embeddings: Sequence[np.ndarray], min_group: int = 3) -> float | None:
    """Cosine similarity of the two group centres of a 2-means split of speaker embeddings
    ``(D,)`` (one per piece): near 1 for one voice, lower for two. None when there are too few
    embeddings or the smaller group has fewer than ``min_group`` (an outlier, not a voice)."""
    if len(embeddings) < 2 * min_group:
        return None
    x = np.stack(embeddings).astype(np.float64)
    rng = np.random.default_rng(0)
    best: tuple[float, float] | None = None
    for _ in range(8):
        centres = x[rng.choice(len(x), 2, replace=False)]
        lab = np.zeros(len(x), int)
        for _ in range(30):
            lab = ((x[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
            if lab.min() == lab.max():
                break
            centres = np.stack([x[lab == k].mean(0) for k in (0, 1)])
        if lab.min() == lab.max() or np.bincount(lab).min() < min_group:
            continue
        inertia = float(((x - centres[lab]) ** 2).sum())
        c0, c1 = centres
        cos = float(c0 @ c1 / (np.linalg.norm(c0) * np.linalg.norm(c1) + 1e-12))
        if best is None or inertia < best[0]:
            best = (inertia, cos)
    return None if best is None else best[1]


# Resemblyzer split similarity below which the material looks like several voices. Measured on
# out/real (60 s per voice, 2-8 s pieces): one voice 0.87-0.95 (allison, june, their sung and
# Spanish sets), allison + june spoken mixed 0.72-0.76; allison + its Spanish set 0.74-0.83 and
# allison_sung + june_sung 0.88-0.90, so it is a warning by default.
MIXED_SIMILARITY = 0.82


# ------------------------------------------------------------------------------ features


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def features_tag(model: AcousticModel) -> str:
    """What the cached features depend on: the content encoder's weights, the audio and F0
    settings and the package version (a new release may track F0 differently)."""
    from comostream.models.config import F0Config
    from comostream.version import __version__

    h = hashlib.sha1(f"{__version__}|{model.cfg.audio}|{F0Config()}".encode())
    enc = model.content_encoder
    if enc is not None:
        for k, v in sorted(enc.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _content(model: AcousticModel, mel: np.ndarray) -> np.ndarray:
    """The model's content features ``(content_dim, T)`` of ``mel``, aligned (one-shot)."""
    enc = model.content_encoder
    if enc is None:
        return np.zeros((0, mel.shape[1]), np.float32)
    with torch.inference_mode():
        return enc(torch.from_numpy(mel).unsqueeze(0))[0].numpy().astype(np.float32)


def check_material(
    files: Sequence[Path],
    model: AcousticModel,
    work: Path | None = None,
    progress: bool = True,
    mixed_voices: str = "warn",
    embed: Callable[[np.ndarray], np.ndarray | None] | None = None,
) -> tuple[list[Piece], list[str]]:
    """Read, check and analyse ``files``: ``(pieces, warnings)``. Raises :class:`MaterialError`
    (unreadable, clipped, too little voiced audio, mostly silence, several voices when
    ``mixed_voices == "error"``; ``"off"`` skips that check). ``embed``: a speaker embedding of
    24 kHz audio (Resemblyzer) for the several-voices check (skipped, with a warning, when
    None). Features are cached per file in ``work`` when given."""
    from tqdm import tqdm

    fe = FrontEnd(model.cfg.audio)
    tag = features_tag(model)
    pieces: list[Piece] = []
    cache_dir = work / "features" if work is not None else None
    for path in tqdm(files, desc="reading", unit="file", disable=not progress, leave=False):
        cached = _load_cached(cache_dir, path, tag) if cache_dir else None
        if cached is not None:
            pieces += cached
            continue
        audio = _read(path)
        mine = []
        for part in _pieces(audio):
            feats = _frontend_features(fe, part)
            feats["content"] = _content(model, feats["mel"])
            mine.append(Piece(str(path), part, **feats))
        if cache_dir is not None:
            _save_cached(cache_dir, path, tag, mine)
        pieces += mine
    hop_s = model.cfg.audio.hop_length / SAMPLE_RATE
    active = np.concatenate([p.loudness > ACTIVE_DB for p in pieces])
    voiced = np.concatenate([(p.voiced > 0) & (p.loudness > ACTIVE_DB) for p in pieces])
    total_s = active.shape[0] * hop_s
    if active.mean() < MIN_ACTIVE_FRACTION:
        raise MaterialError(
            f"mostly silence: {100 * active.mean():.0f}% of {total_s:.0f} s is louder than "
            f"{ACTIVE_DB:.0f} dB (at least {100 * MIN_ACTIVE_FRACTION:.0f}% needed)"
        )
    voiced_s = float(voiced.sum() * hop_s)
    if voiced_s < MIN_VOICED_S:
        raise MaterialError(
            f"too short: {voiced_s:.1f} s of voiced audio in {total_s:.1f} s, at least "
            f"{MIN_VOICED_S:.0f} s needed"
        )
    warnings: list[str] = []
    if mixed_voices == "off":
        return pieces, warnings
    if embed is None:
        warnings.append("several-voices check skipped (needs resemblyzer: pip install .[eval])")
        return pieces, warnings
    long = [p for p in pieces if p.audio.shape[0] >= PRINT_S * SAMPLE_RATE] or pieces
    step = max(1, len(long) // 40)
    embs = [e for e in (embed(p.audio) for p in long[::step]) if e is not None]
    sim = split_similarity(embs)
    if sim is not None and sim < MIXED_SIMILARITY:
        msg = (
            f"the recordings sound like several voices (similarity of the two groups {sim:.2f} "
            f"< {MIXED_SIMILARITY:.2f}): give one singer's recordings only"
        )
        if mixed_voices == "error":
            raise MaterialError(msg)
        warnings.append(msg)
    return pieces, warnings


def piece_prints(pieces: Sequence[Piece]) -> list[np.ndarray]:
    """Voice-print mceps of the pieces long enough for one (up to 40, spread over the list)."""
    long = [p for p in pieces if p.audio.shape[0] >= PRINT_S * SAMPLE_RATE] or list(pieces)
    step = max(1, len(long) // 40)
    out = []
    for p in long[::step]:
        try:
            out.append(np.asarray(voice_print(p.audio)["mcep"]))
        except ValueError:  # no voiced frame
            continue
    return out


def _cache_name(path: Path) -> str:
    return hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:20] + ".npz"


def _load_cached(folder: Path, path: Path, tag: str) -> list[Piece] | None:
    f = folder / _cache_name(path)
    if not f.is_file():
        return None
    try:
        with np.load(f, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta != {"file": _fingerprint(path), "encoder": tag, "v": FEATURES_VERSION}:
                return None
            n = int(z["count"])
            keys = ("audio", "mel", "f0", "voiced", "loudness", "content")
            return [Piece(str(path), *(z[f"{k}{i}"] for k in keys)) for i in range(n)]
    except (OSError, ValueError, KeyError):
        return None


def _save_cached(folder: Path, path: Path, tag: str, pieces: list[Piece]) -> None:
    from comostream.training.features import save_npz

    meta = json.dumps({"file": _fingerprint(path), "encoder": tag, "v": FEATURES_VERSION})
    arrays: dict[str, np.ndarray] = {"meta": np.array(meta), "count": np.array(len(pieces))}
    for i, p in enumerate(pieces):
        for k in ("audio", "mel", "f0", "voiced", "loudness", "content"):
            arrays[f"{k}{i}"] = getattr(p, k)
    folder.mkdir(parents=True, exist_ok=True)
    save_npz(folder / _cache_name(path), arrays)
