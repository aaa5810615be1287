"""8-bit weights for the ONNX step (realtime/onnx_int8.py, backend ``onnxruntime-int8``): the
packing, the graph rewrite, the step close to the float one, batched == separate, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import comostream
from comostream.models.chain import ConversionChain, FrameInputs
from comostream.models.config import RealtimeConfig
from comostream.realtime.engine import StreamingConverter, convert_array

from helpers import sung, write_tiny_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from comostream.realtime.onnx_int8 import block_size, quantize_matmuls, quantize_weight  # noqa: E402
from comostream.realtime.onnx_step import OnnxStep, export_step, read_metadata  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_quantize_weight_packs_blocks_per_column_within_half_a_step() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((200, 5)).astype(np.float32)
    w[:, 3] = 0.0  # an all-zero column keeps a finite scale
    codes, scales = quantize_weight(w, block=64)
    assert codes.shape == (5, 4, 64) and codes.dtype == np.uint8  # 200 -> 4 blocks of 64
    assert block_size(48) == 64 and block_size(768) == 128 and block_size(5) == 16
    assert scales.shape == (20,) and np.isfinite(scales).all()
    back = ((codes.astype(np.float32) - 128.0) * scales.reshape(5, 4, 1)).reshape(5, -1).T[:200]
    step = np.repeat(scales.reshape(5, 4), 64, axis=1).T[:200]
    assert np.all(np.abs(back - w) <= step / 2 + 1e-7)
    assert np.all(back[:, 3] == 0.0)
    assert codes.min() >= 1 and codes.max() <= 255  # symmetric: -127..127 around 128


def _graph() -> onnx.ModelProto:
    """y = (x @ W) + (x @ W) @ V + x @ B, with W read twice and B a graph input (not a weight)."""
    h, tp = onnx.helper, onnx.TensorProto
    rng = np.random.default_rng(1)
    w = onnx.numpy_helper.from_array(rng.standard_normal((96, 48)).astype(np.float32), "W")
    v = onnx.numpy_helper.from_array(rng.standard_normal((48, 48)).astype(np.float32), "V")
    nodes = [
        h.make_node("MatMul", ["x", "W"], ["a"]),
        h.make_node("MatMul", ["x", "W"], ["a2"]),
        h.make_node("MatMul", ["a2", "V"], ["b"]),
        h.make_node("MatMul", ["x", "B"], ["c"]),
        h.make_node("Sum", ["a", "b", "c"], ["y"]),
    ]
    graph = h.make_graph(
        nodes,
        "g",
        [
            h.make_tensor_value_info("x", tp.FLOAT, ["M", 96]),
            h.make_tensor_value_info("B", tp.FLOAT, [96, 48]),
        ],
        [h.make_tensor_value_info("y", tp.FLOAT, ["M", 48])],
        [w, v],
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18)], ir_version=9)


def test_quantize_matmuls_rewrites_weight_products_only_and_runs_close() -> None:
    model = _graph()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 96)).astype(np.float32)
    b = rng.standard_normal((96, 48)).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    want = ort.InferenceSession(model.SerializeToString(), so).run(None, {"x": x, "B": b})[0]
    assert quantize_matmuls(model) == 3
    ops = [(n.domain, n.op_type) for n in model.graph.node]
    assert ops.count(("com.microsoft", "MatMulNBits")) == 3 and ops.count(("", "MatMul")) == 1
    assert {t.name for t in model.graph.initializer} == {
        "W.int8", "W.int8_scale", "V.int8", "V.int8_scale"
    }  # fmt: skip
    sess = ort.InferenceSession(model.SerializeToString(), so)
    got = sess.run(None, {"x": x, "B": b})[0]
    assert np.abs(got - want).max() <= 0.03 * np.abs(want).max()
    assert not np.array_equal(got, want)  # it is quantized
    alone = sess.run(None, {"x": x[2:3], "B": b})[0]  # a row's result ignores the other rows
    np.testing.assert_allclose(alone, got[2:3], rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.fixture(scope="module")
def chain(models) -> ConversionChain:
    model, vocoder = models
    return ConversionChain(model, vocoder).eval()


def _inputs(chain: ConversionChain, streams: int, frames: int) -> FrameInputs:
    g = torch.Generator().manual_seed(3)
    x = chain.zero_inputs(streams, frames)
    x["mel"] = torch.randn(x["mel"].shape, generator=g) - 6.0
    x["voiced"] = (torch.rand(streams, frames, generator=g) > 0.2).float()
    x["f0"] = (150.0 + 150.0 * torch.rand(streams, frames, generator=g)) * x["voiced"]
    x["loudness"] = torch.rand(streams, frames, generator=g) * 30 - 50
    x["speaker"] = torch.randn(streams, chain.speaker_dim, generator=g)
    return x


def _run(step, x: FrameInputs, state, block: int = 2) -> torch.Tensor:
    frames, hop = x["f0"].shape[-1], x["audio"].shape[-1] // x["f0"].shape[-1]
    out = []
    with torch.inference_mode():
        for s in range(0, frames, block):
            b = {n: t[..., s : s + block] for n, t in x.items() if n not in ("audio", "speaker")}
            b["audio"], b["speaker"] = x["audio"][:, s * hop : (s + block) * hop], x["speaker"]
            out.append(step.step({n: t.contiguous() for n, t in b.items()}, state))
    return torch.cat(out, dim=-1)


def test_int8_step_is_close_to_the_float_step_and_batches_exactly(chain: ConversionChain) -> None:
    float_step = OnnxStep(export_step(chain, 2))
    data = export_step(chain, 2, int8=True)
    step = OnnxStep(data, shapes=[(3, 2), (1, 2)])
    assert step.meta["weights"] == "int8" and float_step.meta["weights"] == "float32"
    proto = onnx.load_from_string(data)
    assert any(n.op_type == "MatMulNBits" for n in proto.graph.node)
    x = _inputs(chain, 3, 16)
    want = _run(float_step, x, float_step.init_state(3))
    got = _run(step, x, step.init_state(3))
    err = float(((got - want) ** 2).sum() / (want**2).sum())
    assert 0 < err < 10 ** (-20 / 10)  # within 20 dB SNR of the float step (measured: ~30)
    for i in range(3):  # each stream's row is quantized on its own: batched == alone
        alone = _run(step, {n: t[i : i + 1] for n, t in x.items()}, step.init_state(1))
        peak = float(alone.abs().max())
        torch.testing.assert_close(got[i : i + 1], alone, rtol=0, atol=1e-5 * peak)


def test_engine_and_cli_take_the_int8_backend(models, tmp_path: Path) -> None:
    model, vocoder = models
    rt = RealtimeConfig(block_frames=2, backend="onnxruntime-int8")
    eng = StreamingConverter.from_models(model, vocoder, sample_rate=24000, realtime=rt)
    assert isinstance(eng.step_module, OnnxStep) and eng.step_module.meta["weights"] == "int8"
    out = convert_array(eng, sung(24000, 0.3), chunk=eng.block_samples)
    assert np.isfinite(out).all() and np.abs(out).max() > 0
    ckpt = write_tiny_model(tmp_path / "tiny.ckpt")
    paths = {}
    for name, extra in (("f32", []), ("int8", ["--int8"])):
        paths[name] = tmp_path / f"{name}.onnx"
        assert comostream.main(["export", "--onnx", str(paths[name]), str(ckpt), *extra]) == 0
    assert read_metadata(paths["int8"])["weights"] == "int8"
    assert read_metadata(paths["f32"])["weights"] == "float32"
    assert paths["int8"].stat().st_size < paths["f32"].stat().st_size
    assert comostream.main(["export", str(ckpt), "-o", str(tmp_path / "m.ckpt"), "--int8"]) == 1
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert comostream.main(["export", "--onnx", str(folder), str(ckpt), "--int8"]) == 1
    assert list(folder.iterdir()) == [] and not list(tmp_path.glob(".*.tmp"))


def test_batched_serving_on_int8_equals_each_session_stepped_alone(models) -> None:
    from comostream.realtime.serve.engines import EngineFactory
    from comostream.realtime.serve.protocol import PROTOCOL_VERSION, Hello

    model, vocoder = models
    x = sung(48000, 0.4)
    hello = Hello(PROTOCOL_VERSION, 48000, 1, "f32le", None, None, 0.0, None)
    rt = RealtimeConfig(backend="onnxruntime-int8")
    out = {}
    for mode in ("batched", "alone"):
        factory = EngineFactory(model, vocoder, rt, max_batch=4)
        try:
            block = factory.natural_block(48000)
            engines = [factory.create(hello, block, s) for s in model.speakers[:3]]
            sched = factory.scheduler
            assert factory.backend == "onnxruntime-int8"
            assert sched.step_module.meta["weights"] == "int8"
            ys: list[list[np.ndarray]] = [[] for _ in engines]
            for k in range(len(x) // block):
                piece = x[k * block : (k + 1) * block]
                if mode == "alone":  # one session's block per step
                    for y, eng in zip(ys, engines, strict=True):
                        y.append(eng.push(piece))
                    continue
                with sched._cond:  # all three pending before the thread takes any: one step
                    futures = [sched.convert(e, piece) for e in engines]
                for y, f in zip(ys, futures, strict=True):
                    y.append(f.result(30.0))
            batched = sched.stats.rows > sched.stats.steps
            assert batched == (mode == "batched")
            out[mode] = np.stack([np.concatenate(y) for y in ys])
            for eng in engines:
                factory.release(eng)
        finally:
            factory.close()
    peak = float(np.abs(out["alone"]).max())
    assert peak > 0
    np.testing.assert_allclose(out["batched"], out["alone"], rtol=0, atol=1e-4 * peak)
    assert not np.allclose(out["alone"][0], out["alone"][1])  # the singers differ
