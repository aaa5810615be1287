"""``comostream bench busy``: do the streaming commands keep real time, with their default
options, while other work keeps cores busy?

A realtime tool is run beside a browser, a DAW, a game or a build. This check starts ``cores``
busy-loop processes (plain Python spinning, each ended by its own deadline even if this process
dies), then runs, each as a child process with nothing but the options it needs:

* ``convert``: ``comostream convert --block 2 EXAMPLE -o OUT`` (its printed RTF);
* ``serve_client``: ``comostream serve --port 0`` and ``comostream client EXAMPLE -o OUT`` paced
  in real time (round trip p50/p99 and dropped samples);
* ``bench_latency``: ``comostream bench latency --json`` (RTF, chunk p99, paced drops).

A check *holds* when its real-time factor is below :data:`RTF_LIMIT` and nothing was dropped (for
the client also: p99 round trip below the block plus :data:`RTT_SLACK_MS`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from comostream.bench.serve import serve_child

__all__ = ["RTF_LIMIT", "busy_loops", "format_busy_table", "run_busy_check"]

RTF_LIMIT = 0.8  # the pace warning's limit (realtime/pace.py): above it, real time is fragile
RTT_SLACK_MS = 10.0  # loopback WebSocket + asyncio overhead allowed on top of one block
MAX_BUSY_S = 900.0  # a busy loop never outlives this, whatever happens to its parent
_SPIN = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end:\n    pass\n"
_RTF = re.compile(r"RTF ([0-9.]+)")
_CLIENT = re.compile(
    r"round trip p50 ([0-9.]+) ms, p99 ([0-9.]+) ms;.*?compute p50 ([0-9.]+) ms per block; "
    r"dropped (\d+) samples",
    re.S,
)


@contextlib.contextmanager
def busy_loops(cores: int, seconds: float = MAX_BUSY_S) -> Iterator[list[int]]:
    """``cores`` processes each spinning one core for at most ``seconds`` (min with
    :data:`MAX_BUSY_S`); ended when the block exits. Yields their PIDs."""
    if cores < 0:
        raise ValueError(f"busy cores must be >= 0, got {cores}")
    code = _SPIN.format(s=min(float(seconds), MAX_BUSY_S))
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL)
        for _ in range(cores)
    ]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def _env() -> dict[str, str]:
    """The children's environment: the user's, less any thread settings this process was given
    (the check is about each command's own defaults)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _comostream(*args: str) -> list[str]:
    return [sys.executable, "-m", "comostream", *args]


def _run(cmd: list[str], timeout_s: float) -> str:
    """Run ``cmd``; its stdout (RuntimeError with the tail of its output if it fails)."""
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout_s)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-12:])
        raise RuntimeError(f"{' '.join(cmd[2:])} exited with status {r.returncode}:\n{tail}")
    return r.stdout


def check_convert(example: Path, tmp: Path, timeout_s: float = 300.0) -> dict[str, Any]:
    """``convert --block 2`` with default options: its RTF."""
    out = _run(
        _comostream("convert", "--block", "2", str(example), "-o", str(tmp / "c.wav")), timeout_s
    )
    found = _RTF.search(out)
    if not found:
        raise RuntimeError(f"convert printed no RTF: {out.strip()}")
    rtf = float(found.group(1))
    return {"command": "convert --block 2", "rtf": rtf, "holds": rtf < RTF_LIMIT}


@contextlib.contextmanager
def _server(tmp: Path, start_timeout_s: float = 300.0) -> Iterator[str]:
    """``comostream serve --port 0`` (default options otherwise) until the block ends; its URL."""
    cmd = _comostream("serve", "--port", "0")
    with serve_child(cmd, _env(), tmp / "serve.log", start_timeout_s) as server:
        yield server.url


def check_serve_client(example: Path, tmp: Path, timeout_s: float = 300.0) -> dict[str, Any]:
    """``serve`` + ``client`` (real-time paced) with default options: round trip and drops."""
    with _server(tmp) as url:
        out = _run(
            _comostream("client", "--url", url, str(example), "-o", str(tmp / "s.wav")), timeout_s
        )
    found = _CLIENT.search(out)
    if not found:
        raise RuntimeError(f"client printed no round trip: {out.strip()}")
    p50, p99, compute, dropped = (float(found.group(i)) for i in range(1, 5))
    from comostream.models.config import RealtimeConfig

    block_ms = RealtimeConfig().block_frames * 256 / 24.0  # the server's default block
    return {
        "command": "serve + client",
        "rtt_ms_p50": p50,
        "rtt_ms_p99": p99,
        "block_ms": block_ms,
        "server_compute_ms_p50": compute,
        "rtf": compute / block_ms,
        "dropped_samples": int(dropped),
        "holds": dropped == 0 and p99 < block_ms + RTT_SLACK_MS,
    }


def check_bench_latency(timeout_s: float = 600.0) -> dict[str, Any]:
    """``bench latency --json`` with default options: RTF, chunk p99, drops of its paced run."""
    r = json.loads(_run(_comostream("bench", "latency", "--json"), timeout_s))
    rtf = float(r["rtf"])
    warning = r.get("pace_warning") or ""
    return {
        "command": "bench latency",
        "rtf": rtf,
        "threads": r.get("threads"),
        "pace_warning": warning,
        "holds": rtf < RTF_LIMIT and not warning,
    }


CHECKS: dict[str, Callable[[Path, Path], dict[str, Any]]] = {
    "convert": check_convert,
    "serve_client": check_serve_client,
    "bench_latency": lambda example, tmp: check_bench_latency(),
}


def run_busy_check(
    cores: int = 1,
    checks: tuple[str, ...] = tuple(CHECKS),
    example: Path | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Run ``checks`` (names of :data:`CHECKS`) while ``cores`` busy loops spin; the report."""
    from comostream.models.shipped import example_file

    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(unknown)}; valid: {', '.join(CHECKS)}")
    example = example or example_file("alto_line2.wav")  # as bench latency
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="comostream-bench-busy-") as d, busy_loops(cores):
        for name in checks:
            log(f"{name} with {cores} busy core(s)")
            rows[name] = CHECKS[name](Path(example), Path(d))
    return {
        "busy_cores": cores,
        "cpu_count": os.cpu_count(),
        "rtf_limit": RTF_LIMIT,
        "checks": rows,
        "holds": all(r["holds"] for r in rows.values()),
    }


def format_busy_table(r: dict[str, Any]) -> str:
    """The report as a few lines of text."""
    lines = [
        f"{r['busy_cores']} busy core(s) of {r['cpu_count']}; real time = RTF < {r['rtf_limit']}"
    ]
    for c in r["checks"].values():
        extra = ""
        if "rtt_ms_p99" in c:
            extra = (
                f", round trip p50 {c['rtt_ms_p50']:.1f} / p99 {c['rtt_ms_p99']:.1f} ms "
                f"(block {c['block_ms']:.1f} ms), dropped {c['dropped_samples']} samples"
            )
        verdict = "holds" if c["holds"] else "MISSES real time"
        lines.append(f"  {c['command']:<18} RTF {c['rtf']:.3f}{extra}: {verdict}")
    lines.append("all hold" if r["holds"] else "some miss real time")
    return "\n".join(lines)
