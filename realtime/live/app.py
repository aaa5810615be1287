"""``comostream live``: microphone in, converted voice out, through the streaming engine.

The PortAudio callback (:class:`~comostream.realtime.live.audio.LiveMixer`) only copies samples
between preallocated rings and counts xruns; the engine runs in the converter's worker thread; the
main thread prints the status line twice a second, writes the ``--status-file``, and applies the
commands typed on stdin (singer and transposition changes run in the worker between blocks).

Latency, input to output: the converter's exact delay (:attr:`StreamingConverter.delay_samples`
plus the output buffer's prefill, which absorbs compute time) plus the devices' buffers, which
PortAudio reports (``stream.latency``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from comostream.models.config import F0Config, RealtimeConfig
from comostream.models.limits import DEFAULT_INDEX_RATE
from comostream.realtime.gil import LIVE_SWITCH_S, switch_interval
from comostream.realtime.heap import settle_heap
from comostream.realtime.live.audio import F0Tap, LiveMixer, TimedConverter, output_buffer
from comostream.realtime.live.console import (
    COMMAND_HELP,
    LineReader,
    LiveStatus,
    format_status,
    parse_command,
    speaker_text,
    write_status_file,
)
from comostream.realtime.live.devices import (
    NO_DEVICES_HINT,
    LiveError,
    find_device,
    import_sounddevice,
    pick_sample_rate,
    query_devices,
)
from comostream.realtime.live.streams import AudioStreams
from comostream.realtime.pace import PaceWatch

__all__ = ["LiveOptions", "LiveSession", "run_live"]

SETTLE_S = 2.0  # after the first callback: the output buffer grows to fit the callback size


@dataclass
class LiveOptions:
    """What ``comostream live`` was asked for (see its ``--help``)."""

    input: int | str | None = None  # device index or part of a name; None: the default
    output: int | str | None = None
    sample_rate: int | None = None  # Hz; None: the input device's default
    block: int | None = None  # model frames per step (10.67 ms each); None: [realtime]
    speaker: Any = None  # name or {name: weight}; None: the model's first singer
    transpose: float | str = 0.0  # semitones, or "auto": to the singer's register
    index_rate: float = DEFAULT_INDEX_RATE  # retrieval index blend, 0-1 (models/retrieval.py)
    monitor: float = 0.0  # level of the dry input mixed into the output, 0-1
    bypass: bool = False  # start with the dry signal
    checkpoint: Path | None = None
    vocoder: Path | None = None
    device: str = "cpu"  # torch device
    threads: int | None = None  # torch CPU threads
    latency: str | float = "high"  # PortAudio: "low", "high" or seconds
    margin_blocks: int = 1  # output buffer beyond one callback + one block: compute margin
    duration: float | None = None  # seconds, then stop; None: until q or Ctrl-C
    status_file: Path | None = None  # JSON status, rewritten with every status line
    status_interval: float = 0.5  # seconds between status lines
    stall_s: float = 3.0  # no callback for this long: the stream is reopened


class LiveSession:
    """Models, engine, converter and mixer of one live run (no device yet: :func:`run_live`
    opens the streams that drive :attr:`mixer`'s callbacks)."""

    def __init__(
        self,
        opts: LiveOptions,
        sample_rate: int,
        out_channels: int,
        realtime: RealtimeConfig | None = None,
        f0: F0Config | None = None,
    ) -> None:
        import torch

        from comostream.models.register import NoRegisterError, registers_from_prints
        from comostream.models.shipped import require_model
        from comostream.realtime.engine import StreamingConverter
        from comostream.realtime.frontend import default_f0_tracker
        from comostream.realtime.geometry import StreamGeometry
        from comostream.realtime.load import load_models, load_voiceprints

        if opts.margin_blocks < 0:
            raise LiveError(f"the compute margin must be >= 0 blocks, got {opts.margin_blocks}")
        checkpoint = require_model(opts.checkpoint)
        if opts.threads:
            torch.set_num_threads(opts.threads)
        rt = (realtime or RealtimeConfig()).with_block(opts.block)
        model, voc = load_models(checkpoint, opts.vocoder, opts.device, rt)
        registers = registers_from_prints(load_voiceprints(checkpoint))
        self.speakers: list[str] = list(model.speakers)
        self.chunk = StreamGeometry.from_configs(model.cfg.audio, rt).samples_per_block(sample_rate)
        self.f0: F0Tap | None = None

        def tracker(cfg: Any) -> F0Tap:
            self.f0 = F0Tap(default_f0_tracker(cfg))
            return self.f0

        try:
            self.engine = StreamingConverter.from_models(
                model,
                voc,
                speaker=opts.speaker,
                transpose=opts.transpose,
                index_rate=opts.index_rate,
                registers=registers,
                sample_rate=sample_rate,
                realtime=rt,
                chunk=self.chunk,
                f0=f0,
                f0_tracker=tracker,
            )
        except NoRegisterError as exc:  # --transpose auto for a singer without a register
            raise LiveError(str(exc)) from None
        self.sample_rate = sample_rate
        self.device_labels = ("", "")  # input, output (set by run_live)
        self._warm_up()
        settle_heap()  # no 100 ms garbage collection of the models' objects mid-stream
        self.margin_blocks = opts.margin_blocks
        self.conv = TimedConverter(
            self.engine, block=self.chunk, prefill=output_buffer(0, self.chunk, opts.margin_blocks)
        )
        self.mixer = LiveMixer(
            self.conv, sample_rate, out_channels, bypass=opts.bypass, monitor=opts.monitor
        )

    def _warm_up(self, seconds: float = 0.3) -> None:
        """Run a little silence through the engine (first calls of a traced step are slow),
        then start its stream afresh."""
        silence = np.zeros(self.chunk, np.float32)
        for _ in range(max(2, int(seconds * self.sample_rate / self.chunk))):
            self.engine.push(silence)
        self.engine.reset()

    def fit_buffer(self) -> int:
        """Grow the output buffer to fit the largest callback seen so far (PortAudio chooses
        the callback size); the samples added (0 when it already fits)."""
        need = output_buffer(self.mixer.largest, self.chunk, self.margin_blocks)
        extra = need - self.conv.prefill - self.conv.pending_prefill
        if extra > 0:
            self.conv.add_prefill(extra)
        return max(0, extra)

    @property
    def delay_samples(self) -> int:
        """The converter's input-to-output delay in samples: the engine's plus the prefill."""
        return self.engine.delay_samples + self.conv.prefill

    def status(self, elapsed: float, rtf: float, latency: tuple[float, float]) -> LiveStatus:
        """A :class:`LiveStatus` of now (``latency``: the devices', seconds in / out)."""
        sr, conv, mixer = self.sample_rate, self.conv, self.mixer
        return LiveStatus(
            running=True,
            elapsed_s=round(elapsed, 3),
            sample_rate=sr,
            algorithmic_ms=self.engine.latency_ms,
            converter_ms=1000.0 * self.delay_samples / sr,
            delay_samples=self.delay_samples,
            device_in_ms=1000.0 * latency[0],
            device_out_ms=1000.0 * latency[1],
            rtf=rtf,
            xruns=mixer.xruns,
            xrun_flags=dict(mixer.xrun_flags),
            dropped_blocks=conv.stats.dropped_blocks,
            concealed=conv.stats.concealed,
            f0_hz=self.f0.f0_hz if self.f0 is not None else 0.0,
            speaker=speaker_text(self.engine.speaker),
            transpose=self.engine.transpose,
            transpose_auto=self.engine.transpose_auto,
            bypass=mixer.bypass,
            monitor=mixer.monitor,
            input_device=self.device_labels[0],
            output_device=self.device_labels[1],
        )


def run_live(
    opts: LiveOptions,
    realtime: RealtimeConfig | None = None,
    out: TextIO | None = None,
    commands: TextIO | None = None,
    f0: F0Config | None = None,
) -> LiveStatus:
    """Convert from the input device to the output device until ``q``, Ctrl-C or
    ``opts.duration``; returns the final status. ``out``: where the status line goes (stdout);
    ``commands``: where typed commands come from (stdin); ``f0``: the streaming F0 tracker's
    config (None: the default)."""
    out = out or sys.stdout
    sd = import_sounddevice()
    devices = query_devices(sd)
    if not devices:
        raise LiveError("no audio devices found. " + NO_DEVICES_HINT)
    inp = find_device(devices, opts.input, "input")
    outd = find_device(devices, opts.output, "output")
    out_channels = max(1, min(2, outd.outputs))
    rate = pick_sample_rate(sd, inp, outd, opts.sample_rate, (1, out_channels))
    session = LiveSession(opts, rate, out_channels, realtime, f0)
    session.device_labels = (inp.label(), outd.label())
    with ExitStack() as stack:
        # the callback needs the GIL: have the worker hand it over every 1 ms, not 5
        stack.enter_context(switch_interval(LIVE_SWITCH_S))
        streams = AudioStreams(sd, session.mixer, inp, outd, rate, out_channels, opts.latency)
        streams.open()
        stack.callback(streams.close)
        session.conv.start()
        stack.callback(session.conv.stop)
        streams.start()
        status = _supervise(opts, session, streams, out, commands or sys.stdin)
    return status


class _Console:
    """Status lines and messages: one rewritten line on a terminal, plain lines otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self._pending = False  # a status line without its newline is on screen

    def status(self, line: str) -> None:
        if self.tty:
            self.out.write("\r\033[K" + line)
            self._pending = True
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def say(self, text: str) -> None:
        if self._pending:
            self.out.write("\r\033[K")
            self._pending = False
        self.out.write(text + "\n")
        self.out.flush()


def _supervise(
    opts: LiveOptions, session: LiveSession, streams: AudioStreams, out: TextIO, commands: TextIO
) -> LiveStatus:
    """The main thread's loop: status, commands, stream watch, stop conditions; the final
    status."""
    import torch

    console = _Console(out)
    reader = LineReader(commands)
    start = time.monotonic()

    def snapshot(rtf: float) -> LiveStatus:
        s = session.status(time.monotonic() - start, rtf, streams.latency)
        s.restarts = streams.restarts
        return s

    status = snapshot(0.0)
    inp, outd = streams.inp, streams.out
    console.say(
        f"live: {inp.label()} -> {outd.label()} at {session.sample_rate} Hz, singer "
        f"{status.speaker}, transpose {status.transpose:+g}. Type h for commands; "
        "Ctrl-C stops."
    )
    conv, mixer = session.conv, session.mixer
    settle_until: float | None = None  # the output buffer is fitted to the callbacks until then
    settled = False
    last = (start, conv.compute_s, conv.converted)
    next_status = start
    dropped = 0
    pace = PaceWatch()  # one warning when the conversion falls behind real time
    seen, progress = 0, start  # callbacks counted, and when they last moved
    quit_ = False
    failure: LiveError | None = None
    try:
        while not quit_:
            now = time.monotonic()
            if opts.duration is not None and now - start >= opts.duration:
                break
            if mixer.callbacks != seen:
                seen, progress = mixer.callbacks, now
            failed = (
                "ended by itself"
                if not streams.active
                else "stalled"
                if now - progress > opts.stall_s
                else ""
            )
            if failed:  # a device error (or a sound server gone): reopen
                streams.restart()
                seen, progress = mixer.callbacks, time.monotonic()
                console.say(f"the audio stream {failed} (a device error): reopened it")
            if settle_until is None and mixer.callbacks:
                settle_until = now + SETTLE_S
            if settle_until is not None and not settled and now < settle_until:
                session.fit_buffer()
            elif settle_until is not None and not settled and not conv.pending_prefill:
                settled = True  # say the latency once
                s = snapshot(0.0)
                console.say(
                    f"latency {s.converter_ms:.1f} ms (algorithmic {s.algorithmic_ms:.1f}"
                    f" + buffer {s.converter_ms - s.algorithmic_ms:.1f} for callbacks of "
                    f"up to {mixer.largest} samples) + device {s.device_in_ms:.1f} in / "
                    f"{s.device_out_ms:.1f} out"
                )
            for line in reader.poll():
                quit_ = _command(line, session, console) or quit_
            while not conv.errors.empty():
                console.say(f"error: {conv.errors.get()}")
            if now >= next_status:
                audio_s = (conv.converted - last[2]) / session.sample_rate
                rtf = (conv.compute_s - last[1]) / audio_s if audio_s > 0 else 0.0
                last = (now, conv.compute_s, conv.converted)
                status = snapshot(rtf)
                if status.dropped_blocks > dropped:
                    console.say(
                        f"conversion fell behind: {status.dropped_blocks - dropped} "
                        f"block(s) dropped (RTF {rtf:.2f})"
                    )
                    dropped = status.dropped_blocks
                slow = pace.check(
                    rtf if settled else None,  # the start (buffer fitting) is not judged
                    status.dropped_blocks,
                    torch.get_num_threads(),
                    session.engine.block,
                )
                if slow:
                    console.say(f"warning: {slow}")
                console.status(format_status(status))
                if opts.status_file is not None:
                    write_status_file(opts.status_file, status)
                next_status += opts.status_interval
            time.sleep(0.05)
    except KeyboardInterrupt:
        pass
    except LiveError as exc:  # the device keeps failing
        failure = exc
    streams.stop()
    status = snapshot(status.rtf)
    status.running = False
    if opts.status_file is not None:
        write_status_file(opts.status_file, status)
    if failure is not None:
        console.say("")
        raise failure
    console.say(
        f"stopped after {status.elapsed_s:.1f} s: xruns {status.xruns}, dropped "
        f"{status.dropped_blocks} blocks, concealed {status.concealed} samples; "
        f"latency {status.converter_ms:.1f} ms + device {status.device_in_ms:.1f} in / "
        f"{status.device_out_ms:.1f} out"
    )
    return status


def _has_register(engine: Any, speaker: Any) -> bool:
    """Whether the model file stores the register of ``speaker`` (what auto needs)."""
    try:
        engine.singer_register_hz(speaker)
    except ValueError:
        return False
    return True


def _command(line: str, session: LiveSession, console: _Console) -> bool:
    """Apply one typed command; True to quit."""
    try:
        cmd = parse_command(line, session.speakers)
    except ValueError as exc:
        console.say(str(exc))
        return False
    if cmd is None:
        return False
    engine, mixer = session.engine, session.mixer
    if cmd.kind == "quit":
        return True
    if cmd.kind == "help":
        console.say(COMMAND_HELP)
    elif cmd.kind == "singers":
        console.say("singers: " + ", ".join(session.speakers))
    elif cmd.kind == "bypass":
        mixer.set_bypass(not mixer.bypass)
        console.say("bypass on: dry signal" if mixer.bypass else "bypass off: converting")
    elif cmd.kind == "monitor":
        mixer.set_monitor(cmd.value)
        console.say(f"monitor level {cmd.value:g}")
    else:
        auto = cmd.value == "auto" or (cmd.kind == "speaker" and engine.transpose_auto)
        singer = cmd.value if cmd.kind == "speaker" else engine.speaker
        if auto and not _has_register(engine, singer):  # checked here: never in the worker
            console.say(f"{speaker_text(singer)}: the model file stores no register for auto")
            return False
        apply: Callable[[Any], None] = (
            engine.set_speaker if cmd.kind == "speaker" else engine.set_transpose
        )
        session.conv.submit(lambda: apply(cmd.value))
        if cmd.kind == "speaker":
            what = speaker_text(cmd.value)
        else:
            what = "auto" if cmd.value == "auto" else f"{cmd.value:+g} semitones"
        console.say(f"{cmd.kind} -> {what}")
    return False
