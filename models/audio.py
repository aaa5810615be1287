"""Audio file I/O (soundfile) and offline high-quality resampling (torchaudio, Kaiser sinc).

All audio is float32 in [-1, 1]; mono arrays are ``(samples,)``, multichannel ``(channels,
samples)``. Every read checks for a missing/unreadable file, a sample rate outside
:data:`~comostream.models.limits.FILE_RATE_MIN`-:data:`~comostream.models.limits.FILE_RATE_MAX`
(before any sample is read), zero samples and NaN/Inf, raising :class:`AudioError` with the file
name. Long files go through in pieces with bounded memory: :func:`open_audio` /
:func:`read_blocks` read them, :class:`ChunkedResampler` resamples them (the same samples as
:func:`resample` of the whole), :class:`AudioWriter` writes them atomically.

Outputs (:func:`save_audio`, :class:`AudioWriter`) take their format from the file's extension
(:data:`OUTPUT_FORMATS`: .wav, .flac, .ogg) and, unless a subtype is given, the subtype of
:data:`DEFAULT_SUBTYPES`: WAV 32-bit float (the samples as computed, never clipped), FLAC
24-bit PCM (FLAC holds no float; clipped to [-1, 1]), OGG Vorbis. :func:`output_format` checks
a path and subtype before anything is computed.
"""

from __future__ import annotations

import math
import os
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torchaudio.functional.functional import _get_sinc_resample_kernel

from comostream.models.limits import check_file_rate

__all__ = [
    "DEFAULT_SUBTYPES",
    "OUTPUT_FORMATS",
    "AudioError",
    "AudioInfo",
    "AudioWriter",
    "ChunkedResampler",
    "WavWriter",
    "check_finite",
    "open_audio",
    "output_format",
    "read_audio",
    "read_blocks",
    "load_audio",
    "resample",
    "save_audio",
    "save_wav",
]

# librosa "kaiser_best"-equivalent sinc interpolation: ~ -100 dB stopband, 95% passband.
_LOWPASS_WIDTH = 64
_ROLLOFF = 0.9475937167399596
_BETA = 14.769656459379492

_FLOAT_SUBTYPES = {"FLOAT", "DOUBLE"}
_UNCLIPPED = {*_FLOAT_SUBTYPES, "VORBIS", "OPUS"}  # subtypes that hold samples beyond +-1

OUTPUT_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}  # extension -> format
DEFAULT_SUBTYPES = {"WAV": "FLOAT", "FLAC": "PCM_24", "OGG": "VORBIS"}
VORBIS_MAX_RATE = 192000  # libvorbis crashes the process (no error) at 256 kHz and above
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


class AudioError(ValueError):
    """An audio file or array is missing, unreadable, empty or not finite."""


def check_finite(audio: np.ndarray, what: str) -> None:
    """Raise :class:`AudioError` naming ``what`` if ``audio`` has NaN or Inf samples."""
    if not np.all(np.isfinite(audio)):
        n_nan = int(np.count_nonzero(np.isnan(audio)))
        n_inf = int(np.count_nonzero(np.isinf(audio)))
        raise AudioError(f"{what}: contains non-finite samples ({n_nan} NaN, {n_inf} Inf)")


