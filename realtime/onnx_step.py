"""The model step as an ONNX graph with explicit state, run by ONNX Runtime.

:func:`export_step` writes :meth:`comostream.models.chain.ConversionChain.step` as ONNX: the
block's :data:`~comostream.models.chain.FrameInputs` and every state tensor go in
(``state_in.NAME``), the waveform ``wav`` and every updated state tensor come out
(``state_out.NAME``): ONNX has no in-place updates, so the host carries the state from one call
to the next. Streams and frames per block are dynamic dimensions (any batch, any block size; the
file's ``block_frames`` is the block it was exported for). The metadata (:func:`read_metadata`)
holds what a host needs: rates, hop, lookahead, the inputs' and state's names, shapes and
initial values, the singers' embeddings. docs/onnx.md describes the contract for C++, Rust or
onnxruntime-web hosts.

:class:`OnnxStep` runs such a graph in ONNX Runtime (sequential, as many intra-op threads as
``torch.get_num_threads()``, all graph optimisations) as a drop-in for the engine, like
:class:`~comostream.realtime.traced.TracedStep`: ``step(inputs, state)`` copies the returned state
back into the state tensors. A stream's fixed block (``shapes``) gets a session of its own with
the dynamic dimensions pinned (free-dimension overrides): ONNX Runtime then folds the graph's
shape arithmetic away, about 10% of a small step. Both need the optional packages of the ``onnx``
extra.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from comostream.models.chain import ConversionChain, FrameInputs
from comostream.models.checkpoint_io import CheckpointError
from comostream.models.streaming import StreamState, rebuild_state, state_tensors
from comostream.realtime.onnx_ops import ONNX_OPSET, register_onnx_ops
from comostream.realtime.traced import _Flat, standalone_problem

__all__ = [
    "FORMAT_VERSION",
    "OnnxBackendError",
    "OnnxMissingError",
    "OnnxStep",
    "check_exportable",
    "export_step",
    "read_metadata",
    "write_onnx",
]

FORMAT_VERSION = 1  # of the inputs/outputs/metadata contract (docs/onnx.md)
EXTRA = "pip install 'comostream[onnx]'"
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64}
_UNITS = {
    "mel": "natural-log mel magnitude of the input, (streams, n_mels, frames)",
    "audio": "the frames' input samples at sample_rate, (streams, frames * hop_length)",
    "f0": "Hz as tracked, 0 where unvoiced, (streams, frames)",
    "voiced": "0 or 1, (streams, frames)",
    "loudness": "dB, (streams, frames)",
    "transpose": "semitones per frame, (streams, frames)",
    "speaker": "singer embedding (a row of `speakers`, or a weighted mix), (streams, speaker_dim)",
    "index_rate": "retrieval index blend 0-1 (a model with an index only), (streams, 1)",
    "index_weights": "the singer mix over the indexed singers, (streams, n_indexed)",
}
_PER_STREAM = ("speaker", "index_rate", "index_weights")  # no frames dimension
_TEXT_KEYS = ("comostream_version", "weights")  # metadata stored as plain text, not JSON
_CONV_HISTORIES = ("conv.history", "context.history")  # the CausalConv1d states' names
_KEPT_STATES = 64  # states whose views and bindings a step keeps (engines sharing it)


class OnnxBackendError(RuntimeError):
    """The onnxruntime backend or an ONNX export cannot run as asked."""


class OnnxMissingError(OnnxBackendError, ImportError):
    """onnx / onnxruntime is not installed (the ``onnx`` extra)."""


def check_exportable(chain: ConversionChain) -> None:
    """:class:`OnnxBackendError` unless ``chain`` can be exported: the built-in streaming content
    encoder and vocoder, float32 on the CPU (window mode chooses offsets from the data)."""
    why = standalone_problem(chain, "onnxruntime")
    if why is not None:
        raise OnnxBackendError(why)


def _require(module: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise OnnxMissingError(
            f"{what} needs the optional package {module!r}: install the onnx extra ({EXTRA})"
        ) from None


def _time_major(name: str, t: Tensor) -> bool:
    """Whether the export keeps state leaf ``name`` time-major, ``(streams, frames, channels)``
    instead of torch's ``(streams, channels, frames)``: the causal convolutions' histories
    (:data:`_CONV_HISTORIES`; tests/test_onnx.py checks that these are all of them), which they
    concatenate along time channels-last under export (``CausalConv1d._history_last``), so the
    layout's transposes cancel out of the graph. Any leaf may be either way (the wrapper
    transposes at the boundary): this saves nodes, it does not change the step."""
    return name.endswith(_CONV_HISTORIES) and t.dim() == 3


class _StateOut(nn.Module):
    """The flat step with explicit state outputs: ``(wav, *new state leaves)``; the leaves of
    ``time_major`` come and go transposed (:func:`_time_major`)."""

    def __init__(self, flat: _Flat, n_inputs: int, time_major: list[bool]) -> None:
        super().__init__()
        self.flat = flat
        self.n_inputs = n_inputs
        self.time_major = time_major

    def forward(self, *args: Tensor) -> tuple[Tensor, ...]:
        flips = self.time_major
        leaves = [  # clones: updated in place by the step (or replaced: models.streaming.store)
            a.transpose(1, 2) if flip else a.clone()
            for a, flip in zip(args[self.n_inputs :], flips, strict=True)
        ]
        flat = self.flat
        inputs = dict(zip(flat.names, args[: self.n_inputs], strict=True))
        state = rebuild_state(flat.template, leaves)
        wav = flat.step_module.step(inputs, state)
        # the state's leaves after the step: updated in place, or replaced under export
        out = [t for _, t in state_tensors(state)]
        return (wav, *(t.transpose(1, 2) if f else t for t, f in zip(out, flips, strict=True)))


def _shape(name: str, t: Tensor) -> list[int | str]:
    """``t``'s shape with the dynamic dimensions named (streams first, frames last)."""
    dims: list[int | str] = ["streams", *t.shape[1:]]
    if name == "audio":
        dims[-1] = "frames * hop_length"
    elif name not in _PER_STREAM:
        dims[-1] = "frames"
    return dims


