"""The retrieval index (models/retrieval.py): exact nearest neighbours, frame-local (streamed ==
offline), rate 0 == no index bit for bit, stored in and loaded from the inference file."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from comostream.models.acoustic import AcousticModel
from comostream.models.chain import ConversionChain, FrameInputs
from comostream.models.config import RealtimeConfig
from comostream.models.retrieval import INDEX_NEIGHBOURS, INDEX_SIZE, RetrievalIndex, build_bank
from comostream.realtime.engine import StreamingConverter, convert_array
from comostream.realtime.serve.engines import EngineFactory
from comostream.realtime.serve.protocol import (
    PROTOCOL_VERSION,
    Hello,
    ProtocolError,
    parse_hello,
    parse_set,
)
from comostream.training.checkpoint import save_checkpoint

from helpers import FLOAT_BACKEND, sung, tiny_models

pytestmark = pytest.mark.usefixtures("one_thread")

FRAMES = 32
RT = RealtimeConfig(block_frames=2)
SERVE_RT = RealtimeConfig(block_frames=2, backend=FLOAT_BACKEND)  # held to torch engines


def _indexed_models() -> tuple[AcousticModel, ConversionChain, ConversionChain]:
    """A tiny model without index, the same with banks for alto and tenor (not bass): chains."""
    model, vocoder = tiny_models()
    plain = ConversionChain(model, vocoder).eval()
    indexed_model, _ = tiny_models()
    g = torch.Generator().manual_seed(1)
    dim = model.cfg.model.content_dim
    banks = {
        "alto": torch.from_numpy(build_bank(torch.randn(300, dim, generator=g).numpy(), 16)),
        "tenor": torch.randn(5, dim, generator=g),  # fewer rows than the longest bank
    }
    indexed_model.set_index(banks)
    return indexed_model, plain, ConversionChain(indexed_model, vocoder).eval()


def _inputs(chain: ConversionChain, rate: float, streams: int = 2) -> FrameInputs:
    g = torch.Generator().manual_seed(3)
    x = chain.zero_inputs(streams, FRAMES)
    x["mel"] = torch.randn(x["mel"].shape, generator=g) - 6.0
    x["f0"] = 150.0 + 100.0 * torch.rand(streams, FRAMES, generator=g)
    x["voiced"] = torch.ones(streams, FRAMES)
    x["loudness"] = torch.rand(streams, FRAMES, generator=g) * 30 - 50
    x["speaker"] = torch.randn(streams, chain.speaker_dim, generator=g)
    if "index_rate" in x:
        x["index_rate"] = torch.full((streams, 1), rate)
        x["index_weights"] = torch.tensor([[1.0, 0.0], [0.3, 0.5]])[:streams]  # 0.2: bass
    return x


def _blocks(x: FrameInputs, k: int) -> list[FrameInputs]:
    hop = x["audio"].shape[-1] // FRAMES
    out = []
    for s in range(0, FRAMES, k):
        b = {n: x[n][..., s : s + k] for n in ("mel", "f0", "voiced", "loudness", "transpose")}
        b["audio"] = x["audio"][:, s * hop : (s + k) * hop]
        for n in ("speaker", "index_rate", "index_weights"):
            if n in x:
                b[n] = x[n]
        out.append(b)
    return out


def test_retrieval_equals_a_brute_force_knn() -> None:
    g = torch.Generator().manual_seed(0)
    banks = {"a": torch.randn(20, 6, generator=g), "c": torch.randn(7, 6, generator=g)}
    index = RetrievalIndex(["a", "b", "c"], banks, 6)
    content = torch.randn(2, 6, 9, generator=g)
    got = index.retrieve(content)  # (S, N, D, T)
    for n, name in enumerate(("a", "c")):
        bank = banks[name].double().numpy()
        for s in range(2):
            for t in range(9):
                x = content[s, :, t].double().numpy()
                d = ((bank - x) ** 2).sum(1)
                near = np.argsort(d)[:INDEX_NEIGHBOURS]
                w = 1.0 / (d[near] + 1e-6)
                want = (w[:, None] * bank[near]).sum(0) / w.sum()
                np.testing.assert_allclose(got[s, n, :, t].numpy(), want, rtol=1e-5, atol=1e-5)
    weights = index.weights({"a": 1.0, "b": 2.0, "c": 1.0})
    assert weights.tolist() == [0.25, 0.25]
    full = index(content, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.5]]))
    torch.testing.assert_close(full[0], got[0, 0])
    torch.testing.assert_close(full[1], content[1] + 0.5 * (got[1, 1] - content[1]))


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_streamed_equals_offline_with_the_index_on(k: int) -> None:
    _, _, chain = _indexed_models()
    x = _inputs(chain, rate=0.75)
    with torch.inference_mode():
        offline = chain(x)
        state = chain.init_state(2)
        streamed = torch.cat([chain.step(b, state) for b in _blocks(x, k)], dim=-1)
        dim = chain.model.cfg.model.content_dim
        content = torch.randn(2, dim, FRAMES, generator=torch.Generator().manual_seed(5))
        whole = chain.model.retrieval(content, x["index_weights"], x["index_rate"])
        parts = [
            chain.model.retrieval(content[..., s : s + k], x["index_weights"], x["index_rate"])
            for s in range(0, FRAMES, k)
        ]
    assert torch.equal(torch.cat(parts, dim=-1), whole)  # frame-local, exactly
    assert offline.abs().max() > 1e-3
    torch.testing.assert_close(streamed, offline, rtol=0, atol=1e-5 * float(offline.abs().max()))


def test_rate_zero_is_bit_identical_to_no_index_and_the_index_changes_the_output() -> None:
    _, plain, chain = _indexed_models()
    with torch.inference_mode():
        ref = plain(_inputs(plain, 0.0))
        off = chain(_inputs(chain, 0.0))
        on = chain(_inputs(chain, 1.0))
    assert torch.equal(off, ref)
    assert not torch.allclose(on, ref)


def test_the_index_is_stored_and_loaded_with_the_file(tmp_path: Path) -> None:
    model, _, _ = _indexed_models()
    path = save_checkpoint(tmp_path / "m.ckpt", model.export_payload())
    loaded = AcousticModel.from_checkpoint(path)
    assert loaded.retrieval is not None
    assert loaded.retrieval.sizes() == {"alto": 16, "tenor": 5}
    for name, bank in model.retrieval.banks().items():
        assert torch.equal(loaded.retrieval.banks()[name], bank)
    plain, _ = tiny_models()
    assert AcousticModel.from_payload(plain.export_payload(), "x").retrieval is None


def test_build_bank_is_deterministic_and_bounded() -> None:
    x = np.random.default_rng(0).standard_normal((200, 4)).astype(np.float32)
    a, b = build_bank(x, 32, seed=3), build_bank(x, 32, seed=3)
    assert a.shape == (32, 4) and np.array_equal(a, b)
    assert build_bank(x[:10], 32).shape == (10, 4)
    with pytest.raises(ValueError, match="frames"):
        build_bank(np.zeros((0, 4)))


def test_the_engine_feeds_the_index_and_rate_zero_equals_the_plain_model() -> None:
    model, vocoder = tiny_models()
    indexed, _, _ = _indexed_models()
    x = sung(24000, 0.4)

    def run(m: AcousticModel, rate: float, trace: bool) -> np.ndarray:
        eng = StreamingConverter.from_models(
            m, vocoder, speaker="alto", realtime=RT, index_rate=rate, trace=trace
        )
        return convert_array(eng, x)

    plain = run(model, 0.0, True)
    assert np.array_equal(run(indexed, 0.0, True), plain)
    on = run(indexed, 1.0, True)
    assert not np.allclose(on, plain, atol=1e-4)
    np.testing.assert_allclose(run(indexed, 1.0, False), on, rtol=0, atol=1e-4 * np.abs(on).max())
    eng = StreamingConverter.from_models(indexed, vocoder, realtime=RT)
    with pytest.raises(ValueError, match="index rate"):
        eng.set_index_rate(1.5)


def test_onnx_step_with_the_index_equals_the_torch_step() -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from comostream.realtime.onnx_step import OnnxStep, export_step

    _, _, chain = _indexed_models()
    step = OnnxStep(export_step(chain, 2))
    x = _inputs(chain, rate=0.75)
    with torch.inference_mode():
        want_state, got_state = chain.init_state(2), step.init_state(2)
        want = torch.cat([chain.step(b, want_state) for b in _blocks(x, 2)], dim=-1)
        got = torch.cat([step.step(b, got_state) for b in _blocks(x, 2)], dim=-1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * float(want.abs().max()))


def test_batched_serving_with_the_index_equals_separate_engines() -> None:
    indexed, _, _ = _indexed_models()
    _, vocoder = tiny_models()
    factory = EngineFactory(indexed, vocoder, SERVE_RT, max_batch=2, index_rate=0.5)
    factory.warm_up()
    cases = [("alto", 1.0), ("bass", None), ({"alto": 0.5, "tenor": 0.5}, 0.8)]
    signals = [np.roll(sung(24000, 0.3), 997 * i).astype(np.float32) for i in range(3)]
    outputs: dict[int, np.ndarray] = {}

    def session(i: int) -> None:
        spk, rate = cases[i]
        hello = Hello(PROTOCOL_VERSION, 24000, 1, "f32le", None, None, 0.0, None, None, rate)
        engine = factory.create(hello, 512, spk)
        outputs[i] = convert_array(engine, signals[i], chunk=512)
        factory.release(engine)

    threads = [threading.Thread(target=session, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60.0)
    factory.close()
    for i, (spk, rate) in enumerate(cases):
        ref_engine = StreamingConverter.from_models(
            indexed,
            vocoder,
            speaker=spk,
            realtime=RT,
            chunk=512,
            trace=False,
            index_rate=0.5 if rate is None else rate,
        )
        ref = convert_array(ref_engine, signals[i], chunk=512)
        assert np.abs(outputs[i] - ref).max() <= 1e-4 * np.abs(ref).max(), f"session {i}"


def test_the_protocol_carries_index_rate() -> None:
    hello = {"type": "hello", "version": PROTOCOL_VERSION, "sample_rate": 48000}
    assert parse_hello(hello).index_rate is None
    assert parse_hello({**hello, "index_rate": 0.25}).index_rate == 0.25
    assert parse_set({"type": "set", "index_rate": 1}).index_rate == 1.0
    for bad in (1.5, -0.1, "0.5", True, None):
        with pytest.raises(ProtocolError) as err:
            parse_hello({**hello, "index_rate": bad})
        assert err.value.code == "bad_params"


def test_bench_latency_times_the_index_per_block() -> None:
    from comostream.bench.latency import _index_compute

    model, _ = tiny_models()
    r = _index_compute(model, 4, "cpu", reps=3)
    assert r["index_rows"] == INDEX_SIZE and r["index_ms_p50"] > 0
    indexed, _, _ = _indexed_models()
    assert _index_compute(indexed, 4, "cpu", reps=3)["index_rows"] == 16 + 5


def test_batched_converter_feeds_the_index_of_each_stream() -> None:
    from comostream.realtime.batch import BatchedConverter

    indexed, _, _ = _indexed_models()
    _, vocoder = tiny_models()
    speakers = ["alto", "bass"]
    xs = [np.roll(sung(24000, 0.3), 997 * i).astype(np.float32) for i in range(2)]
    bc = BatchedConverter(indexed, vocoder, speakers, realtime=RT, index_rate=1.0)
    parts = [bc.push([x[a : a + 512] for x in xs]) for a in range(0, len(xs[0]), 512)]
    for i, spk in enumerate(speakers):
        eng = StreamingConverter.from_models(
            indexed, vocoder, speaker=spk, realtime=RT, index_rate=1.0, trace=False
        )
        ref = np.concatenate([eng.push(xs[i][a : a + 512]) for a in range(0, len(xs[i]), 512)])
        got = np.concatenate([p[i] for p in parts])
        assert np.abs(ref).max() > 1e-3
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max(), spk
