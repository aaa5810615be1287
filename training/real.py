"""Real recorded voices (Debian's Asterisk prompts), spoken and re-sung: ``comostream prep real``.

Allison Smith (US English, Mexican Spanish) and June Wallack (Canadian French) recorded the
Asterisk PBX prompts (CC-BY-SA 3.0). Their G.722 packages (16 kHz) are fetched with
``apt-get download`` (:mod:`.debs`); the prompts (:mod:`.asterisk`) are decoded, trimmed of
leading/trailing silence, resampled to 24 kHz and written as spoken voices; every kept prompt is
also re-sung with WORLD on corpus melodies (:mod:`.melody`) as the ``<voice>_sung`` singer, whose
exact F0 is stored the way the synthetic corpus stores it. Layout (as :mod:`.synth`, so
:mod:`.corpus` and the training pipeline read it unchanged)::

    OUT_DIR/<voice>/<NNNN>_<prompt>.wav             24 kHz mono 16-bit PCM, peak -3 dBFS
    OUT_DIR/<voice>_sung/<NNNN>_<prompt>.wav        the prompt sung on its melody
    OUT_DIR/<voice>_sung/<NNNN>_<prompt>.f0.npy     float32 Hz per frame (0 = unvoiced)
    OUT_DIR/manifest.jsonl                          one JSON object per utterance, with licence
    OUT_DIR/corpus.json                             packages, versions, licence, dropped prompts

``NNNN`` is the prompt's rank in its package. Splits go by prompt name (the same prompt is held
out in every language, spoken and sung). Byte-identical for a seed; files already written are
kept, so a rerun writes nothing and an interrupted run resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from comostream.training import world_ops as wo
from comostream.training.asterisk import (
    LICENCE,
    LICENCE_URL,
    REAL_VOICES,
    SOUNDS,
    SOURCE_RATE,
    Prompt,
    RealVoice,
    read_prompts,
    transcripts,
)
from comostream.training.corpus import CorpusError
from comostream.training.debs import (
    EVALUATION_ONLY,
    Downloader,
    PackageError,
    apt_get_download,
    check_allowed,
    fetch_deb,
    read_deb,
)
from comostream.training.melody import Melody, f0_contour, make_melody
from comostream.training.synth import PEAK_DBFS, _atomic_write_bytes, _npy_bytes, _wav_bytes
from comostream.training.voices import REGISTERS

__all__ = ["prepare_real_corpus", "prompt_split", "summary", "sung_melody"]

CORPUS_FORMAT = 1
PART_S = 4.0  # seconds of speech per melody; longer prompts are sung on several melodies
MAX_PARTS = 24
F0_FLOOR, F0_CEIL = 70.0, 500.0  # WORLD search range for the (female) speakers, Hz


def prompt_split(prompt: str, seed: int, valid_fraction: float, test_fraction: float) -> str:
    """Split of a prompt name (e.g. ``digits/1``): a seeded hash, the same in every language."""
    h = hashlib.sha1(f"{seed}:{prompt}".encode()).digest()
    u = int.from_bytes(h[:4], "big") / 2**32
    return (
        "test" if u < test_fraction else "valid" if u < test_fraction + valid_fraction else "train"
    )


def sung_melody(seed: int, line: int, spoken_seconds: float) -> Melody:
    """The melody a prompt is sung on: ``ceil(spoken / PART_S)`` corpus melodies (at most
    MAX_PARTS) joined, each rescaled to 1.5x its share of the speech (clipped to 1.5-6 s)."""
    n_parts = min(MAX_PARTS, max(1, math.ceil(spoken_seconds / PART_S)))
    share = spoken_seconds / n_parts
    notes_s = float(np.clip(1.5 * share, 1.5, 6.0))
    n_words = int(np.clip(round(2.5 * share), 5, 12))
    parts = [make_melody(seed, line * MAX_PARTS + j, n_words) for j in range(n_parts)]
    notes: list[tuple[int, float]] = []
    beats: list[float] = []
    for p in parts:
        scale = notes_s / p.notes_seconds
        notes += [(s + p.key - parts[0].key, round(d * scale, 6)) for s, d in p.notes]
        beats += list(p.beats)
    first = parts[0]
    return dataclasses.replace(
        first,
        id=f"s{seed}-r{line:06d}",
        notes=tuple(notes),
        beats=tuple(beats),
        tempo=round(first.tempo * first.notes_seconds / notes_s, 3),
    )


def _sing(
    x: np.ndarray, melody: Melody, tonic_midi: int, sr: int, hop: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(audio float64, f0 float32 Hz per frame)`` of spoken ``x`` sung on ``melody``; None if
    WORLD finds no voiced frame."""
    speech = wo.analyze(x.astype(np.float64), sr, hop, F0_FLOOR, F0_CEIL)
    segments = wo.runs(speech.voiced)
    if not segments:
        return None
    n_out = melody.n_frames(sr, hop)
    pos, voiced = wo.time_map(segments, len(speech.f0), melody.onsets() * sr / hop, n_out)
    sp, ap = wo.gather_frames(speech.sp, speech.ap, pos)
    ap = wo.periodic_voicing(ap, voiced, sr)
    f0 = np.where(voiced, f0_contour(melody, tonic_midi, n_out, hop / sr), 0.0).astype(np.float32)
    y = wo.peak_normalize(wo.render(f0.astype(np.float64), sp, ap, sr, hop), PEAK_DBFS)
    return y, f0


