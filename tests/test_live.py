"""``comostream live`` without a sound card: device choice and errors, console commands, the
callback side (delay, bypass, monitor, xruns, separate streams) and a whole run on a fake
PortAudio whose stream calls the callback in real time. The real audio loop is
``tests/test_live_loop.py``."""

from __future__ import annotations

import builtins
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from comostream.realtime.engine import StreamingConverter
from comostream.realtime.live.audio import LiveMixer, TimedConverter, output_buffer
from comostream.realtime.live.console import LiveStatus, format_status, parse_command
from comostream.realtime.live.devices import (
    DeviceInfo,
    LiveError,
    find_device,
    format_devices,
    import_sounddevice,
    pick_sample_rate,
)

from helpers import IdentityStep, silent_f0

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
SINGERS = ["alto", "bass", "tenor"]
SR = 24000  # the identity engine's rate (no resampling: clicks pass unchanged)


def _devices() -> list[DeviceInfo]:
    return [
        DeviceInfo(0, "HDA Intel PCH: ALC892 Analog (hw:0,0)", "ALSA", 2, 2, 44100.0),
        DeviceInfo(1, "USB Audio CODEC (hw:1,0)", "ALSA", 1, 0, 48000.0),
        DeviceInfo(2, "pulse", "ALSA", 32, 32, 44100.0),
        DeviceInfo(3, "default", "ALSA", 32, 32, 44100.0, True, True),
        DeviceInfo(4, "USB Audio CODEC", "JACK Audio Connection Kit", 0, 2, 48000.0),
        DeviceInfo(5, "USB Audio CODEC (hw:2,0)", "ALSA", 0, 2, 48000.0),
    ]


# ---------------------------------------------------------------- devices


def test_find_device_by_index_name_part_and_default() -> None:
    devs = _devices()
    assert find_device(devs, 1, "input").index == 1
    assert find_device(devs, "2", "output").index == 2
    assert find_device(devs, "alc892", "input").index == 0
    assert find_device(devs, "usb audio", "input").index == 1  # the JACK one has no input
    assert find_device(devs, "jack", "output").index == 4  # the host API's name counts
    assert find_device(devs, "PULSE", "output").index == 2  # exact name, any case
    assert find_device(devs, None, "input").index == 3


def test_find_device_errors_list_the_devices() -> None:
    devs = _devices()
    with pytest.raises(LiveError, match=r"no input device matches 'scarlett'[\s\S]*ALC892"):
        find_device(devs, "scarlett", "input")
    with pytest.raises(LiveError, match="several output devices match 'usb'.*use the index"):
        find_device(devs, "usb", "output")
    with pytest.raises(LiveError, match=r"device 1 'USB Audio CODEC \(hw:1,0\)'.*no output"):
        find_device(devs, 1, "output")
    with pytest.raises(LiveError, match="there is no device 9"):
        find_device(devs, 9, "input")
    no_default = [d for d in devs if not d.default_input]
    with pytest.raises(LiveError, match="no default input device: choose one with --input"):
        find_device(no_default, None, "input")
    with pytest.raises(LiveError, match="no input device found.*pulseaudio"):
        find_device([devs[4]], None, "input")


def test_device_table_and_the_empty_case() -> None:
    table = format_devices(_devices())
    assert "><  3  default (ALSA)" in table and "48000 Hz" in table
    empty = format_devices([])
    assert empty.startswith("no audio devices found")
    assert "libasound2-plugins" in empty and "pulseaudio --start" in empty


class _FakeSd:
    """Enough of ``sounddevice`` for device selection (rates: what each device accepts)."""

    class PortAudioError(Exception):
        pass

    def __init__(self, rates: dict[int, set[int]]) -> None:
        self.rates = rates

    def _check(self, device: int, samplerate: float, **_: Any) -> None:
        if int(samplerate) not in self.rates[device]:
            raise self.PortAudioError("Invalid sample rate [PaErrorCode -9997]")

    check_input_settings = check_output_settings = _check


