"""The corpora the benchmarks run on when the user names none: the synthetic benchmark corpus
and the real voices' held-out prompts."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from comostream.models.config import Config

BENCH_CORPUS_DIR = Path("out/bench-corpus")
BENCH_MINUTES = 1.0  # minutes per singer: enough held-out lines for stable figures
REAL_DIR = Path("out/real")  # `comostream prep real out/real`, reused when present
REAL_CACHE_DIR = Path("out/bench-real")
REAL_PROMPTS = 40  # prompts per voice in the cache: ~6 held-out ones, and train references
REAL_LINES = 6  # held-out real prompts `bench quality` converts by default (2 per voice)


def default_bench_corpus(
    cfg: Config, root: Path = BENCH_CORPUS_DIR, *, every_singer: bool = False
) -> Path:
    """A corpus under ``root`` for the configured seed and singers, synthesised once and reused;
    with ``every_singer``, all rows of ``SINGERS`` and ``EXTRA_SINGERS`` (the singers a model
    lacks are then held out for ``bench content``).

    The folder name records singers, minutes and seed, so a changed config never reuses a
    corpus made for another one.
    """
    from comostream.training.synth import synthesize_corpus
    from comostream.training.voices import EXTRA_SINGERS, SINGERS

    corpus_cfg = dataclasses.replace(cfg.corpus, minutes=BENCH_MINUTES)
    if every_singer:
        corpus_cfg = dataclasses.replace(
            corpus_cfg, singers=len(SINGERS), extra_singers=len(EXTRA_SINGERS)
        )
    extra = f"x{corpus_cfg.extra_singers}" if corpus_cfg.extra_singers else ""
    folder = root / f"s{corpus_cfg.singers}{extra}-m{corpus_cfg.minutes:g}-seed{corpus_cfg.seed}"
    if not (folder / "manifest.jsonl").is_file():
        print(f"synthesising the benchmark corpus into {folder} (once)", file=sys.stderr)
        synthesize_corpus(folder, corpus_cfg, cfg.audio)
    return folder


def default_real_corpus(reuse: Path = REAL_DIR, cache: Path = REAL_CACHE_DIR) -> Path:
    """The real voices whose ``test`` prompts ``bench quality`` converts: ``reuse`` when it
    holds a ``prep real`` corpus, else ``cache``, made once with ``prep real --limit
    REAL_PROMPTS`` (the default seed and split fractions, those of the recipe, so its test
    prompts are ones the shipped model never heard). Raises PackageError (from
    :mod:`comostream.training.debs`) when the Debian packages cannot be had."""
    from comostream.training.real import prepare_real_corpus

    if (reuse / "manifest.jsonl").is_file():
        return reuse
    if not (cache / "manifest.jsonl").is_file():
        print(f"preparing the real voices' held-out prompts into {cache} (once)", file=sys.stderr)
        prepare_real_corpus(cache, limit=REAL_PROMPTS)
    return cache
