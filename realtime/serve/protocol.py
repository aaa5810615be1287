"""The comostream WebSocket streaming protocol, version 1 (``docs/protocol.md``): pure encoding.

Text frames are JSON objects with a ``type``; binary frames are a fixed 24-byte little-endian
header followed by interleaved PCM. Every protocol violation is a :class:`ProtocolError` whose
``code`` names a row of :data:`ERRORS` (the error text frame's code and the WebSocket close code).
Nothing here touches sockets or models: the server, the clients and the tests share it. The
sample rates a session may use are the engine's
(:data:`comostream.realtime.geometry.INPUT_RATES`).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from comostream.models.config import STREAMING_F0_BACKENDS
from comostream.models.limits import check_index_rate, check_transpose
from comostream.models.mix import BadMixError, check_mix
from comostream.realtime.geometry import INPUT_RATES

__all__ = [
    "CLOSE_NORMAL",
    "ERRORS",
    "FLAG_BYPASS",
    "FLAG_DROPPED",
    "FLAG_FLUSH",
    "FORMATS",
    "HEADER",
    "MAGIC",
    "MAX_BLOCK",
    "MIN_BLOCK",
    "PROTOCOL_VERSION",
    "Frame",
    "Hello",
    "ProtocolError",
    "SetMessage",
    "decode_pcm",
    "encode_pcm",
    "error_message",
    "max_frame_bytes",
    "pack_frame",
    "parse_hello",
    "parse_set",
    "parse_text",
    "unpack_frame",
]

PROTOCOL_VERSION = 1
MAGIC = b"CMSP"
# magic, version, flags, reserved (0), sequence number, client timestamp (us), samples per channel
HEADER = struct.Struct("<4sBBHIQI")
FLAG_DROPPED = 0x01  # server -> client: ``samples`` of silence, no PCM follows (overload)
FLAG_FLUSH = 0x02  # server -> client: the tail after a ``flush``
FLAG_BYPASS = 0x04  # server -> client: the dry input (bypass), delayed like the converted audio
SERVER_FLAGS = FLAG_DROPPED | FLAG_FLUSH | FLAG_BYPASS
FORMATS = {"f32le": np.dtype("<f4"), "s16le": np.dtype("<i2")}  # sample format -> dtype
MIN_BLOCK, MAX_BLOCK = 32, 8192  # samples per channel in one audio frame
MAX_CHANNELS = 2
CLOSE_NORMAL = 1000
CLIENT_TYPES = ("hello", "set", "reset", "flush", "stats")

# code -> (WebSocket close code, meaning). docs/protocol.md has the same table; a test checks it.
ERRORS: dict[str, tuple[int, str]] = {
    "bad_message": (
        4000,
        "a text frame that is not a JSON object of a known type with valid fields",
    ),
    "not_ready": (4001, "an audio or control frame before `hello`, or a second `hello`"),
    "bad_version": (4002, "a protocol version the server does not speak (hello or frame header)"),
    "bad_frame": (
        4003,
        "a binary frame with a wrong magic, reserved bits set, a sample count "
        "other than the session's block, or a byte count that does not match",
    ),
    "unknown_speaker": (4004, "a singer (or a singer of a mix) the model does not have"),
    "bad_params": (4005, "unsupported sample rate, channels, format, block or transposition"),
    "unauthorized": (4006, "the server needs a token and `hello` had none or a wrong one"),
    "server_full": (4007, "the server already serves --max-streams streams"),
    "idle_timeout": (4008, "no frame from the client for the idle timeout"),
    "overloaded": (4009, "too many control frames queued (the client does not wait for replies)"),
    "hello_timeout": (4010, "no valid `hello` within the hello deadline"),
    "busy": (4011, "too many connections are still waiting for their `hello`"),
    "bad_mix": (
        4012,
        "singer mix weights not finite, negative, too large or summing to 0 "
        "(in `set`: refused, the session goes on)",
    ),
    "no_register": (
        4013,
        'transpose "auto" for a singer the model file stores no register for '
        "(in `set`: refused, the session goes on)",
    ),
    "frame_too_large": (1009, "a frame above the session's max_frame_bytes"),
    "internal": (1011, "the server failed while converting (a bug: see the server log)"),
    "shutdown": (1001, "the server is shutting down (SIGTERM)"),
}


class ProtocolError(Exception):
    """A violation: ``code`` (a key of :data:`ERRORS`) and a human-readable ``message``."""

    def __init__(self, code: str, message: str) -> None:
        if code not in ERRORS:
            raise ValueError(f"unknown protocol error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def close_code(self) -> int:
        return ERRORS[self.code][0]


def error_message(code: str, message: str, fatal: bool = True) -> str:
    """The JSON text frame that reports an error (sent before closing with its close code);
    ``fatal=False``: a refused ``set`` (``close_code`` null, the session goes on)."""
    close = ERRORS[code][0] if fatal else None
    return json.dumps({"type": "error", "code": code, "close_code": close, "message": message})


def max_frame_bytes(block: int = MAX_BLOCK, channels: int = MAX_CHANNELS) -> int:
    """The largest audio frame of a session: header + ``block x channels`` float32 samples."""
    return HEADER.size + block * channels * FORMATS["f32le"].itemsize


# ---------------------------------------------------------------- binary frames


@dataclass(frozen=True)
class Frame:
    """A decoded audio frame: ``samples (n, channels)`` float32 in [-1, 1] (empty for
    ``FLAG_DROPPED``, where ``count`` says how many samples of silence it stands for)."""

    seq: int
    timestamp_us: int
    flags: int
    count: int
    samples: np.ndarray


def encode_pcm(samples: np.ndarray, fmt: str) -> bytes:
    """``(n,)`` or ``(n, channels)`` float samples -> interleaved little-endian PCM bytes."""
    x = np.asarray(samples, dtype=np.float32)
    if fmt == "f32le":
        return x.astype("<f4", copy=False).tobytes()
    if fmt == "s16le":
        return np.clip(np.rint(x * 32768.0), -32768, 32767).astype("<i2").tobytes()
    raise ProtocolError("bad_params", f"unknown sample format {fmt!r}")


def decode_pcm(payload: bytes | memoryview, fmt: str, channels: int) -> np.ndarray:
    """Interleaved PCM bytes -> ``(n, channels)`` float32 (s16le scaled by 1/32768)."""
    x = np.frombuffer(payload, dtype=FORMATS[fmt])
    x = x.astype(np.float32) / 32768.0 if fmt == "s16le" else x.astype(np.float32)
    return x.reshape(-1, channels)


def pack_frame(
    seq: int,
    timestamp_us: int,
    samples: np.ndarray | None,
    fmt: str,
    flags: int = 0,
    count: int | None = None,
) -> bytes:
    """One binary frame. ``samples`` ``(n,)`` / ``(n, channels)``; None with ``FLAG_DROPPED`` and
    ``count`` (silence not sent)."""
    if samples is None:
        payload, n = b"", int(count or 0)
    else:
        payload, n = encode_pcm(samples, fmt), int(np.asarray(samples).shape[0])
    header = HEADER.pack(
        MAGIC, PROTOCOL_VERSION, flags, 0, seq & 0xFFFFFFFF, timestamp_us & 0xFFFFFFFFFFFFFFFF, n
    )
    return header + payload


def unpack_frame(
    data: bytes, fmt: str, channels: int, block: int | None = None, from_server: bool = False
) -> Frame:
    """Decode and check a binary frame. ``block``: the only sample count a client frame may
    carry; ``from_server``: accept the server's flags. Raises :class:`ProtocolError`."""
    if len(data) < HEADER.size:
        raise ProtocolError(
            "bad_frame",
            f"binary frame of {len(data)} bytes is shorter than the {HEADER.size}-byte header",
        )
    magic, version, flags, reserved, seq, ts, count = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError("bad_frame", f"wrong magic {magic!r} (expected {MAGIC!r})")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            "bad_version", f"frame version {version}; this server speaks {PROTOCOL_VERSION}"
        )
    allowed = SERVER_FLAGS if from_server else 0
    if reserved or flags & ~allowed:
        raise ProtocolError("bad_frame", f"reserved header bits set (flags {flags:#x})")
    if block is not None and count != block:
        raise ProtocolError(
            "bad_frame",
            f"frame of {count} samples; this session's block is "
            f"{block} (pad the last block with zeros)",
        )
    payload = memoryview(data)[HEADER.size :]
    if flags & FLAG_DROPPED:
        if len(payload):
            raise ProtocolError("bad_frame", "a dropped-block frame carries no PCM")
        return Frame(seq, ts, flags, count, np.zeros((0, channels), np.float32))
    expected = count * channels * FORMATS[fmt].itemsize
    if len(payload) != expected:
        raise ProtocolError(
            "bad_frame",
            f"odd byte count: {len(payload)} bytes of PCM for "
            f"{count} samples x {channels} channels of {fmt} "
            f"({expected} expected)",
        )
    return Frame(seq, ts, flags, count, decode_pcm(payload, fmt, channels))


