"""Whether a stream keeps up with real time, and what to do when it does not.

One wording for every command that streams (``live``, ``serve``, ``convert --block``, ``demo``,
``bench latency``): :func:`pace_warning` builds the line from the measured real-time factor
(compute time / audio time), the blocks dropped, the torch threads and the block size;
:class:`PaceWatch` says it once per run or session. Standard library only.
"""

from __future__ import annotations

__all__ = ["RTF_LIMIT", "PaceWatch", "pace_warning"]

RTF_LIMIT = 0.8  # above this, a stream has too little margin for a busy machine's hiccups


def pace_warning(rtf: float | None, dropped: int, threads: int | None, block: int | None) -> str:
    """The warning for a stream at ``rtf`` with ``dropped`` blocks lost, run on ``threads``
    torch intra-op threads in blocks of ``block`` frames; ``""`` when it keeps up (RTF at most
    :data:`RTF_LIMIT` and nothing dropped). ``rtf`` None: not measured; ``threads`` or
    ``block`` None: not known."""
    slow = rtf is not None and rtf > RTF_LIMIT
    if not slow and dropped <= 0:
        return ""
    what = []
    if rtf is not None:
        what.append(f"RTF {rtf:.2f} (compute / audio; above {RTF_LIMIT:g} leaves no margin)")
    if dropped > 0:
        what.append(f"{dropped} block{'s' if dropped != 1 else ''} dropped")
    if threads is not None and threads > 1:
        cause = (
            f"{threads} torch threads per stream: on a busy machine (other streams, other "
            "processes) they wait for each other at every small step"
        )
    else:
        cause = "a busy or slow machine, or a block too small for it"
    fixes = []
    if threads is None or threads > 1:
        fixes.append("--threads 1 (and OMP_NUM_THREADS=1)")
    bigger = f" than {block}" if block is not None else ""
    fixes.append(f"a larger --block{bigger} (more latency, less cost per frame)")
    fixes.append("fewer other jobs on this machine")
    return (
        f"not keeping up with real time: {', '.join(what)}. Likely cause: {cause}. "
        f"Fix: {'; '.join(fixes)}."
    )


class PaceWatch:
    """Says :func:`pace_warning` once: :meth:`check` returns the line the first time a stream
    falls behind, ``""`` before and after."""

    def __init__(self) -> None:
        self.warned = False

    def check(self, rtf: float | None, dropped: int, threads: int | None, block: int | None) -> str:
        """The warning the first time it is due, else ``""``."""
        if self.warned:
            return ""
        text = pace_warning(rtf, dropped, threads, block)
        self.warned = bool(text)
        return text