def _write_if_changed(path: Path, data: bytes) -> None:
    if not path.is_file() or path.read_bytes() != data:
        _atomic_write_bytes(path, data)


def _previous(out_dir: Path) -> dict[str, Any]:
    """What an earlier run wrote into ``out_dir/corpus.json`` (``{}`` if nothing): its seed,
    audio settings and ``<voice> version`` of each package."""
    path = out_dir / "corpus.json"
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise CorpusError(f"{path} is unreadable; delete {out_dir} and run again") from None
    if info.get("generator") != "comostream training.real":
        raise CorpusError(f"{out_dir} holds another corpus ({path}); choose an empty OUT_DIR")
    versions = {f"{v['name']} version": v.get("package_version") for v in info.get("voices", [])}
    return {**info, **versions}


def _check_same(out_dir: Path, now: dict[str, Any], old: dict[str, Any]) -> None:
    """CorpusError if ``out_dir`` was made with other settings: its files would be kept as they
    are (a rerun only fills in what is missing), so they would not match the manifest."""
    for key, value in now.items():
        if key in old and old[key] != value:
            raise CorpusError(
                f"{out_dir} was made with {key} = {old[key]!r}, not {value!r}; its files "
                "would be kept as they are. Use another OUT_DIR, or delete this one"
            )


