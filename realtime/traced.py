"""The CPU counterpart of a CUDA graph: the model step traced once per block size (TorchScript).

At a few frames per step, eager PyTorch spends most of its time dispatching thousands of tiny ops
from Python. Tracing :meth:`comostream.models.chain.ConversionChain.step` for a fixed
``(streams, frames)`` shape records them once (the state tensors are inputs the trace updates in
place, exactly as eager does), freezes the parameters into the graph and applies TorchScript's
inference optimisations; replaying it is 2-3x faster on a CPU with the same result (to float
rounding). Offline runs (one step of arbitrary length) stay eager.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from comostream.models.chain import ConversionChain, FrameInputs
from comostream.models.streaming import StreamState, rebuild_state, state_tensors

__all__ = ["FixedShapeStep", "TracedStep", "standalone_problem"]


def standalone_problem(chain: ConversionChain, backend: str) -> str | None:
    """Why ``backend`` (onnxruntime, inductor: a step built from ``chain`` ahead of time) cannot
    run ``chain``; None when it can: float32 on the CPU, the built-in streaming vocoder and
    content encoder (window mode chooses offsets from the data)."""
    ref = next(chain.parameters())
    if ref.device.type != "cpu" or ref.dtype != torch.float32:
        return (
            f"the {backend} backend runs float32 models on the CPU (got {ref.dtype} on "
            f"{ref.device}): use --device cpu, or the torch backend"
        )
    if chain.vocoder is None or not getattr(chain.vocoder, "traceable", True):
        return (
            f"the {backend} backend needs the model file's built-in streaming vocoder (an "
            "external vocoder runs in window mode): drop --vocoder, or use the torch backend"
        )
    if chain.content_model is not None:
        return (
            f"the {backend} backend needs the model's built-in content encoder (an external "
            "content model runs in window mode): use the torch backend"
        )
    return None


class _Flat(nn.Module):
    """``step`` over positional tensors: the inputs (sorted names), then the state's leaves."""

    def __init__(self, step: ConversionChain, names: list[str], template: StreamState) -> None:
        super().__init__()
        self.step_module = step
        self.names = names
        self.template = template

    def forward(self, *args: Tensor) -> Tensor:
        n = len(self.names)
        inputs = dict(zip(self.names, args[:n], strict=True))
        return self.step_module.step(inputs, rebuild_state(self.template, list(args[n:])))


class FixedShapeStep(nn.Module):
    """A chain's step built for one (streams, frames) shape, a drop-in for the engine: the
    chain's ``lookahead_frames``, ``hop_length``, ``speaker_dim`` and ``init_state``; the
    input names (sorted) and ``frames``/``streams`` of ``example``."""

    def __init__(self, step: ConversionChain, example: FrameInputs, streams: int = 1) -> None:
        super().__init__()
        self.inner = step
        self.lookahead_frames = step.lookahead_frames
        self.hop_length = step.hop_length
        self.speaker_dim = step.speaker_dim
        self.names = sorted(example)
        self.frames = int(example["f0"].shape[-1])
        self.streams = int(streams)

    def init_state(self, streams: int, device: Any = None, dtype: Any = None) -> StreamState:
        return self.inner.init_state(streams, device, dtype)


class TracedStep(FixedShapeStep):
    """``step`` traced for blocks of ``frames`` frames of ``streams`` streams.

    Drop-in for the engine (:class:`FixedShapeStep`): ``step(inputs, state)`` (blocks of other
    lengths run eager).
    """

    def __init__(self, step: ConversionChain, example: FrameInputs, streams: int = 1) -> None:
        super().__init__(step, example, streams)
        template = step.init_state(streams)
        leaves = [t for _, t in state_tensors(template)]
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarning: shape checks become constants
            traced = torch.jit.trace(
                _Flat(step, self.names, template),
                tuple(example[k] for k in self.names) + tuple(leaves),
                check_trace=False,
            )
            # frozen, then TorchScript's inference passes (about 6% faster per step on a CPU)
            self.traced = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        self.profile: dict[str, float] | None = None  # per-stage times are not available
        self._bound: tuple[StreamState, list[Tensor]] | None = None  # the last state's leaves

    def step(self, inputs: FrameInputs, state: StreamState) -> Tensor:
        if inputs["f0"].shape[-1] != self.frames:  # e.g. a final partial block: eager
            return self.inner.step(inputs, state)
        bound = self._bound  # one read: engines on other threads may share this step
        if bound is None or bound[0] is not state:  # an engine's state: flattened once
            bound = self._bound = (state, [t for _, t in state_tensors(state)])
        with torch.no_grad():
            return self.traced(*(inputs[k] for k in self.names), *bound[1])
