"""Sound devices for ``comostream live``: PortAudio through ``sounddevice``, listed, chosen by
index or by (part of) name, and checked for a sample rate, with errors that say what to do."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

__all__ = [
    "DeviceInfo",
    "LiveError",
    "NO_DEVICES_HINT",
    "find_device",
    "format_devices",
    "import_sounddevice",
    "list_devices_text",
    "pick_sample_rate",
    "query_devices",
]

NO_DEVICES_HINT = (
    "PortAudio sees no sound device. Plug in an audio interface (`arecord -l` and `aplay -l` "
    "list what ALSA sees), or, on a machine without a sound card (a server, a container), run "
    "a sound server: `sudo apt-get install pulseaudio libasound2-plugins`, then "
    "`pulseaudio --start` provides the ALSA devices `pulse` and `default` (a `pactl load-module "
    "module-null-sink` gives them a virtual sink); in a container, share the host's /dev/snd "
    "or its PulseAudio socket (PULSE_SERVER)."
)


STANDARD_RATES = (
    8000,
    11025,
    16000,
    22050,
    24000,
    32000,
    44100,
    48000,
    88200,
    96000,
    176400,
    192000,
)  # Hz: what sound cards run at (and the engine's resampler is built for)


class LiveError(RuntimeError):
    """Live audio cannot run as asked (printed as a plain error message)."""


@dataclass(frozen=True)
class DeviceInfo:
    """One PortAudio device: ``index`` as PortAudio numbers it, channel counts, default rate."""

    index: int
    name: str
    hostapi: str
    inputs: int
    outputs: int
    default_rate: float
    default_input: bool = False
    default_output: bool = False

    def label(self) -> str:
        return f"{self.index} '{self.name}' ({self.hostapi})"


def import_sounddevice() -> ModuleType:
    """The ``sounddevice`` module; :class:`LiveError` naming the Debian package when PortAudio
    (``libportaudio2``) is missing."""
    try:
        import sounddevice
    except OSError as exc:  # raised at import when libportaudio cannot be loaded
        raise LiveError(
            f"PortAudio is missing ({exc}): install the Debian package "
            "libportaudio2 (sudo apt-get install libportaudio2)"
        ) from None
    return sounddevice


def list_devices_text() -> str:
    """The device table for ``--list-devices`` (or none, and how to fix that)."""
    return format_devices(query_devices(import_sounddevice()))


def query_devices(sd: Any) -> list[DeviceInfo]:
    """Every device PortAudio reports, with the default input and output marked."""
    hostapis = [h["name"] for h in sd.query_hostapis()]
    default_in, default_out = _defaults(sd)
    return [
        DeviceInfo(
            index=i,
            name=str(d["name"]),
            hostapi=hostapis[d["hostapi"]],
            inputs=int(d["max_input_channels"]),
            outputs=int(d["max_output_channels"]),
            default_rate=float(d["default_samplerate"]),
            default_input=i == default_in,
            default_output=i == default_out,
        )
        for i, d in enumerate(sd.query_devices())
    ]


def _defaults(sd: Any) -> tuple[int, int]:
    """PortAudio's default input and output device indices (-1: none)."""
    try:
        dev = sd.default.device
        return int(dev[0]), int(dev[1])
    except (TypeError, ValueError, IndexError):  # a name set by the user: resolved later
        return -1, -1


def format_devices(devices: Sequence[DeviceInfo]) -> str:
    """A table of ``devices`` (``>`` marks the default input, ``<`` the default output); when
    there are none, that fact and how to fix it."""
    if not devices:
        return "no audio devices found.\n" + NO_DEVICES_HINT
    lines = ["    #  name (host API)                               in  out  default rate"]
    for d in devices:
        mark = (">" if d.default_input else " ") + ("<" if d.default_output else " ")
        name = f"{d.name} ({d.hostapi})"
        lines.append(
            f"{mark} {d.index:2d}  {name:<44.44s} {d.inputs:3d} {d.outputs:4d}  "
            f"{d.default_rate:7.0f} Hz"
        )
    lines.append(
        "choose with --input/--output: an index or part of a name "
        "(> default input, < default output)"
    )
    return "\n".join(lines)


