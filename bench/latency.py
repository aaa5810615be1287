"""`comostream bench latency`: what the streaming engine costs and how late it is.

Measured in one run on the same models:

* ``algorithmic_latency_ms``: the engine's computed latency (block + window overhang +
  lookaheads + resampling), and ``e2e_latency_ms``: an onset sent through the engine paced by a
  simulated real-time clock (block ``k`` arrives at ``(k + 1)`` block durations, is processed
  when the previous one is done, for as long as it really takes) and found in the output;
* per-chunk compute p50/p99 per stage (resample, features, f0, content, acoustic, vocoder) and
  in total, and ``rtf`` = compute time / audio time;
* ``teacher_ms`` vs ``onestep_ms``: the teacher's N-step Heun sampler vs the one-step target on
  one second of conditioning (same backbone size), per second of audio;
* ``window_recompute_rtf``: the field's usual realtime strategy with the same models (re-run
  features and every model on 2.5 s of left context + a 250 ms block, every 250 ms);
* ``backends``: RTF, per-chunk compute and the model step alone with each step backend (torch's
  traced step, the ONNX Runtime step, the inductor-compiled step; ``--backends`` picks), side
  by side on the same stream; ``faster_backend``: the one with the lower median chunk;
* with ``--sweep 1,2,4,8``, ``block_sweep``: latency, RTF and the window-recompute ratio at
  each block size, with ``matmul_frame_cost_x``: what one frame of the backbone's largest
  matrix product costs at that block relative to a 2.75 s batch. The window strategy re-runs
  every frame 11 times in big batches; a block of ``b`` frames runs it once at
  ``matmul_frame_cost_x`` times the batch price, so ``11 / matmul_frame_cost_x`` bounds the
  ratio at that block whatever the dispatch overhead.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from comostream.models.acoustic import AcousticModel, build_denoiser
from comostream.models.audio import load_audio
from comostream.models.config import STEP_BACKENDS, AudioConfig, Config, RealtimeConfig
from comostream.models.f0_yin import yin_f0
from comostream.models.loudness import Loudness
from comostream.models.mel import MelSpectrogram
from comostream.models.samplers import consistency_onestep, heun_sampler, sampling_sigmas
from comostream.models.shipped import example_file
from comostream.models.vocoder import Vocoder
from comostream.realtime.engine import StreamingConverter
from comostream.realtime.geometry import StreamGeometry
from comostream.realtime.resample import resample_oneshot

__all__ = [
    "build_bench_models",
    "format_latency_table",
    "latency_pace_warning",
    "measure_ws_overhead",
    "plot_latency",
    "run_latency_bench",
]

STAGES = ("resample", "features", "f0", "content", "acoustic", "vocoder")
WINDOW_CONTEXT_S = 2.5  # the field's usual realtime settings (RVC / so-vits-svc GUIs)
WINDOW_BLOCK_S = 0.25
RANDOM_WEIGHTS = "random weights of the configured sizes (no --checkpoint)"


def example_signal(seconds: float, sample_rate: int) -> np.ndarray:
    """The bundled sung example, looped to ``seconds``, at ``sample_rate`` (float32 mono)."""
    path = example_file("alto_line2.wav")
    model_rate = AudioConfig().sample_rate
    x = load_audio(str(path), model_rate)
    reps = int(np.ceil(seconds * model_rate / len(x)))
    x = np.tile(x, reps)[: int(seconds * model_rate)]
    return (
        x
        if sample_rate == model_rate
        else resample_oneshot(x, model_rate, sample_rate, aligned=True)
    )


def build_bench_models(
    cfg: Config, checkpoint: Path | None, vocoder: Path | None, device: str
) -> tuple[AcousticModel, nn.Module, str]:
    """Models from an inference file (and vocoder), or random weights of ``cfg``'s sizes (the
    source then reads :data:`RANDOM_WEIGHTS`)."""
    if checkpoint is not None:
        from comostream.realtime.load import load_models

        model, voc = load_models(checkpoint, vocoder, device, cfg.realtime)
        return model, voc, str(checkpoint)
    torch.manual_seed(0)
    model = AcousticModel(cfg, ["singer_a", "singer_b"], cfg.content).to(device).eval()
    voc = Vocoder(cfg.vocoder, cfg.audio).to(device).eval()
    return model, voc, RANDOM_WEIGHTS


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q)) if len(values) else 0.0


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str, repeats: int = 3) -> float:
    """Best-of-``repeats`` wall time of ``fn`` in seconds (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


ONSET_BELOW_LOUD_DB = 20.0  # the onset threshold, at most this far below the loud part


def _onset(x: np.ndarray, sr: int, after: int = 0) -> int | None:
    """First sample at or after ``after`` where the trailing 5 ms RMS envelope crosses the onset
    threshold: half-way (in dB) from the quiet start to the loud part, but no lower than
    :data:`ONSET_BELOW_LOUD_DB` under the loud part (a trained model's output is near-silent
    before the onset, -100 dB, and rises over a few ms: a half-way mark from such a floor
    would fire on its first whisper). Sample resolution; None if the contrast is under 10 dB.
    ``after``: a causal system's output cannot start before its input did, so a click of the
    model's start-up before that is not the onset."""
    win = max(1, int(0.005 * sr))
    energy = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
    rms = np.sqrt((energy[win:] - energy[:-win]) / win + 1e-12)  # window ending at sample i
    db = 20 * np.log10(rms)
    quiet, loud = np.median(db[: max(1, len(db) // 8)]), np.percentile(db, 95)
    if loud - quiet < 10.0:
        return None
    threshold = max(0.5 * (quiet + loud), loud - ONSET_BELOW_LOUD_DB)
    above = np.flatnonzero(db[max(0, after - win + 1) :] > threshold)
    return int(above[0] + max(0, after - win + 1) + win - 1) if above.size else None


def _paced_e2e(engine: StreamingConverter, sr: int) -> tuple[float, float] | None:
    """``(end-to-end latency, processing lag)`` in ms of an onset through ``engine`` on a
    simulated real-time clock; the lag is how long after its arrival the chunk that brought the
    onset out was ready (its compute plus any queueing). None if no onset is found."""
    signal = example_signal(1.5, sr)
    lead = int(0.6 * sr)
    start = _onset(signal, sr) or 0
    x = np.concatenate([np.zeros(lead, np.float32), signal[start:]])
    onset_in = _onset(x, sr)
    chunk = engine.chunk or engine.block_samples
    engine.reset()
    outs, ready, clock = [], [], 0.0
    for k in range(len(x) // chunk):
        arrival = (k + 1) * chunk / sr
        t0 = time.perf_counter()
        outs.append(engine.push(x[k * chunk : (k + 1) * chunk]))
        compute = time.perf_counter() - t0
        clock = max(clock, arrival) + compute
        ready.append(clock)
    y = np.concatenate(outs)
    if onset_in is None:
        return None
    onset_out = _onset(y, sr, after=onset_in)
    if onset_out is None:
        return None
    k = onset_out // chunk
    played = ready[k] + (onset_out - k * chunk) / sr
    return 1000.0 * (played - onset_in / sr), 1000.0 * (ready[k] - (k + 1) * chunk / sr)


def _window_recompute_rtf(model: AcousticModel, vocoder: nn.Module, device: str) -> float:
    """Compute per second of audio of re-running everything on 2.5 s context + 250 ms blocks."""
    cfg = model.cfg
    rate = cfg.audio.sample_rate
    n = int((WINDOW_CONTEXT_S + WINDOW_BLOCK_S) * rate)
    audio = example_signal(WINDOW_CONTEXT_S + WINDOW_BLOCK_S, rate)[:n]
    mel_fn, loud_fn = MelSpectrogram(cfg.audio).to(device), Loudness(cfg.audio).to(device)
    noise = None

    def once() -> None:
        nonlocal noise
        with torch.inference_mode():
            x = torch.from_numpy(audio).to(device).unsqueeze(0)
            mel, loud = mel_fn(x), loud_fn(x)
            track = yin_f0(audio, cfg.f0)
            f0 = torch.from_numpy(track.f0_hz).to(device).unsqueeze(0)
            voiced = torch.from_numpy(track.voiced).to(device).unsqueeze(0)
            feats = {"f0": f0, "voiced": voiced, "loudness": loud}
            if model.content_encoder is not None:
                feats["content"] = model.content_encoder(mel)
            if noise is None:
                noise = torch.randn(1, cfg.audio.n_mels, mel.shape[-1], device=device)
            out = model.generate(feats, model.speakers[0], noise)
            if isinstance(vocoder, Vocoder):
                vocoder(out, f0 * voiced)
            else:
                vocoder.model(out)  # a windowed external vocoder: its generator

    return _timed(once, device) / WINDOW_BLOCK_S


def _teacher_vs_onestep(model: AcousticModel, device: str) -> dict[str, float]:
    cfg = model.cfg
    torch.manual_seed(1)
    teacher = build_denoiser(cfg, consistency=False).to(device).eval()
    frames = round(StreamGeometry.from_configs(cfg.audio).frame_rate)  # one second
    cond = torch.randn(1, cfg.model.cond_channels, frames, device=device)
    noise = torch.randn(1, cfg.audio.n_mels, frames, device=device)
    sigmas = sampling_sigmas(cfg.edm)
    with torch.inference_mode():
        one = _timed(
            lambda: consistency_onestep(model.target, noise, cond, cfg.edm.sigma_max), device
        )
        many = _timed(lambda: heun_sampler(teacher, noise, cond, sigmas), device, repeats=1)
    seconds = frames * cfg.audio.hop_length / cfg.audio.sample_rate
    return {
        "teacher_steps": cfg.edm.teacher_steps,
        "teacher_ms": 1000 * many / seconds,
        "onestep_ms": 1000 * one / seconds,
        "onestep_speedup": many / one,
    }


def _stream(
    engine: StreamingConverter, x: np.ndarray, sample_rate: int
) -> tuple[list[float], dict[str, list[float]]]:
    """Push ``x`` in block-sized chunks; per-chunk wall times and stage times (the first 0.5 s,
    numba compilation and allocator warm-up, not counted)."""
    chunk = engine.chunk or engine.block_samples
    warm = int(0.5 * sample_rate) // chunk
    totals: list[float] = []
    for k in range(len(x) // chunk):
        if k == warm:
            engine.stats.stage_times.clear()
            totals.clear()
        t0 = time.perf_counter()
        engine.push(x[k * chunk : (k + 1) * chunk])
        totals.append(time.perf_counter() - t0)
    return totals, dict(engine.stats.stage_times)


def matmul_frame_cost(
    model: AcousticModel, frames: int, device: str, batch_frames: int = 258
) -> float:
    """How many times more one frame costs in a product of the backbone's largest weight matrix
    with ``frames`` frames than with ``batch_frames`` (the window strategy's ~2.75 s): the
    small-block penalty of matrix products, which no dispatch saving removes."""
    weight = max((p for p in model.target.parameters() if p.dim() >= 2), key=lambda p: p.numel())
    w = weight.detach().reshape(weight.shape[0], -1).to(device)

    def per_frame(n: int) -> float:
        x = torch.randn(n, w.shape[1], device=device)
        with torch.inference_mode():
            return _timed(lambda: [x @ w.t() for _ in range(50)], device, repeats=5) / (50 * n)

    return per_frame(frames) / per_frame(batch_frames)


def block_sweep(
    model: AcousticModel,
    vocoder: nn.Module,
    blocks: Sequence[int],
    *,
    realtime: RealtimeConfig,
    window_rtf: float,
    device: str = "cpu",
    sample_rate: int = 48000,
    seconds: float = 4.0,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Latency, RTF and the window-recompute ratio at each block size (frames) of ``blocks``;
    ``progress`` is told of each block size before it is measured."""
    x = example_signal(seconds + 0.5, sample_rate)
    rows = []
    for i, b in enumerate(blocks):
        if progress is not None:
            progress(f"block sweep: {b} frames ({i + 1} of {len(blocks)})")
        rt = realtime.with_block(int(b))
        chunk = StreamGeometry.from_configs(model.cfg.audio, rt).samples_per_block(sample_rate)
        eng = StreamingConverter.from_models(
            model, vocoder, sample_rate=sample_rate, realtime=rt, chunk=chunk
        )
        totals, _ = _stream(eng, x, sample_rate)
        rtf = float(sum(totals) / (len(totals) * chunk / sample_rate))
        rows.append(
            {
                "block_frames": int(b),
                "block_ms": eng.block_ms,
                "algorithmic_latency_ms": eng.latency_ms,
                "rtf": rtf,
                "chunk_ms_p99": _pct(totals, 99),
                "window_vs_streaming": window_rtf / rtf,
                "matmul_frame_cost_x": matmul_frame_cost(model, int(b), device),
            }
        )
    return rows


def _backend_row(totals: list[float], times: dict[str, list[float]], chunk_s: float) -> dict:
    return {
        "rtf": float(sum(totals) / (len(totals) * chunk_s)) if totals else None,
        "chunk_ms_p50": _pct(totals, 50),
        "chunk_ms_p99": _pct(totals, 99),
        "step_ms_p50": _pct(times.get("model", []), 50),
        "step_ms_p99": _pct(times.get("model", []), 99),
    }


def backend_compare(
    model: AcousticModel,
    vocoder: nn.Module,
    x: np.ndarray,
    *,
    realtime: RealtimeConfig,
    sample_rate: int,
    done: dict[str, dict[str, Any]] | None = None,
    backends: Sequence[str] = STEP_BACKENDS,
) -> dict[str, dict[str, Any]]:
    """Per step backend of ``backends`` and ``done`` (in the order of
    :data:`~comostream.models.config.STEP_BACKENDS`): ``rtf``, chunk and model-step p50/p99 ms
    streaming ``x``, or ``error`` (not installed, not exportable). ``done``: rows already
    measured (the main run's backend)."""
    rows = dict(done or {})
    chunk = StreamGeometry.from_configs(model.cfg.audio, realtime).samples_per_block(sample_rate)
    for backend in backends:
        if backend in rows:
            continue
        rt = dataclasses.replace(realtime, backend=backend)
        try:
            eng = StreamingConverter.from_models(
                model, vocoder, sample_rate=sample_rate, realtime=rt, profile=True, chunk=chunk
            )
        except (ImportError, RuntimeError) as exc:  # OnnxBackendError: missing extra, window mode
            rows[backend] = {"error": str(exc)}
            continue
        totals, times = _stream(eng, x, sample_rate)
        rows[backend] = _backend_row(totals, times, chunk / sample_rate)
    return {b: rows[b] for b in STEP_BACKENDS if b in rows}


def run_latency_bench(
    model: AcousticModel,
    vocoder: nn.Module,
    *,
    realtime: RealtimeConfig,
    device: str = "cpu",
    sample_rate: int = 48000,
    seconds: float = 8.0,
    source: str = "",
    sweep: Sequence[int] = (),
    backends: Sequence[str] = STEP_BACKENDS,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every measurement (see the module docstring); a JSON-able dict. ``backends``: the
    step backends measured beside ``realtime.backend`` (the result's ``backends``).
    ``progress`` (e.g. a status line on stderr) is told what is measured next, step by step."""
    steps = 7 if sweep else 6

    def step(k: int, what: str) -> None:
        if progress is not None:
            progress(f"[{k}/{steps}] {what}")

    chunk = StreamGeometry.from_configs(model.cfg.audio, realtime).samples_per_block(sample_rate)
    engine = StreamingConverter.from_models(
        model, vocoder, sample_rate=sample_rate, realtime=realtime, profile=True, chunk=chunk
    )
    x = example_signal(seconds + 0.5, sample_rate)
    step(1, f"streaming {seconds + 0.5:g} s of the example through the engine")
    totals, times = _stream(engine, x, sample_rate)
    # before more runs
    mine = {realtime.engine_backend: _backend_row(totals, times, chunk / sample_rate)}
    # the traced step runs content, acoustic model and vocoder as one graph: split it eagerly
    eager = StreamingConverter.from_models(
        model,
        vocoder,
        sample_rate=sample_rate,
        realtime=dataclasses.replace(realtime, backend="torch"),
        profile=True,
        trace=False,
        chunk=chunk,
    )
    step(2, "timing content, acoustic model and vocoder apart (eager)")
    _, eager_times = _stream(eager, x[: len(x) // 3 + sample_rate // 2], sample_rate)
    for name in ("content", "acoustic", "vocoder"):
        times[name] = eager_times.get(name, [])
    stages = {
        s: {"p50": _pct(times.get(s, []), 50), "p99": _pct(times.get(s, []), 99)}
        for s in (*STAGES, "model")
    }
    audio_s = len(totals) * chunk / sample_rate
    rtf = float(sum(totals) / audio_s)
    step(3, "end-to-end latency of an onset on a simulated real-time clock")
    paced = _paced_e2e(engine, sample_rate)
    e2e = None if paced is None else paced[0]
    step(4, "window recompute: 2.5 s of context per 250 ms block")
    window_rtf = _window_recompute_rtf(model, vocoder, device)
    step(5, f"teacher ({model.cfg.edm.teacher_steps} Heun steps) vs the one-step target")
    teacher = _teacher_vs_onestep(model, device)
    others = ", ".join(b for b in backends if b != realtime.engine_backend) or "none asked"
    step(6, f"the same stream with the other step backends ({others})")
    compared = backend_compare(
        model, vocoder, x, realtime=realtime, sample_rate=sample_rate, done=mine, backends=backends
    )
    # the lower median chunk: a shared machine's stalls move the mean (RTF) far more
    measured = {b: r["chunk_ms_p50"] for b, r in compared.items() if r.get("rtf") is not None}
    result: dict[str, Any] = {
        "algorithmic_latency_ms": engine.latency_ms,
        "stream_delay_ms": engine.delay_ms,
        "block_ms": engine.block_ms,
        "block_frames": realtime.block_frames,
        "chunk_samples": chunk,
        "sample_rate": sample_rate,
        "chunk_ms_p50": _pct(totals, 50),
        "chunk_ms_p99": _pct(totals, 99),
        "chunk_ms_max": _pct(totals, 100),
        "stages": stages,
        "rtf": rtf,
        "e2e_latency_ms": e2e,
        **teacher,
        "window_recompute_rtf": window_rtf,
        "window_vs_streaming": window_rtf / rtf,
        **_index_compute(model, realtime.block_frames, device),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "threads": torch.get_num_threads(),
        "model": source,
        "traced": engine.step_module is not eager.step_module,
        "backend": realtime.engine_backend,
        "backends": compared,
        "faster_backend": min(measured, key=measured.__getitem__),
        "lookahead_frames": engine.lookahead_frames,
        "chunks": len(totals),
        "chunk_ms_all": [1000.0 * t for t in totals],
    }
    if sweep:
        step(7, f"block sweep over {', '.join(str(b) for b in sweep)} frames")
        result["block_sweep"] = block_sweep(
            model,
            vocoder,
            sweep,
            realtime=realtime,
            window_rtf=window_rtf,
            device=device,
            sample_rate=sample_rate,
            seconds=min(seconds, 4.0),
            progress=progress,
        )
    return result


def measure_ws_overhead(
    model: AcousticModel,
    vocoder: nn.Module,
    *,
    realtime: RealtimeConfig,
    sample_rate: int = 48000,
    seconds: float = 5.0,
) -> dict[str, float]:
    """The WebSocket round trip on loopback: a ``serve`` server (own thread) and the ``client``
    streaming the example at real-time pace, one block in flight (so no block waits behind
    another's compute). A reply leaves as soon as its block is converted (the algorithmic
    latency is inside the samples, not in the round trip), so ``ws_overhead_ms`` = the median
    over blocks of round trip minus that block's compute on the server: framing, loopback,
    thread hops."""
    import asyncio

    from comostream.realtime.serve.client import stream_array
    from comostream.realtime.serve.config import ServerConfig
    from comostream.realtime.serve.engines import EngineFactory
    from comostream.realtime.serve.server import ServerThread

    x = example_signal(seconds, sample_rate)
    with ServerThread(EngineFactory(model, vocoder, realtime), ServerConfig(port=0)) as st:
        r = asyncio.run(stream_array(st.url, x, sample_rate, window=1))
    compute_ms = dict(r.stats["compute_ms_by_seq"])
    overhead = [ms - compute_ms[seq] for seq, ms in r.rtt_ms.items() if seq in compute_ms]
    rtt, compute = r.rtt_percentile(50), float(r.stats["compute_ms_p50"])
    return {
        "ws_overhead_ms": float(np.median(overhead)),
        "ws_rtt_ms_p50": rtt,
        "ws_rtt_ms_p99": r.rtt_percentile(99),
        "ws_compute_ms_p50": compute,
        "ws_dropped_samples": r.dropped_samples,
    }


def latency_pace_warning(r: dict[str, Any]) -> str:
    """:func:`~comostream.realtime.pace.pace_warning` of a result: its RTF, the blocks the
    loopback server dropped (with ``--ws``), its threads and block; ``""`` when it keeps up."""
    from comostream.realtime.pace import pace_warning

    chunk = max(1, int(r.get("chunk_samples") or 1))
    dropped = -(-int(r.get("ws_dropped_samples") or 0) // chunk)  # samples -> blocks, rounded up
    return pace_warning(r.get("rtf"), dropped, r.get("threads"), r.get("block_frames"))


def _index_compute(model: Any, frames: int, device: str, reps: int = 50) -> dict[str, Any]:
    """The retrieval index's compute per block (one stream, ``frames`` frames): the model's
    own banks, or a random bank of :data:`~comostream.models.retrieval.INDEX_SIZE` rows for a
    model without one (what an added voice brings). Added latency: none (frame-local)."""
    from comostream.models.retrieval import INDEX_SIZE, RetrievalIndex

    dim = int(model.cfg.model.content_dim)
    if dim == 0:
        return {"index_ms_p50": None, "index_rows": 0}
    index = model.retrieval
    if index is None:
        g = torch.Generator().manual_seed(0)
        index = RetrievalIndex(["x"], {"x": torch.randn(INDEX_SIZE, dim, generator=g)}, dim)
    index = index.to(device)
    n = len(index.names)
    content = torch.randn(1, dim, frames, device=device)
    weights, rate = torch.full((1, n), 1.0 / n, device=device), torch.ones(1, 1, device=device)
    times = []
    with torch.inference_mode():
        for _ in range(reps + 5):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            index(content, weights, rate)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return {"index_ms_p50": _pct(times[5:], 50), "index_rows": sum(index.sizes().values())}


def format_latency_table(r: dict[str, Any]) -> str:
    """A table for humans of :func:`run_latency_bench`'s result."""
    lines = [
        f"model: {r['model']}  device: {r['device']}  threads: {r['threads']}  "
        f"input: {r['sample_rate']} Hz",
        f"block: {r['block_frames']} frames = {r['block_ms']:.2f} ms "
        f"({r['chunk_samples']} samples per chunk)",
        "",
        "| stage | p50 ms | p99 ms |",
        "|---|---:|---:|",
    ]
    for name, v in r["stages"].items():
        lines.append(f"| {name} | {v['p50']:.2f} | {v['p99']:.2f} |")
    lines.append(f"| **chunk total** | {r['chunk_ms_p50']:.2f} | {r['chunk_ms_p99']:.2f} |")
    lines.append("(model = content + acoustic + vocoder as run; their split is timed eagerly)")
    if r.get("index_ms_p50") is not None:
        lines.append(
            f"retrieval index ({r['index_rows']} rows, one stream, one block): "
            f"{r['index_ms_p50']:.3f} ms per block, no added latency"
        )
    e2e = "n/a (no clear onset)" if r["e2e_latency_ms"] is None else f"{r['e2e_latency_ms']:.1f} ms"
    lines += [
        "",
        f"algorithmic latency: {r['algorithmic_latency_ms']:.1f} ms   measured end-to-end: {e2e}",
        "(end-to-end: a sung onset in, its converted onset out, on a simulated real-time clock "
        "with each chunk's real compute; sound card buffers not included)",
        f"RTF (compute / audio): {r['rtf']:.3f}   p99 chunk {r['chunk_ms_p99']:.2f} ms vs block "
        f"{r['block_ms']:.2f} ms",
        f"teacher ({r['teacher_steps']} Heun steps): {r['teacher_ms']:.1f} ms per s of audio; "
        f"one-step target: {r['onestep_ms']:.2f} ms per s ({r['onestep_speedup']:.0f}x)",
        f"window recompute (2.5 s context per 250 ms block): RTF {r['window_recompute_rtf']:.3f}"
        f" = {r['window_vs_streaming']:.1f}x the streaming engine",
    ]
    if r.get("backends"):
        lines += [
            "",
            f"| step backend | RTF | p50 chunk ms | p99 chunk ms | p50 step ms | p99 step ms |"
            f"  (main run: {r['backend']})",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, row in r["backends"].items():
            if "error" in row:
                lines.append(f"| {name} | n/a: {row['error']} | | | | |")
                continue
            lines.append(
                f"| {name} | {row['rtf']:.3f} | {row['chunk_ms_p50']:.2f} | "
                f"{row['chunk_ms_p99']:.2f} | {row['step_ms_p50']:.2f} | {row['step_ms_p99']:.2f} |"
            )
    if r.get("block_sweep"):
        lines += [
            "",
            "| block (frames) | algorithmic ms | RTF | p99 chunk ms | window recompute"
            " / streaming | matmul cost per frame vs 2.75 s batch |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for row in r["block_sweep"]:
            lines.append(
                f"| {row['block_frames']} | {row['algorithmic_latency_ms']:.1f} | "
                f"{row['rtf']:.3f} | {row['chunk_ms_p99']:.2f} | "
                f"{row['window_vs_streaming']:.1f}x | {row['matmul_frame_cost_x']:.1f}x |"
            )
    if "ws_overhead_ms" in r:
        lines.append(
            f"WebSocket (loopback): round trip p50 {r['ws_rtt_ms_p50']:.2f} ms, p99 "
            f"{r['ws_rtt_ms_p99']:.2f} ms; overhead over compute "
            f"{r['ws_overhead_ms']:.2f} ms"
        )
    if r.get("pace_warning"):
        lines += ["", f"warning: {r['pace_warning']}"]
    return "\n".join(lines)


def plot_latency(r: dict[str, Any], path: Path) -> Path:
    """A timeline of per-chunk compute against the block duration (the deadline), on a log
    axis, with the distribution beside it, as a small PNG (needs matplotlib)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    from comostream.realtime.files.demo_plot import pyplot, save_png

    plt = pyplot()
    ms = np.asarray(r["chunk_ms_all"], dtype=np.float64)
    block, p99 = float(r["block_ms"]), float(r["chunk_ms_p99"])
    t = np.arange(len(ms)) * block / 1000.0  # chunk k arrives at k blocks
    fig, (ax, side) = plt.subplots(
        1, 2, figsize=(8, 3.6), sharey=True, gridspec_kw={"width_ratios": (5, 1), "wspace": 0.04}
    )
    late = ms > block
    ax.vlines(t, 0, ms, color="#4477aa", lw=0.8)
    ax.plot(t[late], ms[late], "o", ms=3, color="#cc3311", label=f"over the block: {late.sum()}")
    ax.axhline(block, color="#cc3311", lw=1.5, label=f"block (deadline) {block:.1f} ms")
    ax.axhline(p99, color="#228833", ls="--", lw=1.2, label=f"p99 {p99:.2f} ms")
    low = max(0.05, float(ms.min()) / 1.5) if ms.size else 0.1
    high = max(2.0 * block, float(ms.max()) * 1.5) if ms.size else 2.0 * block
    ax.set_yscale("log")
    ax.set_ylim(low, high)
    ax.yaxis.set_major_locator(FixedLocator([0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(0, max(t[-1] if t.size else 0.0, block / 1000.0))
    ax.set_xlabel("time in the stream (s)")
    ax.set_ylabel("compute per chunk (ms, log)")
    ax.legend(loc="upper right", fontsize=8, ncol=3)
    bins = np.geomspace(low, high, 40)
    side.hist(ms, bins=bins, orientation="horizontal", color="#4477aa")
    side.axhline(block, color="#cc3311", lw=1.5)
    side.axhline(p99, color="#228833", ls="--", lw=1.2)
    side.set_xlabel("chunks")
    threads = int(r.get("threads", 1))
    rtf = f", RTF {r['rtf']:.2f}" if r.get("rtf") is not None else ""
    fig.suptitle(
        f"comostream engine on {r.get('device', 'cpu')}, {threads} thread"
        f"{'' if threads == 1 else 's'}: blocks of {r.get('block_frames', '?')} frames, "
        f"{len(ms)} chunks{rtf}",
        fontsize=10,
    )
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.15, top=0.88)
    return save_png(fig, path)
