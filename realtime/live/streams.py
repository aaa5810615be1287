"""The PortAudio streams of ``comostream live``: one duplex stream when input and output share a
host API, else an input and an output stream; reopened when PortAudio ends them by itself."""

from __future__ import annotations

import time
from typing import Any

from comostream.realtime.live.audio import LiveMixer
from comostream.realtime.live.devices import DeviceInfo, LiveError

__all__ = ["AudioStreams"]


class AudioStreams:
    """Opens, starts, watches and closes the streams that drive ``mixer``'s callbacks.

    ``latency``: what PortAudio is asked for (``"low"``, ``"high"`` or seconds). Blocks are left
    to PortAudio (``blocksize=0``): a fixed size makes some hosts (ALSA's PulseAudio plugin)
    drift; the converter's output buffer is fitted to the sizes it sees instead.
    """

    def __init__(
        self,
        sd: Any,
        mixer: LiveMixer,
        inp: DeviceInfo,
        out: DeviceInfo,
        sample_rate: int,
        out_channels: int,
        latency: str | float,
    ) -> None:
        self.sd, self.mixer, self.inp, self.out = sd, mixer, inp, out
        self.sample_rate, self.out_channels, self.requested_latency = (
            sample_rate,
            out_channels,
            latency,
        )
        self.streams: list[Any] = []
        self._latency = (0.0, 0.0)  # the last streams' (kept when reopening fails)
        self.restarts = 0  # times PortAudio ended the stream and it was reopened
        self._restart_times: list[float] = []

    @property
    def duplex(self) -> bool:
        return self.inp.hostapi == self.out.hostapi

    def open(self) -> None:
        """Open (not start) the streams; :class:`LiveError` saying which device refused."""
        common = dict(
            samplerate=self.sample_rate,
            blocksize=0,
            dtype="float32",
            latency=self.requested_latency,
        )
        sd, mixer = self.sd, self.mixer
        try:
            if self.duplex:
                self.streams = [
                    sd.Stream(
                        device=(self.inp.index, self.out.index),
                        channels=(1, self.out_channels),
                        callback=mixer.duplex_callback,
                        **common,
                    )
                ]
            else:
                self.streams = [
                    sd.InputStream(
                        device=self.inp.index, channels=1, callback=mixer.input_callback, **common
                    ),
                    sd.OutputStream(
                        device=self.out.index,
                        channels=self.out_channels,
                        callback=mixer.output_callback,
                        **common,
                    ),
                ]
        except sd.PortAudioError as exc:
            self.close()
            raise LiveError(
                f"cannot open {self.inp.label()} -> {self.out.label()} at "
                f"{self.sample_rate} Hz: {exc}"
            ) from None

    def start(self) -> None:
        """Start them: the input first (separate streams are aligned at the first output)."""
        self.mixer.resync()
        for s in self.streams:
            s.start()

    @property
    def active(self) -> bool:
        return all(s.active for s in self.streams)

    @property
    def latency(self) -> tuple[float, float]:
        """PortAudio's (input, output) latency in seconds (the last streams' when closed)."""
        if len(self.streams) == 1:
            lin, lout = self.streams[0].latency
            self._latency = (float(lin), float(lout))
        elif len(self.streams) == 2:
            self._latency = (float(self.streams[0].latency), float(self.streams[1].latency))
        return self._latency

    def restart(self, limit: int = 5, window_s: float = 60.0) -> None:
        """Reopen streams that failed: ended by PortAudio itself (some hosts do after an
        underrun they cannot recover) or stalled (no callback: a sound server that went away).
        :class:`LiveError` after ``limit`` restarts within ``window_s`` seconds, or when the
        device does not open again."""
        now = time.monotonic()
        self._restart_times = [t for t in self._restart_times if now - t < window_s] + [now]
        if len(self._restart_times) > limit:
            raise LiveError(
                f"the audio stream failed {limit + 1} times within {window_s:.0f} s "
                "(ended or stalled): the device fails (PortAudio's messages above "
                "may say more)"
            )
        self.stop()
        self.close()
        self.open()
        self.start()
        self.restarts += 1

    def stop(self) -> None:
        """Abort the streams: no draining, and no waiting on a device that hangs."""
        for s in self.streams:
            s.abort()

    def close(self) -> None:
        for s in self.streams:
            s.close()
        self.streams = []