# ---------------------------------------------------------------- text frames


@dataclass(frozen=True)
class Hello:
    """The session's parameters (the client's first frame). ``block``: samples per channel per
    audio frame (None: the server's natural block); ``speaker``: a name, a mix, or None."""

    version: int
    sample_rate: int
    channels: int
    format: str
    block: int | None
    speaker: str | dict[str, float] | None
    transpose: float | str  # semitones, or "auto" (the singer's register)
    token: str | None
    f0: str | None = None  # streaming F0 backend (None: the server's config)
    index_rate: float | None = None  # retrieval index blend 0-1 (None: the server's default)


@dataclass(frozen=True)
class SetMessage:
    """A ``set`` control frame: the fields to change (None: unchanged)."""

    speaker: str | dict[str, float] | None = None
    transpose: float | str | None = None  # semitones, or "auto"
    bypass: bool | None = None
    index_rate: float | None = None  # retrieval index blend 0-1


def parse_text(text: str | bytes) -> dict[str, Any]:
    """A text frame -> its JSON object (with a known client ``type``)."""
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("bad_message", f"text frame is not JSON ({exc})") from None
    except RecursionError:
        raise ProtocolError("bad_message", "text frame nests JSON too deeply") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_message", "text frame must be a JSON object")
    kind = obj.get("type")
    if kind not in CLIENT_TYPES:
        raise ProtocolError(
            "bad_message",
            f"unknown message type {kind!r}; expected one of {', '.join(CLIENT_TYPES)}",
        )
    return obj


