"""The engine's input features, per stream: 24 kHz samples -> per-frame mel, loudness, F0.

One :class:`comostream.models.frames.Framer` frames the signal once for mel and loudness (same
window as training), both computed from one rFFT per frame by a GIL-free numba kernel
(:class:`~comostream.realtime.spectral.FrameSpectra`, equal to the offline modules to float32
rounding); F0 comes from a frame-local incremental tracker on the same frame grid. Frames
are released when every feature of the frame is known, so F0 post-processing lookahead (if any) adds
to the engine's latency through :attr:`FrontEnd.lookahead_frames`.

The stream is left-padded with :attr:`FrontEnd.pad_samples` zeros, ``lookahead_samples - hop``
(256 at the defaults): frame ``t`` is then complete exactly when input sample ``hop * t`` has
arrived, so blocks of ``B`` frames complete on multiples of ``B * hop`` input samples.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from comostream.models.config import AudioConfig, F0Config
from comostream.models.frames import Framer
from comostream.realtime.spectral import FrameSpectra

__all__ = ["FrameFeatures", "FrontEnd", "IncrementalF0Like", "REALTIME_F0_BACKEND"]

REALTIME_F0_BACKEND = "yin-track"  # the engine's tracker when the config names an offline one


class IncrementalF0Like(Protocol):
    """An incremental F0 tracker on the 24 kHz / hop-256 frame grid
    (:mod:`comostream.models.f0_stream`)."""

    lookahead_samples: int
    lookahead_frames: int

    def push(self, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def reset(self) -> None: ...


@dataclass
class FrameFeatures:
    """Features of ``k`` frames of one stream: ``mel (n_mels, k)``, ``loudness (k,)`` dB,
    ``f0 (k,)`` Hz (0 = unvoiced), ``voiced (k,)`` bool, ``audio (hop, k)`` the hop of input
    samples that frame ``t``'s output covers (``[hop t, hop t + hop)``, padded coordinates)."""

    mel: np.ndarray
    loudness: np.ndarray
    f0: np.ndarray
    voiced: np.ndarray
    audio: np.ndarray

    @property
    def frames(self) -> int:
        return int(self.f0.shape[0])

    @staticmethod
    def concat(parts: list[FrameFeatures]) -> FrameFeatures:
        """Frames of ``parts`` in order (an empty list is not allowed)."""
        return FrameFeatures(
            *(
                np.concatenate([getattr(p, f) for p in parts], axis=-1)
                for f in ("mel", "loudness", "f0", "voiced", "audio")
            )
        )

    def split(self, k: int) -> tuple[FrameFeatures, FrameFeatures]:
        """The first ``k`` frames and the rest."""
        fields = ("mel", "loudness", "f0", "voiced", "audio")
        head = FrameFeatures(*(getattr(self, f)[..., :k] for f in fields))
        tail = FrameFeatures(*(getattr(self, f)[..., k:] for f in fields))
        return head, tail


def default_f0_tracker(cfg: F0Config) -> IncrementalF0Like:
    """The streaming F0 tracker of ``cfg.backend`` (:mod:`comostream.models.f0_stream`).

    An offline backend (CREPE, WORLD: what a config may choose for training features) streams as
    :data:`REALTIME_F0_BACKEND`, the measured realtime default.
    """
    from comostream.models.config import STREAMING_F0_BACKENDS
    from comostream.models.f0_stream import streaming_tracker

    name = cfg.backend if cfg.backend in STREAMING_F0_BACKENDS else REALTIME_F0_BACKEND
    return streaming_tracker(name, cfg)


class FrontEnd:
    """Incremental features of one 24 kHz mono stream (see the module docstring)."""

    def __init__(
        self,
        audio: AudioConfig | None = None,
        f0: F0Config | None = None,
        f0_tracker: Callable[[F0Config], IncrementalF0Like] = default_f0_tracker,
    ) -> None:
        self.audio = audio or AudioConfig()
        self.f0_cfg = f0 or F0Config()
        a = self.audio
        if a.sample_rate != 24000:
            raise ValueError("the engine runs at the model rate of 24 kHz")
        self.hop = a.hop_length
        self.framer = Framer(a.n_fft, a.hop_length)
        self.spectra = FrameSpectra(a)  # log-mel and loudness of each frame
        self.tracker = f0_tracker(self.f0_cfg)
        if self.tracker.lookahead_samples > self.framer.lookahead_samples:
            raise ValueError("the F0 tracker may not need more lookahead than the mel window")
        self.lookahead_samples = self.framer.lookahead_samples
        self.lookahead_frames: int = int(self.tracker.lookahead_frames)
        self.pad_samples = max(0, self.lookahead_samples - self.hop)
        self.f0_seconds = 0.0
        self.reset()

    def reset(self) -> None:
        """Start a new stream (the left padding is fed again)."""
        self.state = self.framer.init_state(1)
        self.tracker.reset()
        self._spec: list[np.ndarray] = []  # mel/loudness/audio frames waiting for their F0
        self._f0: list[tuple[np.ndarray, np.ndarray]] = []
        self.push(np.zeros(self.pad_samples, np.float32))

    def push(self, x: np.ndarray) -> FrameFeatures | None:
        """Feed 24 kHz mono samples ``(n,)``; the frames completed so far (None if none)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        frames = self.framer.step(torch.from_numpy(x).unsqueeze(0), self.state)
        if frames.shape[1]:
            mel, loud = self.spectra(frames)
            c = self.lookahead_samples
            hop_audio = frames[0, :, c : c + self.hop].T.numpy().copy()
            self._spec.append(np.concatenate([mel, loud[None], hop_audio], axis=0))
        t0 = time.perf_counter()
        f0, voiced = self.tracker.push(x)
        self.f0_seconds = time.perf_counter() - t0  # the F0 tracker's share of this push
        if len(f0):
            self._f0.append((np.asarray(f0, np.float32), np.asarray(voiced, bool)))
        return self._release()

    def _release(self) -> FrameFeatures | None:
        """Pair spectral frames with F0 frames; return the complete ones."""
        if not self._spec or not self._f0:
            return None
        spec = np.concatenate(self._spec, axis=1)
        f0 = np.concatenate([f for f, _ in self._f0])
        voiced = np.concatenate([v for _, v in self._f0])
        k = min(spec.shape[1], f0.shape[0])
        if k == 0:
            return None
        self._spec = [spec[:, k:]] if spec.shape[1] > k else []
        self._f0 = [(f0[k:], voiced[k:])] if f0.shape[0] > k else []
        n = self.audio.n_mels
        return FrameFeatures(spec[:n, :k], spec[n, :k], f0[:k], voiced[:k], spec[n + 1 :, :k])