def read_audio(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Read wav/flac/ogg (anything libsndfile reads) at its native rate.

    Returns ``(audio (samples,) float32 mono = mean of channels, sample_rate Hz)``.
    """
    p = Path(path)
    open_audio(p)  # exists, readable, a sane rate: before any sample is read
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, MemoryError) as exc:
        raise AudioError(f"{p}: unreadable or corrupt audio file ({exc})") from None
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError(f"{p}: audio file has zero samples")
    check_finite(data, str(p))
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32), int(sr)


def load_audio(path: str | os.PathLike[str], sample_rate: int = 24000) -> np.ndarray:
    """Read an audio file as mono float32 ``(samples,)`` resampled to ``sample_rate`` Hz."""
    audio, sr = read_audio(path)
    return resample(audio, sr, sample_rate)


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Offline band-limited resampling (Kaiser-windowed sinc, width 64), ``sr_in`` -> ``sr_out`` Hz.

    ``audio`` is ``(samples,)`` or ``(channels, samples)``; the output keeps the layout with
    ``ceil(samples * sr_out / sr_in)`` samples, float32. Identity (a float32 copy) when equal.
    """
    if int(sr_in) != sr_in or int(sr_out) != sr_out or sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive integers, got {sr_in} -> {sr_out}")
    x = np.asarray(audio)
    if x.ndim not in (1, 2):
        raise ValueError(f"audio must be (samples,) or (channels, samples), got {x.shape}")
    if sr_in == sr_out:
        return np.array(x, dtype=np.float32)
    if x.shape[-1] == 0:
        return np.zeros(x.shape, dtype=np.float32)
    with torch.no_grad():
        y = AF.resample(
            torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
            int(sr_in),
            int(sr_out),
            lowpass_filter_width=_LOWPASS_WIDTH,
            rolloff=_ROLLOFF,
            resampling_method="sinc_interp_kaiser",
            beta=_BETA,
        )
    return y.numpy().astype(np.float32, copy=False)


def output_format(
    path: str | os.PathLike[str],
    subtype: str | None = None,
    format: str | None = None,
    sample_rate: int | None = None,
) -> tuple[str, str]:
    """``(format, subtype)`` an output file at ``path`` is written in: the format of its
    extension (:data:`OUTPUT_FORMATS`, or ``format`` when given), the subtype given (checked
    against the format) or the format's default (:data:`DEFAULT_SUBTYPES`). Raises
    :class:`AudioError` naming the file for an unknown extension, a subtype the format does
    not hold or a ``sample_rate`` it cannot take (Vorbis above 192 kHz, Opus but at 8, 12,
    16, 24 and 48 kHz); nothing is written."""
    fmt, st = _format_and_subtype(Path(path), subtype, format)
    if sample_rate is not None:
        rate = int(sample_rate)
        if st == "VORBIS" and rate > VORBIS_MAX_RATE:
            raise AudioError(
                f"{path}: Ogg Vorbis holds rates up to {VORBIS_MAX_RATE} Hz, not {rate}; "
                "write .flac or .wav"
            )
        if st == "OPUS" and rate not in OPUS_RATES:
            raise AudioError(
                f"{path}: Opus holds the rates {', '.join(map(str, OPUS_RATES))} Hz only, "
                f"not {rate}; use --subtype VORBIS, or write .flac or .wav"
            )
    return fmt, st


def _format_and_subtype(p: Path, subtype: str | None, format: str | None) -> tuple[str, str]:
    """:func:`output_format` without the rate."""
    if format is None:
        fmt = OUTPUT_FORMATS.get(p.suffix.lower())
        if fmt is None:
            what = f"extension {p.suffix!r}" if p.suffix else "no extension"
            raise AudioError(
                f"{p}: {what}: the output format follows the file name; "
                f"end it in {', '.join(OUTPUT_FORMATS)}"
            )
    else:
        fmt = format.upper()
    if subtype is None:
        return fmt, DEFAULT_SUBTYPES.get(fmt) or sf.default_subtype(fmt)
    st = subtype.upper()
    if st not in sf.available_subtypes(fmt) or not sf.check_format(fmt, st):
        raise AudioError(
            f"{p}: {fmt} files cannot hold subtype {subtype!r}; "
            f"choose one of {', '.join(sorted(sf.available_subtypes(fmt)))}"
        )
    return fmt, st


def save_wav(
    path: str | os.PathLike[str], audio: np.ndarray, sample_rate: int, subtype: str = "PCM_16"
) -> None:
    """:func:`save_audio` as a WAV file whatever the name (16-bit PCM unless ``subtype``)."""
    save_audio(path, audio, sample_rate, subtype, format="WAV")


def save_audio(
    path: str | os.PathLike[str],
    audio: np.ndarray,
    sample_rate: int,
    subtype: str | None = None,
    format: str | None = None,
) -> None:
    """Atomically write ``audio`` (``(samples,)`` or ``(channels, samples)``) to ``path``, in
    the format of its extension and the subtype given or the format's default
    (:func:`output_format`; ``format`` overrides the extension).

    Writes a temp file in the target directory then ``os.replace``s it, creating parent
    directories. PCM subtypes are clipped to [-1, 1]; float and Vorbis/Opus are not.
    Raises :class:`AudioError` on NaN/Inf samples, a bad format or a write failure.
    """
    p = Path(path)
    fmt, subtype = output_format(p, subtype, format, sample_rate)
    x = np.asarray(audio)
    if x.ndim not in (1, 2):
        raise AudioError(f"{p}: audio must be (samples,) or (channels, samples), got {x.shape}")
    x = x.astype(np.float64 if subtype == "DOUBLE" else np.float32, copy=False)
    check_finite(x, str(p))
    if subtype not in _UNCLIPPED:
        x = np.clip(x, -1.0, 1.0)
    frames = x if x.ndim == 1 else x.T  # soundfile wants (samples, channels)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            sf.write(fh, frames, int(sample_rate), subtype=subtype, format=fmt)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, p)
    except (
        sf.LibsndfileError,
        RuntimeError,
        TypeError,
        ValueError,
        OSError,
        AssertionError,
    ) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise AudioError(f"{p}: could not write audio ({_why(exc)})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- long files in pieces


@dataclass(frozen=True)
class AudioInfo:
    """What :func:`open_audio` found: ``frames`` readable (per channel), ``sample_rate`` Hz,
    ``channels``, and ``missing_frames`` that a WAV header promises beyond the file's end
    (a truncated file: libsndfile reads what is there)."""

    path: Path
    sample_rate: int
    frames: int
    channels: int
    missing_frames: int = 0

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate

    @property
    def missing_seconds(self) -> float:
        return self.missing_frames / self.sample_rate


def open_audio(path: str | os.PathLike[str]) -> AudioInfo:
    """Check ``path`` without reading its samples: readable, a sane rate
    (:func:`~comostream.models.limits.check_file_rate`), at least one sample. Raises
    :class:`AudioError` naming the file."""
    p = Path(path)
    if not p.exists():
        raise AudioError(f"{p}: file not found")
    if not p.is_file():
        raise AudioError(f"{p}: not a regular file")
    try:
        with sf.SoundFile(str(p)) as f:
            rate, frames, channels = int(f.samplerate), int(f.frames), int(f.channels)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"{p}: unreadable or corrupt audio file ({exc})") from None
    try:
        check_file_rate(rate, str(p))
    except ValueError as exc:
        raise AudioError(str(exc)) from None
    if frames <= 0 or channels <= 0:
        raise AudioError(f"{p}: audio file has zero samples")
    return AudioInfo(p, rate, frames, channels, _wav_missing_frames(p, frames))


def _wav_missing_frames(p: Path, frames: int) -> int:
    """Frames a RIFF/WAVE header's ``data`` chunk promises beyond ``frames`` (0 when none, or
    not a WAV, or a streaming writer's placeholder size)."""
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(65536)
    except OSError:
        return 0
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return 0
    pos, block_align = 12, 0
    while pos + 8 <= len(head):
        cid, length = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
        if cid == b"fmt " and pos + 22 <= len(head):
            block_align = struct.unpack("<H", head[pos + 20 : pos + 22])[0]
        if cid == b"data":
            if block_align <= 0 or length in (0, 0xFFFFFFFF):
                return 0
            promised = length // block_align
            held = (size - pos - 8) // block_align
            return max(0, min(promised - held, promised - frames))
        pos += 8 + length + (length & 1)
    return 0


def read_blocks(info: AudioInfo, frames: int = 65536) -> Iterator[np.ndarray]:
    """The mono mix (float32, the mean of the channels as :func:`read_audio` takes it) of the
    file of ``info`` in blocks of ``frames`` samples (the last shorter); AudioError on NaN/Inf."""
    p = info.path
    done = 0
    try:
        with sf.SoundFile(str(p)) as f:
            while True:
                data = f.read(frames, dtype="float32", always_2d=True)
                if data.shape[0] == 0:
                    break
                check_finite(data, f"{p} (from sample {done})")
                done += data.shape[0]
                mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
                yield np.ascontiguousarray(mono, dtype=np.float32)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"{p}: unreadable or corrupt audio file ({exc})") from None


