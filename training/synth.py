"""Synthetic parallel multi-singer singing corpus with exactly known F0 (``comostream prep synth``).

Every singer sings every lyric line on that line's melody (transposed to the singer's register):
each line is spoken by the singer's base TTS voice, analysed with WORLD, time-warped onto the
notes, given the melody F0 on voiced frames, envelope-warped and resynthesised at 24 kHz. The F0
handed to the synthesiser is saved as the ground truth. Layout::

    OUT_DIR/<singer>/<singer>_<line>.wav      24 kHz mono 16-bit PCM
    OUT_DIR/<singer>/<singer>_<line>.f0.npy   float32 Hz per frame (0 = unvoiced), T = N//hop + 1
    OUT_DIR/manifest.jsonl                    one JSON object per utterance (sorted)
    OUT_DIR/corpus.json                       config, singers, lines, tool versions

The output is byte-identical for a given seed, config and tool set, whatever ``jobs`` is.
"""

from __future__ import annotations

import dataclasses
import io
import json
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pyworld
import soundfile as sf
from tqdm import tqdm

from comostream.models.config import AudioConfig, CorpusConfig, config_to_dict
from comostream.training import world_ops as wo
from comostream.training.corpus import CorpusError
from comostream.training.melody import Line, f0_contour, make_lines
from comostream.training.voices import (
    BASE_VOICES,
    Singer,
    check_tools,
    singer_table,
    tool_versions,
    tts_batch,
)

__all__ = ["CORPUS_FORMAT", "PEAK_DBFS", "assign_splits", "synthesize_corpus"]

CORPUS_FORMAT = 1
PEAK_DBFS = -3.0  # peak level of every rendered utterance, dB re full scale


