"""What ships inside the package, found through :mod:`importlib.resources` (wheel or checkout):
the default model, the example recordings, the configs and the reference docs."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from comostream.models.checkpoint_io import CheckpointError

__all__ = [
    "config_file",
    "default_model_path",
    "doc_file",
    "example_file",
    "example_files",
    "require_model",
]


def _path(package: str, *parts: str) -> Path:
    """A shipped file as a filesystem path (the package installs unzipped: setup.cfg)."""
    node = resources.files(package)
    for part in parts:
        node = node / part
    return Path(str(node))


def default_model_path() -> Path | None:
    """The model shipped inside the package, if this installation has one."""
    path = _path("comostream.models", "assets", "default.ckpt")
    return path if path.is_file() else None


def require_model(checkpoint: str | os.PathLike[str] | None) -> Path:
    """``checkpoint``, or the shipped model when None; :class:`CheckpointError` when neither."""
    if checkpoint is not None:
        return Path(checkpoint)
    path = default_model_path()
    if path is None:
        raise CheckpointError(
            "no model given and this installation ships none: pass "
            "--checkpoint MODEL.ckpt (from `comostream export`)"
        )
    return path


def example_files() -> list[Path]:
    """The example recordings that ship with the package (``models/assets/examples/*.wav``)."""
    folder = _path("comostream.models", "assets", "examples")
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.endswith(".wav"))


def example_file(name: str) -> Path:
    """One shipped example recording by file name, e.g. ``alto_line2.wav``."""
    return _path("comostream.models", "assets", "examples", name)


def config_file(name: str) -> Path:
    """A shipped config (``configs/NAME``), e.g. ``default.toml`` or ``lowlat.toml``."""
    return _path("comostream.configs", name)


def doc_file(name: str) -> Path:
    """A shipped reference page (``docs/NAME``), e.g. ``protocol.md``."""
    return _path("comostream.docs", name)
