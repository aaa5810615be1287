"""`comostream bench quality`: the resynthesis floor of the output F0 measure, and real-part
targets that do not depend on the model's singer list."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import comostream.bench.quality as q
from comostream.bench.quality import _Line, real_conversions, resynth_errors
from comostream.bench.resynth import harmonic_tone
from comostream.models.config import F0Config
from comostream.models.f0 import extract_f0
from comostream.training.corpus import Utterance

pytestmark = pytest.mark.usefixtures("one_thread")

SR, HOP = 24000, 256


def test_harmonic_tone_sounds_its_f0_on_voiced_frames_only() -> None:
    f0 = np.full(120, 220.0)
    voiced = np.ones(120, bool)
    voiced[:20] = False
    f0[:20] = 0.0
    y = harmonic_tone(f0, voiced, SR, HOP)
    assert y.shape == (120 * HOP,) and y.dtype == np.float32
    assert np.abs(y[: 19 * HOP]).max() == 0.0  # silent before the voiced frames
    assert 0.05 < np.abs(y[40 * HOP :]).max() < 1.0
    track = extract_f0(y, SR, cfg=F0Config())
    hz = track.f0_hz[30:110][track.voiced[30:110]]
    assert hz.size > 60 and np.allclose(hz, 220.0, rtol=0.01)
    assert not harmonic_tone(f0, np.zeros(120, bool), SR, HOP).any()  # nothing voiced


def test_resynth_floor_of_a_steady_tone_is_zero_on_the_transposed_f0(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = np.full(150, 200.0)
    voiced = np.ones(150, bool)
    voiced[:10] = voiced[-10:] = False
    src[~voiced] = 0.0
    heard: list[np.ndarray] = []

    def spy(f0_hz: np.ndarray, *args) -> np.ndarray:
        heard.append(np.asarray(f0_hz))
        return harmonic_tone(f0_hz, *args)

    monkeypatch.setattr(q, "harmonic_tone", spy)
    r = resynth_errors(src, voiced, 7.0, F0Config(), SR, HOP)
    # the tone is made at the requested F0, a fifth up, and scored against it
    assert np.allclose(heard[0][voiced], 200.0 * 2.0 ** (7 / 12))
    assert r["f0_gross"] is not None and r["f0_gross"] < 0.01
    assert r["f0_octave"] == 0.0 and r["f0_fine_rmse_cents"] < 10.0
    # against the untransposed F0 the same tone would be a fifth off: every frame gross
    track = extract_f0(harmonic_tone(heard[0], voiced, SR, HOP), SR, cfg=F0Config())
    assert q.f0_errors(src, voiced, track.f0_hz, track.voiced)["f0_gross"] > 0.9


def _utt(singer: str, line: int) -> Utterance:
    return Utterance(Path(f"{singer}/{line}.wav"), singer, "test", None, "", None, line, 1.0)


def test_real_targets_come_from_the_fixed_list_whatever_the_models_singers() -> None:
    people = {"allison": "A", "allison_sung": "A", "june": "J", "june_sung": "J"}
    lines = [
        _Line(1, {"allison": _utt("allison", 1), "allison_sung": _utt("allison_sung", 1)}),
        _Line(2, {"june": _utt("june", 2), "june_sung": _utt("june_sung", 2)}),
    ]
    fixed = ["s1", "s2", "s3"]
    real = set(people)

    def pairs(targets: list[str]) -> list[tuple[str, str]]:
        todo = real_conversions(lines, targets, people, real, per_source=2, fixed=fixed)
        return [(src, tgt) for _, src, _, tgt in todo]

    synthetic_only = pairs(["s1", "s2", "s3"])
    assert synthetic_only == [
        ("allison", "s1"),
        ("allison", "s2"),
        ("allison_sung", "s3"),
        ("allison_sung", "s1"),
        ("june", "s2"),
        ("june", "s3"),
        ("june_sung", "s1"),
        ("june_sung", "s2"),
    ]
    # more singers, the recorded voices among them: the same conversions
    assert pairs(["allison", "allison_sung", "june", "june_sung", "s1", "s2", "s3"]) == (
        synthetic_only
    )
    # a listed singer the model lacks: only its conversions change, to the model's others
    lacking = pairs(["june", "s1", "s3"])
    assert "s2" not in {t for _, t in lacking}
    for a, b in zip(synthetic_only, lacking, strict=True):
        assert a == b or (a[1] == "s2" and b[0] == a[0])
    # Allison's s2 slot: the model's rotation (june, s1, s3) from that slot on, s1 taken
    assert lacking[1] == ("allison", "s3")
    for src in ("allison", "allison_sung", "june", "june_sung"):  # no target twice per source
        tgts = [t for s, t in lacking if s == src]
        assert len(tgts) == len(set(tgts)) == 2
        assert all(people.get(t, t) != people[src] for t in tgts)
    # without a fixed list: the model's rotation, the recorded voices first (as before)
    todo = real_conversions(lines, ["s1", "june", "june_sung"], people, real, per_source=2)
    assert [t for _, s, _, t in todo if s == "allison"] == ["june", "june_sung"]


def test_targets_resynthesised_by_the_built_in_vocoder_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from comostream.models.vocoder import Vocoder

    torch.manual_seed(0)
    voc = Vocoder().eval()
    f0 = np.full(94, 220.0)
    tone = harmonic_tone(f0, np.ones(94, bool), 24000, 256).astype(np.float32)
    y = q.resynthesize(voc, tone, F0Config())
    assert y.ndim == 1 and y.shape[0] % 256 == 0 and abs(y.shape[0] - tone.shape[0]) <= 256
    assert np.isfinite(y).all()
    assert np.abs(y).max() > 0  # voiced: the harmonics sound
    calls: list[int] = []
    monkeypatch.setattr(q, "_dnsmos", lambda a: calls.append(len(a)) or 3.0)
    ref = q._Reference(220.0, None, [tone, tone])
    assert ref.dnsmos_resynth(voc, F0Config()) == 3.0 and len(calls) == 2
    assert ref.dnsmos_resynth(voc, F0Config()) == 3.0 and len(calls) == 2  # computed once
    other = q._Reference(220.0, None, [tone])
    assert other.dnsmos_resynth(torch.nn.Identity(), F0Config()) is None  # a windowed vocoder
