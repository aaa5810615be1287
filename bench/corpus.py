"""The synthetic corpus the benchmarks run on when the user names none."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from comostream.models.config import Config

BENCH_CORPUS_DIR = Path("out/bench-corpus")
BENCH_MINUTES = 1.0  # minutes per singer: enough held-out lines for stable figures


def default_bench_corpus(cfg: Config, root: Path = BENCH_CORPUS_DIR) -> Path:
    """A corpus under ``root`` for the configured seed and singers, synthesised once and reused.

    The folder name records singers, minutes and seed, so a changed config never reuses a
    corpus made for another one.
    """
    from comostream.training.synth import synthesize_corpus

    corpus_cfg = dataclasses.replace(cfg.corpus, minutes=BENCH_MINUTES)
    folder = root / f"s{corpus_cfg.singers}-m{corpus_cfg.minutes:g}-seed{corpus_cfg.seed}"
    if not (folder / "manifest.jsonl").is_file():
        print(f"synthesising the benchmark corpus into {folder} (once)", file=sys.stderr)
        synthesize_corpus(folder, corpus_cfg, cfg.audio)
    return folder
