"""Add a singer to an inference file: ``comostream voice add`` (issue 15).

The new singer is a new row of the conditioner's singer table
(:class:`~comostream.models.conditioner.SpeakerTable`); every other weight is frozen, so every
earlier singer's output stays bit-identical. The row is learnt by gradient descent on a
reconstruction loss of the one-step consistency target: for segments of the voice's own
recordings, ``conditioner(content of the recording, its F0, voiced, loudness, row) -> target at
sigma_max on the chain's counter-based noise, scaled as the engine scales it (``[realtime]
noise_scale``) -> mel``, L1 against the recording's own mel
(normalised as the acoustic training normalises it).

The material is read, checked and analysed by :mod:`comostream.training.voice_material` (the
engine's own features, cached in a work folder); the adaptation state (row, optimiser, step) is
written there atomically every ``checkpoint_every`` steps, so an interrupted run resumes where it
stopped. The crops of step ``s`` come from a generator seeded by ``(seed, s)``: a run is
deterministic for a seed, resumed or not.

Material checks run before anything is written; each failure is one :class:`MaterialError`
(a ValueError) with one line naming the problem.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from comostream.models.acoustic import AcousticModel, hold_unvoiced
from comostream.models.checkpoint_io import CheckpointError, load_checkpoint
from comostream.models.edm import normalise_mel
from comostream.models.noise import frame_noise
from comostream.models.retrieval import INDEX_SIZE, build_bank
from comostream.models.voiceprint import DIMS
from comostream.training.checkpoint import save_checkpoint
from comostream.training.voice_file import check_name
from comostream.training.voice_material import (
    ACTIVE_DB,
    AUDIO_EXTENSIONS,
    SAMPLE_RATE,
    MaterialError,
    Piece,
    audio_files,
    check_material,
    features_tag,
    piece_prints,
)

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

STATE_KIND = "voice-adapt"
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


@dataclass(frozen=True)
class VoiceOptions:
    """Adaptation settings: ``steps`` (None: :func:`auto_steps`) of Adam (learning rate
    ``lr``) on ``batch`` random crops of ``segment_frames`` frames (the first ``context_frames``
    of each only warm the causal layers up, outside the loss); every ``holdout_every``-th piece
    is held out for the resynthesis check; the state is saved every ``checkpoint_every``
    steps; ``mixed_voices``: ``"warn"`` or ``"error"`` when the material sounds like several
    voices, ``"off"``: not checked; ``index``: store the voice's retrieval bank
    (:func:`voice_bank`)."""

    steps: int | None = None  # None: :func:`auto_steps` of the training audio
    batch: int = 8
    segment_frames: int = 160
    context_frames: int = 32
    lr: float = 0.15
    seed: int = 0
    holdout_every: int = 10
    checkpoint_every: int = 25
    mixed_voices: str = "warn"
    index: bool = True  # store a retrieval bank of the voice's content frames


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


# ------------------------------------------------------------------------------ adaptation


def _register(pieces: Sequence[Piece]) -> dict[str, float]:
    f0 = np.concatenate([p.f0[(p.voiced > 0) & (p.loudness > ACTIVE_DB)] for p in pieces])
    f0 = f0[f0 > 0]
    lo, med, hi = np.percentile(f0, [5, 50, 95])
    return {"f0_median": float(med), "f0_low": float(lo), "f0_high": float(hi)}


def _voiceprint(pieces: Sequence[Piece]) -> dict[str, Any]:
    prints = piece_prints(pieces)
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
        self.noise_scale = float(model.cfg.realtime.noise_scale)  # as the engine draws it

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
        b["noise"] = self.noise_scale * frame_noise(index, self.n_mels, self.seed)
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
    settings = {k: v for k, v in asdict(opts).items() if k != "index"}  # not the adaptation's
    h.update(json.dumps(settings, sort_keys=True).encode())
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
    payload: dict[str, Any],
    name: str,
    row: Tensor,
    voiceprint: dict[str, Any],
    bank: np.ndarray | None = None,
) -> dict[str, Any]:
    """A copy of inference payload ``payload`` with singer ``name`` appended (embedding ``row``),
    its voice print and its retrieval bank ``(K, content_dim)`` if given; every other entry is
    the same tensor."""
    speakers = [str(s) for s in payload["speakers"]]
    if name in speakers:
        raise ValueError(f"the model already has a singer {name!r}")
    cond = dict(payload["conditioner"])
    key = "speakers.embedding.weight"
    old = cond[key]
    cond[key] = torch.cat([old, row.to(old.dtype).reshape(1, -1)], dim=0)
    prints = dict(payload.get("voiceprints") or {})
    prints[name] = voiceprint
    out = dict(payload, speakers=[*speakers, name], conditioner=cond, voiceprints=prints)
    if bank is not None:
        out["index"] = {**dict(payload.get("index") or {}), name: torch.from_numpy(bank)}
    return out


def voice_bank(pieces: Sequence[Piece], seed: int = 0) -> np.ndarray | None:
    """The retrieval bank of a voice ``(K <= INDEX_SIZE, content_dim)``: k-means centroids of
    its pieces' voiced, active content frames (None for a model without content)."""
    frames = [p.content[:, (p.voiced > 0) & (p.loudness > ACTIVE_DB)].T for p in pieces]
    x = np.concatenate(frames) if frames else np.zeros((0, 0), np.float32)
    if x.shape[0] == 0 or x.shape[1] == 0:
        return None
    return build_bank(x, INDEX_SIZE, seed=seed)


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
        model, train, opts, name, work, progress, stop_after, features_tag(model) + str(model_path)
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
        bank = voice_bank(train, opts.seed) if opts.index else None
        save_checkpoint(out, with_voice(payload, name, row, vp, bank))
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
