"""The text face of ``comostream live``: the status line, its JSON twin, and the commands typed
while it runs (singer, transposition, bypass, monitor level, quit)."""

from __future__ import annotations

import json
import math
import os
import queue
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from comostream.models.limits import check_transpose
from comostream.models.mix import speaker_text

__all__ = [
    "COMMANDS",
    "COMMAND_HELP",
    "Command",
    "LineReader",
    "LiveStatus",
    "format_status",
    "parse_command",
    "speaker_text",
    "write_status_file",
]

# (what is typed, what it does): the one list the console's help and `live --help` show
COMMANDS = (
    ("s NAME | s NAME:W,NAME:W", "singer or mix"),
    ("t N | t auto", "transpose to N semitones, or to the singer's register"),
    ("b", "bypass on/off"),
    ("m LEVEL", "monitor level 0-1"),
    ("l", "list singers"),
    ("h", "this help"),
    ("q", "quit, as Ctrl-C does"),
)
COMMAND_HELP = "commands (type, then Enter): " + ";  ".join(
    f"{typed}  {what}" for typed, what in COMMANDS
)


@dataclass(frozen=True)
class Command:
    """A parsed console command: ``kind`` is speaker, transpose, bypass, monitor, singers,
    help or quit; ``value`` its argument."""

    kind: str
    value: Any = None


def parse_command(line: str, speakers: Sequence[str]) -> Command | None:
    """The command on ``line`` (None for a blank line); ValueError with a message for a bad one.
    ``speakers``: the model's singers (names are checked here, before reaching the engine)."""
    words = line.strip().split(maxsplit=1)
    if not words:
        return None
    verb, arg = words[0].lower(), (words[1].strip() if len(words) > 1 else "")
    if verb in ("q", "quit", "exit"):
        return Command("quit")
    if verb in ("h", "?", "help"):
        return Command("help")
    if verb in ("l", "list", "singers"):
        return Command("singers")
    if verb in ("b", "bypass"):
        return Command("bypass")
    if verb in ("s", "singer", "speaker"):
        return Command("speaker", _parse_speaker(arg, speakers))
    if verb in ("t", "transpose"):
        if arg.lower() == "auto":
            return Command("transpose", "auto")
        value = _number(arg, "t N: semitones, e.g. t +3 or t -12")
        return Command("transpose", check_transpose(value))
    if verb in ("m", "monitor"):
        value = _number(arg, "m LEVEL: the dry signal's level in the output, 0 to 1")
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"monitor level must be within 0-1, got {value:g}")
        return Command("monitor", value)
    raise ValueError(f"unknown command {line.strip()!r}. {COMMAND_HELP}")


def _number(text: str, usage: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number: {usage}") from None
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number: {usage}")
    return value


def _parse_speaker(text: str, speakers: Sequence[str]) -> str | dict[str, float]:
    """``NAME`` or ``NAME:W,NAME:W`` checked against ``speakers``."""
    if not text:
        raise ValueError(f"s NAME: one of {', '.join(speakers)}")
    if ":" not in text:
        spec: str | dict[str, float] = text
    else:
        mix: dict[str, float] = {}
        for part in text.split(","):
            name, _, weight = part.partition(":")
            w = _number(weight, "s NAME:WEIGHT,NAME:WEIGHT")
            if w < 0:
                raise ValueError(f"singer weights must be >= 0, got {w:g}")
            mix[name.strip()] = w
        if sum(mix.values()) <= 0:
            raise ValueError("a singer mix needs a positive weight")
        spec = mix
    from comostream.models.conditioner import UnknownSpeakerError, resolve_speaker  # torch: lazy

    try:
        return resolve_speaker(spec, speakers)
    except UnknownSpeakerError as exc:
        raise ValueError(str(exc)) from None


@dataclass
class LiveStatus:
    """What ``live`` reports twice a second (the status line and ``--status-file``). Times in
    ms; ``delay_samples`` is the converter's exact input-to-output delay at ``sample_rate``."""

    running: bool = False
    elapsed_s: float = 0.0  # since the stream started
    sample_rate: int = 0
    algorithmic_ms: float = 0.0  # engine: block + window overhang + lookaheads + resampling
    converter_ms: float = 0.0  # algorithmic + the compute margin of the output buffer
    delay_samples: int = 0  # converter_ms in samples (exact)
    device_in_ms: float = 0.0  # PortAudio's input latency
    device_out_ms: float = 0.0  # PortAudio's output latency
    rtf: float = 0.0  # compute time / audio time, over the last report interval
    xruns: int = 0  # callbacks flagged by the device (under/overflow)
    xrun_flags: dict[str, int] = field(default_factory=dict)
    dropped_blocks: int = 0  # input blocks dropped because conversion fell behind
    restarts: int = 0  # times the device ended the stream and it was reopened
    concealed: int = 0  # output samples that had to be invented (dry or fade)
    f0_hz: float = 0.0  # source F0 of the latest frame (0: unvoiced)
    speaker: str = ""
    transpose: float = 0.0
    transpose_auto: bool = False  # --transpose auto: the shift follows the singer's register
    bypass: bool = False
    monitor: float = 0.0
    input_device: str = ""
    output_device: str = ""

    @property
    def total_ms(self) -> float:
        return self.converter_ms + self.device_in_ms + self.device_out_ms

    def to_json(self) -> str:
        return json.dumps(dict(asdict(self), total_ms=self.total_ms), sort_keys=True)


def format_status(s: LiveStatus) -> str:
    """One status line (``late``: output the converter did not deliver in time, concealed)."""
    if s.f0_hz > 0:
        f0 = f"F0 {s.f0_hz:5.1f}>{s.f0_hz * 2 ** (s.transpose / 12):5.1f} Hz"
    else:
        f0 = "F0   -   "
    auto = " (auto)" if s.transpose_auto else ""
    mode = "BYPASS" if s.bypass else f"{speaker_text(s.speaker)} {s.transpose:+g} st{auto}"
    monitor = f" | monitor {s.monitor:.2f}" if s.monitor > 0 else ""
    monitor += f" | restarts {s.restarts}" if s.restarts else ""
    late_ms = 1000.0 * s.concealed / s.sample_rate if s.sample_rate else 0.0
    return (
        f"latency {s.converter_ms:.1f} ms + device {s.device_in_ms:.1f}/{s.device_out_ms:.1f}"
        f" ms | RTF {s.rtf:.2f} | xruns {s.xruns} | late {late_ms:.0f} ms | dropped "
        f"{s.dropped_blocks} | {f0} | "
        f"{mode}{monitor}"
    )


def write_status_file(path: str | os.PathLike[str], status: LiveStatus) -> None:
    """Write ``status`` as JSON, atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(status.to_json() + "\n")
    os.replace(tmp, path)


class LineReader:
    """Reads lines from ``stream`` in a daemon thread; :meth:`poll` returns those typed so far.
    End of input just ends the reading (``live`` keeps running without commands)."""

    def __init__(self, stream: TextIO) -> None:
        self._lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._stream = stream
        self._thread = threading.Thread(target=self._run, name="comostream-console", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for line in self._stream:
                self._lines.put(line)
        except (OSError, ValueError):  # closed or unreadable stdin: no commands
            return

    def poll(self) -> list[str]:
        lines: list[str] = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                return lines
