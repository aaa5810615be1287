"""How soon a thread waiting for Python's interpreter lock gets it: soon, while streaming.

CPython hands the interpreter lock (GIL) to a waiting thread when the running one lets go of it
(in a blocking call, a torch op, a ``nogil`` numba kernel) or, failing that, once the waiting
thread has waited the *switch interval*: 5 ms by default. A streaming process has two threads
that both need it often: ``live``'s converter and its audio callback, ``serve``'s batch scheduler
and its event loop. Each time the scheduler's thread lets go (every torch op of a step, every
kernel of the inductor-compiled step) and the event loop is busy, it can wait up to the whole
interval to go on, several times a step: with the default, ``bench serve --backend inductor``
came back with p99 round trips of 45-145 ms at 12-16 streams; handing over every 0.5 ms gave
13-28 ms (docs/streaming.md). :func:`switch_interval` sets it for the time of a stream.
Standard library only.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["LIVE_SWITCH_S", "SERVE_SWITCH_S", "switch_interval"]

LIVE_SWITCH_S = 0.001  # `live`: the audio callback waits at most this long for the converter
SERVE_SWITCH_S = 0.0005  # `serve`: the scheduler's thread and the event loop


@contextmanager
def switch_interval(seconds: float) -> Iterator[None]:
    """Within the block, a thread waiting for the interpreter lock gets it after ``seconds`` at
    most (``sys.setswitchinterval``, process-wide); the former interval is restored after."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(before)
