"""The GPU check: CUDA-graph replay vs eager, and per-chunk latency for 1-256 batched streams.

Run on a machine with CUDA (finishes in a few minutes)::

    comostream bench gpu [--checkpoint MODEL.ckpt] [--block 2] [--out out/gpu_check]

(:func:`run_gpu_check`). Writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out`` and prints
the table:

* equality: the captured step replayed over 40 blocks vs the same step run eagerly from the same
  state (max abs difference relative to the peak), for 1 and 8 streams;
* per-chunk latency of the model step (content encoder, conditioner, one-step target, vocoder)
  for 1, 8, 64 and 256 streams of one block each: host->device copy of the block's inputs,
  the step, device->host copy of the audio; p50/p99 over 200 chunks, eager vs graph;
* how many streams fit in real time (chunk p99 below the block duration).

Without ``--checkpoint`` the models have random weights of the configured sizes (``--config``;
compute does not depend on the weights).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from comostream.models.acoustic import AcousticModel
from comostream.models.chain import ConversionChain, FrameInputs
from comostream.models.config import Config
from comostream.models.vocoder import Vocoder
from comostream.realtime.cuda_graph import GraphStep
from comostream.realtime.geometry import StreamGeometry

STREAMS = (1, 8, 64, 256)


def random_inputs(
    step: ConversionChain, streams: int, frames: int, gen: torch.Generator, device: str = "cpu"
) -> FrameInputs:
    """Plausible random block inputs (pinned host memory, as an engine would hold them)."""
    x = step.zero_inputs(streams, frames, "cpu", torch.float32)
    x["mel"] = torch.randn(x["mel"].shape, generator=gen) * 2.0 - 6.0
    x["audio"] = torch.randn(x["audio"].shape, generator=gen) * 0.1
    voiced = (torch.rand(streams, frames, generator=gen) > 0.2).float()
    f0 = 110.0 * 2 ** (torch.rand(streams, frames, generator=gen) * 3) * voiced  # 0: unvoiced
    x.update(
        f0=f0,
        voiced=voiced,
        transpose=torch.rand(streams, frames, generator=gen) * 4 - 2,
        loudness=torch.rand(streams, frames, generator=gen) * 40 - 50,
        speaker=torch.randn(streams, step.speaker_dim, generator=gen) * 0.5,
    )
    return {k: v.pin_memory() if device == "cuda" else v for k, v in x.items()}


def build_step(checkpoint: Path | None, device: str, cfg: Config | None = None) -> ConversionChain:
    """The conversion chain of an inference file, or of random models of ``cfg``'s sizes."""
    if checkpoint is not None:
        from comostream.realtime.load import load_models

        model, voc = load_models(checkpoint, None, device)
    else:
        torch.manual_seed(0)
        cfg = cfg or Config()
        model = AcousticModel(cfg, ["a", "b"], cfg.content)
        voc = Vocoder(cfg.vocoder, cfg.audio)
    return ConversionChain(model, voc).to(device).eval()


def check_equality(step: ConversionChain, streams: int, block: int, blocks: int = 40) -> float:
    """Max |graph - eager| / peak over ``blocks`` blocks from the same fresh state."""
    gen = torch.Generator().manual_seed(streams)
    inputs = [random_inputs(step, streams, block, gen, "cuda") for _ in range(blocks)]
    graph = GraphStep(step, streams, block)
    state = step.init_state(streams)
    worst, peak = 0.0, 0.0
    with torch.inference_mode():
        for x in inputs:
            g = graph.run(x).clone()
            e = step.step({k: v.cuda() for k, v in x.items()}, state)
            worst = max(worst, float((g - e).abs().max()))
            peak = max(peak, float(e.abs().max()))
    return worst / max(peak, 1e-12)


def time_chunks(
    step: ConversionChain,
    streams: int,
    block: int,
    use_graph: bool,
    chunks: int = 200,
    warmup: int = 20,
) -> dict[str, float]:
    """p50/p99 ms of one chunk: inputs to the device, the step, audio back to the host."""
    gen = torch.Generator().manual_seed(7)
    x = random_inputs(step, streams, block, gen, "cuda")
    out = torch.empty(streams, block * step.hop_length).pin_memory()
    graph = GraphStep(step, streams, block) if use_graph else None
    state = None if graph else step.init_state(streams)
    times = []
    with torch.inference_mode():
        for i in range(warmup + chunks):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            if graph is not None:
                y = graph.run(x)
            else:
                y = step.step({k: v.to("cuda", non_blocking=True) for k, v in x.items()}, state)
            out.copy_(y, non_blocking=True)
            torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1000
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def format_table(r: dict[str, Any]) -> str:
    block_ms = r["block_ms"]
    lines = [
        f"GPU: {r['device']}; torch {r['torch']}; block {r['block_frames']} frames = "
        f"{block_ms:.2f} ms; model: {r['model']}",
        "",
        f"graph vs eager (relative max abs difference): 1 stream {r['equality']['1']:.2e}, "
        f"8 streams {r['equality']['8']:.2e}",
        "",
        "| streams | eager p50 ms | eager p99 ms | graph p50 ms | graph p99 ms | graph speed-up |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for s in map(str, r["streams"]):
        e, g = r["eager"][s], r["graph"][s]
        lines.append(
            f"| {s} | {e['p50']:.2f} | {e['p99']:.2f} | {g['p50']:.2f} | "
            f"{g['p99']:.2f} | {e['p50'] / g['p50']:.1f}x |"
        )
    lines.append("")
    lines.append(
        f"streams in real time with graphs (p99 < {block_ms:.2f} ms): {r['realtime_streams_graph']}"
    )
    return "\n".join(lines)


def run_gpu_check(
    cfg: Config, checkpoint: Path | None = None, out: Path = Path("out/gpu_check")
) -> int:
    """The whole check (see the module docstring) in blocks of ``cfg.realtime.block_frames``
    frames; 0 when graph == eager, 1 when not, 2 without CUDA."""
    block = cfg.realtime.block_frames
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; nothing to check", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    t_start = time.time()
    step = build_step(checkpoint, "cuda", cfg)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "block_frames": block,
        "block_ms": StreamGeometry.from_configs(step.model.cfg.audio, cfg.realtime).block_ms,
        "model": str(checkpoint or "random weights, configured sizes"),
        "streams": list(STREAMS),
        "equality": {},
        "eager": {},
        "graph": {},
    }
    for s in (1, 8):
        result["equality"][str(s)] = check_equality(step, s, block)
        print(f"equality, {s} streams: {result['equality'][str(s)]:.2e}", flush=True)
    for s in STREAMS:
        for mode, use_graph in (("eager", False), ("graph", True)):
            result[mode][str(s)] = time_chunks(step, s, block, use_graph)
            print(f"{mode:5s} {s:4d} streams: {result[mode][str(s)]}", flush=True)
    fits = [s for s in STREAMS if result["graph"][str(s)]["p99"] < result["block_ms"]]
    result["realtime_streams_graph"] = max(fits) if fits else 0
    result["seconds"] = time.time() - t_start
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    table = format_table(result)
    (out / "gpu_check.md").write_text(table + "\n")
    print(table)
    ok = all(v <= 1e-4 for v in result["equality"].values())
    print("graph == eager:", "yes" if ok else "NO")
    return 0 if ok else 1
