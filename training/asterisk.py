"""The Asterisk prompt recordings: speakers, packages, transcripts, decoding and trimming.

Allison Smith (US English, Mexican Spanish) and June Wallack (Canadian French) recorded the
Asterisk PBX prompts (CC-BY-SA 3.0), packaged by Debian as G.722 at 16 kHz
(``asterisk-core-sounds-<lang>-g722``) with transcripts in ``asterisk-core-sounds-<lang>``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from comostream.training.debs import PackageError, check_allowed

__all__ = [
    "LICENCE",
    "NON_SPEECH",
    "REAL_VOICES",
    "SOURCE_RATE",
    "SOUNDS",
    "Prompt",
    "RealVoice",
    "decode_g722",
    "read_prompts",
    "resolve_voices",
    "transcripts",
    "trim_silence",
]

LICENCE = "CC-BY-SA-3.0"
LICENCE_URL = "https://creativecommons.org/licenses/by-sa/3.0/"
SOURCE_RATE = 16000  # G.722 wideband, Hz
SOUNDS = "usr/share/asterisk/sounds/"
MIN_SECONDS = 0.4  # shorter prompts (after trimming) are dropped
SILENT_DBFS = -45.0  # prompts whose loudest 10 ms frame is below this are dropped
TRIM_DB = 40.0  # trim frames this far below the loudest 10 ms frame...
TRIM_FLOOR_DBFS = -60.0  # ...or below this level, whichever is higher
TRIM_MARGIN_S = 0.05  # kept either side of the first/last loud frame, seconds
# Tones and sound effects (so marked in the English transcript; other languages omit some).
NON_SPEECH = frozenset(
    {
        "ascending-2tone",
        "descending-2tone",
        "beep",
        "beeperr",
        "confbridge-join",
        "confbridge-leave",
        "tt-monkeys",
    }
)
_NOT_SPEECH_TEXT = re.compile(r"\s*(\[.*\]|<.*>|\(.*\))\s*")  # "[ascending tones]", "(beep)"


@dataclass(frozen=True)
class RealVoice:
    """One speaker's prompts: the G.722 package, its transcripts' package and the sung register."""

    name: str  # spoken voice (folder); the sung one is ``<name>_sung``
    package: str  # G.722 prompts
    text_package: str  # transcripts (core-sounds-<lang>.txt)
    sounds_dir: str  # folder under usr/share/asterisk/sounds/
    language: str
    speaker: str
    register: str  # key of voices.REGISTERS for the sung version
    line_base: int  # manifest ``line`` = line_base + the prompt's rank in the package

    @property
    def sung(self) -> str:
        """Name of the sung singer."""
        return f"{self.name}_sung"


REAL_VOICES: tuple[RealVoice, ...] = (
    RealVoice(
        "allison",
        "asterisk-core-sounds-en-g722",
        "asterisk-core-sounds-en",
        "en_US_f_Allison",
        "en-US",
        "Allison Smith",
        "alto",
        100000,
    ),
    RealVoice(
        "allison_es",
        "asterisk-core-sounds-es-g722",
        "asterisk-core-sounds-es",
        "es_MX_f_Allison",
        "es-MX",
        "Allison Smith",
        "mezzo",
        110000,
    ),
    RealVoice(
        "june",
        "asterisk-core-sounds-fr-g722",
        "asterisk-core-sounds-fr",
        "fr_CA_f_June",
        "fr-CA",
        "June Wallack",
        "alto",
        120000,
    ),
)


def resolve_voices(names: Sequence[str] | None) -> list[RealVoice]:
    """Voices by name or package name (None: all); refuses evaluation-only packages by name."""
    if not names:
        return list(REAL_VOICES)
    table = {v.name: v for v in REAL_VOICES} | {v.package: v for v in REAL_VOICES}
    out: list[RealVoice] = []
    for raw in names:
        name = raw.strip()
        check_allowed(name)
        if name not in table:
            known = ", ".join(f"{v.name} ({v.package})" for v in REAL_VOICES)
            raise PackageError(f"unknown real voice {name!r}; choose from {known}")
        if table[name] not in out:
            out.append(table[name])
    return out


def decode_g722(data: bytes) -> np.ndarray:
    """Raw 64 kbit/s G.722 bytes -> float32 samples at 16 kHz in [-1, 1)."""
    from G722 import G722  # the `g722` PyPI package (sippy/libg722, public domain)

    pcm = np.asarray(G722(SOURCE_RATE, 64000).decode(bytes(data)), dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0


def trim_silence(x: np.ndarray, sr: int) -> tuple[np.ndarray, str | None]:
    """Cut leading/trailing silence; ``(audio, None)`` or ``(audio, why it is unusable)``.

    Levels are 10 ms frame RMS in dBFS; frames below max(loudest - TRIM_DB, TRIM_FLOOR_DBFS) at
    either end go, TRIM_MARGIN_S is kept. Unusable: no frame above SILENT_DBFS ("silent") or
    under MIN_SECONDS left ("too short").
    """
    frame = sr // 100
    n = len(x) // frame
    if n == 0:
        return x, "too short"
    e = 10.0 * np.log10(
        np.mean(x[: n * frame].astype(np.float64).reshape(n, frame) ** 2, 1) + 1e-12
    )
    if e.max() < SILENT_DBFS:
        return x, "silent"
    loud = np.flatnonzero(e > max(e.max() - TRIM_DB, TRIM_FLOOR_DBFS))
    margin = int(round(TRIM_MARGIN_S * sr))
    y = x[max(0, loud[0] * frame - margin) : min(len(x), (loud[-1] + 1) * frame + margin)]
    return y, ("too short" if len(y) < MIN_SECONDS * sr else None)


def transcripts(files: dict[str, bytes]) -> dict[str, str]:
    """``prompt -> text`` from the core-sounds-<lang>.txt(.gz) files of a transcript package."""
    import gzip

    out: dict[str, str] = {}
    for name, data in sorted(files.items()):
        if re.search(r"core-sounds-[a-z_]+\.txt(\.gz)?$", name):
            raw = gzip.decompress(data) if name.endswith(".gz") else data
            for line in raw.decode("utf-8", "replace").splitlines():
                m = re.match(r"^([^\s:;][^:\s]*):\s*(.*)$", line)
                if m:
                    out[m.group(1)] = m.group(2).strip()
    return out


@dataclass(frozen=True)
class Prompt:
    """A kept prompt: its rank in the package, name, path in the package, transcript, audio."""

    rank: int
    prompt: str  # e.g. "digits/1"
    source: str  # path inside the package
    text: str
    audio: np.ndarray  # trimmed, 16 kHz float32


def read_prompts(
    voice: RealVoice, files: list[tuple[str, bytes]], texts: dict[str, str]
) -> tuple[list[Prompt], list[dict[str, str]]]:
    """Kept prompts of ``files`` (``(path in the package, G.722 bytes)``, sorted) and
    ``[{source, reason}]`` of the dropped ones (tones, silence, too short)."""
    kept: list[Prompt] = []
    dropped: list[dict[str, str]] = []
    prefix = SOUNDS + voice.sounds_dir + "/"
    for rank, (source, data) in enumerate(files):
        prompt = source[len(prefix) :].removesuffix(".g722")
        text = texts.get(prompt, "")
        reason = None
        if _NOT_SPEECH_TEXT.fullmatch(text):
            reason = f"not speech ({text})"
        elif prompt in NON_SPEECH or prompt.startswith("silence/"):
            reason = "not speech (a tone, sound effect or silence)"
        else:
            audio, reason = trim_silence(decode_g722(data), SOURCE_RATE)
        if reason is not None:
            dropped.append({"source": source, "reason": reason})
        else:
            kept.append(Prompt(rank, prompt, source, text, audio))
    return kept, dropped
