"""Batched streams equal separate streams; on CUDA, graph replay equals eager."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comostream.models.config import RealtimeConfig
from comostream.realtime.batch import BatchedConverter
from comostream.realtime.engine import StreamingConverter

from helpers import sung

pytestmark = pytest.mark.usefixtures("one_thread")

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _streams(n: int) -> list[np.ndarray]:
    base = sung(24000, 0.8)
    return [np.roll(base, 997 * i) * (1.0 - 0.2 * i) for i in range(n)]


def _separate(models, speakers, transposes, xs, block: int, device: str = "cpu"):
    model, vocoder = models
    outs = []
    for spk, tr, x in zip(speakers, transposes, xs, strict=True):
        rt = RealtimeConfig(block_frames=block)
        eng = StreamingConverter.from_models(
            model.to(device), vocoder.to(device), speaker=spk, transpose=tr, realtime=rt
        )
        outs.append(np.concatenate([eng.push(x[a : a + 512]) for a in range(0, len(x), 512)]))
    return outs


def _batched(models, speakers, transposes, xs, block: int, graph: bool = False):
    model, vocoder = models
    bc = BatchedConverter(
        model, vocoder, speakers, realtime=RealtimeConfig(block_frames=block), graph=graph
    )
    for eng, tr in zip(bc.engines, transposes, strict=True):
        eng.set_transpose(tr)
        eng.reset()  # start from the transposition, no ramp
    parts = [bc.push([x[a : a + 512] for x in xs]) for a in range(0, len(xs[0]), 512)]
    return [np.concatenate([p[i] for p in parts]) for i in range(len(xs))]


def test_batched_streams_equal_separate_streams(models) -> None:
    speakers = ["alto", "bass", {"alto": 0.5, "tenor": 0.5}]
    transposes = [0.0, -3.0, 5.0]
    xs = _streams(3)
    sep = _separate(models, speakers, transposes, xs, 2)
    bat = _batched(models, speakers, transposes, xs, 2)
    for a, b in zip(sep, bat, strict=True):
        assert np.abs(a).max() > 1e-3
        assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()


def test_batched_push_checks_its_input(models) -> None:
    model, vocoder = models
    bc = BatchedConverter(model, vocoder, ["alto", "bass"])
    with pytest.raises(ValueError, match="need 2 chunks"):
        bc.push([np.zeros(512, np.float32)])
    with pytest.raises(ValueError, match="lockstep"):
        bc.push([np.zeros(512, np.float32), np.zeros(1024, np.float32)])


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("block", [1, 4])
def test_graph_replay_equals_eager(models, block: int) -> None:
    speakers = ["alto", "bass"]
    xs = _streams(2)
    eager = _batched(_on(models, "cuda"), speakers, [0.0, 2.0], xs, block)
    graph = _batched(_on(models, "cuda"), speakers, [0.0, 2.0], xs, block, graph=True)
    for a, b in zip(eager, graph, strict=True):
        assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()


@pytest.mark.cuda
@CUDA
def test_batched_graph_equals_separate_eager(models) -> None:
    speakers = ["alto", "bass", "tenor"]
    xs = _streams(3)
    sep = _separate(_on(models, "cuda"), speakers, [0.0, 0.0, 0.0], xs, 2, device="cuda")
    bat = _batched(_on(models, "cuda"), speakers, [0.0, 0.0, 0.0], xs, 2, graph=True)
    for a, b in zip(sep, bat, strict=True):
        assert np.abs(a - b).max() <= 1e-3 * np.abs(a).max()


def _on(models, device: str):
    return tuple(m.to(device) for m in models)
