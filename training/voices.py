"""TTS backends (flite, espeak-ng, festival) and the fixed, ordered table of synthetic singers.

A singer = a base TTS voice + a register (the melody's octave) + a spectral-envelope warp
(all-pass warp ``alpha``; > 0 moves formants up) + breathiness (aperiodicity added above ~1 kHz)
+ a vibrato depth scale. ``--singers N`` takes the first N rows of :data:`SINGERS`,
``--extra-singers M`` the first M of :data:`EXTRA_SINGERS` (festival's other recorded people).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from comostream.training.corpus import CorpusError

__all__ = [
    "BASE_VOICES",
    "EXTRA_SINGERS",
    "REGISTERS",
    "SINGERS",
    "BaseVoice",
    "Singer",
    "ToolMissingError",
    "check_tools",
    "singer_table",
    "tool_versions",
    "tts_batch",
]


class ToolMissingError(RuntimeError):
    """A TTS program needed by the corpus synthesiser is not installed."""


@dataclass(frozen=True)
class BaseVoice:
    """A TTS voice: ``engine`` in {flite, espeak, festival}; F0 search range (Hz) for analysis."""

    name: str
    engine: str
    voice: str
    f0_floor: float
    f0_ceil: float
    package: str = ""  # Debian package with the voice's data ("" = in the engine's package)


@dataclass(frozen=True)
class Singer:
    """A synthetic singer (see module docstring); ``name`` is stable and used as a directory."""

    name: str
    base: str  # key of BASE_VOICES
    register: str  # key of REGISTERS
    warp_alpha: float  # all-pass frequency warp of the spectral envelope (> 0: formants up)
    breathiness: float  # 0..1, aperiodicity added to voiced frames above ~1 kHz
    vibrato_scale: float = 1.0  # multiplies the melody's vibrato depth (clipped to 20-50 cents)

    @property
    def tonic_midi(self) -> int:
        """MIDI note of the register's tonic (the melody's key offset is added on top)."""
        return REGISTERS[self.register]


# Debian packages that provide each engine (binary, packages).
_TOOLS: dict[str, tuple[str, str]] = {
    "flite": ("flite", "flite"),
    "espeak": ("espeak-ng", "espeak-ng"),
    "festival": ("festival", "festival festvox-kallpc16k"),
}

BASE_VOICES: dict[str, BaseVoice] = {
    v.name: v
    for v in (
        BaseVoice("flite_slt", "flite", "slt", 100.0, 400.0),
        BaseVoice("flite_rms", "flite", "rms", 60.0, 300.0),
        BaseVoice("flite_awb", "flite", "awb", 60.0, 300.0),
        BaseVoice("flite_kal16", "flite", "kal16", 60.0, 300.0),
        BaseVoice("espeak_f2", "espeak", "en+f2", 100.0, 400.0),
        BaseVoice("espeak_f4", "espeak", "en+f4", 100.0, 400.0),
        BaseVoice("espeak_f5", "espeak", "en+f5", 100.0, 400.0),
        BaseVoice("espeak_m3", "espeak", "en+m3", 60.0, 300.0),
        BaseVoice("espeak_m7", "espeak", "en-us+m7", 60.0, 300.0),
        BaseVoice("festival_kal", "festival", "kal_diphone", 60.0, 300.0),
    )
}
# Recorded people of festival's other voices, most reading the English lines through their own
# language's front end (an accent of their own): name, festival voice, F0 floor and ceiling (Hz),
# Debian package (licence in its /usr/share/doc/PACKAGE/copyright).
_FESTIVAL_PEOPLE: tuple[tuple[str, str, float, float, str], ...] = (
    ("festival_ked", "ked_diphone", 60.0, 300.0, "festvox-kdlpc16k"),
    ("festival_ona", "upc_ca_ona_hts", 100.0, 400.0, "festvox-ca-ona-hts"),
    ("festival_dita", "czech_dita", 100.0, 400.0, "festvox-czech-dita"),
    ("festival_krb", "czech_krb", 100.0, 450.0, "festvox-czech-krb"),
    ("festival_ph", "czech_ph", 60.0, 300.0, "festvox-czech-ph"),
    ("festival_mv", "hy_fi_mv_diphone", 60.0, 300.0, "festvox-suopuhe-mv"),
    ("festival_pc", "pc_diphone", 60.0, 300.0, "festvox-itapc16k"),
    ("festival_slt_hts", "cmu_us_slt_arctic_hts", 100.0, 400.0, "festvox-us-slt-hts"),
    ("festival_machac", "czech_machac", 60.0, 300.0, "festvox-czech-machac"),
    ("festival_lj", "suo_fi_lj_diphone", 100.0, 400.0, "festvox-suopuhe-lj"),
    ("festival_lp", "lp_diphone", 100.0, 400.0, "festvox-italp16k"),
)
BASE_VOICES.update(
    {n: BaseVoice(n, "festival", v, lo, hi, pkg) for n, v, lo, hi, pkg in _FESTIVAL_PEOPLE}
)

# Register -> MIDI tonic (melodies span about -4..+12 semitones around it, key -2..+2).
REGISTERS: dict[str, int] = {
    "bass": 45,  # A2, 110 Hz
    "baritone": 48,  # C3, 131 Hz
    "tenor": 52,  # E3, 165 Hz
    "alto": 57,  # A3, 220 Hz
    "mezzo": 60,  # C4, 262 Hz
    "soprano": 64,  # E4, 330 Hz
}

# Fixed order: the first rows mix engines, sexes and registers so that small N is diverse.
SINGERS: tuple[Singer, ...] = (
    Singer("flite_slt_alto", "flite_slt", "alto", 0.0, 0.0, 1.0),
    Singer("flite_rms_baritone", "flite_rms", "baritone", 0.0, 0.0, 1.0),
    Singer("espeak_f2_soprano", "espeak_f2", "soprano", 0.04, 0.0, 0.9),
    Singer("festival_kal_tenor", "festival_kal", "tenor", 0.02, 0.0, 1.1),
    Singer("espeak_m3_bass_dark", "espeak_m3", "bass", -0.06, 0.0, 0.8),
    Singer("flite_awb_tenor_breathy", "flite_awb", "tenor", 0.0, 0.25, 1.0),
    Singer("flite_kal16_baritone_dark", "flite_kal16", "baritone", -0.04, 0.0, 1.2),
    Singer("espeak_f4_mezzo_breathy", "espeak_f4", "mezzo", 0.02, 0.3, 1.0),
    Singer("flite_slt_soprano_bright", "flite_slt", "soprano", 0.06, 0.0, 1.2),
    Singer("espeak_m7_tenor", "espeak_m7", "tenor", 0.03, 0.0, 1.0),
    Singer("flite_rms_bass_dark", "flite_rms", "bass", -0.07, 0.1, 0.9),
    Singer("espeak_f5_alto_dark", "espeak_f5", "alto", -0.03, 0.0, 1.1),
    Singer("festival_kal_baritone_breathy", "festival_kal", "baritone", -0.02, 0.3, 0.9),
    Singer("flite_awb_baritone_bright", "flite_awb", "baritone", 0.05, 0.0, 1.0),
)

# ``--extra-singers N`` adds the first N rows: festival's other recorded people, most reading the
# English lines through their own language's front end (an accent of their own). Rows 1-8 give
# the content encoder more people to learn who sings from; rows 9-11 are kept for measuring it on
# people it never heard.
EXTRA_SINGERS: tuple[Singer, ...] = (
    Singer("festival_ked_baritone", "festival_ked", "baritone", 0.0, 0.1, 1.0),
    Singer("festival_ona_mezzo", "festival_ona", "mezzo", 0.0, 0.0, 1.0),
    Singer("festival_dita_alto", "festival_dita", "alto", -0.02, 0.15, 1.1),
    Singer("festival_krb_mezzo", "festival_krb", "mezzo", 0.03, 0.0, 0.9),
    Singer("festival_ph_bass", "festival_ph", "bass", -0.03, 0.0, 1.0),
    Singer("festival_mv_tenor", "festival_mv", "tenor", 0.02, 0.2, 1.1),
    Singer("festival_pc_baritone", "festival_pc", "baritone", 0.0, 0.0, 0.9),
    Singer("festival_slt_hts_soprano", "festival_slt_hts", "soprano", -0.02, 0.1, 1.0),
    Singer("festival_machac_tenor", "festival_machac", "tenor", 0.0, 0.0, 1.0),
    Singer("festival_lj_alto", "festival_lj", "alto", 0.0, 0.1, 1.0),
    Singer("festival_lp_mezzo", "festival_lp", "mezzo", 0.02, 0.0, 1.1),
)


def singer_table(n: int, extra: int = 0) -> list[Singer]:
    """The first ``n`` singers of :data:`SINGERS` and the first ``extra`` of
    :data:`EXTRA_SINGERS`; CorpusError if either is out of range."""
    if not 1 <= n <= len(SINGERS):
        raise CorpusError(f"--singers must be between 1 and {len(SINGERS)} (got {n})")
    if not 0 <= extra <= len(EXTRA_SINGERS):
        raise CorpusError(
            f"--extra-singers must be between 0 and {len(EXTRA_SINGERS)} (got {extra})"
        )
    return list(SINGERS[:n]) + list(EXTRA_SINGERS[:extra])


def _binary(engine: str) -> str:
    binary, package = _TOOLS[engine]
    path = shutil.which(binary)
    if path is None:
        raise ToolMissingError(
            f"'{binary}' not found on PATH; it is needed for the {engine} voices of the synthetic "
            f"corpus. Install the Debian package(s): sudo apt-get install {package}"
        )
    return path


def check_tools(voices: Iterable[BaseVoice]) -> None:
    """Raise :class:`ToolMissingError` (naming the Debian package) if an engine is missing."""
    for engine in sorted({v.engine for v in voices}):
        _binary(engine)


def tool_versions(engines: Iterable[str]) -> dict[str, str]:
    """First line of ``--version`` per engine binary (for ``corpus.json``)."""
    out: dict[str, str] = {}
    for engine in sorted(set(engines)):
        binary = _binary(engine)
        res = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
        lines = [ln.strip() for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
        versioned = [ln for ln in lines if re.search(r"\d+\.\d+", ln)] or lines or ["unknown"]
        out[_TOOLS[engine][0]] = versioned[0].removeprefix(f"{binary}: ")
    return out


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def tts_batch(voice: BaseVoice, texts: Sequence[str], out_dir: Path) -> list[Path]:
    """Speak each text with ``voice`` into ``out_dir/<voice>_<i>.wav``; returns the paths.

    flite and espeak-ng run once per text; festival runs once for the whole batch (its start-up
    dominates). Raises ToolMissingError / RuntimeError with the tool's stderr on failure.
    """
    binary = _binary(voice.engine)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{voice.name}_{i:04d}.wav" for i in range(len(texts))]
    if voice.engine == "festival":
        script = out_dir / f"{voice.name}.scm"
        cmds = [f"(voice_{voice.voice})"]
        for text, path in zip(texts, paths, strict=True):
            cmds.append(
                f"(utt.save.wave (utt.synth (Utterance Text {_scheme_string(text)})) "
                f"{_scheme_string(str(path))} 'riff)"
            )
        script.write_text("\n".join(cmds) + "\n")
        res = subprocess.run([binary, "-b", str(script)], capture_output=True, text=True)
        if "unbound variable : voice_" in res.stdout + res.stderr:
            raise ToolMissingError(
                f"festival has no voice '{voice.voice}'; install the Debian package: "
                f"sudo apt-get install {voice.package or 'festvox-kallpc16k'}"
            )
        if res.returncode != 0:
            raise RuntimeError(f"festival failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    else:
        for text, path in zip(texts, paths, strict=True):
            if voice.engine == "flite":
                cmd = [binary, "-voice", voice.voice, "-t", text, "-o", str(path)]
            else:
                cmd = [binary, "-v", voice.voice, "-s", "150", "-w", str(path), "--", text]
            _run(cmd, voice)
    missing = [p for p in paths if not p.is_file() or p.stat().st_size <= 44]
    if missing:
        raise RuntimeError(f"{voice.engine} voice {voice.voice!r} wrote no audio to {missing[0]}")
    return paths


def _run(cmd: list[str], voice: BaseVoice) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(
            f"{voice.engine} ({voice.voice}) failed with exit code {res.returncode}: "
            f"{res.stderr.strip()[-500:]}"
        )
