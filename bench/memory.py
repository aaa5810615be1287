"""`comostream bench memory`: peak memory of `comostream convert` against the file's length.

For each length a sung-like file (a gliding harmonic tone with syllable gaps and a breath of
noise, 44.1 kHz mono 16-bit) is generated piece by piece into a temporary folder and converted
offline by ``python -m comostream convert`` in a child process of its own; the child's peak
resident set size comes from ``os.wait4`` (the kernel's ``ru_maxrss`` of that one child), so
each figure is its conversion's alone. Memory that grows with the length shows as a growing
peak; bounded memory as a flat one.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

__all__ = ["format_memory_table", "peak_rss_of", "run_memory_bench", "write_sung_file"]

RATE = 44100  # Hz: the generated files' rate (resampled by the engine, as most files are)
PIECE_S = 10.0  # seconds generated at a time


def write_sung_file(path: Path, seconds: float, rate: int = RATE) -> Path:
    """Write ``seconds`` of a sung-like signal to ``path`` (16-bit WAV) in 10 s pieces."""
    total = int(round(seconds * rate))
    rng = np.random.default_rng(0)
    phase = 0.0
    with sf.SoundFile(str(path), "w", rate, 1, "PCM_16", format="WAV") as f:
        for start in range(0, total, int(PIECE_S * rate)):
            n = min(int(PIECE_S * rate), total - start)
            t = (start + np.arange(n)) / rate
            f0 = 220.0 * 2 ** (0.5 * np.sin(2 * np.pi * 0.3 * t) + 0.02 * np.sin(2 * np.pi * 5 * t))
            ph = phase + 2 * np.pi * np.cumsum(f0) / rate
            phase = float(ph[-1] % (2 * np.pi))
            x = sum(np.sin(k * ph) / k for k in range(1, 8)) * 0.2
            x *= (np.sin(2 * np.pi * 0.7 * t) > -0.8).astype(np.float64)  # syllable gaps
            x += rng.standard_normal(n) * 0.003
            f.write(x.astype(np.float32))
    return path


def peak_rss_of(command: Sequence[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``command`` as a child; its exit status, wall seconds, peak RSS (bytes, the child's
    own ``ru_maxrss``) and the tail of its output."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        tail = log.read().decode(errors="replace")[-2000:]
    return {
        "rc": proc.returncode,
        "seconds": time.perf_counter() - t0,
        "peak_rss_bytes": int(usage.ru_maxrss) * 1024,  # Linux: kilobytes
        "output": tail,
    }


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def run_memory_bench(
    minutes: Sequence[float],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    threads: int = 1,
    block: int | None = None,
    workdir: str | os.PathLike[str] | None = None,
    config: str | os.PathLike[str] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Convert a generated file of each of ``minutes`` in a child process; peak RSS of each.

    ``checkpoint``: the model (default: the shipped one); ``threads``: torch threads of the
    child (OMP_NUM_THREADS too); ``block``: convert on the live schedule instead of offline;
    ``workdir``: where the files go (default: a temporary folder, removed after); ``config``
    and ``device``: given to each conversion.
    """
    rows = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        for m in minutes:
            wav = write_sung_file(Path(tmp) / f"in_{m:g}min.wav", 60.0 * m)
            out = Path(tmp) / f"out_{m:g}min.wav"
            cmd = [sys.executable, "-m", "comostream", "convert", str(wav), "-o", str(out)]
            cmd += ["--threads", str(threads), "--device", device]
            if config is not None:
                cmd += ["--config", str(config)]
            if checkpoint is not None:
                cmd += ["--checkpoint", str(checkpoint)]
            if block is not None:
                cmd += ["--block", str(block)]
            r = peak_rss_of(cmd, env)
            if r["rc"] != 0:
                raise RuntimeError(f"convert of {m:g} min failed (rc {r['rc']}): {r['output']}")
            written = sf.info(str(out)).frames / RATE
            wav.unlink()
            out.unlink()
            rows.append(
                {
                    "minutes": float(m),
                    "peak_rss_mb": r["peak_rss_bytes"] / 2**20,
                    "seconds": r["seconds"],
                    "rtf": r["seconds"] / (60.0 * m),
                    "written_s": written,
                }
            )
    return {
        "machine": _machine(),
        "threads": threads,
        "mode": "offline" if block is None else f"block {block}",
        "checkpoint": str(checkpoint) if checkpoint else "shipped",
        "rows": rows,
    }


def format_memory_table(result: dict[str, Any]) -> str:
    """The result as a Markdown table."""
    lines = [
        f"convert ({result['mode']}, {result['threads']} thread(s), model {result['checkpoint']})"
        f" on {result['machine']}",
        "",
        "| file | peak RSS | wall time (incl. start) | RTF |",
        "|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['minutes']:g} min | {r['peak_rss_mb']:.0f} MB | {r['seconds']:.1f} s | "
            f"{r['rtf']:.3f} |"
        )
    return "\n".join(lines)
