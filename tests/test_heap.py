"""Python's cyclic garbage collector and streaming (realtime/heap.py): once the models are
loaded, a full collection must not scan them (about 100 ms on the 2-core machine, every few
minutes: a gap in every stream at once)."""

from __future__ import annotations

import gc
import time
from typing import Any

import pytest

from comostream.models.config import RealtimeConfig
from comostream.realtime.heap import settle_heap
from comostream.realtime.serve import server as server_module
from comostream.realtime.serve.config import ServerConfig
from comostream.realtime.serve.engines import EngineFactory
from comostream.realtime.serve.server import ServerThread


def test_settled_objects_leave_full_collections_short() -> None:
    held = [[{"i": i}, [i]] for i in range(200_000)]  # long-lived containers, as a model's
    t0 = time.perf_counter()
    gc.collect()
    before = time.perf_counter() - t0
    settle_heap()
    assert gc.get_freeze_count() >= 400_000
    t0 = time.perf_counter()
    gc.collect()
    after = time.perf_counter() - t0
    gc.unfreeze()
    del held
    assert after < before / 5, (before, after)  # only what is not frozen is scanned


def test_the_server_settles_the_heap_after_its_warm_up(
    models: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bool] = []
    factory = EngineFactory(*models, RealtimeConfig(block_frames=2))
    monkeypatch.setattr(server_module, "settle_heap", lambda: calls.append(factory.warmed))
    monkeypatch.setattr(factory, "warmed", False, raising=False)
    warm_up = factory.warm_up

    def warm_and_mark(*args: Any, **kwargs: Any) -> None:
        warm_up(*args, **kwargs)
        factory.warmed = True

    monkeypatch.setattr(factory, "warm_up", warm_and_mark)
    with ServerThread(factory, ServerConfig(port=0)):
        pass
    assert calls == [True]  # once, after the warm-up
