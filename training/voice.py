"""Add a singer to an inference file: ``comostream voice add`` (issue 15).

The new singer is a new row of the conditioner's singer table
(:class:`~comostream.models.conditioner.SpeakerTable`); every other weight is frozen, so every
earlier singer's output stays bit-identical. The row is learnt by gradient descent on a
reconstruction loss of the one-step consistency target: for segments of the voice's own
recordings, ``conditioner(content of the recording, its F0, voiced, loudness, row) -> target at
sigma_max on the chain's counter-based noise -> mel``, L1 against the recording's own mel
(normalised as the acoustic training normalises it).

Features are those the realtime engine computes (:class:`comostream.realtime.frontend.FrontEnd`:
mel, streaming F0, loudness; the model's content encoder on the mel), extracted once and cached in
a work folder; the adaptation state (row, optimiser, step) is written there atomically every
``checkpoint_every`` steps, so an interrupted run resumes where it stopped. The crops of step
``s`` come from a generator seeded by ``(seed, s)``: a run is deterministic for a seed, resumed or
not.

Material checks (:func:`check_material`) run before anything is written; each failure is one
:class:`MaterialError` (a ValueError) with one line naming the problem.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from comostream.models.acoustic import AcousticModel, hold_unvoiced
from comostream.models.audio import AudioError, read_audio, resample
from comostream.models.checkpoint_io import CheckpointError, load_checkpoint
from comostream.models.edm import normalise_mel
from comostream.models.noise import frame_noise
from comostream.models.voiceprint import DIMS, voice_print
from comostream.realtime.frontend import FrameFeatures, FrontEnd
from comostream.training.checkpoint import save_checkpoint
from comostream.training.voice_file import check_name

__all__ = [
    "AUDIO_EXTENSIONS",
    "MaterialError",
    "Piece",
    "VoiceOptions",
    "VoiceResult",
    "adapt_voice",
    "auto_steps",
    "add_voice",
    "audio_files",
    "check_material",
    "hz_to_note",
    "with_voice",
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
STATE_KIND = "voice-adapt"
FEATURES_VERSION = 1
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


class MaterialError(ValueError):
    """The recordings cannot make a voice (one line saying why); nothing was written."""


@dataclass(frozen=True)
class VoiceOptions:
    """Adaptation settings: ``steps`` (None: :func:`auto_steps`) of Adam (learning rate
    ``lr``) on ``batch`` random crops of ``segment_frames`` frames (the first ``context_frames``
    of each only warm the causal layers up, outside the loss); every ``holdout_every``-th piece
    is held out for the resynthesis check; the state is saved every ``checkpoint_every``
    steps; ``mixed_voices``: ``"warn"`` or ``"error"`` when the material sounds like several
    voices."""

    steps: int | None = None  # None: :func:`auto_steps` of the training audio
    batch: int = 8
    segment_frames: int = 160
    context_frames: int = 32
    lr: float = 0.15
    seed: int = 0
    holdout_every: int = 10
    checkpoint_every: int = 25
    mixed_voices: str = "warn"


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


@dataclass
class VoiceResult:
    """What :func:`add_voice` did: the output file, the new singer's print and register, the
    held-out pieces and the figures of the adaptation."""

    path: Path
    name: str
    voiceprint: dict[str, Any]
    heldout: list[Piece]
    train_pieces: list[Piece]
    train_seconds: float
    seconds: float
    init: str
    loss_start: float
    loss_end: float
    warnings: list[str]


def auto_steps(train_seconds: float) -> int:
    """Adaptation steps for ``train_seconds`` of audio: 3 per second, within 400-1000 (on the
    shipped model: win rate and loss level off by 1000 steps on 5 min of a voice, 6 steps/s on
    one core)."""
    return int(min(1000, max(400, round(3 * train_seconds))))


def hz_to_note(hz: float) -> str:
    """Nearest equal-tempered note name of ``hz`` (A4 = 440 Hz), e.g. ``220.0 -> "A3"``."""
    midi = int(round(69 + 12 * math.log2(hz / 440.0)))
    return f"{NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


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


def _encoder_tag(model: AcousticModel) -> str:
    h = hashlib.sha1()
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
    ``mixed_voices == "error"``). ``embed``: a speaker embedding of 24 kHz audio (Resemblyzer)
    for the several-voices check (skipped, with a warning, when None). Features are cached per
    file in ``work`` when given."""
    from tqdm import tqdm

    fe = FrontEnd(model.cfg.audio)
    tag = _encoder_tag(model)
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


