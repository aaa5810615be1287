"""``transpose: "auto"`` while streaming: the engine's auto mode (the shift chosen once after
about a second of voicing, the same whatever the chunking), the protocol's ``hello``/``set``
field through the real WebSocket server, and the refusal for a singer without a register."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from websockets.asyncio.client import connect

from comostream.models.config import RealtimeConfig
from comostream.models.register import STREAM_VOICED_FRAMES, NoRegisterError
from comostream.realtime.engine import StreamingConverter, convert_array
from comostream.realtime.serve.client import ServerError, StreamClient
from comostream.realtime.serve.config import ServerConfig
from comostream.realtime.serve.engines import EngineFactory
from comostream.realtime.serve.protocol import (
    PROTOCOL_VERSION,
    ProtocolError,
    parse_hello,
    parse_set,
)
from comostream.realtime.serve.server import ServerThread

from helpers import harmonic_tone

pytestmark = pytest.mark.usefixtures("one_thread")

RT = RealtimeConfig(block_frames=2)
REGISTERS = {"alto": 220.0, "tenor": 165.0}  # "bass" has none; 110 Hz -> +12 / +7 semitones
RATE = 24000
HOP = 256


def tone(seconds: float, hz: float = 110.0) -> np.ndarray:
    return harmonic_tone(np.full(int(seconds * RATE), hz))


def engine(models: Any, speaker: str = "alto", **kw: Any) -> StreamingConverter:
    kw.setdefault("transpose", "auto")
    return StreamingConverter.from_models(
        *models, speaker=speaker, registers=REGISTERS, realtime=RT, trace=False, **kw
    )


def record(e: StreamingConverter) -> list[torch.Tensor]:
    """The per-frame transposition the engine hands the model step, recorded."""
    seen: list[torch.Tensor] = []
    step = e.step_module.step

    def spy(inputs: dict[str, torch.Tensor], state: Any) -> torch.Tensor:
        seen.append(inputs["transpose"].reshape(-1).clone())
        return step(inputs, state)

    e.step_module.step = spy  # type: ignore[method-assign]
    return seen


def test_auto_picks_the_shift_after_a_second_of_voicing_and_not_before(models: Any) -> None:
    e = engine(models)
    seen = record(e)
    assert e.transpose_auto and e.transpose == 0.0 and e.source_register_hz is None
    e.push(tone(0.5))
    assert e.transpose == 0.0 and e.source_register_hz is None  # half a second: not yet
    e.push(tone(0.8))
    assert e.transpose == 12.0 and e.transpose_auto
    assert e.source_register_hz == pytest.approx(110.0, rel=0.01)
    per_frame = torch.cat(seen).numpy()
    start = int(np.flatnonzero(per_frame > 0)[0])
    # the ramp starts right after the first STREAM_VOICED_FRAMES voiced frames (about 1 s)
    assert STREAM_VOICED_FRAMES <= start <= STREAM_VOICED_FRAMES + 12
    assert np.all(np.diff(per_frame) >= 0) and per_frame[-1] == 12.0  # ramped, no jump back
    assert np.max(np.diff(per_frame)) <= 12.0 / RT.ramp_frames + 1e-9  # no click


def test_auto_is_the_same_whatever_the_chunking(models: Any) -> None:
    x = np.concatenate([np.zeros(3000, np.float32), tone(1.4)])
    outs, ramps = [], []
    for chunk in (None, 512, [37, 1000, 5]):
        e = engine(models)
        ramps.append(record(e))
        outs.append(convert_array(e, x, chunk))
    for y, r in zip(outs[1:], ramps[1:], strict=True):
        np.testing.assert_allclose(y, outs[0], atol=1e-5)
        np.testing.assert_array_equal(torch.cat(r).numpy(), torch.cat(ramps[0]).numpy())
    assert torch.cat(ramps[0]).max() == 12.0


def test_explicit_transpose_ends_auto_reset_restarts_and_a_new_singer_recomputes(
    models: Any,
) -> None:
    e = engine(models)
    e.push(tone(1.3))
    assert e.transpose == 12.0
    e.set_speaker("tenor")  # 110 Hz -> 165 Hz: +7
    assert e.transpose == 7.0 and e.transpose_auto
    with pytest.raises(NoRegisterError, match="bass"):
        e.set_speaker("bass")
    assert e.speaker == "tenor" and e.transpose == 7.0  # nothing changed
    e.reset()  # a new stream: the estimate starts again, untransposed
    assert e.transpose == 0.0 and e.transpose_auto and e.source_register_hz is None
    e.push(tone(1.3, 220.0))  # a higher voice: 220 -> 165 Hz is -5
    assert e.transpose == -5.0
    e.set_transpose(3)
    assert e.transpose == 3.0 and not e.transpose_auto
    e.push(tone(0.5, 440.0))
    assert e.transpose == 3.0
    e.set_transpose("auto")  # back to auto mid-stream: from the latest voiced frames at once
    assert e.transpose_auto and e.transpose in (-5.0, -17.0)


def test_auto_without_a_register_is_refused(models: Any) -> None:
    with pytest.raises(NoRegisterError, match="'bass'"):
        engine(models, speaker="bass")
    with pytest.raises(NoRegisterError, match="no register"):
        StreamingConverter.from_models(*models, speaker="alto", transpose="auto", realtime=RT)


def test_parse_hello_and_set_take_auto_and_refuse_other_strings() -> None:
    hello = {"type": "hello", "version": PROTOCOL_VERSION, "sample_rate": 24000}
    assert parse_hello({**hello, "transpose": "auto"}).transpose == "auto"
    assert parse_hello({**hello, "transpose": 3}).transpose == 3.0
    assert parse_set({"type": "set", "transpose": "auto"}).transpose == "auto"
    for bad in ("Auto", "up", "3", True, None):
        with pytest.raises(ProtocolError, match='semitones or "auto"') as exc:
            parse_hello({**hello, "transpose": bad})
        assert exc.value.code == "bad_message"
        with pytest.raises(ProtocolError) as exc:
            parse_set({"type": "set", "transpose": bad})
        assert exc.value.code == "bad_message"


@pytest.fixture(scope="module")
def server(models: Any) -> Iterator[ServerThread]:
    config = ServerConfig(port=0, max_streams=4, max_queue_ms=3000.0)
    with ServerThread(EngineFactory(*models, RT, REGISTERS, batch=False), config) as st:
        yield st


def test_serve_hello_auto_reports_the_shift_in_state_and_stats(server: ServerThread) -> None:
    x = tone(1.4)
    block = 512

    async def run() -> tuple[dict, dict, dict, dict]:
        client = await StreamClient.connect(
            server.url, sample_rate=RATE, block=block, speaker="alto", transpose="auto"
        )
        ready = client.ready
        n = len(x) // block
        for k in range(n):
            await client.send_block(k, x[k * block : (k + 1) * block])
        got, replies = 0, []
        await client.control("stats")
        while got < n or not replies:
            reply = await client.recv()
            if isinstance(reply, dict):
                replies.append(reply)
            else:
                got += 1
        await client.control("set", speaker="tenor")
        while True:
            reply = await client.recv()
            if isinstance(reply, dict):
                break
        state = reply
        await client.control("set", speaker="bass")  # no register: refused, the session goes on
        refused: dict[str, Any] = {}
        try:
            while True:
                await client.recv()
        except ServerError as exc:
            refused = {"code": exc.code, "message": exc.message, "close": exc.close_code}
        await client.control("stats")
        stats = await client.recv()
        while not isinstance(stats, dict):
            stats = await client.recv()
        await client.close()
        return ready, state, refused, stats

    ready, state, refused, stats = asyncio.run(run())
    assert ready["transpose"] == 0.0 and ready["transpose_auto"] is True
    assert ready["source_register_hz"] is None
    assert state["type"] == "state" and state["speaker"] == "tenor"
    assert state["transpose"] == 7.0 and state["transpose_auto"] is True
    assert state["source_register_hz"] == pytest.approx(110.0, rel=0.01)
    assert refused["code"] == "no_register" and refused["close"] is None
    assert "'bass'" in refused["message"]
    assert stats["type"] == "stats" and stats["transpose"] == 7.0 and stats["speaker"] == "tenor"
    assert stats["transpose_auto"] is True


def test_serve_refuses_auto_for_a_singer_without_a_register(server: ServerThread) -> None:
    async def run() -> tuple[dict, int | None]:
        async with connect(server.url) as ws:
            hello = {"type": "hello", "version": PROTOCOL_VERSION, "sample_rate": RATE}
            await ws.send(json.dumps({**hello, "speaker": "bass", "transpose": "auto"}))
            reply = json.loads(await ws.recv())
            await asyncio.wait_for(ws.wait_closed(), 10)
            return reply, ws.close_code

    reply, close = asyncio.run(run())
    assert reply["type"] == "error" and reply["code"] == "no_register" and close == 4013
    assert "'bass'" in reply["message"] and "semitones" in reply["message"]


def test_live_console_and_command_lines_take_auto() -> None:
    from comostream.cli import build_parser
    from comostream.realtime.live.console import LiveStatus, format_status, parse_command

    cmd = parse_command("t auto", ["alto"])
    assert cmd is not None and (cmd.kind, cmd.value) == ("transpose", "auto")
    line = format_status(LiveStatus(speaker="alto", transpose=12.0, transpose_auto=True))
    assert "alto +12 st (auto)" in line
    parser = build_parser()
    assert parser.parse_args(["live", "--transpose", "auto"]).transpose == "auto"
    args = parser.parse_args(["client", "in.wav", "-o", "out.wav", "--transpose", "auto"])
    assert args.transpose == "auto"
