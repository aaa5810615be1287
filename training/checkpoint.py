"""Writing checkpoints atomically, plus the RNG-state helpers exact resume needs.

Reading and validation live in :mod:`comostream.models.checkpoint_io` (inference never imports
``training``) and are re-exported here. A payload holds plain data only, checked before writing,
so every checkpoint loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from comostream.models.checkpoint_io import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    load_state_strict,
)

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointWriteError",
    "load_checkpoint",
    "load_state_strict",
    "save_checkpoint",
    "link_checkpoint",
    "remove_stale_temps",
    "get_rng_state",
    "set_rng_state",
]

_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.Size)


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, no permission); the old file is intact."""


def _check_plain(obj: Any, where: str) -> None:
    """Raise TypeError naming the key path if ``obj`` holds anything weights_only cannot load."""
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint key {where}[{key!r}] must be a str or int")
            _check_plain(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(
        f"checkpoint value {where} is a {type(obj).__name__}: only tensors, numbers, strings, "
        "lists and dicts are allowed (weights_only loading)"
    )


def save_checkpoint(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """Atomically write ``payload`` (with a ``kind`` string) to ``path``; returns the path.

    ``format`` is set to :data:`FORMAT_VERSION` unless given. The data go to a temp file in the
    same directory (flushed and fsynced), which then replaces ``path``, so a crash or a full
    disk never leaves a partial file: on OSError the temp file is removed, the previous
    ``path`` is untouched and :class:`CheckpointWriteError` is raised.
    """
    p = Path(path)
    data = dict(payload)
    data.setdefault("format", FORMAT_VERSION)
    if not isinstance(data.get("kind"), str):
        raise TypeError("checkpoint payload needs a 'kind' string (e.g. 'teacher')")
    _check_plain(data, "payload")
    tmp = ""
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        with os.fdopen(fd, "wb") as fh:
            torch.save(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, p)
    except OSError as exc:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        reason = exc.strerror or str(exc)
        raise CheckpointWriteError(
            f"{p}: could not write checkpoint ({reason}); any previous file there is intact"
        ) from exc
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(p.parent)
    return p


def link_checkpoint(src: Path, dst: Path) -> None:
    """Atomically make ``dst`` (e.g. ``last.pt``) the same file as ``src`` (hard link or copy)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # no hard links on this file system: copy through a validated re-save
        save_checkpoint(dst, load_checkpoint(src))
        return
    try:
        os.replace(tmp, dst)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        reason = exc.strerror or str(exc)
        raise CheckpointWriteError(
            f"{dst}: could not point it at {src.name} ({reason}); the previous {dst.name} is intact"
        ) from exc
    _fsync_dir(dst.parent)


# the temp files of save_checkpoint (mkstemp: 8 random characters) and link_checkpoint (a PID)
_TEMP_RE = re.compile(r"\.(?P<name>.+)\.(?:[a-z0-9_]{8}\.tmp|\d+\.link)")


def remove_stale_temps(directory: Path, names: str) -> list[Path]:
    """Delete the temp files an interrupted write (``kill -9``, power loss) left in ``directory``.

    Only our own temp names are touched: ``.NAME.XXXXXXXX.tmp`` and ``.NAME.PID.link`` where NAME
    fully matches the regex ``names`` (e.g. ``r"ckpt_\\d+\\.pt|last\\.pt"``). Call it only where
    no other process writes into ``directory``. Returns the removed paths.
    """
    wanted = re.compile(names)
    removed = []
    for path in sorted(Path(directory).glob(".*")):
        m = _TEMP_RE.fullmatch(path.name)
        if m and wanted.fullmatch(m["name"]) and path.is_file() and not path.is_symlink():
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append(path)
    return removed


def _fsync_dir(directory: Path) -> None:
    """Persist a rename (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def get_rng_state() -> dict[str, Any]:
    """All global RNG states (torch CPU/CUDA, numpy legacy, python) as plain data."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the states saved by :func:`get_rng_state` (CUDA only when both have CUDA)."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["mt"].tolist()), py["gauss"]))
    npst = state["numpy"]
    keys = npst["keys"].numpy().astype(np.uint32)
    np.random.set_state(  # noqa: NPY002
        (npst["name"], keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    if "cuda" in state and torch.cuda.is_available():
        for index, device_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, index)
