"""The latency benchmark's measurements, checked on an identity model whose output is known."""

from __future__ import annotations

import pytest

from comostream.bench.latency import _onset, _paced_e2e, example_signal
from comostream.models.config import RealtimeConfig
from comostream.realtime.engine import StreamingConverter

from helpers import IdentityStep, silent_f0

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("rate,block", [(24000, 2), (48000, 1)])
def test_paced_end_to_end_latency_of_an_identity_engine(rate: int, block: int) -> None:
    chunk = 256 * block * rate // 24000
    eng = StreamingConverter(
        IdentityStep(1),
        realtime=RealtimeConfig(block_frames=block),
        sample_rate=rate,
        chunk=chunk,
        f0_tracker=silent_f0(),
    )
    paced = _paced_e2e(eng, rate)
    assert paced is not None
    e2e, lag = paced
    # the onset comes out exactly latency_ms later, plus the compute (and queueing) of its chunk
    assert e2e == pytest.approx(eng.latency_ms + lag, abs=0.3)
    assert 0.0 <= lag < 200.0


def test_onset_detector_finds_the_start_of_singing() -> None:
    x = example_signal(1.0, 24000)
    start = _onset(x, 24000)
    assert start is not None and abs(x[start : start + 240]).max() > 0.01
