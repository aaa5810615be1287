"""The wire format (comostream.realtime.serve.protocol): frames, hello/set validation, the error
table."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from comostream.realtime.serve.protocol import (
    ERRORS,
    FLAG_DROPPED,
    FLAG_FLUSH,
    HEADER,
    MAGIC,
    PROTOCOL_VERSION,
    ProtocolError,
    error_message,
    max_frame_bytes,
    pack_frame,
    parse_hello,
    parse_set,
    parse_text,
    unpack_frame,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
HELLO = {
    "type": "hello",
    "version": 1,
    "sample_rate": 48000,
    "channels": 1,
    "format": "f32le",
    "block": 1024,
    "speaker": "alto",
    "transpose": 0,
}


def _code(fn, *args, **kwargs) -> str:
    with pytest.raises(ProtocolError) as info:
        fn(*args, **kwargs)
    return info.value.code


def test_header_layout_is_fixed_little_endian() -> None:
    x = np.array([[0.5, -0.25], [1.0, -1.0]], np.float32)  # two stereo samples
    data = pack_frame(7, 123456789012, x, "f32le")
    assert HEADER.size == 24 and len(data) == 24 + 2 * 2 * 4
    assert data[:4] == MAGIC and data[4] == PROTOCOL_VERSION and data[5] == 0
    assert struct.unpack_from("<I", data, 8)[0] == 7
    assert struct.unpack_from("<Q", data, 12)[0] == 123456789012
    assert struct.unpack_from("<I", data, 20)[0] == 2  # samples per channel
    assert np.frombuffer(data[24:], "<f4").tolist() == [0.5, -0.25, 1.0, -1.0]  # interleaved


@pytest.mark.parametrize("fmt", ["f32le", "s16le"])
@pytest.mark.parametrize("channels", [1, 2])
def test_audio_frames_round_trip_exactly_in_f32_and_to_one_lsb_in_s16(
    fmt: str, channels: int
) -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (256, channels)).astype(np.float32)
    f = unpack_frame(pack_frame(3, 99, x, fmt), fmt, channels, block=256)
    assert (f.seq, f.timestamp_us, f.count, f.flags) == (3, 99, 256, 0)
    tol = 0.0 if fmt == "f32le" else 1.0 / 32768
    assert f.samples.shape == (256, channels)
    assert np.abs(f.samples - x).max() <= tol


def test_dropped_frames_carry_no_pcm() -> None:
    data = pack_frame(5, 1, None, "f32le", FLAG_DROPPED, count=2048)
    assert len(data) == HEADER.size
    f = unpack_frame(data, "f32le", 1, from_server=True)
    assert f.count == 2048 and f.samples.shape == (0, 1) and f.flags == FLAG_DROPPED
    assert _code(unpack_frame, data, "f32le", 1) == "bad_frame"  # clients may not set flags
    assert _code(unpack_frame, data + b"\0\0\0\0", "f32le", 1, from_server=True) == "bad_frame"
    tail = pack_frame(5, 1, np.zeros(10, np.float32), "f32le", FLAG_FLUSH)
    assert unpack_frame(tail, "f32le", 1, from_server=True).count == 10


def test_malformed_audio_frames_are_bad_frame_or_bad_version() -> None:
    good = pack_frame(1, 2, np.zeros(64, np.float32), "f32le")
    assert _code(unpack_frame, good[:10], "f32le", 1) == "bad_frame"
    assert _code(unpack_frame, b"XXXX" + good[4:], "f32le", 1) == "bad_frame"
    assert _code(unpack_frame, good[:4] + b"\x02" + good[5:], "f32le", 1) == "bad_version"
    assert _code(unpack_frame, good[:6] + b"\x01\x00" + good[8:], "f32le", 1) == "bad_frame"
    assert _code(unpack_frame, good[:-1], "f32le", 1) == "bad_frame"  # odd byte count
    assert _code(unpack_frame, good, "f32le", 2) == "bad_frame"  # 64 mono != 64 stereo
    assert _code(unpack_frame, good, "f32le", 1, block=128) == "bad_frame"
    assert unpack_frame(good, "f32le", 1, block=64).count == 64


def test_text_frames_must_be_json_objects_of_a_known_type() -> None:
    assert _code(parse_text, "{not json") == "bad_message"
    assert _code(parse_text, "[1, 2]") == "bad_message"
    assert _code(parse_text, '{"type": "dance"}') == "bad_message"
    assert parse_text('{"type": "stats"}') == {"type": "stats"}


def test_hello_defaults_and_each_bad_field_gives_its_documented_code() -> None:
    h = parse_hello(HELLO)
    assert (h.sample_rate, h.channels, h.format, h.block, h.speaker) == (
        48000,
        1,
        "f32le",
        1024,
        "alto",
    )
    minimal = parse_hello({"type": "hello", "version": 1, "sample_rate": 44100})
    assert minimal.block is None and minimal.speaker is None and minimal.format == "f32le"
    mix = parse_hello({**HELLO, "speaker": {"alto": 1, "bass": 3}})
    assert mix.speaker == {"alto": 1.0, "bass": 3.0}
    cases = {
        "bad_version": [{"version": 2}],
        "bad_params": [
            {"sample_rate": 12345},
            {"channels": 3},
            {"format": "u8"},
            {"block": 8},
            {"block": 100000},
            {"transpose": 60},
        ],
        "bad_mix": [
            {"speaker": {"alto": 0}},
            {"speaker": {"alto": -1}},
            {"speaker": {"alto": 1e39}},
            {"speaker": {}},
        ],
        "bad_message": [
            {"sample_rate": "48000"},
            {"block": True},
            {"transpose": "up"},
            {"speaker": 3},
            {"speaker": {"alto": "1"}},
            {"token": 5},
        ],
    }
    for code, changes in cases.items():
        for change in changes:
            assert _code(parse_hello, {**HELLO, **change}) == code, change
    missing = dict(HELLO)
    del missing["sample_rate"]
    assert _code(parse_hello, missing) == "bad_message"


def test_set_needs_a_known_change_and_each_bad_field_gives_its_code() -> None:
    assert parse_set({"type": "set", "transpose": -3}).transpose == -3.0
    assert parse_set({"type": "set", "bypass": True}).bypass is True
    assert parse_set({"type": "set", "speaker": "bass"}).speaker == "bass"
    assert _code(parse_set, {"type": "set"}) == "bad_message"
    assert _code(parse_set, {"type": "set", "volume": 3}) == "bad_message"
    assert _code(parse_set, {"type": "set", "bypass": 1}) == "bad_message"
    assert _code(parse_set, {"type": "set", "transpose": 49}) == "bad_params"


def test_error_messages_carry_their_close_code_and_the_frame_limit_is_fixed() -> None:
    msg = json.loads(error_message("unknown_speaker", "unknown speaker 'x'"))
    assert msg == {
        "type": "error",
        "code": "unknown_speaker",
        "close_code": 4004,
        "message": "unknown speaker 'x'",
    }
    assert ProtocolError("bad_frame", "x").close_code == 4003
    with pytest.raises(ValueError):
        ProtocolError("no_such_code", "x")
    assert max_frame_bytes() == 24 + 8192 * 2 * 4


def test_docs_table_matches_the_error_codes() -> None:
    """docs/protocol.md documents exactly the codes the server uses, with the same close codes."""
    rows = re.findall(r"^\| `(\w+)` \| (\d{4}) \|", DOC.read_text(), flags=re.M)
    assert rows, "no error table in docs/protocol.md"
    assert {code: int(close) for code, close in rows} == {k: v[0] for k, v in ERRORS.items()}
    assert len({v[0] for v in ERRORS.values()}) == len(ERRORS)  # one close code per error
