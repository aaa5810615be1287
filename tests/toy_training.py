"""A tiny conv regression problem for the training-loop tests (not a test module itself).

The step function draws noise from torch (dropout and input noise), numpy and python ``random``,
so exact resume is only possible if every RNG state is restored.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from comostream.models.config import Config, TrainConfig
from comostream.training.sampler import EpochShuffle
from comostream.training.state import TrainState, make_state

CHANNELS, FRAMES = 2, 16


def toy_config(**train: Any) -> Config:
    """Defaults for a fast CPU run, overridable per field of [train]."""
    base = dict(batch_size=4, max_steps=12, lr=1e-2, warmup_steps=3, lr_schedule="cosine",
                log_every=2, valid_every=5, ckpt_every=4, grad_clip=1.0, amp=False)  # fmt: skip
    base.update(train)
    return Config(train=TrainConfig(**base))


def toy_dataset(n: int = 24, seed: int = 0) -> EpochShuffle:
    """``n`` items (x (2, 16), y (1, 16)) with y a fixed smooth function of x."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, CHANNELS, FRAMES, generator=g)
    y = (0.7 * x[:, :1] - 0.4 * x[:, 1:].roll(1, -1)).tanh()
    return EpochShuffle(TensorDataset(x, y), seed=seed)


def toy_model(seed: int = 0, dropout: float = 0.1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv1d(CHANNELS, 8, 3, padding=1), nn.GELU(), nn.Dropout(dropout), nn.Conv1d(8, 1, 1)
    )


def toy_state(cfg: Config, seed: int = 0, dropout: float = 0.1, sgd: bool = False) -> TrainState:
    """The toy model with AdamW, or plain SGD (whose update is proportional to the gradient)."""
    net = toy_model(seed, dropout)
    opts = {"main": torch.optim.SGD(net.parameters(), lr=cfg.train.lr)} if sgd else None
    return make_state({"net": net}, cfg.train, optimizers=opts)


def noisy_step(state: TrainState, batch: Any) -> dict[str, Tensor]:
    """MSE on noisy inputs, plus a logged-only term; uses all three global RNGs."""
    x, y = batch
    scale = 0.05 * float(np.random.rand()) + 0.01 * random.random()  # noqa: NPY002
    pred = state.models["net"](x + scale * torch.randn_like(x))
    mse = torch.mean((pred - y) ** 2)
    return {"loss": mse, "mse": mse.detach(), "abs": torch.mean((pred - y).abs()).detach()}


def plain_step(state: TrainState, batch: Any) -> dict[str, Tensor]:
    """Deterministic MSE (no noise), for comparing data-parallel and single-process runs."""
    x, y = batch
    return {"mse": torch.mean((state.models["net"](x) - y) ** 2)}


def toy_valid(state: TrainState) -> dict[str, float]:
    ds = toy_dataset(8, seed=99)
    x = torch.stack([ds[i][0] for i in range(8)])
    y = torch.stack([ds[i][1] for i in range(8)])
    noise = 0.01 * torch.randn_like(x)
    return {"mse": float(torch.mean((state.models["net"](x + noise) - y) ** 2))}


def flat_params(state: TrainState) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for m in state.models.values()
                      for p in m.parameters()])  # fmt: skip
