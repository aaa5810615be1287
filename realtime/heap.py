"""Keep Python's cyclic garbage collector from stalling a stream.

A process that has loaded torch, the models and their traced or compiled steps holds a few
hundred thousand long-lived objects; a full collection of the cyclic garbage collector scans them
all, 90-130 ms on the 2-core machine, and comes every few minutes while a stream allocates:
in ``serve`` one such pause made every session's blocks that late at once (a late p99 at 8
streams), and in ``live`` it is an audible gap. :func:`settle_heap`, called once the models are
loaded and warmed up, collects what is garbage now and moves every surviving object to the
permanent generation (:func:`gc.freeze`), so later full collections scan only what streaming
allocated since (well under a millisecond). Standard library only.
"""

from __future__ import annotations

import gc
import time

__all__ = ["settle_heap"]


def settle_heap() -> float:
    """Collect, then freeze the survivors out of later collections; the seconds it took (one
    full collection: call it before streaming starts, not during)."""
    t0 = time.perf_counter()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - t0