class ChunkedResampler:
    """:func:`resample` of a mono signal given in pieces: the same samples (to float rounding) as
    resampling the whole, with memory bounded by the piece. ``push`` returns what is complete;
    ``flush`` the rest, ``ceil(total * sr_out / sr_in)`` samples in all."""

    def __init__(self, sr_in: int, sr_out: int) -> None:
        if sr_in <= 0 or sr_out <= 0:
            raise ValueError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
        self.sr_in, self.sr_out = int(sr_in), int(sr_out)
        self.gcd = math.gcd(self.sr_in, self.sr_out)
        self.up, self.down = self.sr_out // self.gcd, self.sr_in // self.gcd
        self.kernel, self.width = _get_sinc_resample_kernel(
            self.sr_in,
            self.sr_out,
            self.gcd,
            lowpass_filter_width=_LOWPASS_WIDTH,
            rolloff=_ROLLOFF,
            resampling_method="sinc_interp_kaiser",
            beta=_BETA,
            dtype=torch.float32,
        )
        self._buf = np.zeros(self.width, np.float32)  # the whole signal's left padding
        self._seen = 0  # input samples pushed
        self._given = 0  # output samples returned

    def _groups(self) -> np.ndarray:
        """Run every complete stride of the buffer (``down`` inputs -> ``up`` outputs)."""
        span = 2 * self.width + self.down  # the kernel's length
        groups = (self._buf.shape[0] - span) // self.down + 1
        if groups <= 0:
            return np.zeros(0, np.float32)
        used = (groups - 1) * self.down + span
        x = torch.from_numpy(np.ascontiguousarray(self._buf[:used]))[None, None]
        with torch.no_grad():
            y = torch.nn.functional.conv1d(x, self.kernel, stride=self.down)
        self._buf = self._buf[groups * self.down :].copy()
        return y[0].T.reshape(-1).numpy().astype(np.float32, copy=False)

    def push(self, x: np.ndarray) -> np.ndarray:
        """Feed ``(n,)`` samples at ``sr_in``; the output samples now complete."""
        if self.sr_in == self.sr_out:
            self._seen += x.shape[0]
            return np.array(x, dtype=np.float32)
        self._seen += x.shape[0]
        self._buf = np.concatenate([self._buf, np.asarray(x, np.float32)])
        y = self._groups()
        self._given += y.shape[0]
        return y

    def flush(self) -> np.ndarray:
        """The rest of the output (the whole signal's right padding run through)."""
        if self.sr_in == self.sr_out:
            return np.zeros(0, np.float32)
        self._buf = np.concatenate([self._buf, np.zeros(self.width + self.down, np.float32)])
        y = self._groups()
        total = int(torch.ceil(torch.as_tensor(self.up * self._seen / self.down)))
        y = y[: max(0, total - self._given)]
        self._given += y.shape[0]
        return y