def _speaker(value: Any) -> str | dict[str, float] | None:
    """A name, None, or a mix checked by :func:`~comostream.models.mix.check_mix` (``bad_mix``
    for bad weights; ``bad_message`` for a value of the wrong type)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and all(
        isinstance(w, int | float) and not isinstance(w, bool) for w in value.values()
    ):
        try:
            return check_mix(value)
        except BadMixError as exc:
            raise ProtocolError("bad_mix", str(exc)) from None
    raise ProtocolError("bad_message", "speaker must be a name or a mix {name: weight >= 0}")


def _is_number(v: Any) -> bool:
    """A JSON number that is a finite float (huge integers included: they are not)."""
    if not isinstance(v, int | float) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer beyond float range
        return False


def _transpose(value: Any) -> float | str:
    """Semitones (``bad_params`` beyond +-48) or ``"auto"``; anything else is ``bad_message``."""
    if value == "auto":
        return "auto"
    if not _is_number(value):
        raise ProtocolError(
            "bad_message", f'transpose must be a number of semitones or "auto", got {value!r}'
        )
    try:
        return check_transpose(value)  # the one check (models/limits.py)
    except ValueError as exc:
        raise ProtocolError("bad_params", str(exc)) from None


def _int_field(obj: Mapping[str, Any], name: str, default: Any = ...) -> Any:
    if name not in obj:
        if default is ...:
            raise ProtocolError("bad_message", f"hello: missing field {name!r}")
        return default
    value = obj[name]
    if value is None and default is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError("bad_message", f"hello: {name} must be an integer, got {value!r}")
    return value


def parse_hello(obj: Mapping[str, Any]) -> Hello:
    """Validate a ``hello`` object (see ``docs/protocol.md``); raises :class:`ProtocolError`."""
    version = _int_field(obj, "version")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            "bad_version", f"protocol version {version}; this server speaks {PROTOCOL_VERSION}"
        )
    rate = _int_field(obj, "sample_rate")
    if rate not in INPUT_RATES:
        raise ProtocolError(
            "bad_params", f"sample rate {rate} Hz; supported: {', '.join(map(str, INPUT_RATES))}"
        )
    channels = _int_field(obj, "channels", 1)
    if channels not in (1, 2):
        raise ProtocolError("bad_params", f"channels must be 1 or 2, got {channels}")
    fmt = obj.get("format", "f32le")
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise ProtocolError("bad_params", f"sample format {fmt!r}; supported: {', '.join(FORMATS)}")
    block = _int_field(obj, "block", None)
    if block is not None and not MIN_BLOCK <= block <= MAX_BLOCK:
        raise ProtocolError(
            "bad_params", f"block of {block} samples; supported {MIN_BLOCK}-{MAX_BLOCK}"
        )
    token = obj.get("token")
    if token is not None and not isinstance(token, str):
        raise ProtocolError("bad_message", "token must be a string")
    f0 = obj.get("f0")
    if f0 is not None and (not isinstance(f0, str) or f0 not in STREAMING_F0_BACKENDS):
        raise ProtocolError(
            "bad_params",
            f"f0 backend {f0!r}; streaming backends: {', '.join(STREAMING_F0_BACKENDS)}",
        )
    return Hello(
        version,
        rate,
        channels,
        fmt,
        block,
        _speaker(obj.get("speaker")),
        _transpose(obj.get("transpose", 0.0)),
        token,
        f0,
        _index_rate(obj["index_rate"]) if "index_rate" in obj else None,
    )


def _index_rate(value: Any) -> float:
    """The ``index_rate`` field: a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError("bad_params", f"index_rate must be a number in [0, 1], got {value!r}")
    try:
        return check_index_rate(value)
    except ValueError as exc:
        raise ProtocolError("bad_params", str(exc)) from None


def parse_set(obj: Mapping[str, Any]) -> SetMessage:
    """Validate a ``set`` object: at least one of speaker, transpose, bypass, index_rate."""
    fields = {"speaker", "transpose", "bypass", "index_rate"}
    unknown = set(obj) - {"type", *fields}
    if unknown:
        raise ProtocolError("bad_message", f"set: unknown fields {sorted(unknown)}")
    if not set(obj) & fields:
        raise ProtocolError("bad_message", "set: give speaker, transpose, bypass and/or index_rate")
    bypass = obj.get("bypass")
    if bypass is not None and not isinstance(bypass, bool):
        raise ProtocolError("bad_message", f"set: bypass must be true or false, got {bypass!r}")
    if "speaker" in obj and obj["speaker"] is None:
        raise ProtocolError("bad_message", "set: speaker must be a name or a mix")
    transpose = _transpose(obj["transpose"]) if "transpose" in obj else None
    rate = _index_rate(obj["index_rate"]) if "index_rate" in obj else None
    return SetMessage(_speaker(obj.get("speaker")), transpose, bypass, rate)
