"""``comostream demo`` with a model: each example streamed through the engine to each singer.

Every conversion runs on the live schedule (the default block, pushed one block at a time as a
sound card would), transposed to the target singer's register when the model file holds voice
prints, and is written to ``OUT/<example>_to_<singer>.wav``. The table per conversion: the
algorithmic latency, the real-time factor, the F0 error (RMS cents between the output's F0 and
the source's, transposed, on frames voiced in both) and the timbre: the voice-print similarity
to the target singer and the singer whose print is closest (:mod:`comostream.models.voiceprint`).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from comostream.models.audio import read_audio, resample, save_audio
from comostream.models.conditioner import SpeakerSpec
from comostream.models.config import Config
from comostream.models.f0_yin import yin_f0
from comostream.models.mix import speaker_text
from comostream.models.voiceprint import closest, similarity, voice_print
from comostream.realtime.engine import StreamingConverter, convert_array
from comostream.realtime.geometry import StreamGeometry, stream_rate
from comostream.realtime.load import load_models, load_voiceprints, read_export
from comostream.realtime.pace import pace_warning

__all__ = ["ConversionReport", "demo_pace_warning", "run_conversion_demo"]


@dataclass
class ConversionReport:
    """One conversion of the demo."""

    example: str
    singer: str
    transpose: int
    latency_ms: float
    rtf: float
    f0_rmse_cents: float | None
    similarity: float | None
    closest: str | None
    output: Path


def _target_print(prints: dict[str, dict], singer: SpeakerSpec) -> dict | None:
    """The voice print of a singer, or of a mix (weighted mean of the mel-cepstra, weighted
    geometric mean of the F0 medians); None when one of them has none."""
    if isinstance(singer, str):
        return prints.get(singer)
    if not singer or any(name not in prints for name in singer):
        return None
    total = sum(singer.values())
    w = {name: weight / total for name, weight in singer.items()}
    mcep = sum(w[n] * np.asarray(prints[n]["mcep"], dtype=np.float64) for n in w)
    f0 = math.exp(sum(w[n] * math.log(prints[n]["f0_median"]) for n in w))
    return {"mcep": mcep, "f0_median": f0}


def _transpose(source: dict | None, target: dict | None) -> int:
    if not source or not target:
        return 0
    return int(round(12 * math.log2(target["f0_median"] / source["f0_median"])))


def convert_example(
    model: Any,
    vocoder: Any,
    audio: np.ndarray,
    rate: int,
    singer: SpeakerSpec,
    transpose: int,
    cfg: Config,
) -> tuple[np.ndarray, float, float]:
    """``(converted audio, latency ms, RTF)`` on the live schedule at the file's rate."""
    chunk = StreamGeometry.from_configs(model.cfg.audio, cfg.realtime).samples_per_block(rate)
    eng = StreamingConverter.from_models(
        model,
        vocoder,
        speaker=singer,
        transpose=transpose,
        sample_rate=rate,
        realtime=cfg.realtime,
        chunk=chunk,
    )
    t0 = time.perf_counter()
    with torch.inference_mode():
        y = convert_array(eng, audio, chunk=chunk)
    return y, eng.latency_ms, (time.perf_counter() - t0) / (len(audio) / rate)


