"""CUDA-graph capture of the model step: one graph per (streams, block) shape, replayed per block.

The chain's step (:class:`comostream.models.chain.ConversionChain`: content encoder, F0 hold and
transposition, conditioner, one-step target, vocoder) has static shapes and a state
of preallocated tensors updated in place, so it can be captured once: ``GraphStep`` owns static
input buffers and the state, copies each block's inputs in, replays the graph and returns the
static output (valid until the next replay). Sigma, the noise seed, the frame counter and the
held F0 are device tensors, so replay needs no host scalars.
"""

from __future__ import annotations

import torch
from torch import Tensor

from comostream.models.chain import ConversionChain, FrameInputs
from comostream.models.streaming import state_tensors

__all__ = ["GraphStep"]


class GraphStep:
    """``ConversionChain.step`` captured for ``streams`` streams of ``frames`` frames on CUDA.

    ``run(inputs)`` copies ``inputs`` (same shapes as
    :meth:`~comostream.models.chain.ConversionChain.zero_inputs`) into the static buffers and
    replays; ``reset(stream)`` returns a stream (or all) to a fresh state.
    """

    def __init__(self, step: ConversionChain, streams: int, frames: int, warmup: int = 3) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a CUDA device")
        ref = next(step.parameters())
        if ref.device.type != "cuda":
            raise ValueError("move the step to a CUDA device first")
        self.step, self.streams, self.frames = step, streams, frames
        self.inputs = step.zero_inputs(streams, frames, ref.device, ref.dtype)
        self.state = step.init_state(streams)
        self._fresh = [t.clone() for _, t in state_tensors(self.state)]
        side = torch.cuda.Stream(ref.device)
        side.wait_stream(torch.cuda.current_stream(ref.device))
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(warmup):  # lazy init (cuBLAS handles, allocator) outside the capture
                step.step(self.inputs, self.state)
        torch.cuda.current_stream(ref.device).wait_stream(side)
        self.reset()
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            self.output: Tensor = step.step(self.inputs, self.state)
        self.reset()

    def reset(self, stream: int | None = None) -> None:
        """Fresh state for every stream, or for stream ``stream`` only."""
        with torch.inference_mode():
            for (_, t), fresh in zip(state_tensors(self.state), self._fresh, strict=True):
                if stream is None:
                    t.copy_(fresh)
                else:
                    t[stream].copy_(fresh[stream])

    def run(self, inputs: FrameInputs) -> Tensor:
        """Replay on ``inputs``; the returned static output is overwritten by the next replay."""
        with torch.inference_mode():
            for name, buf in self.inputs.items():
                if name in inputs:
                    buf.copy_(inputs[name], non_blocking=True)
        self.graph.replay()
        return self.output