def _piece_prints(pieces: Sequence[Piece]) -> list[np.ndarray]:
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


# ------------------------------------------------------------------------------ adaptation


def _register(pieces: Sequence[Piece]) -> dict[str, float]:
    f0 = np.concatenate([p.f0[(p.voiced > 0) & (p.loudness > ACTIVE_DB)] for p in pieces])
    f0 = f0[f0 > 0]
    lo, med, hi = np.percentile(f0, [5, 50, 95])
    return {"f0_median": float(med), "f0_low": float(lo), "f0_high": float(hi)}


def _voiceprint(pieces: Sequence[Piece]) -> dict[str, Any]:
    prints = _piece_prints(pieces)
    mcep = np.mean(prints, axis=0) if prints else np.zeros(DIMS)
    return {"mcep": [float(v) for v in mcep], **_register(pieces)}


class _Batcher:
    """Random crops of the training pieces: step ``s``'s batch depends on ``(seed, s)`` only."""

    def __init__(self, pieces: Sequence[Piece], opts: VoiceOptions, model: AcousticModel) -> None:
        self.pieces, self.opts, self.model = list(pieces), opts, model
        w = np.array([p.frames for p in self.pieces], np.float64)
        self.weights = w / w.sum()
        self.n_mels = model.cfg.audio.n_mels
        self.seed = int(model.cfg.realtime.seed)

    def batch(self, step: int) -> dict[str, Tensor]:
        o = self.opts
        rng = np.random.default_rng([o.seed, step])
        length = o.segment_frames
        out: dict[str, list[np.ndarray]] = {k: [] for k in ("mel", "f0", "voiced", "loud", "c")}
        starts = []
        for i in rng.choice(len(self.pieces), size=o.batch, p=self.weights):
            p = self.pieces[i]
            s = int(rng.integers(0, max(1, p.frames - length) + 1))
            sl = slice(s, s + length)

            def fit(a: np.ndarray) -> np.ndarray:
                pad = length - a.shape[-1]
                return np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, pad)], mode="edge") if pad else a

            out["mel"].append(fit(p.mel[:, sl]))
            out["f0"].append(fit(p.f0[sl]))
            out["voiced"].append(fit(p.voiced[sl]))
            out["loud"].append(fit(p.loudness[sl]))
            out["c"].append(fit(p.content[:, sl]))
            starts.append(s)
        b = {k: torch.from_numpy(np.stack(v)) for k, v in out.items()}
        index = torch.tensor(starts).unsqueeze(1) + torch.arange(length)
        b["noise"] = frame_noise(index, self.n_mels, self.seed)
        return b


def _predict(model: AcousticModel, b: dict[str, Tensor], row: Tensor) -> Tensor:
    """Normalised mel ``(B, n_mels, T)`` of the one-step target for singer embedding ``row``
    ``(speaker_dim,)``, aligned, as the chain computes it (causal unvoiced hold, noise)."""
    f0 = hold_unvoiced(b["f0"], b["voiced"])
    spk = row.unsqueeze(0).expand(b["f0"].shape[0], -1)
    cond = model.conditioner(b["c"], f0, b["voiced"], b["loud"], spk)
    sigma = float(model.cfg.edm.sigma_max)
    return model.target(b["noise"] * sigma, sigma, cond)