def run_conversion_demo(
    checkpoint: Path,
    examples: list[Path],
    out_dir: Path,
    cfg: Config,
    singers: list[SpeakerSpec] | None = None,
    device: str = "cpu",
) -> list[ConversionReport]:
    """Convert every example to every singer (or to ``singers``: names or mixes ``{name:
    weight}``) with the models on ``device``; write WAVs; the reports."""
    export = read_export(checkpoint)
    model, vocoder = load_models(checkpoint, None, device, payload=export)
    model_rate = model.cfg.audio.sample_rate
    prints = load_voiceprints(checkpoint, payload=export)
    names: list[SpeakerSpec] = list(singers or model.speakers)
    out_dir.mkdir(parents=True, exist_ok=True)
    reports = []
    bar = tqdm(
        total=len(examples) * len(names), desc="converting", unit="conversion", file=sys.stderr
    )
    for path in examples:
        audio, file_rate = read_audio(path)
        rate = stream_rate(file_rate)
        if rate != file_rate:
            audio = resample(audio, file_rate, rate)
        audio24 = resample(audio, rate, model_rate)
        src_f0 = yin_f0(audio24, cfg.f0)
        try:
            src_print = voice_print(audio24, cfg.f0) if prints else None
        except ValueError:  # nothing voiced: no transposition, no similarity
            src_print = None
        for singer in names:
            label, target = speaker_text(singer), _target_print(prints, singer)
            t = _transpose(src_print, target)
            y, latency, rtf = convert_example(model, vocoder, audio, rate, singer, t, cfg)
            stem = label.replace(":", "-").replace(",", "+")  # a mix: a-0.5+b-0.5
            out = out_dir / f"{path.stem}_to_{stem}.wav"
            save_audio(out, y, rate)  # WAV, 32-bit float (DEFAULT_SUBTYPES), as convert
            y24 = resample(y, rate, model_rate)
            f0 = yin_f0(y24, cfg.f0)
            both = src_f0.voiced & f0.voiced
            cents = (
                1200 * np.log2(f0.f0_hz[both] / (src_f0.f0_hz[both] * 2 ** (t / 12)))
                if both.any()
                else None
            )
            sim = near = None
            if target is not None:
                try:
                    p = voice_print(y24, cfg.f0)
                    sim, near = similarity(p, target, prints), closest(p, prints)
                except ValueError:
                    pass
            reports.append(
                ConversionReport(
                    path.stem,
                    label,
                    t,
                    latency,
                    rtf,
                    float(np.sqrt(np.mean(cents**2))) if cents is not None else None,
                    sim,
                    near,
                    out,
                )
            )
            bar.update()
    bar.close()
    return reports


TABLE_NOTES = """\
transpose: semitones applied to the source's F0, to the target singer's register (from the
  voice prints in the model file; 0 without them).
latency (ms): the engine's algorithmic latency on the live schedule (block + analysis overhang
  + lookaheads + resampling), sound card buffers not included.
RTF: compute time / audio time of the conversion (under 1: faster than real time).
F0 RMSE (cents): how far the output's pitch is from the source's (transposed), RMS over the
  frames voiced in both; 100 cents = a semitone, 50 a quarter tone.
timbre similarity: cosine (-1 to +1) of the output's voice print and the target singer's (mean
  mel-cepstrum of the voiced frames), centred on the mean print of the model's singers: above 0
  the output's timbre leans toward the target's, 1 would be the same; n/a without prints.
closest singer: the singer whose print is most similar to the output's; "(target)" when it is
  the singer asked for."""


def demo_pace_warning(reports: list[ConversionReport], block: int) -> str:
    """:func:`~comostream.realtime.pace.pace_warning` of the table's slowest conversion (one
    line for the whole table); ``""`` when every conversion keeps up."""
    if not reports:
        return ""
    return pace_warning(max(r.rtf for r in reports), 0, torch.get_num_threads(), block)


def conversion_table(reports: list[ConversionReport]) -> str:
    """The demo's Markdown table (:data:`TABLE_NOTES` explain its columns)."""
    rows = [
        "| example | singer | transpose | latency (ms) | RTF | F0 RMSE (cents) | timbre "
        "similarity | closest singer |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in reports:
        f0 = "n/a" if r.f0_rmse_cents is None else f"{r.f0_rmse_cents:.0f}"
        sim = "n/a" if r.similarity is None else f"{r.similarity:+.2f}"
        mark = "" if r.closest is None else (" (target)" if r.closest == r.singer else "")
        rows.append(
            f"| {r.example} | {r.singer} | {r.transpose:+d} | {r.latency_ms:.1f} | "
            f"{r.rtf:.2f} | {f0} | {sim} | {r.closest or 'n/a'}{mark} |"
        )
    return "\n".join(rows)
