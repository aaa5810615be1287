"""Run-directory logging: ``stats.jsonl`` rows and TensorBoard scalars (rank 0 only).

``RUN_DIR/stats.jsonl`` holds one JSON object per line: ``{"split": "train", "step": s,
"<loss name>": mean over the logging window, ..., "lr": ..., "grad_norm": ...,
"steps_per_s": ...}`` every ``log_every`` steps, and ``{"split": "valid", "step": s, ...}``
after each validation. TensorBoard event files go to ``RUN_DIR/tb`` (scalars ``train/<name>``
and ``valid/<name>``); without the ``tensorboard`` package they are skipped with one notice.

A full disk never leaves a half row: each row is appended with one ``write`` and, if that fails
or writes less, the file is cut back to its previous size and :class:`RunWriteError` is raised.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["RunLogger", "RunWriteError", "append_line", "read_stats", "write_text_atomic"]


class RunWriteError(RuntimeError):
    """A file of the run folder (``stats.jsonl``, ``config.json``) could not be written."""


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` through a temp file + rename: all or nothing.

    On OSError (disk full, no permission) the temp file is removed, the old ``path`` is intact
    and :class:`RunWriteError` naming it is raised.
    """
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except OSError as exc:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise RunWriteError(
            f"{path}: could not write ({_reason(exc)}); any previous file there is intact"
        ) from exc
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise


def append_line(path: Path, line: str) -> None:
    """Append ``line`` (ending in a newline) to ``path`` whole or not at all.

    One ``os.write`` call; if it fails or writes less (a full disk), the file is truncated back
    to its previous size and :class:`RunWriteError` naming the file is raised.
    """
    data = line.encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunWriteError(f"{path}: cannot open for appending ({_reason(exc)})") from exc
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(f"wrote {written} of {len(data)} bytes: is the disk full?")
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise RunWriteError(
                f"{path}: could not append a row ({_reason(exc)}); the rows before it are intact"
            ) from exc
    finally:
        os.close(fd)


class RunLogger:
    """Append rows to ``stats.jsonl`` and TensorBoard. A disabled logger does nothing."""

    def __init__(
        self, run_dir: Path, enabled: bool = True, tensorboard: bool = True, resume_step: int = 0
    ) -> None:
        """Log into ``run_dir``; earlier rows after ``resume_step`` (the start step) are dropped."""
        self.enabled = enabled
        self.path = Path(run_dir) / "stats.jsonl"
        self._writer: Any = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():  # rows past the start step belong to a run being redone
            self._truncate_after(resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print(
                    "note: tensorboard is not installed; logging to stats.jsonl only",
                    file=sys.stderr,
                )
            else:
                self._writer = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=resume_step)

    def _truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` by an earlier run (they are about to be redone)."""
        text = self.path.read_text(encoding="utf-8")
        kept = []
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if isinstance(row, dict) and row.get("step", 0) <= step:
                kept.append(line + "\n")
        if "".join(kept) != text:
            write_text_atomic(self.path, "".join(kept))

    def log(self, split: str, step: int, values: dict[str, float]) -> None:
        """Write one row: ``split`` ("train"/"valid"), ``step`` and named scalars."""
        if not self.enabled:
            return
        clean = {
            k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in values.items()
        }
        row = {"split": split, "step": int(step), **clean}
        append_line(self.path, json.dumps(row) + "\n")
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(f"{split}/{key}", float(value), step)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_stats(run_dir: Path, split: str | None = None) -> list[dict[str, Any]]:
    """The rows of ``run_dir/stats.jsonl`` (optionally only one ``split``)."""
    rows = []
    for line in (Path(run_dir) / "stats.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if split is None or row.get("split") == split:
            rows.append(row)
    return rows
