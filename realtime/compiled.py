"""The model step compiled to C++ by TorchInductor (``torch.compile``): the ``inductor`` backend.

:class:`~comostream.realtime.traced.TracedStep` replays the step's few thousand small ops one by
one; Inductor fuses them into generated C++ loops, with the weights frozen into the code as
constants (``freezing``) and the launcher itself in C++ (``cpp_wrapper``), so a step of a few
frames costs about half as much on a CPU (``comostream bench latency`` shows the three backends
side by side). The compiled step never calls back into Python (the vocoder's noise filter runs
as matrix products when compiled, :func:`~comostream.models.vocoder_synth.noise_block`), so it
lets go of the interpreter lock once per step, and the server's event loop runs beside it. The
price is paid once per process and shape (Inductor's disk cache does not keep frozen weights):
compiling takes about half a minute per (streams, frames) shape for the shipped model, and needs
a C++ compiler and Python's headers (Debian: ``g++``, ``python3-dev``). Output equals the traced
step to float rounding (within 1e-4 of the peak, tested).

Each shape is its own compiled function; a call with another shape (a final partial block) runs
eager, as the traced step does, never a silent recompilation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from comostream.models.chain import ConversionChain, FrameInputs
from comostream.models.streaming import StreamState, rebuild_state, state_tensors
from comostream.realtime.traced import FixedShapeStep, standalone_problem

__all__ = [
    "INDUCTOR_OPTIONS",
    "CompiledStep",
    "InductorBackendError",
    "check_compilable",
    "check_compiler",
]

# What Inductor is asked for: the weights as constants (``freezing``) and the launcher in C++
# (``cpp_wrapper``), which lets go of the interpreter lock once for the whole step. (The
# generated Python launcher holds the lock in every fused kernel and takes it back after every
# library call: beside a thread busy in Python 30% of the time, such as the server's event loop,
# its step of 8 streams took 5.4 ms instead of 3.4; the C++ launcher's 3.2 ms instead of 3.1.)
INDUCTOR_OPTIONS = {"freezing": True, "cpp_wrapper": True}


class InductorBackendError(RuntimeError):
    """The ``inductor`` backend cannot run as asked (no C++ compiler or Python headers here, a
    model it cannot compile)."""


def check_compiler() -> None:
    """Raise :class:`InductorBackendError` naming what to install when Inductor cannot build
    C++ here: a compiler (``$CXX``, ``g++`` or ``c++``) and ``Python.h``."""
    cxx = os.environ.get("CXX") or "g++"
    if shutil.which(cxx) is None and shutil.which("c++") is None:
        raise InductorBackendError(
            f"the inductor backend compiles the model step to C++ but no compiler ({cxx}) was "
            "found: install one (Debian: apt-get install g++) or use --backend torch"
        )
    include = sysconfig.get_paths().get("include", "")
    if not (Path(include) / "Python.h").is_file():
        raise InductorBackendError(
            f"the inductor backend needs Python's C headers ({include}/Python.h is missing): "
            "install them (Debian: apt-get install python3-dev) or use --backend torch"
        )


def check_compilable(chain: ConversionChain) -> None:
    """:class:`InductorBackendError` unless ``chain`` can be compiled here
    (:func:`~comostream.realtime.traced.standalone_problem`) and a compiler is there."""
    why = standalone_problem(chain, "inductor")
    if why is not None:
        raise InductorBackendError(why)
    check_compiler()


def _limit_recompiles(shapes: int) -> None:
    """Room in TorchDynamo's per-function cache for every compiled shape of this process (the
    steps share one Python function; past the limit Dynamo would fall back to eager)."""
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, name, max(int(getattr(cfg, name)), shapes))
    if hasattr(cfg, "accumulated_recompile_limit"):
        cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 4 * shapes)


_COMPILED_SHAPES = 0  # shapes compiled in this process (each a Dynamo cache entry)


class CompiledStep(FixedShapeStep):
    """``step`` compiled by TorchInductor for blocks of ``frames`` frames of ``streams`` streams
    (the shapes of ``example``); compiles in the constructor (about 30 s for the shipped model).

    Drop-in for the engine, like :class:`~comostream.realtime.traced.TracedStep`
    (:class:`~comostream.realtime.traced.FixedShapeStep`): ``step(inputs, state)`` updating
    ``state`` in place; other block sizes run eager.
    """

    def __init__(self, step: ConversionChain, example: FrameInputs, streams: int = 1) -> None:
        global _COMPILED_SHAPES
        check_compilable(step)
        super().__init__(step, example, streams)
        template = step.init_state(streams)
        names, n = self.names, len(self.names)

        def flat(*args: Tensor) -> Tensor:
            inputs = dict(zip(names, args[:n], strict=True))
            return step.step(inputs, rebuild_state(template, list(args[n:])))

        shape = f"{self.streams} stream{'s' if self.streams > 1 else ''} x {self.frames} frames"
        print(
            f"compiling the model step for {shape} to C++ (inductor backend, about 30 s)",
            file=sys.stderr,
            flush=True,
        )
        _COMPILED_SHAPES += 1
        _limit_recompiles(_COMPILED_SHAPES + 8)
        self._fn = torch.compile(flat, fullgraph=True, dynamic=False)
        self.profile: dict[str, float] | None = None  # per-stage times are not available
        self._bound: tuple[StreamState, list[Tensor] | None] | None = None
        self.compiled_steps = 0  # blocks run by the compiled code
        self.eager_steps = 0  # blocks of another shape or state, run eager
        import torch._inductor.config as inductor_config

        patch = inductor_config.patch(INDUCTOR_OPTIONS)  # (as options=: no freezing)
        with torch.inference_mode(), _quiet(), patch:  # compile now, on inference tensors
            scratch = step.init_state(streams)
            args = [_inference(example[k]) for k in names]
            self._fn(*args, *(t for _, t in state_tensors(scratch)))

    def init_state(self, streams: int, device: Any = None, dtype: Any = None) -> StreamState:
        with torch.inference_mode():  # the compiled code's guards expect inference tensors
            return self.inner.init_state(streams, device, dtype)

    def step(self, inputs: FrameInputs, state: StreamState) -> Tensor:
        """One block; ``state`` updated in place. Blocks of other shapes, and a state whose
        tensors are not inference tensors (made outside ``torch.inference_mode``), run eager:
        a mismatch never recompiles (half a minute) in the middle of a stream."""
        f0 = inputs["f0"]
        bound = self._bound  # one read: engines on other threads may share this step
        if bound is None or bound[0] is not state:  # an engine's state: flattened once
            leaves = [t for _, t in state_tensors(state)]
            ok = all(t.is_inference() and t.is_contiguous() for t in leaves)
            bound = self._bound = (state, leaves if ok else None)
        with torch.inference_mode():
            if bound[1] is None or f0.shape[-1] != self.frames or f0.shape[0] != self.streams:
                self.eager_steps += 1
                return self.inner.step(inputs, state)
            self.compiled_steps += 1
            return self._fn(*(_inference(inputs[k]) for k in self.names), *bound[1])


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Torch's notes while compiling a CPU step, which say nothing actionable to a user (no
    CUDA runtime; no C++ code for complex ops and FFTs, which run as library calls)."""
    loggers = [logging.getLogger(n) for n in ("torch.utils.cpp_extension", "torch._inductor.ir")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _inference(x: Tensor) -> Tensor:
    """``x`` as a contiguous inference tensor (a copy when it is not one: a block's inputs are
    a few kB), so the compiled code's guards always match. Call inside ``torch.inference_mode``."""
    return x if x.is_inference() and x.is_contiguous() else x.contiguous().clone()