def test_sample_rate_defaults_to_the_input_device_and_refuses_clearly() -> None:
    devs = _devices()
    sd = _FakeSd({0: {44100, 48000}, 1: {48000}, 2: {44100, 48000, 96000}})
    assert pick_sample_rate(sd, devs[0], devs[2], None, (1, 2)) == 44100
    assert pick_sample_rate(sd, devs[1], devs[2], None, (1, 2)) == 48000
    assert pick_sample_rate(sd, devs[0], devs[2], 48000, (1, 2)) == 48000
    with pytest.raises(
        LiveError,
        match=r"unsupported sample rate 96000 Hz: 0 'HDA.*refuses "
        r"96000 Hz.*default rate is 44100 Hz \(try --sample-rate 44100\)",
    ):
        pick_sample_rate(sd, devs[0], devs[2], 96000, (1, 2))
    with pytest.raises(LiveError, match="12345 Hz is not a standard rate"):
        pick_sample_rate(sd, devs[2], devs[2], 12345, (1, 2))
    with pytest.raises(LiveError, match="share no default sample rate"):
        pick_sample_rate(_FakeSd({0: {44100}, 1: {48000}}), devs[1], devs[0], None, (1, 2))


def test_missing_portaudio_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(LiveError, match="install the Debian package libportaudio2"):
        import_sounddevice()


