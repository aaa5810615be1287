"""``comostream demo``: the main job on the bundled example.

With a model (``--checkpoint`` or the one shipped in the package) it converts each bundled
example to each singer through the streaming engine (:mod:`comostream.realtime.files.demo_convert`).
Without one it streams each example through the front-end only: the incremental mel and loudness
extractors (fed block by block) and the F0 tracker, checks that the streamed frames equal the
offline ones, reports latency and cost, writes the features and says what is missing.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from comostream.models.audio import load_audio
from comostream.models.conditioner import SpeakerSpec
from comostream.models.config import Config
from comostream.models.f0 import extract_f0
from comostream.models.f0_post import postprocess, transpose
from comostream.models.loudness import IncrementalLoudness, loudness
from comostream.models.mel import IncrementalMel, mel_spectrogram
from comostream.realtime.geometry import StreamGeometry

DEMO_BLOCK_FRAMES = 4  # frames per streamed block (42.7 ms at 24 kHz / hop 256)
DEMO_TRANSPOSE = 0.0  # semitones applied to the tracked F0


@dataclass(frozen=True)
class FrontEndReport:
    """What the demo measured for one input (units in the field names)."""

    name: str
    seconds: float
    frames: int
    voiced_fraction: float
    f0_median_hz: float
    mel_stream_max_diff: float
    loudness_stream_max_diff: float
    lookahead_ms: float
    block_ms: float
    rtf_features: float
    rtf_f0: float


def stream_features(
    audio: np.ndarray, cfg: Config, block_frames: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mel ``(n_mels, T)`` and loudness ``(T,)`` computed block by block, as the engine will."""
    block = StreamGeometry.from_configs(cfg.audio).with_block(block_frames).block_samples
    mel_inc, loud_inc = IncrementalMel(cfg.audio), IncrementalLoudness(cfg.audio)
    mels, louds = [], []
    x = torch.from_numpy(audio).unsqueeze(0)
    for start in range(0, x.shape[1], block):
        chunk = x[:, start : start + block]
        mels.append(mel_inc.push(chunk))
        louds.append(loud_inc.push(chunk))
    mels.append(mel_inc.flush())
    louds.append(loud_inc.flush())
    return torch.cat(mels, -1)[0].numpy(), torch.cat(louds, -1)[0].numpy()


