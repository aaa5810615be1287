"""``comostream bench acoustic``: one-step consistency target vs the N-step teacher.

On fixed segments of the validation split (same noise for both), measures each one's mean
absolute log-mel distance to the ground truth and its compute per second of audio, in one run so
the ratios are fair.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from comostream.models.acoustic import condition_from_features
from comostream.models.edm import denormalise_mel
from comostream.models.samplers import consistency_onestep, heun_sampler, sampling_sigmas
from comostream.training.acoustic import load_distilled, mel_distance
from comostream.training.dataset import DEFAULT_ARRAYS, SegmentDataset

__all__ = ["format_acoustic_table", "run_acoustic_bench"]


def _timed(fn: Callable[[], Tensor], repeats: int, device: str = "cpu") -> tuple[Tensor, float]:
    """``fn()`` and its best wall time over ``repeats`` runs (s), the device synchronised."""
    best, out = float("inf"), None
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    assert out is not None
    return out, best


@torch.inference_mode()
def run_acoustic_bench(
    checkpoint: Path,
    data: Path,
    split: str = "valid",
    items: int = 16,
    segment_frames: int = 256,
    teacher_steps: int | None = None,
    repeats: int = 3,
    device: str = "cpu",
) -> dict[str, Any]:
    """Distances and costs of the target (1 step) and the teacher (N Heun steps) on ``device``."""
    cfg, _, models = load_distilled(checkpoint)
    for module in models.values():
        module.to(device)
    arrays = DEFAULT_ARRAYS + (("content",) if cfg.model.content_dim > 0 else ())
    ds = SegmentDataset(data, split, segment_frames, seed=cfg.train.seed + 1, arrays=arrays)
    batch = {k: v.to(device) for k, v in ds.batch(range(items)).items()}
    cond = condition_from_features(models["conditioner"], batch, batch["speaker"])
    noise = torch.randn(batch["mel"].shape, generator=torch.Generator().manual_seed(1234))
    noise = noise.to(device)
    steps = teacher_steps or cfg.edm.teacher_steps
    sigmas = sampling_sigmas(cfg.edm, steps)
    one, t_one = _timed(
        lambda: consistency_onestep(models["target"], noise, cond, cfg.edm.sigma_max),
        repeats,
        device,
    )
    many, t_many = _timed(lambda: heun_sampler(models["teacher"], noise, cond, sigmas), 1, device)
    seconds = float(batch["mask"].sum()) * cfg.audio.hop_length / cfg.audio.sample_rate
    mask = batch["mask"]
    d_one = mel_distance(denormalise_mel(one, cfg.edm), batch["mel"], mask)
    d_many = mel_distance(denormalise_mel(many, cfg.edm), batch["mel"], mask)
    return {
        "onestep_mel_l1": d_one,
        "teacher_mel_l1": d_many,
        "distance_ratio": d_one / d_many,
        "teacher_steps": steps,
        "teacher_nfe": 2 * steps - 1,
        "onestep_ms_per_s": 1000.0 * t_one / seconds,
        "teacher_ms_per_s": 1000.0 * t_many / seconds,
        "speedup": t_many / t_one,
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "device": device,
    }


def format_acoustic_table(r: dict[str, Any]) -> str:
    """A Markdown table of :func:`run_acoustic_bench`'s result."""
    return "\n".join(
        [
            "| sampler | mel L1 to ground truth | compute (ms per s of audio) |",
            "|---|---:|---:|",
            f"| consistency target, 1 step | {r['onestep_mel_l1']:.3f} "
            f"| {r['onestep_ms_per_s']:.1f} |",
            f"| teacher, Heun {r['teacher_steps']} steps ({r['teacher_nfe']} evaluations) "
            f"| {r['teacher_mel_l1']:.3f} | {r['teacher_ms_per_s']:.1f} |",
            "",
            f"one-step / teacher distance: {r['distance_ratio']:.3f}; "
            f"speed-up: {r['speedup']:.1f}x "
            f"({r['seconds']:.1f} s of audio, {r['threads']} threads)",
        ]
    )