def find_device(devices: Sequence[DeviceInfo], spec: int | str | None, kind: str) -> DeviceInfo:
    """The device ``spec`` names for ``kind`` (``"input"`` or ``"output"``): an index, an exact
    name, or a case-insensitive part of ``"name (host API)"``; None takes the default device.
    :class:`LiveError` (listing the devices) when there is no such device or several match."""
    if kind not in ("input", "output"):
        raise ValueError(f"kind must be 'input' or 'output', got {kind!r}")
    usable = [d for d in devices if (d.inputs if kind == "input" else d.outputs) > 0]
    if not usable:
        raise LiveError(f"no {kind} device found. {NO_DEVICES_HINT}")
    listing = "\n" + format_devices(devices)
    if spec is None:
        default = [d for d in usable if (d.default_input if kind == "input" else d.default_output)]
        if default:
            return default[0]
        raise LiveError(f"there is no default {kind} device: choose one with --{kind}{listing}")
    if isinstance(spec, int) or spec.strip().isdigit():
        index = int(spec)
        for d in devices:
            if d.index == index:
                if d in usable:
                    return d
                raise LiveError(f"device {d.label()} has no {kind} channels{listing}")
        raise LiveError(f"there is no device {index}{listing}")
    text = spec.strip().lower()
    exact = [d for d in usable if d.name.lower() == text]
    if len(exact) == 1:
        return exact[0]
    found = exact or [d for d in usable if text in f"{d.name} ({d.hostapi})".lower()]
    if len(found) == 1:
        return found[0]
    if not found:
        raise LiveError(f"no {kind} device matches {spec!r}{listing}")
    names = ", ".join(d.label() for d in found)
    raise LiveError(f"several {kind} devices match {spec!r}: {names}; use the index")


def pick_sample_rate(
    sd: Any,
    inp: DeviceInfo,
    out: DeviceInfo,
    requested: int | None,
    channels: tuple[int, int],
) -> int:
    """``requested`` (Hz) if both devices accept it, else, when None, the input device's default
    rate (or the output's). :class:`LiveError` when a requested rate is unsupported."""
    candidates = [requested] if requested else [int(inp.default_rate), int(out.default_rate)]
    problems: list[str] = []
    for rate in dict.fromkeys(candidates):
        problem = _rate_problem(sd, inp, out, rate, channels)
        if problem is None:
            return rate
        problems.append(problem)
    if requested:
        defaults = sorted({int(inp.default_rate), int(out.default_rate)})
        hint = " or ".join(f"--sample-rate {r}" for r in defaults)
        raise LiveError(
            f"unsupported sample rate {requested} Hz: {problems[0]}; the devices' "
            f"default {'rates are' if len(defaults) > 1 else 'rate is'} "
            f"{' / '.join(map(str, defaults))} Hz (try {hint})"
        )
    raise LiveError(
        "the input and output devices share no default sample rate ("
        + "; ".join(problems)
        + "): pass --sample-rate HZ"
    )


def _rate_problem(
    sd: Any, inp: DeviceInfo, out: DeviceInfo, rate: int, channels: tuple[int, int]
) -> str | None:
    """None when both devices open at ``rate`` Hz, else what PortAudio said."""
    if rate not in STANDARD_RATES:
        return f"{rate} Hz is not a standard rate ({', '.join(map(str, STANDARD_RATES))})"
    for dev, ch, check in (
        (inp, channels[0], sd.check_input_settings),
        (out, channels[1], sd.check_output_settings),
    ):
        try:
            check(device=dev.index, samplerate=rate, channels=ch, dtype="float32")
        except sd.PortAudioError as exc:
            return f"{dev.label()} refuses {rate} Hz ({exc})"
    return None