def test_list_devices_on_a_machine_without_any() -> None:
    env = dict(os.environ, PULSE_SERVER="unix:/nonexistent/comostream-test")  # no sound server
    res = subprocess.run(
        [sys.executable, "-m", "comostream", "live", "--list-devices"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    if "no audio devices found" not in res.stdout:
        pytest.skip(f"this machine has sound devices:\n{res.stdout}")
    assert "sudo apt-get install pulseaudio libasound2-plugins" in res.stdout


# ---------------------------------------------------------------- console


def test_console_commands_parse_and_refuse_clearly() -> None:
    assert parse_command("s tenor", SINGERS).value == "tenor"
    assert parse_command("s alto:0.5, bass:0.5", SINGERS).value == {"alto": 0.5, "bass": 0.5}
    assert parse_command("t +3", SINGERS).value == 3.0
    assert parse_command("transpose -12", SINGERS).value == -12.0
    assert parse_command("m 0.25", SINGERS).value == 0.25
    assert [parse_command(c, SINGERS).kind for c in ("b", "q", "h", "l")] == [
        "bypass",
        "quit",
        "help",
        "singers",
    ]
    assert parse_command("   ", SINGERS) is None
    for line, message in [
        ("s soprano", "unknown speaker 'soprano'.*alto, bass, tenor"),
        ("s alto:x", "expected a number"),
        ("t 60", "within \\+-48"),
        ("t up", "expected a number"),
        ("m 2", "within 0-1"),
        ("s alto:0,bass:0", "positive weight"),
        ("xyz", "unknown command"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_command(line, SINGERS)


def test_status_line_shows_what_the_issue_asks() -> None:
    s = LiveStatus(
        sample_rate=48000,
        converter_ms=88.7,
        device_in_ms=32.0,
        device_out_ms=32.0,
        rtf=0.21,
        xruns=2,
        dropped_blocks=1,
        concealed=480,
        f0_hz=220.0,
        speaker="bass",
        transpose=12.0,
    )
    line = format_status(s)
    for part in (
        "latency 88.7 ms + device 32.0/32.0 ms",
        "RTF 0.21",
        "xruns 2",
        "late 10 ms",
        "dropped 1",
        "F0 220.0>440.0 Hz",
        "bass +12 st",
    ):
        assert part in line, line
    assert "BYPASS" in format_status(LiveStatus(bypass=True))
    assert "F0   -" in format_status(LiveStatus())
    assert json.loads(s.to_json())["total_ms"] == pytest.approx(152.7)


# ---------------------------------------------------------------- the callback side


def _identity_converter() -> TimedConverter:
    """A 24 kHz identity engine behind a converter whose output buffer fits the callbacks of
    :func:`_sizes` (up to 1024 samples) with a margin of one 512-sample block."""
    engine = StreamingConverter(IdentityStep(0), f0_tracker=silent_f0(), chunk=512)
    return TimedConverter(engine, block=512, prefill=output_buffer(1024, 512, 1))


def _clicks(n: int, every: int = 2400) -> np.ndarray:
    x = np.zeros(n, np.float32)
    x[every // 2 :: every] = 1.0
    return x


def _sizes(n: int) -> list[int]:
    """Callback sizes as PortAudio gives them with blocksize 0 (irregular)."""
    pattern, out, total = [512, 1, 3, 700, 1024, 257, 512, 512], [], 0
    while total < n:
        out.append(min(pattern[len(out) % len(pattern)], n - total))
        total += out[-1]
    return out


def _run_duplex(
    mixer: LiveMixer, x: np.ndarray, channels: int = 1, before: Any = None
) -> np.ndarray:
    """Feed ``x`` through ``mixer.duplex_callback`` in irregular blocks, converting in between;
    ``before(pos)`` runs before each callback."""
    y = np.zeros((x.shape[0], channels), np.float32)
    pos = 0
    for n in _sizes(x.shape[0]):
        if before is not None:
            before(pos)
        mixer.duplex_callback(x[pos : pos + n, None], y[pos : pos + n], n, None, None)
        mixer.conv.process_available()
        pos += n
    return y


def test_duplex_delay_is_the_converters_exactly_in_every_channel() -> None:
    conv = _identity_converter()
    mixer = LiveMixer(conv, SR, out_channels=2)
    x = _clicks(SR * 2)
    y = _run_duplex(mixer, x, channels=2)
    delay = conv.engine.delay_samples + conv.prefill
    src, got = np.flatnonzero(x > 0.5), np.flatnonzero(y[:, 0] > 0.5)
    assert len(got) >= len(src) - 3
    np.testing.assert_array_equal(got - src[: len(got)], delay)
    np.testing.assert_array_equal(y[:, 0], y[:, 1])
    assert conv.stats.concealed == 0 and mixer.xruns == 0


def test_bypass_ramps_to_the_dry_signal_and_back() -> None:
    conv = _identity_converter()
    mixer = LiveMixer(conv, SR)
    x = (0.5 * np.sin(2 * np.pi * 220 * np.arange(SR * 2) / SR)).astype(np.float32)

    def toggle(pos: int) -> None:
        if SR // 2 <= pos < SR and not mixer.bypass:
            mixer.set_bypass(True)
        if pos >= 3 * SR // 2 and mixer.bypass:
            mixer.set_bypass(False)

    y = _run_duplex(mixer, x, before=toggle)[:, 0]
    delay = conv.engine.delay_samples + conv.prefill
    dry, wet = slice(SR * 6 // 10, SR * 14 // 10), slice(SR * 17 // 10, None)
    np.testing.assert_allclose(y[dry], x[dry], atol=1e-6)  # bypass: no delay
    np.testing.assert_allclose(y[wet], x[wet.start - delay : -delay], atol=1e-6)  # converted
    # a 10 ms cross-fade each way: a hard switch would jump by up to |x - x delayed| ~ 1
    for switch in (SR // 2, 3 * SR // 2):
        assert np.max(np.abs(np.diff(y[switch - 500 : switch + 1500]))) < 0.1


def test_monitor_mixes_the_dry_input_in() -> None:
    conv = _identity_converter()
    mixer = LiveMixer(conv, SR, monitor=0.25)
    x = _clicks(SR)
    y = _run_duplex(mixer, x)[:, 0]
    delay = conv.engine.delay_samples + conv.prefill
    src = np.flatnonzero(x > 0.5)
    np.testing.assert_allclose(y[src], 0.25, atol=1e-6)
    np.testing.assert_allclose(y[src[:-3] + delay], 1.0, atol=1e-6)


def test_xrun_flags_are_counted_per_callback() -> None:
    mixer = LiveMixer(_identity_converter(), SR)
    buf_in, buf_out = np.zeros((256, 1), np.float32), np.zeros((256, 1), np.float32)
    flags = [
        SimpleNamespace(
            input_overflow=True, input_underflow=False, output_overflow=False, output_underflow=True
        ),
        SimpleNamespace(
            input_overflow=False,
            input_underflow=False,
            output_overflow=False,
            output_underflow=True,
        ),
    ]
    for f in flags:
        mixer.duplex_callback(buf_in, buf_out, 256, None, f)
    assert mixer.xruns == 2
    assert mixer.xrun_flags == {
        "input_overflow": 1,
        "input_underflow": 0,
        "output_overflow": 0,
        "output_underflow": 2,
    }


def test_separate_streams_are_aligned_to_the_duplex_delay() -> None:
    conv = _identity_converter()
    mixer = LiveMixer(conv, SR)
    x = _clicks(SR * 2)
    y = np.zeros((x.shape[0] + SR, 1), np.float32)
    head = 7000  # the input stream runs this long before the output stream's first callback
    pos_in = pos_out = 0
    first_in = None  # input samples captured when the output stream starts
    for n in _sizes(x.shape[0]):
        mixer.input_callback(x[pos_in : pos_in + n, None], n, None, None)
        pos_in += n
        conv.process_available()
        if pos_in >= head:
            first_in = pos_in if first_in is None else first_in
            mixer.output_callback(y[pos_out : pos_out + n], n, None, None)
            pos_out += n
    delay = conv.engine.delay_samples + conv.prefill
    src, got = np.flatnonzero(x > 0.5), np.flatnonzero(y[:, 0] > 0.5)
    # what the input gathered before the output started is skipped: output sample j is input
    # sample first_in + j - delay, which is captured while output sample j - (last block) plays
    expected = src + delay - first_in
    expected = expected[(expected >= 0) & (expected < pos_out)]
    assert first_in is not None and len(expected) > 10
    np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------- a whole run on a fake PortAudio


class _FakeStream:
    """A duplex stream whose thread calls the callback with a 200 Hz tone in real time (and
    ends by itself after ``die_after`` seconds, as PortAudio does when a device fails)."""

    latency = (0.010, 0.020)
    die_after: float | None = None  # seconds, then the thread ends (PortAudio ended it)
    stall_after: float | None = None  # seconds, then no more callbacks (a device that hangs)

    def __init__(self, samplerate: int, channels: tuple[int, int], callback: Any, **_: Any) -> None:
        self.rate, self.channels, self.callback = samplerate, channels, callback
        self._stop = threading.Event()
        self.out: list[np.ndarray] = []

    @property
    def active(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n, t, k = 480, time.monotonic(), 0
        while not self._stop.is_set():
            if self.die_after is not None and k * n >= self.die_after * self.rate:
                return
            if self.stall_after is not None and k * n >= self.stall_after * self.rate:
                self._stop.wait()
                return
            i = np.arange(k * n, (k + 1) * n)
            tone = (0.3 * np.sin(2 * np.pi * 200.0 * i / self.rate)).astype(np.float32)
            out = np.zeros((n, self.channels[1]), np.float32)
            self.callback(tone[:, None], out, n, None, None)
            self.out.append(out[:, 0].copy())
            k += 1
            time.sleep(max(0.0, t + k * n / self.rate - time.monotonic()))

    def abort(self) -> None:
        self._stop.set()
        self._thread.join()

    def close(self) -> None:
        self._stop.set()


def _fake_portaudio(streams: list[_FakeStream]) -> SimpleNamespace:
    """A ``sounddevice`` with one full-duplex 48 kHz device whose streams are ``_FakeStream``."""
    return SimpleNamespace(
        query_hostapis=lambda: [{"name": "ALSA"}],
        query_devices=lambda: [
            {
                "name": "pulse",
                "hostapi": 0,
                "max_input_channels": 2,
                "max_output_channels": 2,
                "default_samplerate": 48000.0,
            }
        ],
        default=SimpleNamespace(device=(0, 0)),
        PortAudioError=RuntimeError,
        check_input_settings=lambda **_: None,
        check_output_settings=lambda **_: None,
        Stream=lambda **kw: streams.append(_FakeStream(**kw)) or streams[-1],
    )


def test_a_whole_run_with_commands_and_status(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from comostream.realtime.live import app as live

    from helpers import write_tiny_model

    streams: list[_FakeStream] = []
    monkeypatch.setattr(live, "import_sounddevice", lambda: _fake_portaudio(streams))
    opts = live.LiveOptions(
        checkpoint=write_tiny_model(tmp_path / "tiny.ckpt"),
        threads=1,
        speaker="alto",
        transpose=2.0,
        duration=2.5,
        status_file=tmp_path / "status.json",
    )
    out = io.StringIO()
    commands = io.StringIO("s tenor\nt -1\ns soprano\nm 0.5\nb\nl\n")
    final = live.run_live(opts, out=out, commands=commands)
    text = out.getvalue()
    assert "live: 0 'pulse' (ALSA) -> 0 'pulse' (ALSA) at 48000 Hz, singer alto" in text
    assert "unknown speaker 'soprano'" in text and "singers: alto, bass, tenor" in text
    assert "bypass on: dry signal" in text and "monitor level 0.5" in text
    assert text.count("latency ") >= 4  # the header, status lines, the final line
    assert re.search(r"stopped after 2\.\d s: xruns 0, dropped 0 blocks", text), text
    saved = json.loads((tmp_path / "status.json").read_text())
    assert saved == json.loads(final.to_json())
    assert not final.running and final.speaker == "tenor" and final.transpose == -1.0
    assert final.bypass and final.monitor == 0.5
    assert final.converter_ms == pytest.approx(1000 * final.delay_samples / 48000)
    # the buffer was fitted to the 480-sample callbacks; the engine's latency counts one chunk
    buffer = output_buffer(480, 1024, 1) - 1024
    assert final.converter_ms - final.algorithmic_ms == pytest.approx(1000 * buffer / 48000)
    assert "buffer 31.3 for callbacks of up to 480 samples" in text
    assert final.device_in_ms == 10.0 and final.device_out_ms == 20.0
    assert final.rtf > 0 and final.dropped_blocks == 0
    played = np.concatenate(streams[0].out)
    assert np.abs(played[-4800:]).max() > 0.1  # bypass: the tone itself at the end


@pytest.mark.parametrize("failure", ["die_after", "stall_after"])
def test_a_failing_stream_is_reopened_until_it_keeps_failing(
    failure: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from comostream.realtime.live import app as live

    from helpers import write_tiny_model

    monkeypatch.setattr(_FakeStream, failure, 0.3)
    monkeypatch.setattr(live, "import_sounddevice", lambda: _fake_portaudio([]))
    opts = live.LiveOptions(
        checkpoint=write_tiny_model(tmp_path / "tiny.ckpt"),
        threads=1,
        duration=20.0,
        status_file=tmp_path / "status.json",
        stall_s=0.3,
    )
    out = io.StringIO()
    with pytest.raises(LiveError, match="failed 6 times within 60 s .ended or stalled.: the "):
        live.run_live(opts, out=out, commands=io.StringIO())
    what = "ended by itself" if failure == "die_after" else "stalled"
    assert out.getvalue().count(f"the audio stream {what} (a device error): reopened it") == 5
    status = json.loads((tmp_path / "status.json").read_text())
    assert not status["running"] and status["restarts"] == 5 and status["elapsed_s"] < 10


def test_one_spelling_of_a_singer_mix_everywhere_it_is_printed() -> None:
    from comostream.models.mix import speaker_text
    from comostream.realtime.live import console

    assert console.speaker_text is speaker_text  # live, convert, demo and client share it
    assert speaker_text("alto") == "alto"
    assert speaker_text({"a": 0.5, "b": 0.5}) == "a:0.5,b:0.5"
    assert speaker_text({"a": 1.0, "b": 3}) == "a:1,b:3"
    status = LiveStatus(sample_rate=48000)
    status.speaker = speaker_text({"a": 0.25, "b": 0.75})  # what the session reports
    line = format_status(status)
    assert "a:0.25,b:0.75 +0 st" in line and "{" not in line
