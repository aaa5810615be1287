"""``--transpose auto``: registers from voice prints, a source's register, the shift chosen."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import comostream
from comostream.models.acoustic import AcousticModel
from comostream.models.audio import save_wav
from comostream.models.register import (
    AUTO_LIMIT,
    NoRegisterError,
    auto_semitones,
    median_voiced_hz,
    singer_register,
)
from comostream.models.shipped import default_model_path
from comostream.realtime.files.convert import convert_file
from comostream.realtime.load import load_voiceprints
from comostream.training.checkpoint import save_checkpoint

from helpers import harmonic_tone

pytestmark = pytest.mark.usefixtures("one_thread")

PRINTS = {"low": {"f0_median": 110.0}, "high": {"f0_median": 440.0}, "none": {"mcep": [0.0]}}


def test_a_singer_register_and_a_mix_geometric_mean() -> None:
    assert singer_register(PRINTS, "high") == 440.0
    assert singer_register(PRINTS, {"low": 1.0, "high": 1.0}) == pytest.approx(220.0)
    assert singer_register(PRINTS, {"low": 3.0, "high": 1.0}) == pytest.approx(
        math.exp(0.75 * math.log(110) + 0.25 * math.log(440))
    )
    with pytest.raises(NoRegisterError, match="'none'.*--transpose N"):
        singer_register(PRINTS, "none")
    with pytest.raises(NoRegisterError, match="'ghost'"):
        singer_register(PRINTS, {"low": 1.0, "ghost": 1.0})


def test_auto_semitones_rounds_and_is_bounded() -> None:
    assert auto_semitones(110.0, 220.0) == 12.0
    assert auto_semitones(220.0, 110.0) == -12.0
    assert auto_semitones(200.0, 200.0 * 2 ** (4.4 / 12)) == 4.0
    assert auto_semitones(200.0, 200.0 * 2 ** (4.6 / 12)) == 5.0
    assert auto_semitones(50.0, 1600.0) == AUTO_LIMIT  # 60 semitones asked, two octaves given
    with pytest.raises(ValueError, match="positive"):
        auto_semitones(0.0, 100.0)


def test_median_needs_enough_voiced_frames() -> None:
    f0 = np.full(100, 150.0)
    assert median_voiced_hz(f0, np.ones(100, bool)) == 150.0
    few = np.zeros(100, bool)
    few[:5] = True
    assert median_voiced_hz(f0, few) is None


@pytest.mark.parametrize("block", [None, 2])
def test_convert_auto_brings_a_known_register_to_the_singers(tmp_path: Path, block) -> None:
    """A 110 Hz tone into the shipped soprano: the whole semitones between 110 Hz and her median,
    from the tone's own tracked register, offline and streamed alike."""
    src = tmp_path / "tone.wav"
    save_wav(src, harmonic_tone(np.full(48000, 110.0), 48000), 48000)
    singer = "espeak_f2_soprano"
    want = round(12 * math.log2(load_voiceprints(default_model_path())[singer]["f0_median"] / 110))
    r = convert_file(src, tmp_path / "out.wav", speaker=singer, transpose="auto", block=block)
    assert r.transpose == want and 18 <= want <= 24
    assert r.auto is not None and r.auto[0] == pytest.approx(110.0, rel=0.01)
    assert f"transposed {want:+d} semitones (auto: source register 110 Hz" in r.summary()


def test_convert_auto_without_registers_is_a_clear_error(models, tmp_path: Path, capsys) -> None:
    model, vocoder = models
    assert isinstance(model, AcousticModel)
    ck = save_checkpoint(
        tmp_path / "m.ckpt", dict(model.export_payload(), vocoder=vocoder.export_payload())
    )
    src = tmp_path / "tone.wav"
    save_wav(src, harmonic_tone(np.full(24000, 200.0)), 24000)
    out = tmp_path / "out.wav"
    rc = comostream.main(
        ["convert", str(src), "-o", str(out), "--checkpoint", str(ck), "--transpose", "auto"]
    )
    assert rc != 0 and not out.exists()
    err = capsys.readouterr().err
    assert "stores no register" in err and "--transpose N" in err and "Traceback" not in err


def test_convert_auto_on_a_silent_file_warns_and_does_not_shift(tmp_path: Path) -> None:
    src = tmp_path / "quiet.wav"
    save_wav(src, np.zeros(24000, np.float32), 24000)
    said: list[str] = []
    r = convert_file(src, tmp_path / "out.wav", transpose="auto", warn=said.append)
    assert r.transpose == 0.0 and r.auto is None
    assert any("too little voiced audio" in s for s in said)
