"""The engines of ``comostream serve``'s sessions: one :class:`EngineFactory` over the shared
models. The traced model step is built once and shared; its state is per engine."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from comostream.models.conditioner import SpeakerSpec, UnknownSpeakerError, resolve_speaker
from comostream.models.config import RealtimeConfig
from comostream.realtime.engine import StreamingConverter
from comostream.realtime.geometry import StreamGeometry
from comostream.realtime.serve.protocol import PROTOCOL_VERSION, Hello, ProtocolError

__all__ = ["EngineFactory"]


class EngineFactory:
    """Engines over one loaded acoustic model + vocoder; the (traced) step is built by the first
    engine and shared by the later ones (its state is per engine). ``registers``: singer ->
    median F0 in Hz (the voice prints' ``f0_median``), shown by ``GET /singers``."""

    def __init__(
        self,
        model: Any,
        vocoder: Any,
        realtime: RealtimeConfig | None = None,
        registers: dict[str, float] | None = None,
    ) -> None:
        self.model, self.vocoder = model, vocoder
        self.rt = realtime or RealtimeConfig()
        self.speakers: list[str] = list(model.speakers)
        # singer -> median F0 (Hz) of its voice print (``comostream export --corpus``), if any
        self.registers = {k: float(v) for k, v in (registers or {}).items() if k in self.speakers}
        self.geometry = StreamGeometry.from_configs(model.cfg.audio, self.rt)
        self._step: Any = None
        self._lock = threading.Lock()

    def singers(self) -> dict[str, Any]:
        """``GET /singers``: the singers in the model's order, each with its register (median
        F0 in Hz from the voice prints; null without), and the default singer."""
        return {
            "singers": [{"name": n, "f0_median_hz": self.registers.get(n)} for n in self.speakers],
            "default": self.speakers[0] if self.speakers else None,
        }

    def natural_block(self, sample_rate: int) -> int:
        """Samples per channel of one model step at ``sample_rate`` (the default block)."""
        return self.geometry.samples_per_block(sample_rate)

    def check_speaker(self, spec: SpeakerSpec | None) -> SpeakerSpec:
        """The singer a session uses: ``spec`` checked, or the model's default for None
        (:func:`~comostream.models.conditioner.resolve_speaker`);
        ``ProtocolError('unknown_speaker')`` for a name that is not a singer."""
        try:
            return resolve_speaker(spec, self.speakers)
        except UnknownSpeakerError as exc:
            raise ProtocolError("unknown_speaker", str(exc)) from None

    def warm_up(self, sample_rate: int = 48000) -> None:
        """Build the shared step and run a few blocks once (tracing, JIT compilation), so the
        first session's first blocks are not late."""
        hello = Hello(PROTOCOL_VERSION, sample_rate, 1, "f32le", None, None, 0.0, None)
        block = self.natural_block(sample_rate)
        engine = self.create(hello, block, self.check_speaker(None))
        for _ in range(8):
            engine.push(np.zeros(block, np.float32))

    def create(self, hello: Hello, block: int, speaker: Any) -> StreamingConverter:
        """An engine for a session (pushes of ``block`` samples)."""
        kw = dict(
            speaker=speaker,
            transpose=hello.transpose,
            sample_rate=hello.sample_rate,
            channels=hello.channels,
            realtime=self.rt,
            chunk=block,
        )
        with self._lock:
            if self._step is None:
                engine = StreamingConverter.from_models(self.model, self.vocoder, **kw)
                self._step = engine.step_module
                return engine
        return StreamingConverter(
            self._step,
            embed=self.model.conditioner.speaker_embedding,
            audio=self.model.cfg.audio,
            **kw,
        )
