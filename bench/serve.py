"""``comostream bench serve``: how many real-time streams one ``comostream serve`` holds.

The server runs as a child process (``python -m comostream serve --port 0``), exactly as it is
deployed: its CPU time (``/proc/PID/stat``, every thread) is then the server's alone, and the
clients' Python does not compete with the server's sessions for one interpreter lock, which an
in-process server would (understating what the server holds). One process drives the clients
with asyncio, speaking the protocol (``docs/protocol.md``) through
:class:`~comostream.realtime.serve.client.StreamClient`: for each N, N sessions stream the bundled
example (looped) at the real-time rate of the audio for ``seconds``, their block boundaries
spread evenly over one block (independent clients do not send in lock step), then flush, report
their ``stats`` and close. Per N: dropped samples (``DROPPED`` replies and blocks never answered;
sum and per-client max), round trip p50/p99 over every converted block (send to reply, queueing
included), server CPU (cores, and per stream), the server's compute per block, and the driver's
own CPU and pacing lateness (a driver that falls behind would invalidate the row).
:func:`realtime_streams` is the headline: the largest N that holds real time, every smaller N
measured holding too. The Ns go up until the first that fails (``stop_at_failure``), so the default
list (:data:`DEFAULT_STREAMS`) finds the capacity in bounded time. The server batches its sessions'
blocks (``serve --batch on``, the default) or runs one engine per session (``batch=False``); with
batching each row also shows the scheduler's mean batch and step time (``stats.batch``).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_STREAMS",
    "format_serve_table",
    "realtime_streams",
    "repeat_summary",
    "row_holds",
    "run_serve_bench",
    "serve_child",
    "serve_process",
    "wait_for_url",
]

START_TIMEOUT_S = 300.0  # the child's model load and warm-up on a busy machine
DRAIN_TIMEOUT_S = 30.0  # after the last block: the flush reply, stats and close
DEFAULT_STREAMS = (1, 2, 4, 8, 12, 16, 20, 24, 32, 48, 64)  # measured up to the first failure
_URL = re.compile(r"serving on (wss?://\S+/ws)")


# ---------------------------------------------------------------- the rule


def row_holds(row: dict[str, Any], block_ms: float) -> bool:
    """Whether one measured N held real time: no sample dropped or lost, no client failed, and
    the round trip's p99 below one block (``block_ms``)."""
    p99 = row.get("rtt_ms_p99")
    return (
        row["dropped_samples"] == 0
        and not row.get("errors")
        and p99 is not None
        and math.isfinite(p99)
        and p99 < block_ms
    )


def _late_only(row: dict[str, Any]) -> bool:
    """A row that failed on its round trip alone (nothing dropped, no client error): such an N
    is measured a second time and that measurement is the row (the first p99 is kept as
    ``first_try_rtt_ms_p99``); a drop is never retried."""
    return not row["realtime"] and row["dropped_samples"] == 0 and not row.get("errors")


def realtime_streams(rows: Sequence[dict[str, Any]], block_ms: float) -> int:
    """The largest N (``row["streams"]``) that held real time (:func:`row_holds`) with every
    smaller N measured holding as well (a pass above a failure is noise, not capacity); 0 when
    the smallest N already fails."""
    best = 0
    for row in sorted(rows, key=lambda r: r["streams"]):
        if not row_holds(row, block_ms):
            break
        best = row["streams"]
    return best


