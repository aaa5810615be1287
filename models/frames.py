"""Shared STFT framing, offline and incremental, for every per-frame feature (mel, loudness).

Framing convention (project-wide; F0 uses the same frame grid):

* For ``N`` input samples there are ``T = N // hop + 1`` frames.
* Frame ``t`` is centred at sample ``t * hop`` and covers samples
  ``[t * hop - n_fft // 2, t * hop + n_fft // 2)``; samples outside ``[0, N)`` are ZERO
  (zero padding of ``n_fft // 2`` on both sides, never reflect), so a stream and the one-shot
  computation see bit-identical frames.
* Window: periodic Hann of ``win_length`` samples, zero-padded to ``n_fft`` about the centre.
* In a stream, frame ``t`` is complete once ``t * hop + n_fft // 2`` samples have arrived
  (``lookahead_samples = n_fft // 2`` beyond the frame centre); ``finish`` appends the right zero
  padding and releases the last frames, up to ``t = N // hop``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "num_frames",
    "periodic_hann",
    "frame_signal",
    "stft_power",
    "FramerState",
    "Framer",
    "IncrementalFeature",
    "as_batch",
]


def num_frames(n_samples: int, hop_length: int) -> int:
    """Number of frames for ``n_samples`` samples: ``n_samples // hop_length + 1``."""
    return n_samples // hop_length + 1


def periodic_hann(win_length: int, n_fft: int, device: torch.device | str | None = None) -> Tensor:
    """Periodic Hann window of ``win_length`` samples, centre zero-padded to ``(n_fft,)``."""
    win = torch.hann_window(win_length, periodic=True, dtype=torch.float32, device=device)
    left = (n_fft - win_length) // 2
    return F.pad(win, (left, n_fft - win_length - left))


def frame_signal(audio: Tensor, n_fft: int, hop_length: int) -> Tensor:
    """Zero-padded frames of ``audio (B, N)`` -> ``(B, T, n_fft)``, ``T = N // hop + 1``."""
    half = n_fft // 2
    padded = F.pad(audio, (half, half))
    return padded.unfold(-1, n_fft, hop_length)


