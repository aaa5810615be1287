"""The model step alone on each backend: torch's traced step, the ONNX Runtime step (float
weights, and 8-bit weights: ``onnxruntime_int8_ms``) and the step compiled by Inductor.

Per number of streams, the per-step time of :class:`~comostream.realtime.traced.TracedStep`,
:class:`~comostream.realtime.onnx_step.OnnxStep` (its input feeds and state copies included;
a session pinned to each stream count, as the engines and ``serve`` run it)
and :class:`~comostream.realtime.compiled.CompiledStep` (about 30 s to compile per stream
count; ``--no-inductor`` leaves it out) on the same chain, block and thread count,
interleaved: the lowest median over ``rounds`` rounds of ``steps`` steps each, so that a shared
machine's stalls count least.
Run: ``OMP_NUM_THREADS=1 python -m comostream.bench.step_backends --streams 1,4,16 --block 2``
(the shipped model, one thread).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from comostream.models.chain import ConversionChain

__all__ = ["step_backend_times"]


def step_backend_times(
    chain: ConversionChain,
    streams: Sequence[int],
    frames: int,
    rounds: int = 12,
    steps: int = 40,
    inductor: bool = True,
) -> list[dict[str, Any]]:
    """One row per stream count: ``torch_ms``, ``onnxruntime_ms``, ``onnxruntime_int8_ms`` (and
    ``inductor_ms``) per step and the ratios to torch's."""
    from comostream.realtime.compiled import CompiledStep
    from comostream.realtime.onnx_step import OnnxStep
    from comostream.realtime.traced import TracedStep

    # a session pinned to each stream count, as the engines and the server run it
    shapes = [(n, frames) for n in streams]
    onnx_step = OnnxStep.from_chain(chain, frames, shapes=shapes)
    int8_step = OnnxStep.from_chain(chain, frames, shapes=shapes, int8=True)
    rows = []
    for n in streams:
        inputs = chain.zero_inputs(n, frames)
        runs = {
            "torch": (TracedStep(chain, inputs, streams=n), chain.init_state(n)),
            "onnxruntime": (onnx_step, onnx_step.init_state(n)),
            "onnxruntime_int8": (int8_step, int8_step.init_state(n)),
        }
        if inductor:
            compiled = CompiledStep(chain, inputs, streams=n)
            runs["inductor"] = (compiled, compiled.init_state(n))
        best = {name: float("inf") for name in runs}
        with torch.inference_mode():
            for step, state in runs.values():
                for _ in range(steps // 2):  # warm-up (TorchScript optimises on the first runs)
                    step.step(inputs, state)
            for _ in range(rounds):
                for name, (step, state) in runs.items():
                    times = []
                    for _ in range(steps):
                        t0 = time.perf_counter()
                        step.step(inputs, state)
                        times.append(time.perf_counter() - t0)
                    best[name] = min(best[name], 1000.0 * float(np.median(times)))
        rows.append(
            {
                "streams": n,
                "block_frames": frames,
                "block_ms": 1000.0 * frames * chain.hop_length / chain.model.cfg.audio.sample_rate,
                "torch_ms": best["torch"],
                "onnxruntime_ms": best["onnxruntime"],
                "torch_over_onnxruntime": best["torch"] / best["onnxruntime"],
                "onnxruntime_int8_ms": best["onnxruntime_int8"],
                **(
                    {
                        "inductor_ms": best["inductor"],
                        "torch_over_inductor": best["torch"] / best["inductor"],
                    }
                    if inductor
                    else {}
                ),
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    from comostream.models.shipped import require_model
    from comostream.realtime.load import load_models

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", default="1,4,16", help="stream counts (default 1,4,16)")
    p.add_argument("--block", type=int, default=2, help="frames per step (default 2)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    p.add_argument("--checkpoint", default=None, help="inference file (default: shipped)")
    p.add_argument(
        "--no-inductor", action="store_true", help="leave out the compiled step (30 s a count)"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, vocoder = load_models(require_model(args.checkpoint))
    chain = ConversionChain(model, vocoder).eval()
    counts = [int(s) for s in args.streams.split(",")]
    rows = step_backend_times(chain, counts, args.block, inductor=not args.no_inductor)
    print(
        "| streams | block ms | torch traced ms | onnxruntime ms | onnxruntime-int8 ms "
        "| inductor ms |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ind = f"{r['inductor_ms']:.2f}" if "inductor_ms" in r else "-"
        print(
            f"| {r['streams']} | {r['block_ms']:.1f} | {r['torch_ms']:.2f} | "
            f"{r['onnxruntime_ms']:.2f} | {r['onnxruntime_int8_ms']:.2f} | {ind} |"
        )


if __name__ == "__main__":
    main()
