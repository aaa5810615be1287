"""`comostream convert`: a file through the streaming engine, offline or on the live schedule."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from comostream.models.audio import AudioError, read_audio, resample, save_wav
from comostream.models.config import RealtimeConfig
from comostream.models.shipped import require_model
from comostream.realtime.engine import StreamingConverter, convert_array
from comostream.realtime.geometry import stream_rate

__all__ = ["ConvertResult", "convert_file"]


@dataclass
class ConvertResult:
    """What :func:`convert_file` did."""

    output: Path
    seconds: float  # audio duration
    compute_s: float  # wall time of the conversion
    latency_ms: float  # the engine's algorithmic latency
    speaker: Any
    block: int | None  # frames per step, or None for offline

    @property
    def rtf(self) -> float:
        return self.compute_s / max(self.seconds, 1e-9)


def convert_file(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    speaker: Any = None,
    transpose: float = 0.0,
    block: int | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    vocoder: str | os.PathLike[str] | None = None,
    realtime: RealtimeConfig | None = None,
    device: str = "cpu",
) -> ConvertResult:
    """Convert ``source`` to ``speaker`` and write ``output`` (WAV, the source's rate, mono).

    ``block``: frames per model step on the realtime schedule (the file is pushed in chunks of
    one block; overrides ``realtime``'s); None runs offline (one model step over the whole file).
    Same output either way, to float rounding. A rate the engine does not take is resampled first
    (:func:`~comostream.realtime.geometry.stream_rate`). ``speaker``: None for the model's default.
    """
    from comostream.realtime.load import load_models

    checkpoint = require_model(checkpoint)
    audio, file_rate = read_audio(source)
    rate = stream_rate(file_rate)
    if rate != file_rate:  # e.g. 8 or 96 kHz: the engine runs at 48 kHz, the file keeps its rate
        audio = resample(audio, file_rate, rate)
    rt = (realtime or RealtimeConfig()).with_block(block)
    model, voc = load_models(checkpoint, vocoder, device, rt)
    speaker = model.resolve_speaker(speaker)
    engine = StreamingConverter.from_models(
        model,
        voc,
        speaker=speaker,
        transpose=transpose,
        sample_rate=rate,
        realtime=rt,
        offline=block is None,
    )
    t0 = time.perf_counter()
    with torch.inference_mode():
        chunk = None if block is None else engine.block_samples
        y = convert_array(engine, audio, chunk=chunk)
    compute = time.perf_counter() - t0
    if not np.all(np.isfinite(y)):
        raise AudioError(f"{source}: the conversion produced non-finite samples")
    if rate != file_rate:
        y = resample(y, rate, file_rate)
    save_wav(output, y, file_rate)
    return ConvertResult(
        Path(output), len(audio) / rate, compute, engine.latency_ms, speaker, block
    )