def stft_power(frames: Tensor, window: Tensor) -> Tensor:
    """Power spectrum ``re^2 + im^2`` of windowed ``frames (B, k, n_fft)`` -> ``(B, k, F)``.

    ``F = n_fft // 2 + 1``. Each frame is transformed independently, so the result for a frame
    does not depend on how many frames are transformed together.
    """
    b, k, n_fft = frames.shape
    if k == 0:  # some FFT backends reject empty batches
        return frames.new_zeros(b, 0, n_fft // 2 + 1)
    spec = torch.fft.rfft(frames * window, dim=-1)
    return spec.real.square() + spec.imag.square()


def as_batch(audio: Tensor | np.ndarray) -> tuple[Tensor, bool]:
    """``audio`` as a float32 tensor ``(B, N)``; the flag says the input was 1-D ``(N,)``."""
    x = torch.as_tensor(audio)
    if not x.is_floating_point() or x.dtype == torch.float64:
        x = x.to(torch.float32)
    if x.dim() == 1:
        return x.unsqueeze(0), True
    if x.dim() != 2:
        raise ValueError(f"audio must be (samples,) or (batch, samples), got {tuple(x.shape)}")
    return x, False


@dataclass
class FramerState:
    """Mutable state of one incremental framer stream (a batch of ``B`` channels).

    ``buf (B, n_fft + capacity)`` holds the last ``>= n_fft`` samples before ``write``; position
    ``p`` in ``buf`` is stream sample ``p + written - write`` (negative = left zero padding).
    """

    buf: Tensor
    write: int  # next write position in buf
    written: int  # samples written so far (real + right padding)
    received: int  # real samples received
    next_frame: int  # index of the next frame to emit
    finished: bool = False


class Framer:
    """Incremental zero-padded framer with a preallocated buffer (amortised O(chunk) per step).

    ``step`` returns a view ``(B, k, n_fft)`` of the frames completed by the chunk, valid only
    until the next call on the same state; ``finish`` returns the remaining ``<= 3`` frames.
    """

    def __init__(self, n_fft: int, hop_length: int, capacity: int | None = None) -> None:
        if n_fft % 2 or hop_length <= 0 or hop_length > n_fft:
            raise ValueError("need an even n_fft and 0 < hop_length <= n_fft")
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.lookahead_samples = n_fft // 2
        self.capacity = 2 * n_fft if capacity is None else max(1, capacity)

    def init_state(
        self,
        batch: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> FramerState:
        """A fresh stream state; the history is the left zero padding."""
        buf = torch.zeros(batch, self.n_fft + self.capacity, device=device, dtype=dtype)
        return FramerState(buf=buf, write=self.n_fft, written=0, received=0, next_frame=0)

    def step(self, chunk: Tensor, state: FramerState) -> Tensor:
        """Append ``chunk (B, L)`` (any ``L >= 0``); return the newly completed frames."""
        if state.finished:
            raise RuntimeError("stream already finished; call init_state()/reset() first")
        if chunk.dim() != 2 or chunk.shape[0] != state.buf.shape[0]:
            raise ValueError(
                f"chunk must be (batch={state.buf.shape[0]}, samples), got {tuple(chunk.shape)}"
            )
        length = chunk.shape[1]
        self._write(state, chunk, length)
        state.received += length
        last = (state.received - self.lookahead_samples) // self.hop_length
        return self._frames(state, last)

    def finish(self, state: FramerState) -> Tensor:
        """Append the right zero padding and return the remaining frames up to ``N // hop``."""
        if state.finished:
            raise RuntimeError("stream already finished; call init_state()/reset() first")
        self._write(state, None, self.lookahead_samples)
        state.finished = True
        return self._frames(state, state.received // self.hop_length)

    def _write(self, state: FramerState, chunk: Tensor | None, length: int) -> None:
        """Copy ``chunk`` (or ``length`` zeros) into the buffer, compacting/growing if needed."""
        buf, n_fft = state.buf, self.n_fft
        if state.write + length > buf.shape[1]:
            tail = buf[:, state.write - n_fft : state.write]
            if length > buf.shape[1] - n_fft:  # grow (rare: a chunk bigger than the capacity)
                new = buf.new_empty(buf.shape[0], n_fft + max(length, 2 * (buf.shape[1] - n_fft)))
                new[:, :n_fft] = tail
                state.buf = buf = new
            elif state.write < 2 * n_fft:  # source and destination overlap
                buf[:, :n_fft] = tail.clone()
            else:
                buf[:, :n_fft] = tail
            state.write = n_fft
        dest = buf[:, state.write : state.write + length]
        if chunk is None:
            dest.zero_()
        else:
            dest.copy_(chunk)
        state.write += length
        state.written += length

    def _frames(self, state: FramerState, last: int) -> Tensor:
        """Frames ``next_frame .. last`` as a view ``(B, k, n_fft)``; advances ``next_frame``."""
        k = max(0, last - state.next_frame + 1)
        if k == 0:
            return state.buf.new_zeros(state.buf.shape[0], 0, self.n_fft)
        base = state.written - state.write  # stream index of buf[:, 0]
        start = state.next_frame * self.hop_length - self.lookahead_samples - base
        span = state.buf[:, start : start + (k - 1) * self.hop_length + self.n_fft]
        state.next_frame += k
        return span.unfold(-1, self.n_fft, self.hop_length)


class IncrementalFeature:
    """Streaming per-frame feature: a :class:`Framer` plus ``fn(frames (B,k,n_fft)) -> (..., k)``.

    Functional core: ``state = init_state(batch)``; ``out, state = step(chunk, state)``;
    ``out, state = finish(state)``. Convenience: ``push(chunk)``, ``flush()``, ``reset()``.
    Concatenating all outputs along the last axis equals the one-shot feature.
    """

    def __init__(
        self,
        framer: Framer,
        fn: Callable[[Tensor], Tensor],
        module: torch.nn.Module | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.framer = framer
        self.lookahead_samples = framer.lookahead_samples
        self._fn = fn
        self._module = module  # holds fn's constant tensors; moved to the state's device
        self._device = device
        self._state: FramerState | None = None
        self._empty: Tensor | None = None  # cached zero-frame output (most tiny chunks)
        if module is not None and device is not None:
            module.to(device)

    def init_state(self, batch: int = 1, device: torch.device | str | None = None) -> FramerState:
        """A fresh stream state for ``batch`` channels on ``device`` (default: the object's)."""
        state = self.framer.init_state(batch, device if device is not None else self._device)
        if self._module is not None:
            self._module.to(state.buf.device)
        return state

    def step(self, chunk: Tensor | np.ndarray, state: FramerState) -> tuple[Tensor, FramerState]:
        """Feed ``chunk (B, L)``; return the completed frames' features and the state."""
        x = torch.as_tensor(chunk).to(device=state.buf.device, dtype=state.buf.dtype)
        with torch.no_grad():
            return self._apply(self.framer.step(x, state)), state

    def finish(self, state: FramerState) -> tuple[Tensor, FramerState]:
        """End the stream: features of the remaining frames (right zero padding)."""
        with torch.no_grad():
            return self._apply(self.framer.finish(state)), state

    def _apply(self, frames: Tensor) -> Tensor:
        """``fn(frames)``, skipping the computation when no frame completed."""
        if frames.shape[1]:
            return self._fn(frames)
        e = self._empty
        if e is None or e.shape[0] != frames.shape[0] or e.device != frames.device:
            self._empty = e = self._fn(frames)
        return e

    def push(self, chunk: Tensor | np.ndarray) -> Tensor:
        """Feed ``chunk (B, L)`` (or ``(L,)`` as ``B = 1``); return the completed frames."""
        x = torch.as_tensor(chunk)
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if self._state is None:
            self._state = self.init_state(x.shape[0], x.device if self._device is None else None)
        out, self._state = self.step(x, self._state)
        return out

    def flush(self) -> Tensor:
        """Return the remaining frames and reset, ready for a new stream."""
        if self._state is None:  # nothing pushed: an empty stream still has one frame
            self._state = self.init_state(1)
        out, _ = self.finish(self._state)
        self._state = None
        return out

    def reset(self) -> None:
        """Forget the current stream (the next push starts a new one)."""
        self._state = None