class AudioWriter:
    """An atomic audio writer fed in pieces (a context manager), in the format of ``path``'s
    extension and ``subtype`` or the format's default (:func:`output_format`, checked on
    creation; ``format`` overrides the extension): samples go to a temp file beside ``path``,
    which replaces ``path`` only when the block exits without an error; on any error (a full
    disk included) the temp file is removed, ``path`` is left as it was and the error is
    :class:`AudioError`. PCM subtypes are clipped to [-1, 1]; NaN/Inf are an error."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        sample_rate: int,
        channels: int = 1,
        subtype: str | None = None,
        format: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.format, self.subtype = output_format(self.path, subtype, format, sample_rate)
        self.sample_rate, self.channels = int(sample_rate), channels
        self.frames = 0
        self._tmp: Path | None = None
        self._file: sf.SoundFile | None = None

    def __enter__(self) -> AudioWriter:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(
                prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
            )
            os.close(fd)
            self._tmp = Path(tmp)
            self._file = sf.SoundFile(
                tmp, "w", self.sample_rate, self.channels, self.subtype, format=self.format
            )
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
            self._discard()
            raise AudioError(f"{self.path}: could not write audio ({exc})") from None
        return self

    def write(self, audio: np.ndarray) -> None:
        """Append ``(samples,)`` (or ``(samples, channels)``) float samples."""
        assert self._file is not None, "use AudioWriter as a context manager"
        x = np.asarray(audio, dtype=np.float32)
        check_finite(x, str(self.path))
        if self.subtype not in _UNCLIPPED:
            x = np.clip(x, -1.0, 1.0)
        try:
            self._file.write(x)
        except (sf.LibsndfileError, RuntimeError, AssertionError, OSError) as exc:
            raise AudioError(f"{self.path}: could not write audio ({_why(exc)})") from None
        self.frames += x.shape[0]

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if kind is not None:
            self._discard()
            return
        assert self._file is not None and self._tmp is not None
        try:
            self._file.close()
            self._file = None
            os.chmod(self._tmp, 0o644)  # mkstemp creates 0600
            os.replace(self._tmp, self.path)
        except (sf.LibsndfileError, RuntimeError, AssertionError, OSError) as err:
            self._discard()
            raise AudioError(f"{self.path}: could not write audio ({_why(err)})") from None

    def _discard(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except (sf.LibsndfileError, RuntimeError, AssertionError, OSError):
                pass
            self._file = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


class WavWriter(AudioWriter):
    """:class:`AudioWriter` of a WAV file whatever the name (16-bit PCM unless ``subtype``)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        sample_rate: int,
        channels: int = 1,
        subtype: str = "PCM_16",
    ) -> None:
        super().__init__(path, sample_rate, channels, subtype, format="WAV")


def _why(exc: BaseException) -> str:
    """A failed write's reason (soundfile asserts on a short write: a full disk)."""
    if isinstance(exc, AssertionError):
        return "short write: is the disk full?"
    return str(exc) or type(exc).__name__
