"""Reading and validating checkpoints (inference side; the writer is
``comostream.training.checkpoint``).

A checkpoint is a ``torch.save``d dict of plain data only (tensors, state dicts, numbers,
strings, lists, dicts), so it loads with ``torch.load(weights_only=True)``: no pickled code.
Every checkpoint carries two keys:

* ``format``: :data:`FORMAT_VERSION` (int), bumped when the layout changes incompatibly;
* ``kind``: what it holds, e.g. ``"teacher"``, ``"distill"``, ``"inference"``.

Everything else is up to the writer (state dicts, a JSON-able ``config`` dict, ``step``, ...).
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "check_finite_state",
    "load_checkpoint",
    "load_state_strict",
]

FORMAT_VERSION = 1
_MAX_LISTED = 8  # keys listed per category in a mismatch message


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, of the wrong kind/version, or does not fit a model."""


def load_checkpoint(
    path: str | os.PathLike[str], kind: str | Collection[str] | None = None
) -> dict[str, Any]:
    """Load checkpoint ``path`` onto the CPU with ``weights_only=True`` and validate it.

    ``kind``: the accepted kind(s), or None to accept any. Raises :class:`CheckpointError`
    naming the file for a missing, truncated, corrupt or unsafe (pickled code) file, a payload
    that is not a checkpoint dict, a different format version or an unexpected kind.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint not found")
    if not p.is_file():
        raise CheckpointError(f"{p}: not a regular file")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged zip/pickle stream
        raise CheckpointError(f"{p}: {_load_failure(exc)}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{p}: not a comostream checkpoint (a {type(payload).__name__})")
    version = payload.get("format")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{p}: not a comostream checkpoint (no integer 'format' key)")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{p}: checkpoint format version {version}; this comostream reads version "
            f"{FORMAT_VERSION}"
        )
    found = payload.get("kind")
    if not isinstance(found, str):
        raise CheckpointError(f"{p}: not a comostream checkpoint (no 'kind' string)")
    if kind is not None:
        wanted = (kind,) if isinstance(kind, str) else tuple(kind)
        if found not in wanted:
            raise CheckpointError(
                f"{p}: a {found!r} checkpoint, expected {' or '.join(map(repr, wanted))}"
            )
    return payload


def _load_failure(exc: Exception) -> str:
    """A one-line reason for a failed ``torch.load(weights_only=True)``."""
    text = str(exc)
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsafe:
        return (
            f"refusing to load: the file pickles code ({unsafe.group(1)}), not only tensors "
            "and plain data (not a comostream checkpoint?)"
        )
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = detail.group(1).strip() if detail else (text.strip().splitlines() or [""])[0]
    return f"unreadable checkpoint (truncated or corrupt file?): {type(exc).__name__}: {reason}"


def _listed(keys: list[str]) -> str:
    more = f", ... (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def load_state_strict(module: nn.Module, state: Mapping[str, Any], what: str) -> None:
    """Load ``state`` into ``module`` requiring identical keys and shapes.

    ``what`` names the state in the error (e.g. ``"teacher.pt: model 'student'"``). Raises
    :class:`CheckpointError` listing missing keys, unexpected keys and shape mismatches
    (``key: checkpoint (a, b) vs model (c, d)``) instead of loading anything.
    """
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{what}: expected a state dict, got {type(state).__name__}")
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = []
    for key in sorted(set(own) & set(state)):
        value = state[key]
        if not isinstance(value, torch.Tensor):
            mismatched.append(f"{key}: checkpoint holds {type(value).__name__}, not a tensor")
        elif value.shape != own[key].shape:
            mismatched.append(
                f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}"
            )
    problems = []
    if missing:
        problems.append(f"missing keys [{_listed(missing)}]")
    if unexpected:
        problems.append(f"unexpected keys [{_listed(unexpected)}]")
    if mismatched:
        problems.append(f"shape mismatches [{_listed(mismatched)}]")
    if problems:
        raise CheckpointError(
            f"{what}: state does not match {type(module).__name__}: " + "; ".join(problems)
        )
    check_finite_state(state, what)
    module.load_state_dict(state, strict=True)


def check_finite_state(state: Mapping[str, Any], what: str) -> None:
    """Raise :class:`CheckpointError` naming ``what`` and the keys if any floating-point tensor
    of ``state`` holds NaN or Inf (a damaged file or a diverged training run: the checkpoint is
    at fault, not the audio it would convert)."""
    bad = [
        f"{key} ({int((~torch.isfinite(v)).sum())} of {v.numel()})"
        for key, v in state.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()
    ]
    if bad:
        raise CheckpointError(
            f"{what}: the checkpoint's weights hold NaN or Inf values in [{_listed(bad)}]: the "
            "file is damaged or its training diverged; use another checkpoint"
        )
