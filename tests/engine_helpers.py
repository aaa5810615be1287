"""Test doubles for the streaming engine: an identity model step and a silent F0 tracker."""

from __future__ import annotations

import numpy as np
from torch import Tensor, nn

from comostream.models.config import F0Config
from comostream.models.streaming import Delay, StreamState


class IdentityStep(nn.Module):
    """Returns each frame's own hop of input samples, ``lookahead`` frames late."""

    def __init__(self, lookahead: int = 0, hop: int = 256) -> None:
        super().__init__()
        self.lookahead_frames = lookahead
        self.hop_length = hop
        self.delay = Delay(1, lookahead * hop)

    def init_state(self, streams: int, device=None, dtype=None) -> StreamState:
        return {"delay": self.delay.init_state(streams, device, dtype)}

    def step(self, inputs: dict[str, Tensor], state: StreamState) -> Tensor:
        return self.delay.run(inputs["audio"].unsqueeze(1), state["delay"])[:, 0]


class SilentF0:
    """An F0 tracker on the frame grid that reports every frame unvoiced."""

    def __init__(self, cfg: F0Config | None = None, lookahead_frames: int = 0) -> None:
        self.lookahead_samples = 512
        self.lookahead_frames = lookahead_frames
        self.reset()

    def reset(self) -> None:
        self.received = 0
        self.emitted = 0

    def push(self, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.received += len(chunk)
        ready = max(0, (self.received - self.lookahead_samples) // 256 + 1 - self.lookahead_frames)
        k = max(0, ready - self.emitted)
        self.emitted += k
        return np.zeros(k, np.float32), np.zeros(k, bool)


def silent_f0(lookahead_frames: int = 0):
    return lambda cfg: SilentF0(cfg, lookahead_frames)


def rng_chunks(seed: int, n: int, low: int = 1, high: int = 900) -> list[int]:
    g = np.random.default_rng(seed)
    return [int(v) for v in g.integers(low, high, size=max(1, n))]