def repeat_summary(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several whole measurements (:func:`run_serve_bench` results, run in turn) as one
    JSON-ready object: each run's ``realtime_streams``, their median and minimum, for every N
    measured how many runs it held in (``held``: N -> runs) and how many of those at its first
    measurement, without the second one a late row gets (``held_first_try``); the runs
    themselves in ``runs``. On a machine whose speed moves, the distribution is the figure, not
    one run."""
    if not results:
        raise ValueError("no runs to summarise")
    each = [int(r["realtime_streams"]) for r in results]
    held: dict[str, int] = {}
    first: dict[str, int] = {}
    for r in results:
        for row in r["rows"]:
            key = str(row["streams"])
            ok = bool(row["realtime"])
            held[key] = held.get(key, 0) + int(ok)
            first[key] = first.get(key, 0) + int(ok and "first_try_rtt_ms_p99" not in row)
    return {
        "repeat": len(results),
        "realtime_streams_each": each,
        "realtime_streams_median": float(np.median(each)),
        "realtime_streams_min": min(each),
        "held": held,
        "held_first_try": first,
        "runs": list(results),
    }


# ---------------------------------------------------------------- the server process


@dataclass
class ServerProcess:
    """A running ``comostream serve`` child: its WebSocket URL and process id."""

    url: str
    pid: int
    log: Path
    processes: int = 1  # server processes (serve --processes)
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)  # serve_child's

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds so far of the process and its children (``serve
        --processes``: the server processes), every thread; None where ``/proc`` is not
        available."""
        ticks = _proc_ticks(self.pid)
        if ticks is None:
            return None
        for child in Path("/proc").glob("[0-9]*"):
            stat = _proc_stat(int(child.name))
            if stat is not None and int(stat[1]) == self.pid:
                ticks += int(stat[11]) + int(stat[12])
        return ticks / os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state, ppid, ...), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def _proc_ticks(pid: int) -> int | None:
    """User + system clock ticks of ``pid`` so far (None: no such process or no ``/proc``)."""
    stat = _proc_stat(pid)
    return None if stat is None else int(stat[11]) + int(stat[12])


