"""``[features] content_swap``: content computed from another singer's rendition of the line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from comostream.models.config import Config, FeaturesConfig
from comostream.training.corpus import load_corpus
from comostream.training.features import _swapped

SR = 24000


def _corpus(root: Path) -> list:
    """A parallel manifest corpus: singers a, b, c sing line 0 (1 s); c also sings line 1 and a
    line 2 of another length."""
    rows = []
    for singer, f0, line, n in [
        ("a", 200, 0, SR),
        ("b", 300, 0, SR),
        ("c", 400, 0, SR),
        ("c", 500, 1, SR),
        ("a", 250, 2, SR // 2),
    ]:
        (root / singer).mkdir(parents=True, exist_ok=True)
        path = f"{singer}/{singer}_{line}.wav"
        t = np.arange(n) / SR
        sf.write(root / path, (0.2 * np.sin(2 * np.pi * f0 * t)).astype(np.float32), SR)
        rows.append({"path": path, "singer": singer, "split": "train", "line": line})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_corpus(root)


def test_swap_takes_another_singers_rendition_of_the_same_line(tmp_path: Path) -> None:
    utts = {(u.singer, u.line): u for u in _corpus(tmp_path / "corpus")}
    cfg = Config(features=dataclasses.replace(FeaturesConfig(), content_swap=True))
    a0 = utts["a", 0]
    own = sf.read(a0.path, dtype="float32")[0]
    got = _swapped(own, a0, cfg)
    others = [sf.read(utts[s, 0].path, dtype="float32")[0] for s in ("b", "c")]
    assert any(np.array_equal(got, o) for o in others)
    np.testing.assert_array_equal(_swapped(own, a0, cfg), got)  # seeded by the utterance
    # no other rendition of line 1, and none of line 2's length: the audio itself
    c1, a2 = utts["c", 1], utts["a", 2]
    x1 = sf.read(c1.path, dtype="float32")[0]
    assert _swapped(x1, c1, cfg) is x1
    x2 = sf.read(a2.path, dtype="float32")[0]
    assert _swapped(x2, a2, cfg) is x2
    # every singer of line 0 gets one of the two others, never itself
    for s in ("a", "b", "c"):
        u = utts[s, 0]
        y = _swapped(sf.read(u.path, dtype="float32")[0], u, cfg)
        pick = [
            t
            for t in ("a", "b", "c")
            if np.array_equal(y, sf.read(utts[t, 0].path, dtype="float32")[0])
        ]
        assert len(pick) == 1 and pick[0] != s
    unnumbered = dataclasses.replace(a0, line=None)
    assert _swapped(own, unnumbered, cfg) is own