def export_step(chain: ConversionChain, block_frames: int, int8: bool = False) -> bytes:
    """``chain``'s step (CPU, float32) as an ONNX model with its metadata (module docstring).

    ``block_frames``: the block it is meant for (recorded; any block runs). ``int8``: the matrix
    products' weights in 8 bits (:mod:`comostream.realtime.onnx_int8`; metadata ``weights``
    ``"int8"``, else ``"float32"``; inputs, outputs and state are the same).
    """
    from comostream.version import __version__

    onnx = _require("onnx", "ONNX export")
    check_exportable(chain)
    register_onnx_ops()
    example = chain.zero_inputs(1, block_frames)
    names = sorted(example)
    template = chain.init_state(1)
    flips = [_time_major(name, t) for name, t in state_tensors(template)]
    leaves = [  # as the graph takes them (time-major where flipped)
        (name, t.transpose(1, 2).contiguous() if flip else t)
        for (name, t), flip in zip(state_tensors(template), flips, strict=True)
    ]
    state_meta = []
    for name, t in leaves:
        init = t.flatten()[0].item()
        if not bool((t == init).all()):
            raise OnnxBackendError(f"state {name}: its initial value is not one constant")
        dtype = str(t.dtype).removeprefix("torch.")
        shape = ["streams", *t.shape[1:]]
        io_names = {"input": f"state_in.{name}", "output": f"state_out.{name}"}
        state_meta.append({"name": name, **io_names, "shape": shape, "dtype": dtype, "init": init})
    in_state = [m["input"] for m in state_meta]
    out_state = [m["output"] for m in state_meta]
    axes: dict[str, dict[int, str]] = {n: {0: "streams"} for n in in_state + out_state}
    for n in names:
        axes[n] = {0: "streams", example[n].dim() - 1: "frames"}
    for n in _PER_STREAM:
        if n in names:
            axes[n] = {0: "streams"}
    axes["audio"] = {0: "streams", 1: "input_samples"}
    axes["wav"] = {0: "streams", 1: "output_samples"}
    buf = io.BytesIO()
    wrapper = _StateOut(_Flat(chain, names, template), len(names), flips).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings: shape checks become constants
        torch.onnx.export(
            wrapper,
            tuple(example[n] for n in names) + tuple(t for _, t in leaves),
            buf,
            input_names=names + in_state,
            output_names=["wav", *out_state],
            dynamic_axes=axes,
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    if int8:
        from comostream.realtime.onnx_int8 import quantize_matmuls

        quantize_matmuls(proto)
    used = {i.name for i in proto.graph.input}  # unused inputs are pruned (``audio``, mostly)
    inputs = [
        {"name": n, "shape": _shape(n, example[n]), "dtype": "float32", "meaning": _UNITS[n]}
        for n in names
        if n in used
    ]
    meta = {
        "comostream_onnx_format": FORMAT_VERSION,
        "comostream_version": __version__,
        "sample_rate": chain.model.cfg.audio.sample_rate,
        "hop_length": chain.hop_length,
        "n_mels": chain.n_mels,
        "block_frames": block_frames,
        "lookahead_frames": chain.lookahead_frames,
        "speaker_dim": chain.speaker_dim,
        "seed": chain.seed,
        "noise_scale": chain.noise_scale,
        "weights": "int8" if int8 else "float32",
        "inputs": inputs,
        "outputs": [
            {
                "name": "wav",
                "shape": ["streams", "frames * hop_length"],
                "dtype": "float32",
                "meaning": "converted samples at sample_rate, lookahead_frames frames late",
            }
        ],
        "state": state_meta,
        "speakers": _speakers(chain),
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    proto.doc_string = "comostream streaming model step (state in, state out); see docs/onnx.md"
    return proto.SerializeToString()


def _speakers(chain: ConversionChain) -> dict[str, list[float]]:
    """Singer name -> embedding row (a mix is the weighted mean of rows, weights summing to 1)."""
    table = chain.model.conditioner.speakers
    rows = table.embedding.weight.detach().double().tolist()
    return dict(zip(table.names, rows, strict=True))


def write_onnx(data: bytes, path: str | os.PathLike[str]) -> Path:
    """Write ``data`` to ``path`` atomically (a temp file beside it, then renamed)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def _parse_metadata(raw: dict[str, str], where: str) -> dict[str, Any]:
    if "comostream_onnx_format" not in raw:
        raise CheckpointError(
            f"{where}: an ONNX model, but not a comostream streaming step (no comostream "
            "metadata); write one with `comostream export --onnx OUT.onnx`"
        )
    try:
        meta = {k: json.loads(v) if k not in _TEXT_KEYS else v for k, v in raw.items()}
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{where}: damaged comostream metadata ({exc})") from None
    version = meta["comostream_onnx_format"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: ONNX step format {version}; this comostream reads up to {FORMAT_VERSION} "
            "(export it again with this version)"
        )
    meta.setdefault("weights", "float32")  # files from before 8-bit weights
    return meta


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The comostream metadata of an ONNX step file (JSON values decoded)."""
    onnx = _require("onnx", "Reading an ONNX step")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such ONNX file")
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise CheckpointError(f"{p}: not a readable ONNX model ({exc})") from None
    return _parse_metadata({e.key: e.value for e in proto.metadata_props}, str(p))


class OnnxStep(nn.Module):
    """An exported step (a file, or the bytes of :func:`export_step`) in ONNX Runtime.

    Drop-in for the engine: ``lookahead_frames``, ``hop_length``, ``speaker_dim``,
    ``init_state(streams)`` and ``step(inputs, state)`` (any number of streams and frames; the
    state tensors are updated in place from the graph's state outputs). ``threads``: ONNX
    Runtime's intra-op threads (default: ``torch.get_num_threads()``). ``shapes``: ``(streams,
    frames)`` blocks that get a session with those dimensions pinned (faster; the same samples
    to float rounding); other shapes run on the dynamic session.
    """

    steps_views = False  # binds its state buffers: give it the same state object every time

    def __init__(
        self,
        source: str | os.PathLike[str] | bytes,
        threads: int | None = None,
        shapes: Sequence[tuple[int, int]] = (),
    ) -> None:
        super().__init__()
        where = "the exported step" if isinstance(source, bytes) else str(source)
        if not isinstance(source, bytes) and not Path(source).is_file():
            raise FileNotFoundError(f"{source}: no such ONNX file")
        self._model = source if isinstance(source, bytes) else str(source)
        self._threads = int(threads or torch.get_num_threads())
        self._where = where
        self.session = self._session({})
        self.meta = _parse_metadata(self.session.get_modelmeta().custom_metadata_map, where)
        m = self.meta
        self.lookahead_frames = int(m["lookahead_frames"])
        self.hop_length = int(m["hop_length"])
        self.speaker_dim = int(m["speaker_dim"])
        self.block_frames = int(m["block_frames"])
        self.sample_rate = int(m["sample_rate"])
        self.input_names = [i["name"] for i in m["inputs"]]
        self.state_names = [s["name"] for s in m["state"]]
        self.output_names = ["wav", *(s["output"] for s in m["state"])]
        self._state_inputs = [s["input"] for s in m["state"]]
        self.profile: dict[str, float] | None = None  # per-stage times are not available
        self._pinned: dict[tuple[int, int], Any] = {}  # (streams, frames) -> session
        for streams, frames in shapes:
            hop = self.hop_length
            dims = {"streams": streams, "frames": frames}
            dims.update(input_samples=frames * hop, output_samples=frames * hop)
            self._pinned[(int(streams), int(frames))] = self._session(dims)
        # per state (engines on other threads may share this step): its views and bindings
        self._bound: dict[int, _Bound] = {}
        self._lock = threading.Lock()

    def _session(self, dims: dict[str, int]) -> Any:
        """An ONNX Runtime session of the model, its named dynamic dimensions pinned to ``dims``."""
        ort = _require("onnxruntime", "The onnxruntime backend")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self._threads
        opts.inter_op_num_threads = 1
        # with --threads > 1, idle pool threads would otherwise spin between blocks: on 2 cores
        # `serve --threads 2` then took 1.86 cores instead of 1.16, and `bench latency --threads
        # 2` had RTF 0.49 instead of 0.26 (one thread, the default, has no pool)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only
        for name, size in dims.items():
            opts.add_free_dimension_override_by_name(name, size)
        try:
            return ort.InferenceSession(self._model, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's InvalidProtobuf, Fail, InvalidGraph ...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{self._where}: not a readable ONNX model ({first})") from None

    @classmethod
    def from_chain(
        cls,
        chain: ConversionChain,
        block_frames: int,
        threads: int | None = None,
        shapes: Sequence[tuple[int, int]] = (),
        int8: bool = False,
    ) -> OnnxStep:
        """``chain`` exported in memory (a couple of seconds) and loaded (``shapes``: as the
        constructor's; ``int8``: as :func:`export_step`'s)."""
        return cls(export_step(chain, block_frames, int8), threads, shapes)

    def init_state(self, streams: int, device: Any = None, dtype: Any = None) -> StreamState:
        """Fresh state of ``streams`` streams (on the CPU, in the dtypes the graph takes)."""
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError("the onnxruntime backend runs on the CPU")
        state: StreamState = {}
        for s in self.meta["state"]:
            *path, leaf = s["name"].split(".")
            node = state
            for key in path:
                node = node.setdefault(key, {})
            shape = (streams, *s["shape"][1:])
            node[leaf] = torch.full(shape, s["init"], dtype=_DTYPES[s["dtype"]])
        return state

    def _state(self, state: StreamState) -> _Bound:
        """``state``'s numpy views (and bindings), kept while the same state object comes back:
        an engine's state is allocated once and updated in place. Up to :data:`_KEPT_STATES`
        states are kept (engines sharing the step), the oldest dropped first."""
        bound = self._bound.get(id(state))
        if bound is not None and bound.state is state:
            return bound
        views = [t.numpy() for _, t in state_tensors(state)]
        if len(views) != len(self._state_inputs):
            raise ValueError(f"state has {len(views)} tensors, the graph {len(self.state_names)}")
        bound = _Bound(state, views)
        with self._lock:
            while len(self._bound) >= _KEPT_STATES:
                del self._bound[next(iter(self._bound))]
            self._bound[id(state)] = bound
        return bound

    def _binding(
        self, bound: _Bound, session: Any, shape: tuple[int, int], feed: dict[str, np.ndarray]
    ) -> _Binding:
        """``session``'s IO binding for ``bound``'s state at a pinned ``shape``: the state's
        views, input buffers shaped as ``feed``'s arrays and output buffers bound once (per call
        the block's inputs are copied in: no binding, no allocation)."""
        kept = bound.bindings.get(shape)
        if kept is not None:
            return kept
        binding = session.io_binding()
        for name, view in zip(self._state_inputs, bound.views, strict=True):
            binding.bind_cpu_input(name, view)
        ins = {name: np.empty_like(value) for name, value in feed.items()}
        for name, buf in ins.items():
            binding.bind_cpu_input(name, buf)
        outs = [np.empty((shape[0], shape[1] * self.hop_length), np.float32)]
        outs += [np.empty_like(v) for v in bound.views]
        for name, out in zip(self.output_names, outs, strict=True):
            binding.bind_output(name, "cpu", 0, out.dtype, list(out.shape), out.ctypes.data)
        kept = bound.bindings[shape] = _Binding(binding, ins, outs)
        return kept

    def step(self, inputs: FrameInputs, state: StreamState) -> Tensor:
        """One block ``(S, k * hop)``; ``state`` (from :meth:`init_state`) is updated in place."""
        bound = self._state(state)
        views = bound.views
        feed = {n: _array(inputs[n]) for n in self.input_names}
        f0 = inputs["f0"]
        shape = (f0.shape[0], f0.shape[-1])
        session = self._pinned.get(shape)
        if session is None:
            feed.update(zip(self._state_inputs, views, strict=True))
            wav, *new = self.session.run(self.output_names, feed)
        else:  # everything stays bound: the block's inputs are copied into the bound buffers
            io = self._binding(bound, session, shape, feed)
            for name, value in feed.items():
                np.copyto(io.inputs[name], value)
            session.run_with_iobinding(io.binding)
            wav, new = io.outputs[0].copy(), io.outputs[1:]
        for view, value in zip(views, new, strict=True):
            np.copyto(view, value)
        return torch.from_numpy(wav)


def _array(t: Tensor) -> np.ndarray:
    """``t`` as a float32 numpy array on the CPU (a view when it is one already)."""
    if t.dtype == torch.float32 and t.device.type == "cpu" and not t.requires_grad:
        return t.numpy()
    return t.detach().to("cpu", torch.float32).numpy()


@dataclass
class _Binding:
    """An IO binding of a pinned session for one state: the buffers of the block's ``inputs``
    and the ``outputs`` it writes (the waveform, then the new state)."""

    binding: Any
    inputs: dict[str, np.ndarray]
    outputs: list[np.ndarray]


@dataclass
class _Bound:
    """A state seen by :meth:`OnnxStep.step`: its tensors' numpy ``views`` and its IO bindings
    per pinned ``(streams, frames)``."""

    state: StreamState
    views: list[np.ndarray]
    bindings: dict[tuple[int, int], _Binding] = field(default_factory=dict)
