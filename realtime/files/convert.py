"""`comostream convert`: a file through the streaming engine, offline or on the live schedule.

The file goes through in pieces, read -> (resampled) -> engine -> (resampled back) -> written,
so memory does not grow with its length: offline, the engine runs model steps of
:data:`~comostream.models.limits.OFFLINE_STEP_FRAMES` frames (the same samples as one step over
the whole file, to float rounding). The output never replaces the input, and is written
atomically (:class:`~comostream.models.audio.AudioWriter`) in the format of its extension
(wav/flac/ogg; :func:`~comostream.models.audio.output_format`), checked before any work.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from comostream.models.audio import (
    AudioError,
    AudioWriter,
    ChunkedResampler,
    open_audio,
    output_format,
    read_blocks,
)
from comostream.models.config import F0Config, RealtimeConfig
from comostream.models.limits import OFFLINE_STEP_FRAMES, check_transpose
from comostream.models.mix import speaker_text
from comostream.models.retrieval import DEFAULT_INDEX_RATE
from comostream.models.shipped import require_model
from comostream.realtime.engine import StreamingConverter
from comostream.realtime.geometry import stream_rate
from comostream.realtime.pace import pace_warning

__all__ = ["ConvertResult", "check_output_path", "convert_file"]

READ_FRAMES = 65536  # samples of the file read at a time


@dataclass
class ConvertResult:
    """What :func:`convert_file` did."""

    output: Path
    seconds: float  # audio duration
    compute_s: float  # wall time of the conversion
    latency_ms: float  # the engine's algorithmic latency (meaningful when streamed)
    speaker: Any
    block: int | None  # frames per step, or None for offline
    missing_seconds: float = 0.0  # what a truncated WAV's header promised beyond its end
    format: str = "WAV"  # the output's container (from its extension)
    subtype: str = "FLOAT"  # and sample format
    transpose: float = 0.0  # semitones applied
    auto: tuple[float, float] | None = None  # --transpose auto: (source, singer) registers, Hz

    @property
    def rtf(self) -> float:
        return self.compute_s / max(self.seconds, 1e-9)

    def summary(self) -> str:
        """One line saying what was written and what is true of how: offline, the model steps
        and the compute; streamed, the block and the latency a live stream of it would have."""
        if self.block is None:
            mode = f"offline, in model steps of {OFFLINE_STEP_FRAMES} frames"
        else:
            mode = (
                f"streamed in blocks of {self.block} frames, algorithmic latency "
                f"{self.latency_ms:.1f} ms"
            )
        shift = ""
        if self.auto is not None:
            shift = (
                f", transposed {self.transpose:+g} semitones (auto: source register "
                f"{self.auto[0]:.0f} Hz, singer's {self.auto[1]:.0f} Hz)"
            )
        elif self.transpose:
            shift = f", transposed {self.transpose:+g} semitones"
        return (
            f"wrote {self.output} ({self.format} {self.subtype}): {self.seconds:.2f} s as "
            f"{speaker_text(self.speaker)}{shift}, {mode}; compute {self.compute_s:.2f} s "
            f"(RTF {self.rtf:.3f})"
        )


def check_output_path(source: str | os.PathLike[str], output: str | os.PathLike[str]) -> None:
    """AudioError if ``output`` is (or resolves to, through links, or is a hard link of) the
    input file ``source``: a conversion never writes over its input."""
    src, out = Path(source), Path(output)
    same = src.resolve() == out.resolve()
    if not same and out.exists() and src.exists():
        try:
            same = os.path.samefile(src, out)
        except OSError:
            same = False
    if same:
        raise AudioError(
            f"{out}: is the input file {src}; write the output to another path "
            "(convert never writes over its input)"
        )
    if out.is_dir():
        raise AudioError(f"{out}: is a directory; give the output file's path")


def source_register(info: Any, f0: F0Config | None = None) -> float | None:
    """Median F0 (Hz) of the voiced frames of an opened file (:func:`open_audio`), by the
    engine's streaming tracker, reading it piece by piece (memory bounded); None when it has
    too few voiced frames (:func:`~comostream.models.register.median_voiced_hz`)."""
    from comostream.models.f0_track import SAMPLE_RATE
    from comostream.models.register import median_voiced_hz
    from comostream.realtime.frontend import default_f0_tracker

    tracker = default_f0_tracker(f0 or F0Config())
    rs = ChunkedResampler(info.sample_rate, SAMPLE_RATE)
    f0s: list[np.ndarray] = []
    voiced: list[np.ndarray] = []

    def take(track: tuple[np.ndarray, np.ndarray]) -> None:
        f0s.append(np.asarray(track[0], np.float64))
        voiced.append(np.asarray(track[1], bool))

    for x in read_blocks(info, READ_FRAMES):
        take(tracker.push(rs.push(x)))
    take(tracker.push(rs.flush()))
    take(tracker.flush())
    return median_voiced_hz(np.concatenate(f0s), np.concatenate(voiced))


def _warn(text: str) -> None:
    print(f"comostream: warning: {text}", file=sys.stderr)


def _pieces(blocks: Iterator[np.ndarray], size: int | None) -> Iterator[np.ndarray]:
    """``blocks`` re-cut into pieces of ``size`` samples (the last shorter); as is when None."""
    if size is None:
        yield from blocks
        return
    carry = np.zeros(0, np.float32)
    for b in blocks:
        carry = np.concatenate([carry, b]) if carry.shape[0] else b
        whole = carry.shape[0] - carry.shape[0] % size
        for i in range(0, whole, size):
            yield carry[i : i + size]
        carry = carry[whole:]
    if carry.shape[0]:
        yield carry


def convert_file(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    speaker: Any = None,
    transpose: float | str = 0.0,
    block: int | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    vocoder: str | os.PathLike[str] | None = None,
    realtime: RealtimeConfig | None = None,
    device: str = "cpu",
    warn: Callable[[str], None] = _warn,
    subtype: str | None = None,
    f0: F0Config | None = None,
    index_rate: float = DEFAULT_INDEX_RATE,
) -> ConvertResult:
    """Convert ``source`` to ``speaker`` and write ``output`` (the source's rate, mono, in the
    format of ``output``'s extension: wav/flac/ogg, with ``subtype`` or the format's default,
    :func:`~comostream.models.audio.output_format`; checked before anything is converted).

    ``block``: frames per model step on the realtime schedule (the file is pushed in chunks of
    one block; overrides ``realtime``'s); None runs offline (model steps of
    :data:`~comostream.models.limits.OFFLINE_STEP_FRAMES` frames). Same output either way, to
    float rounding, and memory bounded whatever the file's length. A rate the engine does not
    take is resampled first (:func:`~comostream.realtime.geometry.stream_rate`). ``speaker``:
    None for the model's default. ``transpose``: semitones, or ``"auto"``: the whole semitones
    from the file's register (:func:`source_register`) to the singer's (the model file's voice
    prints; :class:`~comostream.models.register.NoRegisterError` when it has none, a warning
    and no shift when the file has too little voiced audio). ``f0``: its ``backend`` is the
    streaming F0 tracker (None: the default). Raises :class:`AudioError` for an output that is
    the input or in a format (extension, subtype, rate) it cannot be written in, an unreadable or
    bogus file (rate outside 8-384 kHz) or a failed write (``output`` is then left as it was);
    ``warn`` is told of a truncated file (converted as far as it goes) and, streamed, of an RTF
    above :data:`~comostream.realtime.pace.RTF_LIMIT`
    (:func:`~comostream.realtime.pace.pace_warning`, once, at the end).
    """
    from comostream.realtime.load import load_models

    check_output_path(source, output)
    fmt, subtype = output_format(output, subtype)
    auto = transpose == "auto"
    transpose = 0.0 if auto else check_transpose(transpose)
    checkpoint = require_model(checkpoint)
    info = open_audio(source)
    if info.missing_frames:
        warn(
            f"{info.path}: truncated: its header promises {info.missing_frames} samples "
            f"({info.missing_seconds:.2f} s) more than the file holds; converting the "
            f"{info.seconds:.2f} s present"
        )
    file_rate = info.sample_rate
    output_format(output, subtype, sample_rate=file_rate)  # e.g. no Vorbis at 384 kHz
    rate = stream_rate(file_rate)  # e.g. 8 or 96 kHz: streamed at 48 kHz, written at its rate
    rt = (realtime or RealtimeConfig()).with_block(block)
    model, voc = load_models(checkpoint, vocoder, device, rt)
    speaker = model.resolve_speaker(speaker)
    registers = None
    if auto:
        from comostream.models.register import auto_semitones, singer_register
        from comostream.realtime.load import load_voiceprints

        singer_hz = singer_register(load_voiceprints(checkpoint), speaker)
        source_hz = source_register(info, f0)
        if source_hz is None:
            warn(f"{info.path}: too little voiced audio to tell its register; not transposed")
        else:
            transpose = auto_semitones(source_hz, singer_hz)
            registers = (source_hz, singer_hz)
    engine = StreamingConverter.from_models(
        model,
        voc,
        speaker=speaker,
        transpose=transpose,
        sample_rate=rate,
        realtime=rt,
        f0=f0,
        offline=block is None,
        index_rate=index_rate,
    )
    rs_in, rs_out = ChunkedResampler(file_rate, rate), ChunkedResampler(rate, file_rate)
    skip = engine.delay_samples  # the engine's delay, removed: output aligned to the input
    n_in = 0  # samples at the stream rate pushed
    n_out = 0  # aligned output samples at the stream rate written

    def emit(y: np.ndarray, writer: AudioWriter) -> None:
        nonlocal skip, n_out
        if skip:
            cut = min(skip, y.shape[0])
            y, skip = y[cut:], skip - cut
        y = y[: max(0, n_in - n_out)]
        if not np.all(np.isfinite(y)):
            raise AudioError(f"{source}: the conversion produced non-finite samples")
        n_out += y.shape[0]
        if y.shape[0]:
            writer.write(rs_out.push(y))

    chunk = None if block is None else engine.block_samples
    t0 = time.perf_counter()

    def stream_in() -> Iterator[np.ndarray]:
        """The file at the stream rate, piece by piece."""
        for x in read_blocks(info, READ_FRAMES):
            yield rs_in.push(x)
        yield rs_in.flush()

    with AudioWriter(output, file_rate, subtype=subtype) as writer, torch.inference_mode():
        for piece in _pieces(stream_in(), chunk):
            n_in += piece.shape[0]
            emit(engine.push(piece), writer)
        emit(engine.flush(), writer)
        writer.write(rs_out.flush())
    compute = time.perf_counter() - t0
    if block is not None:  # streamed: would a live stream of it keep up?
        slow = pace_warning(compute / max(n_in / rate, 1e-9), 0, torch.get_num_threads(), block)
        if slow:
            warn(slow)
    return ConvertResult(
        Path(output),
        n_in / rate,
        compute,
        engine.latency_ms,
        speaker,
        block,
        info.missing_seconds,
        fmt,
        subtype,
        transpose,
        registers,
    )
