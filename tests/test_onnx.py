"""The model step exported to ONNX (realtime/onnx_step.py) and the onnxruntime backend: the same
samples as the torch step for any block and batch, its metadata, the CLI, clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import comostream
from comostream.bench.latency import backend_compare
from comostream.models.chain import ConversionChain, FrameInputs
from comostream.models.checkpoint_io import CheckpointError
from comostream.models.config import ConfigError, RealtimeConfig
from comostream.models.streaming import state_tensors
from comostream.realtime.engine import StreamingConverter, convert_array

from helpers import sung, write_tiny_model

onnx = pytest.importorskip("onnx")  # the dev extra installs both
pytest.importorskip("onnxruntime")

from comostream.realtime.onnx_step import (  # noqa: E402
    OnnxBackendError,
    OnnxMissingError,
    OnnxStep,
    _time_major,
    check_exportable,
    export_step,
    read_metadata,
    write_onnx,
)

pytestmark = pytest.mark.usefixtures("one_thread")

FRAMES = 24


def _inputs(chain: ConversionChain, streams: int, frames: int = FRAMES) -> FrameInputs:
    """Random inputs: voiced runs with gaps across block edges, a transposition ramp, one random
    singer embedding per stream."""
    g = torch.Generator().manual_seed(5)
    x = chain.zero_inputs(streams, frames)
    x["mel"] = torch.randn(x["mel"].shape, generator=g) - 6.0
    x["audio"] = torch.randn(x["audio"].shape, generator=g) * 0.1
    voiced = (torch.rand(streams, frames, generator=g) > 0.3).float()
    voiced[:, 5:11] = 0.0
    x["voiced"] = voiced
    x["f0"] = (120.0 + 200.0 * torch.rand(streams, frames, generator=g)) * voiced
    x["loudness"] = torch.rand(streams, frames, generator=g) * 30 - 50
    x["transpose"] = torch.linspace(-3.0, 4.0, frames).expand(streams, frames).contiguous()
    x["speaker"] = torch.randn(streams, chain.speaker_dim, generator=g)
    return x


def _block(x: FrameInputs, start: int, frames: int, rows: slice = slice(None)) -> FrameInputs:
    hop = x["audio"].shape[-1] // x["f0"].shape[-1]
    out = {n: x[n][rows, ..., start : start + frames] for n in x if n not in ("audio", "speaker")}
    out["audio"] = x["audio"][rows, start * hop : (start + frames) * hop]
    out["speaker"] = x["speaker"][rows]
    return {n: t.contiguous() for n, t in out.items()}


def _run(step, x: FrameInputs, block: int, state) -> torch.Tensor:
    frames = x["f0"].shape[-1]
    with torch.inference_mode():
        return torch.cat(
            [step.step(_block(x, s, block), state) for s in range(0, frames, block)], dim=-1
        )


@pytest.fixture(scope="module")
def chain(models) -> ConversionChain:
    model, vocoder = models
    return ConversionChain(model, vocoder).eval()


@pytest.fixture(scope="module")
def exported(chain: ConversionChain) -> bytes:
    return export_step(chain, 2)


@pytest.fixture(scope="module")
def step(exported: bytes) -> OnnxStep:
    return OnnxStep(exported)


@pytest.mark.parametrize("block", [1, 2, 4, 8])
def test_onnx_step_equals_the_torch_step_block_by_block(
    chain: ConversionChain, step: OnnxStep, block: int
) -> None:
    x = _inputs(chain, streams=2)
    torch_state, onnx_state = chain.init_state(2), step.init_state(2)
    want = _run(chain, x, block, torch_state)
    got = _run(step, x, block, onnx_state)
    assert got.shape == want.shape == (2, FRAMES * chain.hop_length)
    peak = float(want.abs().max())
    assert peak > 0
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * peak)
    for (name, a), (_, b) in zip(
        state_tensors(onnx_state), state_tensors(torch_state), strict=True
    ):
        if _time_major(name, b):  # the convolutions' histories: (streams, frames, channels)
            b = b.transpose(1, 2)
        torch.testing.assert_close(
            a, b, rtol=1e-5, atol=1e-4 * max(1.0, float(b.abs().max())), msg=name
        )


def test_every_convolution_history_is_time_major_in_the_export(
    chain: ConversionChain, step: OnnxStep
) -> None:
    """The export keeps each causal convolution's history time-major (its transposes cancel out
    of the graph): as many such state tensors as convolutions with a history, shaped so."""
    from comostream.models.streaming import CausalConv1d

    convs = [m for m in chain.modules() if isinstance(m, CausalConv1d) and m.history_frames]
    torch_leaves = dict(state_tensors(chain.init_state(1)))
    flipped = [s for s in step.meta["state"] if _time_major(s["name"], torch_leaves[s["name"]])]
    assert len(flipped) == len(convs) > 0
    for s in flipped:
        c, t = torch_leaves[s["name"]].shape[1:]
        assert s["shape"] == ["streams", t, c]


def test_a_batch_of_three_singers_equals_each_stream_alone(
    chain: ConversionChain, step: OnnxStep
) -> None:
    x = _inputs(chain, streams=3)
    batched = _run(step, x, 2, step.init_state(3))
    for i in range(3):
        alone_x = {n: t[i : i + 1] for n, t in x.items()}
        alone = _run(step, alone_x, 2, step.init_state(1))
        peak = float(alone.abs().max())
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=0, atol=1e-4 * peak)
    assert not torch.allclose(batched[0], batched[1])  # the singers differ


def test_a_pinned_block_shape_gives_the_dynamic_sessions_samples(
    chain: ConversionChain, exported: bytes, step: OnnxStep
) -> None:
    pinned = OnnxStep(exported, shapes=[(1, 2)])
    assert (1, 2) in pinned._pinned  # the engine's block: dimensions fixed, shapes folded
    for session in (pinned.session, pinned._pinned[(1, 2)]):  # pool threads never spin idle
        opts = session.get_session_options()
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    x = _inputs(chain, streams=1)
    want = _run(step, x, 2, step.init_state(1))
    got = _run(pinned, x, 2, pinned.init_state(1))  # the pinned session, its state reused
    other = _run(pinned, x, 4, pinned.init_state(1))  # another block: the dynamic session
    peak = float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * peak)
    torch.testing.assert_close(other, want, rtol=0, atol=1e-4 * peak)


def test_streams_sharing_a_pinned_step_keep_their_own_state(
    chain: ConversionChain, exported: bytes, step: OnnxStep
) -> None:
    shared = OnnxStep(exported, shapes=[(1, 2)])  # as engines of `serve --no-batch` share it
    x = _inputs(chain, streams=2)
    rows = [{n: t[i : i + 1] for n, t in x.items()} for i in range(2)]
    states = [shared.init_state(1) for _ in rows]
    got: list[list[torch.Tensor]] = [[], []]
    with torch.inference_mode():
        for s in range(0, FRAMES, 2):  # the two streams' blocks interleaved
            for i, row in enumerate(rows):
                got[i].append(shared.step(_block(row, s, 2), states[i]))
    for i, row in enumerate(rows):
        want = _run(step, row, 2, step.init_state(1))
        peak = float(want.abs().max())
        torch.testing.assert_close(torch.cat(got[i], -1), want, rtol=0, atol=1e-5 * peak)


def test_its_fresh_state_is_the_chains(chain: ConversionChain, step: OnnxStep) -> None:
    mine, theirs = list(state_tensors(step.init_state(3))), list(state_tensors(chain.init_state(3)))
    assert [n for n, _ in mine] == [n for n, _ in theirs]
    for (name, a), (_, b) in zip(mine, theirs, strict=True):
        b = b.transpose(1, 2) if _time_major(name, b) else b  # as the export keeps it
        assert a.dtype == b.dtype and torch.equal(a, b), name


def test_the_metadata_says_what_a_host_needs(
    chain: ConversionChain, exported: bytes, tmp_path: Path
) -> None:
    meta = read_metadata(write_onnx(exported, tmp_path / "step.onnx"))
    model = chain.model
    assert meta["sample_rate"] == model.cfg.audio.sample_rate
    assert (meta["hop_length"], meta["block_frames"]) == (chain.hop_length, 2)
    assert meta["lookahead_frames"] == chain.lookahead_frames
    assert meta["speaker_dim"] == chain.speaker_dim
    assert (meta["seed"], meta["noise_scale"]) == (chain.seed, chain.noise_scale)
    proto = onnx.load_from_string(exported)
    graph_inputs = [i.name for i in proto.graph.input]
    names = [i["name"] for i in meta["inputs"]]
    assert graph_inputs == names + [s["input"] for s in meta["state"]]
    assert [o.name for o in proto.graph.output] == ["wav"] + [s["output"] for s in meta["state"]]
    assert [s["name"] for s in meta["state"]] == [n for n, _ in state_tensors(chain.init_state(1))]
    assert list(meta["speakers"]) == list(model.speakers)
    first = model.speakers[0]
    table = model.conditioner.speaker_embedding(first)[0]
    assert torch.equal(torch.tensor(meta["speakers"][first], dtype=torch.float32), table)


def test_engine_on_onnxruntime_equals_engine_on_torch(models) -> None:
    model, vocoder = models
    x = sung(48000, 0.5)
    out = {}
    for backend in ("torch", "onnxruntime"):
        rt = RealtimeConfig(block_frames=2, backend=backend)
        eng = StreamingConverter.from_models(model, vocoder, sample_rate=48000, realtime=rt)
        assert isinstance(eng.step_module, OnnxStep) == (backend == "onnxruntime")
        out[backend] = convert_array(eng, x, chunk=eng.block_samples)
    peak = float(np.abs(out["torch"]).max())
    assert peak > 0
    np.testing.assert_allclose(out["onnxruntime"], out["torch"], rtol=0, atol=1e-4 * peak)


def test_cli_export_onnx_writes_the_step_and_its_metadata(tmp_path: Path) -> None:
    ckpt = write_tiny_model(tmp_path / "tiny.ckpt")
    out = tmp_path / "out" / "step.onnx"
    assert comostream.main(["export", "--onnx", str(out), str(ckpt), "--block", "4"]) == 0
    meta = read_metadata(out)
    assert meta["block_frames"] == 4 and meta["comostream_onnx_format"] == 1
    assert [p.name for p in out.parent.iterdir()] == ["step.onnx"]  # no temp file left
    step = OnnxStep(out)
    assert step.block_frames == 4 and step.hop_length == meta["hop_length"]


def test_missing_corrupt_and_foreign_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        OnnxStep(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    with pytest.raises(CheckpointError, match="bad.onnx: not a readable ONNX model"):
        OnnxStep(bad)
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        read_metadata(bad)
    h = onnx.helper
    vec = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    out = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = h.make_graph([h.make_node("Identity", ["x"], ["y"])], "g", [vec], [out])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 18)], ir_version=9), foreign)
    with pytest.raises(CheckpointError, match="not a comostream streaming step"):
        OnnxStep(foreign)


def test_missing_onnxruntime_names_the_extra(
    exported: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(OnnxMissingError, match=r"comostream\[onnx\]"):
        OnnxStep(exported)
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert comostream.main(["export", "--onnx", str(tmp_path / "s.onnx")]) == 1
    assert "pip install 'comostream[onnx]'" in capsys.readouterr().err


def test_only_exportable_chains_and_known_backends_are_taken(
    chain: ConversionChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="backend must be one of auto, torch, onnxruntime"):
        RealtimeConfig(backend="tensorrt")
    monkeypatch.setattr(chain.vocoder, "traceable", False, raising=False)  # as window mode
    with pytest.raises(OnnxBackendError, match="built-in streaming vocoder"):
        check_exportable(chain)


def test_bench_latency_compares_the_backends(models) -> None:
    model, vocoder = models
    rows = backend_compare(
        model, vocoder, sung(24000, 0.9), realtime=RealtimeConfig(), sample_rate=24000
    )
    assert list(rows) == ["torch", "onnxruntime", "onnxruntime-int8", "inductor"]
    for row in rows.values():
        assert row["rtf"] > 0 and row["step_ms_p50"] > 0


def test_batched_serving_on_onnxruntime_equals_it_on_torch(models) -> None:
    from comostream.realtime.serve.engines import EngineFactory
    from comostream.realtime.serve.protocol import PROTOCOL_VERSION, Hello

    model, vocoder = models
    x = sung(48000, 0.4)
    hello = Hello(PROTOCOL_VERSION, 48000, 1, "f32le", None, None, 0.0, None)
    out = {}
    for backend in ("torch", "onnxruntime"):
        factory = EngineFactory(model, vocoder, RealtimeConfig(backend=backend), max_batch=4)
        block = factory.natural_block(48000)
        engines = [factory.create(hello, block, s) for s in model.speakers[:3]]
        sched = factory.scheduler
        assert isinstance(sched.step_module, OnnxStep) == (backend == "onnxruntime")
        assert sorted(sched.buckets) == [1, 2, 3, 4]  # ONNX Runtime: a pinned session each
        ys: list[list[np.ndarray]] = [[] for _ in engines]
        for k in range(len(x) // block):
            if k % 2:  # one by one
                for y, eng in zip(ys, engines, strict=True):
                    y.append(eng.push(x[k * block : (k + 1) * block]))
                continue
            with sched._cond:  # all three pending before the thread takes any: one step of three
                futures = [sched.convert(e, x[k * block : (k + 1) * block]) for e in engines]
            for y, f in zip(ys, futures, strict=True):
                y.append(f.result(30.0))
        out[backend] = np.stack([np.concatenate(y) for y in ys])
        assert sched.stats.rows > sched.stats.steps  # blocks of the three went together
        if backend == "onnxruntime":  # each batch size on its own pinned session
            assert {(1, 2), (3, 2)} <= set(sched.step_module._pinned)
        for eng in engines:
            factory.release(eng)
        factory.close()
    peak = float(np.abs(out["torch"]).max())
    assert peak > 0
    np.testing.assert_allclose(out["onnxruntime"], out["torch"], rtol=0, atol=1e-4 * peak)


def test_auto_runs_the_batched_steps_on_onnxruntime_when_it_can(
    models, chain: ConversionChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from comostream.realtime.serve import engines
    from comostream.realtime.serve.engines import EngineFactory, batched_backend

    model, vocoder = models
    auto = RealtimeConfig()
    assert auto.backend == "auto" and auto.engine_backend == "torch"  # a lone engine: torch
    # with int8 kernels for the CPU: the 8-bit step; without, the float one, saying why
    monkeypatch.setattr(engines, "int8_kernels_problem", lambda: None)
    assert batched_backend(auto, chain)[0] == "onnxruntime-int8"
    factory = EngineFactory(model, vocoder, auto, max_batch=2)
    try:
        step = factory.start_batching().step_module
        assert isinstance(step, OnnxStep) and step.meta["weights"] == "int8"
        assert factory.backend == "onnxruntime-int8"
    finally:
        factory.close()
    monkeypatch.setattr(engines, "int8_kernels_problem", lambda: "no 8-bit kernels for a s390x")
    assert batched_backend(auto, chain) == (
        "onnxruntime",
        "auto: onnxruntime is installed; no 8-bit kernels for a s390x",
    )
    factory = EngineFactory(model, vocoder, auto, max_batch=2)
    try:
        step = factory.start_batching().step_module
        assert isinstance(step, OnnxStep) and step.meta["weights"] == "float32"
    finally:
        factory.close()
    monkeypatch.undo()
    assert batched_backend(RealtimeConfig(backend="torch"), chain) == (
        "torch",
        "[realtime] backend",
    )
    # an engine of its own (live, convert, bench latency) stays on the traced torch step
    engine = StreamingConverter.from_models(model, vocoder, realtime=auto)
    assert type(engine.step_module).__name__ == "TracedStep"
    # without onnxruntime, or with a step that does not export: torch, saying why
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else find_spec(n, *a)
    )
    assert batched_backend(auto, chain) == (
        "torch",
        "auto: onnxruntime is not installed (the onnx extra)",
    )
    monkeypatch.undo()
    monkeypatch.setattr(chain.vocoder, "traceable", False, raising=False)  # as window mode
    backend, why = batched_backend(auto, chain)
    assert backend == "torch" and "built-in streaming vocoder" in why


def test_int8_kernels_are_known_for_x86_with_avx2_and_arm64() -> None:
    from comostream.realtime.onnx_int8 import int8_kernels_problem

    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    old = "processor\t: 0\nflags\t\t: fpu sse2 sse4_2 avx\n"
    assert int8_kernels_problem("x86_64", avx2) is None
    assert int8_kernels_problem("AMD64", "") is None  # flags unreadable: taken to have AVX2
    assert "no AVX2" in str(int8_kernels_problem("x86_64", old))
    assert int8_kernels_problem("aarch64") is None and int8_kernels_problem("arm64") is None
    assert "riscv64" in str(int8_kernels_problem("riscv64"))
    here = int8_kernels_problem()  # this machine's own CPU
    assert here is None or "8-bit kernels" in here


def test_step_backend_times_has_a_row_per_stream_count(chain: ConversionChain) -> None:
    from comostream.bench.step_backends import step_backend_times

    rows = step_backend_times(chain, [1, 3], frames=2, rounds=1, steps=4, inductor=False)
    assert [r["streams"] for r in rows] == [1, 3]
    assert all(r["torch_ms"] > 0 and r["onnxruntime_ms"] > 0 for r in rows)
    assert all(r["onnxruntime_int8_ms"] > 0 for r in rows)


@pytest.mark.parametrize(
    "command",
    [["demo"], ["convert", "in.wav", "-o", "out.wav"], ["live"], ["serve"], ["bench", "latency"]],
)
def test_every_streaming_command_takes_the_backend(command: list[str]) -> None:
    from comostream.cli import build_parser
    from comostream.cli.common import config_from_args

    parser = build_parser()
    assert config_from_args(parser.parse_args(command)).realtime.backend == "auto"
    for backend in ("onnxruntime", "onnxruntime-int8"):
        args = parser.parse_args([*command, "--backend", backend])
        assert config_from_args(args).realtime.backend == backend
    with pytest.raises(SystemExit):
        parser.parse_args([*command, "--backend", "tensorrt"])
