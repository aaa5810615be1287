"""Edits of an inference file's singers: list, remove, rename (``comostream voice ...``).

Every edit reads the file once, changes only the singer table's rows, the names and the voice
prints, and writes atomically (:func:`comostream.training.checkpoint.save_checkpoint`): to a new
file, or in place after an atomic backup ``MODEL.bak``. The singers left keep bit-identical
outputs (the embedding of a name is its row; the rows are kept as they are).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from comostream.models.checkpoint_io import load_checkpoint
from comostream.training.checkpoint import save_checkpoint

__all__ = [
    "VoiceInfo",
    "backup_path",
    "check_name",
    "list_voices",
    "remove_voice",
    "rename_voice",
    "write_model",
]

EMBEDDING_KEY = "speakers.embedding.weight"


@dataclass(frozen=True)
class VoiceInfo:
    """One singer of a model: its register when the file stores one (median F0 Hz, the 5th and
    95th percentiles for an added voice) and its adaptation record (None for trained singers)."""

    name: str
    f0_median: float | None
    f0_low: float | None
    f0_high: float | None
    adaptation: dict[str, Any] | None
    index_size: int | None = None  # rows of its retrieval bank, None without one


def check_name(name: str) -> None:
    """ValueError unless ``name`` can name a singer (``--speaker`` spells mixes ``a=0.5,b=0.5``)."""
    if not name or name != name.strip() or any(c in name for c in ",=\n"):
        raise ValueError(f"bad singer name {name!r}: no spaces around it, no ',', '=' or newline")


def list_voices(model: Path) -> list[VoiceInfo]:
    """The singers of inference file ``model``, in table order."""
    ck = load_checkpoint(model, kind="inference")
    prints = ck.get("voiceprints") or {}
    index = ck.get("index") or {}
    out = []
    for name in ck["speakers"]:
        p = prints.get(name) or {}

        def num(key: str, p: dict = p) -> float | None:
            v = p.get(key)
            return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

        ad = p.get("adaptation")
        out.append(
            VoiceInfo(
                str(name),
                num("f0_median"),
                num("f0_low"),
                num("f0_high"),
                dict(ad) if isinstance(ad, dict) else None,
                int(index[name].shape[0]) if name in index else None,
            )
        )
    return out


def backup_path(model: Path) -> Path:
    """Where an in-place edit keeps the previous file: ``MODEL.ckpt.bak``."""
    return model.with_name(model.name + ".bak")


def write_model(payload: dict[str, Any], src: Path, out: Path | None) -> Path:
    """Write ``payload`` to ``out``, or over ``src`` (``out`` None) after an atomic backup of
    ``src``; ValueError when ``out`` is ``src`` (say in place instead) or the shipped model is
    to be edited in place."""
    from comostream.models.shipped import default_model_path

    if out is not None:
        if out.exists() and out.resolve() == src.resolve():
            raise ValueError(f"{out}: the output is the input; edit in place with --in-place")
        return save_checkpoint(out, payload)
    shipped = default_model_path()
    if shipped is not None and src.resolve() == shipped.resolve():
        raise ValueError("the shipped model is not edited in place: give -o OUT.ckpt")
    save_checkpoint(backup_path(src), load_checkpoint(src))
    return save_checkpoint(src, payload)


def _edited(ck: dict[str, Any], keep: list[int], names: list[str]) -> dict[str, Any]:
    cond = dict(ck["conditioner"])
    cond[EMBEDDING_KEY] = cond[EMBEDDING_KEY][torch.tensor(keep)].clone()
    old = [str(s) for s in ck["speakers"]]
    prints = ck.get("voiceprints") or {}
    new_prints = {
        new: prints[old[i]] for i, new in zip(keep, names, strict=True) if old[i] in prints
    }
    out = dict(ck, speakers=names, conditioner=cond)
    if "voiceprints" in ck:
        out["voiceprints"] = new_prints
    if "index" in ck:  # retrieval banks follow their singers
        index = ck["index"] or {}
        out["index"] = {
            new: index[old[i]] for i, new in zip(keep, names, strict=True) if old[i] in index
        }
    return out


def remove_voice(model: Path, name: str, out: Path | None) -> Path:
    """Remove singer ``name`` from ``model`` (written to ``out`` or in place with a backup)."""
    ck = load_checkpoint(model, kind="inference")
    names = [str(s) for s in ck["speakers"]]
    if name not in names:
        raise ValueError(f"{model}: no singer {name!r}; singers: {', '.join(names)}")
    if len(names) == 1:
        raise ValueError(f"{model}: {name!r} is the only singer; a model needs one")
    keep = [i for i, n in enumerate(names) if n != name]
    return write_model(_edited(ck, keep, [names[i] for i in keep]), model, out)


def rename_voice(model: Path, old: str, new: str, out: Path | None) -> Path:
    """Rename singer ``old`` to ``new`` in ``model`` (to ``out`` or in place with a backup)."""
    ck = load_checkpoint(model, kind="inference")
    names = [str(s) for s in ck["speakers"]]
    if old not in names:
        raise ValueError(f"{model}: no singer {old!r}; singers: {', '.join(names)}")
    if new in names:
        raise ValueError(f"{model}: there is already a singer {new!r}")
    check_name(new)
    renamed = [new if n == old else n for n in names]
    return write_model(_edited(ck, list(range(len(names))), renamed), model, out)