def _loss(model: AcousticModel, b: dict[str, Tensor], row: Tensor, context: int) -> Tensor:
    pred = _predict(model, b, row)[..., context:]
    real = normalise_mel(b["mel"], model.cfg.edm)[..., context:]
    return (pred - real).abs().mean()


def _initial_row(model: AcousticModel, batcher: _Batcher, opts: VoiceOptions) -> tuple[str, Tensor]:
    """The starting row: the existing singer (or the mean row) whose output is closest to the
    recordings on one batch."""
    table = model.conditioner.speakers
    weight = table.embedding.weight.detach()
    candidates = {"mean": weight.mean(0)} | {n: weight[i] for i, n in enumerate(table.names)}
    b = batcher.batch(-1 % (2**31))
    with torch.no_grad():
        losses = {n: float(_loss(model, b, r, opts.context_frames)) for n, r in candidates.items()}
    best = min(losses, key=losses.__getitem__)
    return best, candidates[best].clone()


def _state_key(model_tag: str, pieces: Sequence[Piece], opts: VoiceOptions, name: str) -> str:
    h = hashlib.sha1(model_tag.encode())
    h.update(name.encode())
    h.update(json.dumps(asdict(opts), sort_keys=True).encode())
    for p in pieces:
        h.update(p.source.encode())
        h.update(np.ascontiguousarray(p.mel[:, :: max(1, p.frames // 8)]).tobytes())
    return h.hexdigest()


def adapt_voice(
    model: AcousticModel,
    pieces: Sequence[Piece],
    opts: VoiceOptions,
    name: str,
    work: Path | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    model_tag: str = "",
) -> tuple[Tensor, dict[str, Any]]:
    """Learn the embedding row of ``name`` from ``pieces`` (every model weight frozen):
    ``(row (speaker_dim,), info)``. Resumes from ``work/state.pt`` when it belongs to the same
    model, material and options; ``stop_after``: return after that many steps in all (a test's
    interruption). ``info``: ``init``, ``loss_start``, ``loss_end``, ``steps``."""
    from tqdm import tqdm

    if opts.steps is None:
        raise ValueError("adapt_voice needs a number of steps")
    torch.manual_seed(opts.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    batcher = _Batcher(pieces, opts, model)
    key = _state_key(model_tag, pieces, opts, name)
    state_path = work / "state.pt" if work is not None else None
    state = _load_state(state_path, key)
    if state is None:
        init, row0 = _initial_row(model, batcher, opts)
        state = {"key": key, "step": 0, "init": init, "row": row0, "optim": None, "losses": []}
    row = state["row"].clone().requires_grad_(True)
    optim = torch.optim.Adam([row], lr=opts.lr)
    if state["optim"] is not None:
        optim.load_state_dict(state["optim"])
    losses: list[float] = list(state["losses"])
    start = int(state["step"])
    end = opts.steps if stop_after is None else min(opts.steps, stop_after)
    bar = tqdm(
        total=opts.steps, initial=start, desc=f"adapting {name}", unit="step", disable=not progress
    )
    for step in range(start, end):
        loss = _loss(model, batcher.batch(step), row, opts.context_frames)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}")
        done = step + 1
        if state_path is not None and (done % opts.checkpoint_every == 0 or done == end):
            _save_state(state_path, key, done, state["init"], row, optim, losses)
    bar.close()
    info = {
        "init": state["init"],
        "loss_start": float(np.mean(losses[:10])) if losses else math.nan,
        "loss_end": float(np.mean(losses[-10:])) if losses else math.nan,
        "steps": end,
    }
    return row.detach().clone(), info


def _save_state(
    path: Path, key: str, step: int, init: str, row: Tensor, optim: Any, losses: list[float]
) -> None:
    save_checkpoint(
        path,
        {
            "kind": STATE_KIND,
            "key": key,
            "step": step,
            "init": init,
            "row": row.detach().clone(),
            "optim": optim.state_dict(),
            "losses": [float(v) for v in losses],
        },
    )


def _load_state(path: Path | None, key: str) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    try:
        st = load_checkpoint(path, kind=STATE_KIND)
    except CheckpointError:
        return None
    return st if st.get("key") == key else None


# ------------------------------------------------------------------------------ the file


def _heldout(count: int, every: int) -> set[int]:
    """Indices of the held-out pieces of ``count``: every ``every``-th, or the last one of 3 to
    ``every - 1`` pieces, none of fewer."""
    k = max(2, every)
    if count >= k:
        return set(range(k - 1, count, k))
    return {count - 1} if count >= 3 else set()


def with_voice(
    payload: dict[str, Any], name: str, row: Tensor, voiceprint: dict[str, Any]
) -> dict[str, Any]:
    """A copy of inference payload ``payload`` with singer ``name`` appended (embedding ``row``)
    and its voice print; every other entry is the same tensor."""
    speakers = [str(s) for s in payload["speakers"]]
    if name in speakers:
        raise ValueError(f"the model already has a singer {name!r}")
    cond = dict(payload["conditioner"])
    key = "speakers.embedding.weight"
    old = cond[key]
    cond[key] = torch.cat([old, row.to(old.dtype).reshape(1, -1)], dim=0)
    prints = dict(payload.get("voiceprints") or {})
    prints[name] = voiceprint
    return dict(payload, speakers=[*speakers, name], conditioner=cond, voiceprints=prints)


def add_voice(
    data: Sequence[str | Path],
    name: str,
    model_path: Path,
    out: Path,
    opts: VoiceOptions | None = None,
    work: Path | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
    embed: Callable[[np.ndarray], np.ndarray | None] | None = None,
) -> VoiceResult:
    """The whole ``voice add``: check the material, adapt, write ``out`` atomically (see the
    module docstring). Raises :class:`MaterialError`, ValueError (name taken, ``out`` is the
    input) or :class:`CheckpointError` before anything is written."""
    t0 = time.perf_counter()
    opts = opts or VoiceOptions()
    check_name(name)
    if out.exists() and out.resolve() == model_path.resolve():
        raise ValueError(f"{out}: the output would overwrite the input model; give another -o")
    payload = load_checkpoint(model_path, kind="inference")
    model = AcousticModel.from_payload(payload, str(model_path))
    if name in model.speakers:
        raise ValueError(
            f"the model already has a singer {name!r}: pick another --name or "
            "`comostream voice remove` it first"
        )
    files = audio_files(data)
    if out.resolve() in {f.resolve() for f in files}:
        raise ValueError(f"{out}: the output would overwrite one of the recordings")
    pieces, warnings = check_material(files, model, work, progress, opts.mixed_voices, embed)
    for w in warnings:
        log(f"warning: {w}")
    held = _heldout(len(pieces), opts.holdout_every)
    heldout = [p for i, p in enumerate(pieces) if i in held]
    train = [p for i, p in enumerate(pieces) if i not in held]
    hop_s = model.cfg.audio.hop_length / SAMPLE_RATE
    train_s = sum(p.frames for p in train) * hop_s
    if opts.steps is None:
        opts = replace(opts, steps=auto_steps(train_s))
    row, info = adapt_voice(
        model, train, opts, name, work, progress, stop_after, _encoder_tag(model) + str(model_path)
    )
    vp = _voiceprint(pieces)
    seconds = time.perf_counter() - t0
    vp["adaptation"] = {
        "seconds": round(seconds, 1),
        "audio_seconds": round(train_s, 1),
        "steps": int(info["steps"]),
        "init": info["init"],
        "method": "embedding",
    }
    if info["steps"] >= (opts.steps or 0):
        save_checkpoint(out, with_voice(payload, name, row, vp))
    return VoiceResult(
        out,
        name,
        vp,
        heldout,
        train,
        train_s,
        seconds,
        info["init"],
        info["loss_start"],
        info["loss_end"],
        warnings,
    )