@contextmanager
def serve_process(
    checkpoint: Path,
    *,
    max_streams: int,
    threads: int = 1,
    device: str = "cpu",
    vocoder: Path | None = None,
    config: Path | None = None,
    block: int | None = None,
    batch: bool = True,
    batch_wait_ms: float | None = None,
    backend: str | None = None,
    processes: int | str = "auto",
    start_timeout_s: float = START_TIMEOUT_S,
) -> Iterator[ServerProcess]:
    """Run ``comostream serve`` on a free loopback port until the block ends (SIGTERM, then
    kill after 15 s). Its stdout/stderr go to a temporary log, shown when it fails to start."""
    cmd = [sys.executable, "-m", "comostream", "serve", "--port", "0"]
    cmd += ["--max-streams", str(max_streams), "--idle-timeout", "120"]
    cmd += ["--processes", str(processes)]
    cmd += ["--batch", "on" if batch else "off"]
    if batch_wait_ms is not None:
        cmd += ["--batch-wait", str(batch_wait_ms)]
    if backend is not None:
        cmd += ["--backend", backend]
    cmd += ["--checkpoint", str(checkpoint), "--threads", str(threads), "--device", device]
    if vocoder is not None:
        cmd += ["--vocoder", str(vocoder)]
    if config is not None:
        cmd += ["--config", str(config)]
    if block is not None:
        cmd += ["--block", str(block)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", str(threads))
    with tempfile.TemporaryDirectory(prefix="comostream-bench-serve-") as tmp:
        log = Path(tmp) / "serve.log"
        with serve_child(cmd, env, log, start_timeout_s) as server:
            yield server


@contextmanager
def serve_child(
    cmd: list[str], env: dict[str, str], log: Path, start_timeout_s: float = START_TIMEOUT_S
) -> Iterator[ServerProcess]:
    """Run the ``comostream serve`` command ``cmd`` (its output to ``log``) until it announces
    its URL, yield it, and stop it when the block ends (SIGTERM, then kill after 15 s)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        url = wait_for_url(proc, log, start_timeout_s)
        found = re.search(r"from (\d+) processes", log.read_text(errors="replace"))
        yield ServerProcess(url, proc.pid, log, int(found.group(1)) if found else 1, proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for_url(proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> str:
    """The URL the child announces; RuntimeError (with its log's tail) if it exits or is late."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = log.read_text(errors="replace")
        found = _URL.search(text)
        if found:
            return found.group(1)
        if proc.poll() is not None or time.monotonic() > deadline:
            why = (
                f"exited with status {proc.returncode}"
                if proc.returncode is not None
                else (f"did not start within {timeout_s:.0f} s")
            )
            tail = "\n".join(text.strip().splitlines()[-15:])
            raise RuntimeError(f"comostream serve {why}:\n{tail}")
        time.sleep(0.1)


# ---------------------------------------------------------------- the clients


@dataclass
class _ClientRun:
    """What one paced client measured."""

    sent_samples: int = 0
    answered_samples: int = 0
    dropped_samples: int = 0  # in DROPPED replies
    rtt_ms: list[float] = field(default_factory=list)
    late_ms: list[float] = field(default_factory=list)  # send time - due time (the driver)
    stats: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def lost_samples(self) -> int:
        """Dropped by the server plus never answered (a session that failed)."""
        return self.dropped_samples + max(0, self.sent_samples - self.answered_samples)


async def _paced(client: Any, x: np.ndarray, t0: float, phase_s: float, run: _ClientRun) -> None:
    """Send ``x`` block by block at real-time pace from ``t0 + phase_s``, then ``flush``, and
    collect every reply until the flushed tail."""
    from comostream.realtime.serve.protocol import FLAG_DROPPED, FLAG_FLUSH

    block, sr = client.block, client.sample_rate

    async def receive() -> None:
        while True:
            reply = await client.recv()
            if isinstance(reply, dict):
                continue
            if reply.flags & FLAG_FLUSH:
                return
            run.answered_samples += reply.count
            if reply.flags & FLAG_DROPPED:
                run.dropped_samples += reply.count
            else:
                run.rtt_ms.append((time.monotonic_ns() // 1000 - reply.timestamp_us) / 1000.0)

    receiver = asyncio.create_task(receive())
    try:
        for k in range(len(x) // block):
            due = t0 + phase_s + k * block / sr
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            run.late_ms.append(max(0.0, time.monotonic() - due) * 1000.0)
            if receiver.done():
                break
            await client.send_block(k, x[k * block : (k + 1) * block])
            run.sent_samples += block
        if not receiver.done():
            await client.control("flush")
        await asyncio.wait_for(receiver, DRAIN_TIMEOUT_S)
    finally:
        receiver.cancel()


async def _stats(client: Any) -> dict[str, Any]:
    """The session's ``stats`` (answered at once)."""
    await client.control("stats")
    while True:
        msg = await client.recv()
        if isinstance(msg, dict) and msg.get("type") == "stats":
            return msg


async def _measure(
    server: ServerProcess,
    n: int,
    x: np.ndarray,
    sample_rate: int,
    batch_before: dict[str, dict[str, float]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """N paced clients at once; the row and the first session's ``ready``. ``batch_before``:
    each server process's batch scheduler's ``cpu_s`` and ``busy_s`` before (its ``stats`` are
    the process's, cumulative; :func:`_batch_before`)."""
    from comostream.realtime.serve.client import StreamClient

    clients: list[Any] = []
    try:
        for _ in range(n):  # one at a time: the server's hello cap (max_pending) never bites
            clients.append(await StreamClient.connect(server.url, sample_rate=sample_rate))
        block = clients[0].block
        runs = [_ClientRun() for _ in clients]
        signals = [np.roll(x, i * len(x) // n) for i in range(n)]  # not all the same note
        cpu0, proc0 = server.cpu_seconds(), time.process_time()
        t0 = time.monotonic() + 0.05
        results = await asyncio.gather(
            *(
                _paced(c, s, t0, i * block / sample_rate / n, r)
                for i, (c, s, r) in enumerate(zip(clients, signals, runs, strict=True))
            ),
            return_exceptions=True,
        )
        wall = time.monotonic() - t0
        cpu1, proc1 = server.cpu_seconds(), time.process_time()
        for c, r, res in zip(clients, runs, results, strict=True):
            if isinstance(res, BaseException):
                r.error = f"{type(res).__name__}: {res}"
                continue
            try:
                r.stats = await asyncio.wait_for(_stats(c), DRAIN_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - a failed session is a row's error
                r.error = f"{type(exc).__name__}: {exc}"
        ready = clients[0].ready
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    server_cpu = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / wall
    return _row(n, runs, wall, server_cpu, (proc1 - proc0) / wall, batch_before), ready


def _batch_before(
    rows: Sequence[dict[str, Any]], last: dict[str, Any] | None = None
) -> dict[str, dict[str, float]]:
    """Each server process's batch scheduler's cumulative ``cpu_s`` and ``busy_s`` after
    ``rows`` and ``last`` (a process not yet seen: 0)."""
    before: dict[str, dict[str, float]] = {}
    for row in [*rows, *([last] if last else [])]:
        before.update(row.get("batch_by_process") or {})
    return before


def _batches(runs: Sequence[_ClientRun]) -> dict[str, dict[str, Any]]:
    """The batch scheduler's ``stats.batch`` of each server process (its key: the ``process``
    index as text, ``"0"`` for a lone server), the latest of its sessions' replies."""
    out: dict[str, dict[str, Any]] = {}
    for r in runs:
        if "batch" in r.stats:
            key = str(r.stats.get("process", 0))
            if key not in out or r.stats["batch"]["cpu_s"] > out[key]["cpu_s"]:
                out[key] = r.stats["batch"]
    return out


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def _row(
    n: int,
    runs: Sequence[_ClientRun],
    wall: float,
    server_cpu: float | None,
    client_cpu: float,
    batch_before: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """One N's figures (JSON-ready: no NaN). Where the server's CPU goes, in cores:
    ``cpu_sessions`` (the sessions' engine work: front ends and replies, in the batch
    scheduler's thread; unbatched, the worker threads with the model step), ``cpu_batch`` (the
    batch scheduler's steps: gather, step, scatter; their intra-op helper threads count in
    ``cpu_other``), ``cpu_other`` (the rest: the event loop with the
    WebSocket protocol, other threads); ``batch_busy``: the share of the time the scheduler's
    thread was in a cycle (its CPU share is ``cpu_sessions + cpu_batch``: the difference is
    time it waited, for the interpreter lock or a core). With several server processes the
    schedulers' CPU adds up; ``batch_busy``, ``batch_mean`` and ``step_ms_p50`` are their
    means, ``step_ms_p99`` the largest."""
    rtt = [ms for r in runs for ms in r.rtt_ms]
    late = [ms for r in runs for ms in r.late_ms]
    lost = [r.lost_samples for r in runs]
    sent = sum(r.sent_samples for r in runs)
    compute = [r.stats["compute_ms_p99"] for r in runs if "compute_ms_p99" in r.stats]
    batches = _batches(runs)
    sessions = sum(r.stats.get("worker_cpu_s", 0.0) for r in runs) / wall
    before = batch_before or {}
    zero = {"cpu_s": 0.0, "busy_s": 0.0}
    cpu = [(b["cpu_s"] - before.get(k, zero)["cpu_s"]) / wall for k, b in batches.items()]
    busy_k = [(b["busy_s"] - before.get(k, zero)["busy_s"]) / wall for k, b in batches.items()]
    batch_cpu = sum(cpu) if batches else None
    busy = float(np.mean(busy_k)) if batches else None
    other = None if server_cpu is None else server_cpu - sessions - (batch_cpu or 0.0)

    def mean(key: str) -> float | None:
        return float(np.mean([b[key] for b in batches.values()])) if batches else None

    return {
        "streams": n,
        "dropped_samples": int(sum(lost)),
        "dropped_samples_max": int(max(lost)),
        "dropped_fraction": sum(lost) / sent if sent else 0.0,
        "server_dropped_samples": int(
            sum(
                r.stats.get("dropped_in_samples", 0) + r.stats.get("dropped_out_samples", 0)
                for r in runs
            )
        ),
        "rtt_ms_p50": _pct(rtt, 50),
        "rtt_ms_p99": _pct(rtt, 99),
        "rtt_ms_max": max(rtt) if rtt else None,
        "compute_ms_p99": max(compute) if compute else None,
        "server_cpu": server_cpu,  # cores busy (1.0: one core) over the streaming window
        "server_cpu_per_stream": None if server_cpu is None else server_cpu / n,
        # streams' worth of audio converted (N less the dropped share), and the CPU per such
        # stream: overloaded, what the server still gets done per core
        "served_streams": n * (1.0 - sum(lost) / sent) if sent else 0.0,
        "server_cpu_per_served_stream": (
            None
            if server_cpu is None or not sent or sum(lost) >= sent
            else server_cpu / (n * (1.0 - sum(lost) / sent))
        ),
        "batch_mean": mean("batch_mean"),  # streams per step
        "step_ms_p50": mean("step_ms_p50"),  # the batched step
        "step_ms_p99": max((b["step_ms_p99"] for b in batches.values()), default=None),
        # cumulative per server process (as its stats said): the next row's starting point
        "batch_by_process": {
            k: {"cpu_s": b["cpu_s"], "busy_s": b["busy_s"]} for k, b in batches.items()
        },
        "processes_serving": len(batches),  # server processes that had sessions in this row
        "batch_busy": busy,
        "step_backend": next((b.get("backend") for b in batches.values()), None),
        "cpu_sessions": sessions,
        "cpu_batch": batch_cpu,
        "cpu_other": other,
        "client_cpu": client_cpu,  # the driver's own share of a core
        "send_late_ms_p99": _pct(late, 99),
        "wall_s": wall,
        "errors": [r.error for r in runs if r.error],
    }


# ---------------------------------------------------------------- the benchmark


def run_serve_bench(
    streams: Sequence[int],
    *,
    checkpoint: Path,
    seconds: float = 10.0,
    sample_rate: int = 48000,
    threads: int = 1,
    device: str = "cpu",
    vocoder: Path | None = None,
    config: Path | None = None,
    block: int | None = None,
    batch: bool = True,
    batch_wait_ms: float | None = None,
    backend: str | None = None,
    processes: int | str = "auto",
    stop_at_failure: bool = True,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Start one server, measure each N of ``streams`` for ``seconds`` of audio per client (in
    the order given; after the first N that does not hold real time, no more when
    ``stop_at_failure``), stop the server; the result has one row per N measured and
    :func:`realtime_streams`. ``batch``: the server's ``--batch on`` (else ``off``);
    ``batch_wait_ms``: its ``--batch-wait`` (None: the server's default); ``backend``: its
    ``--backend`` (None: its config's); ``processes``: its ``--processes`` (``auto``: its
    rule for ``max(streams)``)."""
    from comostream.bench.latency import example_signal
    from comostream.realtime.geometry import INPUT_RATES
    from comostream.realtime.heap import settle_heap

    if not streams or min(streams) < 1:
        raise ValueError("streams: at least one N, each >= 1")
    if sample_rate not in INPUT_RATES:
        raise ValueError(f"sample rate {sample_rate} Hz: use one of {sorted(INPUT_RATES)}")
    x = example_signal(seconds, sample_rate)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # a busy machine shows
    mode = "batched" if batch else "one engine per session"
    if backend == "inductor":
        mode += ", inductor: the server compiles its step for each batch size first (minutes)"
    progress(f"starting comostream serve ({checkpoint}, {threads} thread(s), {device}, {mode})")
    rows: list[dict[str, Any]] = []
    ready: dict[str, Any] = {}
    with serve_process(
        checkpoint,
        max_streams=max(streams),
        threads=threads,
        device=device,
        vocoder=vocoder,
        config=config,
        block=block,
        batch=batch,
        batch_wait_ms=batch_wait_ms,
        backend=backend,
        processes=processes,
        # Inductor compiles each bucket at start-up: about 30 s each, more on a busy machine
        start_timeout_s=START_TIMEOUT_S + (600.0 if backend == "inductor" else 0.0),
    ) as server:
        progress(f"server at {server.url} (pid {server.pid})")
        settle_heap()  # the clients' process: no 100 ms garbage collection mid-measurement
        for n in streams:
            progress(f"{n} stream(s) for {seconds:g} s")
            bound = seconds + 2 * DRAIN_TIMEOUT_S + 30.0 + n  # connect, stream, drain, close
            before = _batch_before(rows)
            row, ready = asyncio.run(
                asyncio.wait_for(_measure(server, n, x, sample_rate, before), bound)
            )
            block_ms = 1000.0 * int(ready["block"]) / sample_rate
            row["realtime"] = row_holds(row, block_ms)
            if _late_only(row):  # nothing lost, one round trip late: a hiccup, or the limit?
                progress(_row_text(row))
                progress(f"{n} stream(s): nothing dropped but a late p99; measuring once more")
                first = row
                row, ready = asyncio.run(
                    asyncio.wait_for(
                        _measure(server, n, x, sample_rate, _batch_before(rows, first)),
                        bound,
                    )
                )
                row["realtime"] = row_holds(row, block_ms)
                row["first_try_rtt_ms_p99"] = first["rtt_ms_p99"]
            rows.append(row)
            progress(_row_text(row))
            if stop_at_failure and not row["realtime"] and n != streams[-1]:
                progress(f"{n} stream(s) do not hold real time: stopping here")
                break
    block_samples = int(ready["block"])
    block_ms = 1000.0 * block_samples / sample_rate
    return {
        "checkpoint": str(checkpoint),
        "server": "subprocess",
        "threads": threads,
        "batch": batch,
        "batch_wait_ms": batch_wait_ms,
        "processes": server.processes,  # server processes it ran (auto resolved)
        "backend": backend,  # None: the server's (its config's) backend
        # what ran the batched steps (auto resolved), as the server's stats said
        "step_backend": next((r["step_backend"] for r in rows if r.get("step_backend")), None),
        "device": device,
        "cpu_count": os.cpu_count(),
        "load_avg_1min_before": load,
        "sample_rate": sample_rate,
        "block_samples": block_samples,
        "block_ms": block_ms,
        "latency_ms": float(ready["latency_ms"]),
        "seconds": seconds,
        "rows": rows,
        "realtime_streams": realtime_streams(rows, block_ms),
    }


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _row_text(row: dict[str, Any]) -> str:
    return (
        f"{row['streams']} stream(s): dropped {row['dropped_samples']} samples, round trip p50 "
        f"{_num(row['rtt_ms_p50'], '.1f')} ms p99 {_num(row['rtt_ms_p99'], '.1f')} ms, server "
        f"CPU {_num(row['server_cpu'], '.2f')} cores"
        + (
            f", batch {row['batch_mean']:.1f} streams/step of {row['step_ms_p50']:.1f} ms p50"
            if row.get("batch_mean") is not None
            else ""
        )
        + (
            f" (sessions {row['cpu_sessions']:.2f}, "
            + ("" if row["cpu_batch"] is None else f"batch {row['cpu_batch']:.2f}, ")
            + f"other {row['cpu_other']:.2f})"
            + ("" if row.get("batch_busy") is None else f", scheduler busy {row['batch_busy']:.2f}")
            if row.get("cpu_other") is not None
            else ""
        )
        + (f", {len(row['errors'])} client error(s)" if row["errors"] else "")
    )


def format_serve_table(r: dict[str, Any]) -> str:
    """The result as a text table."""
    lines = [
        f"server: {r['checkpoint']} ({r['server']}, "
        + (f"{r['processes']} processes, " if r.get("processes", 1) > 1 else "")
        + f"{r['threads']} thread(s), {r['device']}, "
        f"{'batched' if r.get('batch', True) else 'one engine per session'}"
        + (f" on {r['step_backend']}" if r.get("step_backend") else "")
        + ", "
        f"{r['cpu_count']} CPUs, load {_num(r.get('load_avg_1min_before'), '.1f')} before); "
        f"{r['sample_rate']} Hz, block {r['block_samples']} samples "
        f"= {r['block_ms']:.1f} ms, algorithmic latency {r['latency_ms']:.1f} ms; "
        f"{r['seconds']:g} s per stream",
        f"{'N':>4} {'dropped':>9} {'max/client':>10} {'rtt p50':>8} {'rtt p99':>8} "
        f"{'compute p99':>11} {'CPU/stream':>10} {'server CPU':>10} {'driver CPU':>10} "
        f"{'batch':>5} {'step p50':>8} {'real time':>9}",
    ]
    for row in r["rows"]:
        per = row["server_cpu_per_stream"]
        lines.append(
            f"{row['streams']:>4} {row['dropped_samples']:>9} {row['dropped_samples_max']:>10} "
            f"{_num(row['rtt_ms_p50'], '8.1f')} {_num(row['rtt_ms_p99'], '8.1f')} "
            f"{_num(row['compute_ms_p99'], '11.1f')} "
            f"{_num(None if per is None else 100 * per, '9.0f')}% "
            f"{_num(row['server_cpu'], '10.2f')} {row['client_cpu']:10.2f} "
            f"{_num(row.get('batch_mean'), '.1f'):>5} {_num(row.get('step_ms_p50'), '.1f'):>8} "
            f"{'yes' if row['realtime'] else 'no':>9}"
        )
        lines += [f"     error: {e}" for e in row["errors"][:3]]
    lines.append(
        f"real-time streams (no drops, round trip p99 < {r['block_ms']:.1f} ms): "
        f"{r['realtime_streams']}"
    )
    return "\n".join(lines)
