"""Run-directory logging: ``stats.jsonl`` rows and TensorBoard scalars (rank 0 only).

``RUN_DIR/stats.jsonl`` holds one JSON object per line: ``{"split": "train", "step": s,
"<loss name>": mean over the logging window, ..., "lr": ..., "grad_norm": ...,
"steps_per_s": ...}`` every ``log_every`` steps, and ``{"split": "valid", "step": s, ...}``
after each validation. TensorBoard event files go to ``RUN_DIR/tb`` (scalars ``train/<name>``
and ``valid/<name>``); without the ``tensorboard`` package they are skipped with one notice.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

__all__ = ["RunLogger", "read_stats"]


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
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if isinstance(row, dict) and row.get("step", 0) <= step:
                kept.append(line + "\n")
        self.path.write_text("".join(kept), encoding="utf-8")

    def log(self, split: str, step: int, values: dict[str, float]) -> None:
        """Write one row: ``split`` ("train"/"valid"), ``step`` and named scalars."""
        if not self.enabled:
            return
        clean = {
            k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in values.items()
        }
        row = {"split": split, "step": int(step), **clean}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
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