def _tool_versions() -> dict[str, str]:
    out = {"numpy": np.__version__}
    for dist in ("G722", "pyworld", "torch", "soundfile"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


@dataclasses.dataclass(frozen=True)
class _Job:
    out_dir: Path
    seed: int
    valid_fraction: float
    test_fraction: float
    sung: bool
    sample_rate: int
    hop: int


def _write_prompt(
    job: _Job, voice: RealVoice, origin: dict[str, str], p: Prompt, dropped: list[dict[str, str]]
) -> list[dict[str, Any]]:
    """Write the spoken (and sung) files of one prompt unless present; their manifest records.

    A prompt WORLD finds no voiced frame in is sung by no one: it is added to ``dropped``.
    """
    from comostream.models.audio import resample

    sr = job.sample_rate
    uid = f"{p.rank:04d}_{p.prompt.replace('/', '-')}"
    line = voice.line_base + p.rank
    common = {
        **origin,
        "source": p.source,
        "prompt": p.prompt,
        "text": p.text,
        "line": line,
        "sample_rate": sr,
        "split": prompt_split(p.prompt, job.seed, job.valid_fraction, job.test_fraction),
    }
    wav = job.out_dir / voice.name / f"{uid}.wav"
    if not wav.is_file():
        x = resample(p.audio, SOURCE_RATE, sr).astype(np.float64)
        _atomic_write_bytes(wav, _wav_bytes(wo.peak_normalize(x, PEAK_DBFS), sr))
    seconds = round(sf.info(str(wav)).frames / sr, 6)
    out = [
        {
            **common,
            "path": f"{voice.name}/{uid}.wav",
            "singer": voice.name,
            "kind": "spoken",
            "seconds": seconds,
        }
    ]
    if not job.sung:
        return out
    swav = job.out_dir / voice.sung / f"{uid}.wav"
    sf0 = job.out_dir / voice.sung / f"{uid}.f0.npy"
    melody = sung_melody(job.seed, line, len(p.audio) / SOURCE_RATE)
    if not (swav.is_file() and sf0.is_file()):
        x, _ = sf.read(str(wav), dtype="float64")
        res = _sing(x, melody, REGISTERS[voice.register], sr, job.hop)
        if res is None:
            dropped.append({"source": p.source, "reason": "no voiced frame to sing"})
            return out
        _atomic_write_bytes(sf0, _npy_bytes(res[1]))
        _atomic_write_bytes(swav, _wav_bytes(res[0], sr))
    seconds = round(sf.info(str(swav)).frames / sr, 6)
    out.append(
        {
            **common,
            "path": f"{voice.sung}/{uid}.wav",
            "singer": voice.sung,
            "kind": "sung",
            "f0": f"{voice.sung}/{uid}.f0.npy",
            "melody": melody.id,
            "register": voice.register,
            "seconds": seconds,
        }
    )
    return out


def prepare_real_corpus(
    out_dir: Path,
    voices: Sequence[RealVoice] = REAL_VOICES,
    *,
    seed: int = 0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.15,
    limit: int | None = None,
    sung: bool = True,
    cache_dir: Path | None = None,
    download: Downloader = apt_get_download,
    sample_rate: int = 24000,
    hop: int = 256,
    progress: bool = True,
) -> Path:
    """Write the real-voices corpus into ``out_dir``; returns the path of ``manifest.jsonl``.

    ``limit``: at most this many kept prompts per voice (the first in package order). Packages
    come from ``cache_dir`` (default ``out_dir/.debs``), fetched with ``download`` when missing.
    Raises PackageError (naming the package and the command to run) when one cannot be had.
    """
    out_dir = Path(out_dir)
    cache = Path(cache_dir) if cache_dir is not None else out_dir / ".debs"
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 (got {limit})")
    if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1) or (
        valid_fraction + test_fraction >= 1
    ):
        raise ValueError("valid_fraction and test_fraction must be in [0, 1) with a sum < 1")
    for voice in voices:  # refuse before fetching anything
        check_allowed(voice.package)
        check_allowed(voice.text_package)
    stamp = {
        "format": CORPUS_FORMAT,
        "seed": seed,
        "audio": {
            "sample_rate": sample_rate,
            "hop_length": hop,
            "peak_dbfs": PEAK_DBFS,
            "source_rate": SOURCE_RATE,
            "melody_parts": MAX_PARTS,
        },
    }
    old = _previous(out_dir)
    _check_same(out_dir, stamp, old)
    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    info_voices: list[dict[str, Any]] = []
    for voice in voices:
        deb = read_deb(fetch_deb(voice.package, cache, download))
        text_deb = read_deb(fetch_deb(voice.text_package, cache, download))
        files = list(deb.members(".g722", SOUNDS + voice.sounds_dir + "/"))
        if not files:
            raise PackageError(f"{deb.path}: no .g722 prompts under /{SOUNDS}{voice.sounds_dir}")
        _check_same(out_dir, {f"{voice.name} version": deb.version}, old)
        kept, dropped = read_prompts(voice, files, transcripts(text_deb.files))
        kept = kept[:limit] if limit is not None else kept
        origin = {
            "licence": LICENCE,
            "speaker": voice.speaker,
            "language": voice.language,
            "package": deb.name,
            "package_version": deb.version,
        }
        for name in (voice.name, voice.sung) if sung else (voice.name,):
            (out_dir / name).mkdir(exist_ok=True)
        job = _Job(out_dir, seed, valid_fraction, test_fraction, sung, sample_rate, hop)
        bar = tqdm(
            kept, desc=f"real {voice.name}", unit="prompt", file=sys.stderr, disable=not progress
        )
        for p in bar:
            records += _write_prompt(job, voice, origin, p, dropped)
        bar.close()
        info_voices.append(
            {
                **dataclasses.asdict(voice),
                **origin,
                "package_file": deb.path.name,
                "text_package": f"{text_deb.name} {text_deb.version}",
                "prompts_in_package": len(files),
                "prompts_kept": len(kept),
                "dropped": sorted(dropped, key=lambda d: d["source"]),
            }
        )
    records.sort(key=lambda r: (r["singer"], r["line"]))
    manifest = out_dir / "manifest.jsonl"
    _write_if_changed(
        manifest, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()
    )
    info = {
        **stamp,
        "generator": "comostream training.real",
        "licence": f"{LICENCE} ({LICENCE_URL}); recordings by Allison Smith and June Wallack, "
        "Asterisk core sounds (Digium), via Debian",
        "limit": limit,
        "sung": sung,
        "valid_fraction": valid_fraction,
        "test_fraction": test_fraction,
        "evaluation_only_packages": [p + "*" for p in EVALUATION_ONLY],
        "voices": info_voices,
        "tool_versions": _tool_versions(),
    }
    _write_if_changed(out_dir / "corpus.json", (json.dumps(info, indent=2) + "\n").encode())
    return manifest


def summary(manifest: Path) -> str:
    """Per-singer prompt counts and minutes of a manifest (for the CLI)."""
    per: dict[str, list[float]] = {}
    for raw in Path(manifest).read_text(encoding="utf-8").splitlines():
        if raw.strip():
            r = json.loads(raw)
            per.setdefault(r["singer"], []).append(float(r["seconds"]))
    rows = [f"{s}: {len(v)} utterances, {sum(v) / 60:.1f} min" for s, v in sorted(per.items())]
    return "\n".join(rows)
