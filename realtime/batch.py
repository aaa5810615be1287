"""Several conversion streams through one batched model step (eager, or a CUDA graph replay).

Each stream keeps its own front-end, transposition, singer and output FIFO (a
:class:`~comostream.realtime.engine.StreamingConverter` with ``defer_blocks``); their blocks are
stacked into one ``(S, ...)`` step over a state with ``S`` rows. Streams advance in lockstep: every
:meth:`BatchedConverter.push` takes one chunk of the same length per stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from comostream.models.acoustic import AcousticModel
from comostream.models.chain import ConversionChain
from comostream.models.config import RealtimeConfig
from comostream.realtime.engine import StreamingConverter

__all__ = ["BatchedConverter"]


class BatchedConverter:
    """``streams`` lockstep streams of one model (see the module docstring).

    ``speakers``: one singer (name or mix, None for the default) per stream; ``sample_rate``: the
    streams' rate (default: the model rate); ``graph``: capture the step in a CUDA graph (needs
    the models on a CUDA device).
    """

    def __init__(
        self,
        model: AcousticModel,
        vocoder: torch.nn.Module | None,
        speakers: Sequence[Any],
        *,
        sample_rate: int | None = None,
        realtime: RealtimeConfig | None = None,
        graph: bool = False,
        **kwargs: Any,
    ) -> None:
        self.rt = realtime or RealtimeConfig()
        self.step = ConversionChain(
            model, vocoder, seed=self.rt.seed, noise_scale=self.rt.noise_scale
        ).eval()
        kwargs.setdefault("index", model.retrieval)  # its inputs, when the model has an index
        self.engines = [
            StreamingConverter(
                self.step,
                embed=model.conditioner.speaker_embedding,
                speaker=model.resolve_speaker(spk),
                sample_rate=sample_rate,
                realtime=self.rt,
                audio=model.cfg.audio,
                **kwargs,
            )
            for spk in speakers
        ]
        for eng in self.engines:
            eng.defer_blocks = True
        self.streams = len(self.engines)
        self.graph = None
        if graph:
            from comostream.realtime.cuda_graph import GraphStep

            self.graph = GraphStep(self.step, self.streams, self.rt.block_frames)
            self.state = self.graph.state
        else:
            with torch.inference_mode():
                self.state = self.step.init_state(self.streams)

    @property
    def latency_ms(self) -> float:
        return self.engines[0].latency_ms

    def push(self, chunks: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One chunk per stream (equal lengths); the converted chunks, in stream order."""
        if len(chunks) != self.streams:
            raise ValueError(f"need {self.streams} chunks, got {len(chunks)}")
        done = [eng.ingest(c) for eng, c in zip(self.engines, chunks, strict=True)]
        counts = {len(e.queued) for e in self.engines}
        if len(counts) != 1:
            raise ValueError("streams out of lockstep: push chunks of equal length")
        for _ in range(counts.pop()):
            blocks = [e.queued.pop(0) for e in self.engines]
            y = self._run({k: torch.cat([b[k] for b in blocks]) for k in blocks[0]})
            for i, eng in enumerate(self.engines):
                eng.accept(y[i])
        return [eng.deliver(n, sq) for eng, (n, sq) in zip(self.engines, done, strict=True)]

    def _run(self, inputs: dict[str, Tensor]) -> Tensor:
        with torch.inference_mode():
            if self.graph is not None:
                return self.graph.run(inputs).float().cpu()
            return self.step.step(inputs, self.state).float().cpu()