def analyse(
    path: Path, cfg: Config, block_frames: int = DEMO_BLOCK_FRAMES
) -> tuple[FrontEndReport, dict[str, np.ndarray]]:
    """Stream ``path`` through the front-end, compare with offline; report and the features."""
    a = cfg.audio
    audio = load_audio(path, a.sample_rate)
    seconds = audio.shape[0] / a.sample_rate
    with torch.inference_mode():
        t0 = time.perf_counter()
        mel_s, loud_s = stream_features(audio, cfg, block_frames)
        t_feat = time.perf_counter() - t0
        mel_o, loud_o = mel_spectrogram(audio, a), loudness(audio, a)
    t0 = time.perf_counter()
    track = postprocess(extract_f0(audio, a.sample_rate, cfg.f0), cfg.f0)
    t_f0 = time.perf_counter() - t0
    f0 = transpose(track.f0_hz, DEMO_TRANSPOSE)
    voiced = f0[track.voiced]
    return FrontEndReport(
        name=path.name,
        seconds=seconds,
        frames=mel_o.shape[1],
        voiced_fraction=float(track.voiced.mean()),
        f0_median_hz=float(np.median(voiced)) if voiced.size else 0.0,
        mel_stream_max_diff=float(np.abs(mel_s - mel_o).max()),
        loudness_stream_max_diff=float(np.abs(loud_s - loud_o).max()),
        lookahead_ms=1000.0 * (a.n_fft // 2) / a.sample_rate,
        block_ms=StreamGeometry.from_configs(a).with_block(block_frames).block_ms,
        rtf_features=t_feat / seconds,
        rtf_f0=t_f0 / seconds,
    ), {"mel": mel_s, "loudness": loud_s, "f0_hz": f0, "voiced": track.voiced}


def warm_up(cfg: Config) -> None:
    """Run every stage once on a short tone so first-call costs stay out of the timings."""
    t = np.arange(cfg.audio.sample_rate // 2, dtype=np.float32) / cfg.audio.sample_rate
    tone = (0.3 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)
    with torch.inference_mode():
        stream_features(tone, cfg, DEMO_BLOCK_FRAMES)
    postprocess(extract_f0(tone, cfg.audio.sample_rate, cfg.f0), cfg.f0)


FRONT_END_NOTES = """\
voiced: share of frames the F0 tracker found voiced. stream vs offline mel: largest difference
  between the mel frames computed block by block and over the whole file (~1e-6: the same).
window lookahead: the audio the analysis window needs past a frame (half an FFT).
RTF: compute time / audio time of the mel + loudness extractors, and of the F0 tracker."""


def _table(reports: list[FrontEndReport], backend: str) -> str:
    head = (
        "| input | seconds | frames | voiced | F0 median (Hz) | stream vs offline mel "
        f"| block (ms) | window lookahead (ms) | RTF mel+loudness | RTF F0 ({backend}) |"
    )
    rows = [head, "|" + "---|" * 10]
    for r in reports:
        rows.append(
            f"| {r.name} | {r.seconds:.2f} | {r.frames} | {r.voiced_fraction:.0%} "
            f"| {r.f0_median_hz:.1f} | {r.mel_stream_max_diff:.1e} | {r.block_ms:.1f} "
            f"| {r.lookahead_ms:.1f} | {r.rtf_features:.3f} | {r.rtf_f0:.3f} |"
        )
    return "\n".join(rows)


def run_demo(
    cfg: Config,
    out_dir: Path,
    example: Path | None = None,
    checkpoint: Path | None = None,
    singers: list[SpeakerSpec] | None = None,
    device: str = "cpu",
    plot: Path | None = None,
) -> int:
    """Convert ``example`` (or every bundled example) to every singer of the model (``checkpoint``
    or the shipped one; ``singers``: these names or mixes only) on ``device`` and print a table;
    without a model, analyse the inputs through the front-end and say what is missing.
    ``plot``: also draw the first conversion's spectrograms and the signal path there."""
    from comostream.models.shipped import default_model_path, example_files

    inputs = [example] if example is not None else example_files()
    if not inputs:
        print("no bundled example found; pass one with --input FILE")
        return 1
    model = checkpoint or default_model_path()
    if model is not None:
        from comostream.realtime.files.demo_convert import (
            TABLE_NOTES,
            conversion_table,
            demo_pace_warning,
            run_conversion_demo,
        )

        reports = run_conversion_demo(model, inputs, out_dir, cfg, singers, device=device)
        print(conversion_table(reports))
        print("\n" + TABLE_NOTES)
        slow = demo_pace_warning(reports, cfg.realtime.block_frames)
        if slow:
            print(f"comostream: warning: {slow}", file=sys.stderr)
        n = len(reports)
        hits = sum(r.closest == r.singer for r in reports if r.closest is not None)
        print(
            f"\n{n} conversions streamed in blocks of {cfg.realtime.block_frames} frames "
            f"({model}); written to {out_dir}/. Timbre closest to the target singer in "
            f"{hits} of {n}."
        )
        if plot is not None and reports:
            from comostream.realtime.files.demo_plot import write_demo_plots

            first = reports[0]
            source = next(p for p in inputs if p.stem == first.example)
            written = write_demo_plots(
                plot, model, source, first.output, first.singer, first.transpose, cfg, device
            )
            print("pictures: " + ", ".join(str(p) for p in written))
        return 0
    if plot is not None:
        print("--plot needs a model (--checkpoint MODEL.ckpt): no pictures drawn", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    warm_up(cfg)
    reports = []
    for path in inputs:
        report, features = analyse(path, cfg)
        reports.append(report)
        np.savez(out_dir / f"{path.stem}.features.npz", **features)
    print(_table(reports, cfg.f0.backend))
    print("\n" + FRONT_END_NOTES)
    print(
        f"\nStreamed in blocks of {DEMO_BLOCK_FRAMES} frames; features written to {out_dir}/.\n"
        "This installation ships no model (`make default-model` trains one), so the demo "
        "analysed the input without converting it. Convert with a model of your own: "
        "`comostream demo --checkpoint MODEL.ckpt` or `comostream convert --checkpoint ...`."
    )
    return 0
