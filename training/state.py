"""The typed training state, its construction, seeding and the LR schedule."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from comostream.models.config import TrainConfig

__all__ = ["TrainState", "lr_factor", "make_state", "seed_everything"]


@dataclass
class TrainState:
    """Everything that training changes, checkpointed as one unit.

    models: trained (or EMA) modules, saved in checkpoints. frozen: modules used but never
    trained nor saved (e.g. the teacher during distillation). step: completed optimiser steps.
    meta: plain data saved with the checkpoint (e.g. the singer table).
    """

    models: dict[str, nn.Module]
    optimizers: dict[str, Optimizer]
    schedulers: dict[str, LRScheduler]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    frozen: dict[str, nn.Module] = field(default_factory=dict)
    step: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def parameters(self) -> list[nn.Parameter]:
        """The distinct parameters of all optimisers, in a fixed order."""
        seen: dict[int, nn.Parameter] = {}
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                for p in group["params"]:
                    seen.setdefault(id(p), p)
        return list(seen.values())


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's global RNG and python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    random.seed(seed)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """LR multiplier for the optimiser step after ``step`` completed steps."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def make_state(
    models: Mapping[str, nn.Module],
    cfg: TrainConfig,
    device: torch.device | str = "cpu",
    frozen: Mapping[str, nn.Module] | None = None,
    optimizers: Mapping[str, Optimizer] | None = None,
) -> TrainState:
    """A fresh state: models moved to ``device``; by default one AdamW ``"main"`` optimiser over
    every parameter with ``requires_grad`` (``lr``/``weight_decay`` from ``cfg``); one warm-up
    scheduler (:func:`lr_factor`) per optimiser."""
    dev = torch.device(device)
    mods = {k: m.to(dev) for k, m in models.items()}
    fro = {k: m.to(dev).eval().requires_grad_(False) for k, m in (frozen or {}).items()}
    if optimizers is None:
        params = [p for m in mods.values() for p in m.parameters() if p.requires_grad]
        if not params:
            raise ValueError("make_state: no trainable parameters")
        opts: dict[str, Optimizer] = {
            "main": torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        }
    else:
        opts = dict(optimizers)

    def factor(step: int) -> float:  # a plain function: LambdaLR then saves no stale config
        return lr_factor(step, cfg)

    scheds: dict[str, LRScheduler] = {k: LambdaLR(o, factor) for k, o in opts.items()}
    return TrainState(mods, opts, scheds, dev, fro)