def assign_splits(
    n_lines: int, valid_fraction: float, test_fraction: float, seed: int
) -> list[str]:
    """Split label per line index: a seeded permutation, test lines first, then valid lines.

    With >= 3 lines there is at least one test and one valid line (and at least one train line).
    """
    n_test = int(round(test_fraction * n_lines))
    n_valid = int(round(valid_fraction * n_lines))
    if n_lines >= 3:
        n_test = max(1, n_test)
        n_valid = max(1, n_valid)
        while n_test + n_valid > n_lines - 1:
            if n_test >= n_valid:
                n_test -= 1
            else:
                n_valid -= 1
    else:
        n_test = n_valid = 0
    order = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, 0x5350])).permutation(
        n_lines
    )
    labels = ["train"] * n_lines
    for rank, idx in enumerate(order.tolist()):
        if rank < n_test:
            labels[idx] = "test"
        elif rank < n_test + n_valid:
            labels[idx] = "valid"
    return labels


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _wav_bytes(x: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def utt_id(singer: str, line: int) -> str:
    """Utterance id (file stem) of ``line`` sung by ``singer``."""
    return f"{singer}_{line:04d}"


def _render_task(
    x: np.ndarray, line: Line, singers: Sequence[Singer], out_dir: str, sr: int, hop: int
) -> list[dict[str, Any]]:
    """Render one spoken line for every singer sharing its base voice; return manifest records.

    ``x`` is the spoken line (float64 at ``sr`` Hz); it is analysed once. Writes the files.
    """
    base = BASE_VOICES[singers[0].base]
    speech = wo.analyze(x, sr, hop, base.f0_floor, base.f0_ceil)
    mel = line.melody
    n_out = mel.n_frames(sr, hop)
    onsets = mel.onsets() * sr / hop
    pos, voiced = wo.time_map(wo.runs(speech.voiced), len(speech.f0), onsets, n_out)
    sp0, ap0 = wo.gather_frames(speech.sp, speech.ap, pos)
    ap0 = wo.periodic_voicing(ap0, voiced, sr)
    records = []
    for singer in singers:
        contour = f0_contour(mel, singer.tonic_midi, n_out, hop / sr, singer.vibrato_scale)
        f0 = np.where(voiced, contour, 0.0).astype(np.float32)
        sp = wo.warp_envelope(sp0, singer.warp_alpha)
        ap = wo.add_breathiness(ap0, singer.breathiness, sr)
        y = wo.peak_normalize(wo.render(f0.astype(np.float64), sp, ap, sr, hop), PEAK_DBFS)
        uid = utt_id(singer.name, line.index)
        sdir = Path(out_dir) / singer.name
        sdir.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(sdir / f"{uid}.wav", _wav_bytes(y, sr))
        _atomic_write_bytes(sdir / f"{uid}.f0.npy", _npy_bytes(f0))
        records.append(
            {
                "path": f"{singer.name}/{uid}.wav",
                "f0": f"{singer.name}/{uid}.f0.npy",
                "singer": singer.name,
                "text": line.text,
                "melody": mel.id,
                "line": line.index,
                "split": "",
                "seconds": round(len(y) / sr, 6),
                "sample_rate": sr,
            }
        )
    return records


def synthesize_corpus(
    out_dir: Path,
    cfg: CorpusConfig,
    audio: AudioConfig = AudioConfig(),
    progress: bool = True,
    jobs: int = 1,
    *,
    max_lines: int | None = None,
) -> Path:
    """Render the corpus into ``out_dir`` and return the path of ``manifest.jsonl``.

    ``cfg.minutes`` of audio per singer (lines are added until their melodies reach it; capped by
    ``max_lines``), the first ``cfg.singers`` singers of ``voices.SINGERS`` and the first
    ``cfg.extra_singers`` of ``voices.EXTRA_SINGERS``, splits by line.
    Raises ValueError for a bad singer count (CorpusError) or an ``out_dir`` that is a file,
    ToolMissingError if a TTS program is missing.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CorpusError(f"{out_dir} is a file, not a folder: give a folder for the corpus")
    singers = singer_table(cfg.singers, cfg.extra_singers)
    bases = sorted({s.base for s in singers})
    check_tools(BASE_VOICES[b] for b in bases)
    sr, hop = audio.sample_rate, audio.hop_length
    lines = make_lines(cfg.seed, cfg.minutes * 60.0, sr, hop, max_lines=max_lines)
    splits = assign_splits(len(lines), cfg.valid_fraction, cfg.test_fraction, cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = max(1, int(jobs))
    bar = tqdm(
        total=len(lines) * len(singers),
        desc="synth corpus",
        unit="utt",
        file=sys.stderr,
        disable=not progress,
    )
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="comostream-tts-") as tmp:
        texts = [line.text for line in lines]
        with ThreadPoolExecutor(max_workers=min(jobs, len(bases))) as pool:
            spoken = dict(
                zip(
                    bases,
                    pool.map(lambda b: tts_batch(BASE_VOICES[b], texts, Path(tmp)), bases),
                    strict=True,
                )
            )
        tasks = [
            (
                wo.load_resampled(spoken[b][i], sr),
                line,
                [s for s in singers if s.base == b],
                str(out_dir),
                sr,
                hop,
            )
            for b in bases
            for i, line in enumerate(lines)
        ]
        if jobs == 1:
            for task in tasks:
                records += _render_task(*task)
                bar.update(len(task[2]))
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
                futures = [pool.submit(_render_task, *task) for task in tasks]
                for fut in as_completed(futures):  # records are sorted below
                    records += fut.result()
                    bar.update(len(fut.result()))
    bar.close()
    for rec in records:
        rec["split"] = splits[rec["line"]]
    records.sort(key=lambda r: (r["singer"], r["line"]))
    manifest = out_dir / "manifest.jsonl"
    _atomic_write_bytes(
        manifest, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()
    )
    info = {
        "format": CORPUS_FORMAT,
        "generator": "comostream training.synth",
        "config": config_to_dict(cfg),
        "seed": cfg.seed,
        "max_lines": max_lines,
        "audio": {"sample_rate": sr, "hop_length": hop, "peak_dbfs": PEAK_DBFS},
        "singers": [
            {**dataclasses.asdict(s), "base_voice": dataclasses.asdict(BASE_VOICES[s.base])}
            for s in singers
        ],
        "lines": [
            {
                "line": ln.index,
                "text": ln.text,
                "split": sp,
                "melody": dataclasses.asdict(ln.melody),
            }
            for ln, sp in zip(lines, splits, strict=True)
        ],
        "tool_versions": {
            **tool_versions(BASE_VOICES[b].engine for b in bases),
            "pyworld": str(getattr(pyworld, "__version__", "unknown")),
            "numpy": np.__version__,
        },
    }
    _atomic_write_bytes(out_dir / "corpus.json", (json.dumps(info, indent=2) + "\n").encode())
    return manifest
