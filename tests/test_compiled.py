"""The ``inductor`` backend (realtime/compiled.py): the model step compiled to C++ gives the torch
step's samples, alone and batched, never recompiles mid-stream, and says clearly what is missing.
Each compilation takes 15-30 s: the tests compile four shapes in all."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

import comostream.realtime.compiled as compiled
from comostream.models.chain import ConversionChain
from comostream.models.config import STEP_BACKENDS, RealtimeConfig
from comostream.realtime.compiled import CompiledStep, InductorBackendError, check_compilable
from comostream.realtime.engine import StreamingConverter, convert_array

from helpers import sung

pytestmark = pytest.mark.usefixtures("one_thread")


def _graphs() -> int:
    return int(counters["stats"]["unique_graphs"])


@pytest.fixture(scope="module")
def compiled_engine(models) -> StreamingConverter:
    """An engine on the inductor backend (48 kHz, blocks of 2 frames): one compilation."""
    model, vocoder = models
    rt = RealtimeConfig(block_frames=2, backend="inductor")
    return StreamingConverter.from_models(model, vocoder, sample_rate=48000, realtime=rt)


def test_engine_on_inductor_equals_engine_on_torch(models, compiled_engine) -> None:
    model, vocoder = models
    x = sung(48000, 0.5)
    out = {}
    for backend in ("torch", "inductor"):
        rt = RealtimeConfig(block_frames=2, backend=backend)
        if backend == "torch":
            eng = StreamingConverter.from_models(model, vocoder, sample_rate=48000, realtime=rt)
        else:
            eng = compiled_engine
        assert isinstance(eng.step_module, CompiledStep) == (backend == "inductor")
        graphs = _graphs()
        out[backend] = convert_array(eng, x, chunk=eng.block_samples)
        assert _graphs() == graphs  # every block ran the code compiled up front
        if backend == "inductor":
            step = eng.step_module
            assert step.compiled_steps >= 20 and step.eager_steps <= 1  # (a flush's last)
    peak = float(np.abs(out["torch"]).max())
    assert peak > 0
    np.testing.assert_allclose(out["inductor"], out["torch"], rtol=0, atol=1e-4 * peak)


def test_batched_serving_on_inductor_equals_it_on_torch(models) -> None:
    from comostream.realtime.serve.engines import EngineFactory
    from comostream.realtime.serve.protocol import PROTOCOL_VERSION, Hello

    assert compiled.INDUCTOR_OPTIONS == {"freezing": True, "cpp_wrapper": True}
    model, vocoder = models
    x = sung(48000, 0.3)
    hello = Hello(PROTOCOL_VERSION, 48000, 1, "f32le", None, None, 0.0, None)
    out = {}
    for backend in ("torch", "inductor"):
        factory = EngineFactory(model, vocoder, RealtimeConfig(backend=backend), max_batch=2)
        block = factory.natural_block(48000)
        engines = [factory.create(hello, block, s) for s in model.speakers[:2]]
        sched = factory.scheduler
        assert sorted(sched.buckets) == [1, 2]
        assert all(isinstance(s, CompiledStep) for s in sched.buckets.values()) == (
            backend == "inductor"
        )
        graphs = _graphs()
        ys: list[list[np.ndarray]] = [[] for _ in engines]
        for k in range(len(x) // block):
            if k % 3 == 2:  # one by one
                for y, eng in zip(ys, engines, strict=True):
                    y.append(eng.push(x[k * block : (k + 1) * block]))
                continue
            with sched._cond:  # both pending before the thread takes any: one step of two
                futures = [sched.convert(e, x[k * block : (k + 1) * block]) for e in engines]
            for y, f in zip(ys, futures, strict=True):
                y.append(f.result(30.0))
        assert _graphs() == graphs
        if backend == "inductor":  # two sessions' blocks together, and each alone
            assert sched.buckets[2].compiled_steps > 0 and sched.buckets[1].compiled_steps > 0
        out[backend] = np.stack([np.concatenate(y) for y in ys])
        assert sched.stats.rows > sched.stats.steps  # blocks of the two went together
        for eng in engines:
            factory.release(eng)
        factory.close()
    peak = float(np.abs(out["torch"]).max())
    assert peak > 0
    np.testing.assert_allclose(out["inductor"], out["torch"], rtol=0, atol=1e-4 * peak)


def test_a_missing_compiler_or_header_is_a_clear_error(
    models, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, vocoder = models
    chain = ConversionChain(model, vocoder).eval()
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    with pytest.raises(InductorBackendError, match="apt-get install g\\+\\+"):
        CompiledStep(chain, chain.zero_inputs(1, 2))
    monkeypatch.undo()
    monkeypatch.setattr(compiled.sysconfig, "get_paths", lambda: {"include": "/nonexistent"})
    with pytest.raises(InductorBackendError, match="python3-dev"):
        check_compilable(chain)
    monkeypatch.undo()
    monkeypatch.setattr(chain.vocoder, "traceable", False, raising=False)  # as window mode
    with pytest.raises(InductorBackendError, match="built-in streaming vocoder"):
        check_compilable(chain)


def test_the_backend_is_known_to_the_config_and_the_commands() -> None:
    from comostream.cli import build_parser
    from comostream.cli.common import config_from_args

    assert "inductor" in STEP_BACKENDS
    assert RealtimeConfig(backend="inductor").backend == "inductor"
    parser = build_parser()
    for command in (["convert", "in.wav", "-o", "out.wav"], ["serve"], ["bench", "latency"]):
        args = parser.parse_args([*command, "--backend", "inductor"])
        assert config_from_args(args).realtime.backend == "inductor"


def test_a_state_made_outside_inference_mode_runs_eager(models, compiled_engine) -> None:
    """Compiled code guards on inference tensors: another state runs the eager chain (same
    samples) rather than recompiling for half a minute mid-stream."""
    model, vocoder = models
    chain = ConversionChain(model, vocoder).eval()
    step = compiled_engine.step_module
    assert isinstance(step, CompiledStep)
    inputs = chain.zero_inputs(1, 2)
    inputs["f0"] += 220.0
    inputs["voiced"] += 1.0
    plain = step.init_state(1)
    with torch.no_grad():
        other = chain.init_state(1)  # not inference tensors
    graphs, eager = _graphs(), step.eager_steps
    a, b = step.step(inputs, plain), step.step(inputs, other)
    assert _graphs() == graphs and step.eager_steps == eager + 1
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * float(a.abs().max()))
