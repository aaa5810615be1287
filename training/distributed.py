"""Distributed data parallel (DDP) plumbing for the training loop, under ``torchrun``.

``torchrun --nproc_per_node N`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:func:`setup_distributed` joins the process group (``nccl`` for CUDA devices, ``gloo`` for
CPU). The loop keeps the models unwrapped and does what ``DistributedDataParallel`` does, by
hand: parameters and buffers are broadcast from rank 0 once, and after every backward the
gradients are averaged over ranks in flat buckets (:func:`average_gradients`). Step functions
may therefore call any method of any model, several times per step, and validation can run on
rank 0 alone. (The price: the all-reduce does not overlap the backward pass.)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistInfo",
    "all_gather_objects",
    "average_gradients",
    "broadcast_modules",
    "dist_info",
    "mean_over_ranks",
    "move_to",
    "setup_distributed",
]

_BUCKET_ELEMENTS = 1 << 24  # elements per all-reduce bucket (64 MB of float32)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: rank, world size, local rank (GPU index on its host)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """The current process group's rank and size (``DistInfo()`` when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    return DistInfo()


def setup_distributed(device: str | None = None) -> tuple[DistInfo, torch.device]:
    """Join the ``torchrun`` process group if ``WORLD_SIZE`` > 1; return it and this rank's device.

    ``device``: "cpu", "cuda" or None (CUDA when available). On CUDA each rank uses
    ``cuda:LOCAL_RANK`` and the ``nccl`` backend; on CPU the ``gloo`` backend.
    """
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist_info(), dev


def broadcast_modules(modules: Iterable[nn.Module], info: DistInfo) -> None:
    """Copy rank 0's parameters and buffers to every rank (as DDP does at construction)."""
    if not info.distributed:
        return
    with torch.no_grad():
        for module in modules:
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)


def average_gradients(params: list[nn.Parameter], info: DistInfo) -> None:
    """Replace each ``p.grad`` by its mean over ranks (bucketed flat all-reduce).

    A parameter without a gradient on some rank counts as zero there; one without a gradient on
    every rank keeps ``grad = None`` (so the optimiser skips it, as in a single process).
    """
    if not info.distributed or not params:
        return
    device = params[0].device
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(present)
    used = [p for p, n in zip(params, present.tolist(), strict=True) if n > 0]
    for p in used:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    groups: dict[tuple[torch.dtype, torch.device], list[nn.Parameter]] = {}
    for p in used:
        groups.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    for group in groups.values():
        bucket: list[nn.Parameter] = []
        size = 0
        for p in group:
            bucket.append(p)
            size += p.numel()
            if size >= _BUCKET_ELEMENTS:
                _reduce_bucket(bucket, info.world_size)
                bucket, size = [], 0
        if bucket:
            _reduce_bucket(bucket, info.world_size)


def _reduce_bucket(bucket: list[nn.Parameter], world_size: int) -> None:
    flat = torch.cat([p.grad.reshape(-1) for p in bucket])  # type: ignore[union-attr]
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p in bucket:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))  # type: ignore[union-attr]
        offset += n


def mean_over_ranks(values: Mapping[str, float], info: DistInfo) -> dict[str, float]:
    """Average a dict of scalars over ranks (same keys on every rank)."""
    if not info.distributed or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist(), strict=True)}


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """``obj`` from every rank, in rank order (``[obj]`` when not distributed)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def move_to(batch: Any, device: torch.device) -> Any:
    """``batch`` (tensor, or dict/list/tuple of them) on ``device``; other leaves unchanged."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch
