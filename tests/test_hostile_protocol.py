"""Hostile and careless input to the WebSocket server and its protocol (issue 16, items 2, 3, 7).

Each case asserts the documented close code or error (``docs/protocol.md``) and that the server
and the other sessions go on unaffected: a stream running meanwhile gets exactly the engine's own
output. Servers run in-process on the tiny random-weight models. The protocol parser is fuzzed
(hypothesis, bounded): a :class:`ProtocolError` with a documented code or a valid result, never
another exception.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from comostream import main
from comostream.cli import build_parser
from comostream.cli.common import speaker_arg
from comostream.models.conditioner import BadMixError, SpeakerTable
from comostream.models.config import RealtimeConfig
from comostream.models.mix import MAX_MIX_WEIGHT, check_mix
from comostream.realtime.engine import SAMPLE_LIMIT, StreamingConverter, convert_array
from comostream.realtime.serve.client import StreamClient, stream_array
from comostream.realtime.serve.config import TOKEN_ENV, ServerConfig, resolve_token
from comostream.realtime.serve.engines import EngineFactory
from comostream.realtime.serve.http_routes import same_origin
from comostream.realtime.serve.protocol import (
    ERRORS,
    FORMATS,
    HEADER,
    MAGIC,
    Frame,
    Hello,
    ProtocolError,
    SetMessage,
    pack_frame,
    parse_hello,
    parse_set,
    parse_text,
    unpack_frame,
)
from comostream.realtime.serve.server import ServerThread

from helpers import FLOAT_BACKEND, expect_error, write_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
RT = RealtimeConfig(block_frames=2)
SERVE_RT = RealtimeConfig(block_frames=2, backend=FLOAT_BACKEND)  # held to torch engines
TOKEN = "s3cret"
SR, BLOCK = 24000, 512


def sung(seconds: float, sr: int = SR, f0: float = 220.0, seed: int = 0) -> np.ndarray:
    """A voiced test signal: a gliding harmonic tone with a little noise (float32 mono)."""
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * f0 * (t + 0.2 * t**2)
    x = sum(0.2 / k * np.sin(k * phase) for k in range(1, 6))
    x = x + 0.003 * np.random.default_rng(seed).standard_normal(t.shape)
    return (x * np.minimum(1.0, t / 0.05)).astype(np.float32)


def reference(models: Any, x: np.ndarray, sr: int = SR, block: int = BLOCK, **kw: Any) -> Any:
    """The engine's own output for ``x`` pushed in blocks of ``block`` (what a stream returns)."""
    engine = StreamingConverter.from_models(*models, sample_rate=sr, realtime=RT, chunk=block, **kw)
    return convert_array(engine, x)


def _hello(**kw: Any) -> str:
    return json.dumps({"type": "hello", "version": 1, "sample_rate": SR, "block": BLOCK, **kw})


async def _closed_with(ws: ClientConnection, code: str, within: float) -> float:
    """Wait for the server to close ``ws`` with ``code``'s close code; the seconds it took."""
    t0 = time.perf_counter()
    await asyncio.wait_for(ws.wait_closed(), within)
    assert ws.close_code == ERRORS[code][0], (code, ws.close_code, ws.close_reason)
    return time.perf_counter() - t0


@pytest.fixture(scope="module")
def factory(models: tuple[Any, Any]) -> EngineFactory:
    return EngineFactory(*models, SERVE_RT)


@pytest.fixture(scope="module")
def server(factory: EngineFactory) -> Iterator[ServerThread]:
    """A token-less loopback server with generous queues (no drops on a busy CI machine)."""
    with ServerThread(factory, ServerConfig(port=0, max_queue_ms=3000.0)) as st:
        yield st


# ---------------------------------------------------------------- item 2: slots and deadlines


def test_silent_and_unauthenticated_connections_take_no_stream_slot(
    factory: EngineFactory, models: Any
) -> None:
    config = ServerConfig(
        port=0, token=TOKEN, max_streams=2, max_pending=4, hello_timeout_s=2.0, max_queue_ms=3000.0
    )
    x = sung(0.4)
    with ServerThread(factory, config) as st:

        async def run() -> list[Any]:
            silent = [await connect(st.url) for _ in range(2)]  # upgrade, then nothing
            await expect_error(st.url, [_hello(token="guess")], "unauthorized")
            assert st.server.pending_connections() == 2 and st.server.active_streams() == 0
            # both slots are still free for clients with the token
            results = await asyncio.gather(
                stream_array(st.url, x, SR, block=BLOCK, fast=True, token=TOKEN),
                stream_array(st.url, x, SR, block=BLOCK, fast=True, token=TOKEN, speaker="bass"),
            )
            a = await StreamClient.connect(st.url, sample_rate=SR, block=BLOCK, token=TOKEN)
            b = await StreamClient.connect(st.url, sample_rate=SR, block=BLOCK, token=TOKEN)
            assert st.server.active_streams() == 2
            await expect_error(st.url, [], "server_full")  # now both slots are taken
            await a.close()
            await b.close()
            for ws in silent:  # the silent ones end at the hello deadline, not the idle timeout
                assert await _closed_with(ws, "hello_timeout", 10) < 5
            return results

        results = asyncio.run(run())
    for r, spk in zip(results, ("alto", "bass"), strict=True):
        np.testing.assert_allclose(r.output, reference(models, x, speaker=spk), atol=1e-6)


def test_pending_cap_refuses_newcomers_with_busy_while_a_stream_goes_on(
    factory: EngineFactory, models: Any
) -> None:
    config = ServerConfig(port=0, max_pending=2, hello_timeout_s=1.0, max_queue_ms=3000.0)
    x = sung(2.5)
    with ServerThread(factory, config) as st:

        async def run() -> Any:
            streaming = asyncio.create_task(stream_array(st.url, x, SR, block=BLOCK))
            await asyncio.sleep(0.2)
            silent = [await connect(st.url) for _ in range(2)]
            await expect_error(st.url, [], "busy")  # refused at once, before any engine
            for ws in silent:
                await _closed_with(ws, "hello_timeout", 10)
            client = await StreamClient.connect(st.url, sample_rate=SR, block=BLOCK)  # room again
            assert client.ready["type"] == "ready"
            await client.close()
            assert not streaming.done()  # real-time pace: still streaming meanwhile
            return await streaming

        r = asyncio.run(run())
    assert r.dropped_samples == 0
    np.testing.assert_allclose(r.output, reference(models, x), atol=1e-6)


def test_silent_tcp_sockets_are_capped_before_the_upgrade(
    factory: EngineFactory, models: Any
) -> None:
    config = ServerConfig(port=0, max_pending=2, hello_timeout_s=1.0, max_queue_ms=3000.0)
    x = sung(2.5)
    with ServerThread(factory, config) as st:

        async def run() -> Any:
            port = st.server.port
            streaming = asyncio.create_task(stream_array(st.url, x, SR, block=BLOCK))
            await asyncio.sleep(0.2)
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            await asyncio.sleep(0.1)
            assert len(st.server.upgrading) == 2
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # one too many
            assert await asyncio.wait_for(reader.read(), 0.8) == b""  # closed at once
            writer.close()
            for r, w in held:  # the held ones at the upgrade deadline
                assert await asyncio.wait_for(r.read(), 10) == b""
                w.close()
            client = await StreamClient.connect(st.url, sample_rate=SR, block=BLOCK)  # room again
            await client.close()
            assert not streaming.done() and not st.server.upgrading
            return await streaming

        r = asyncio.run(run())
    np.testing.assert_allclose(r.output, reference(models, x), atol=1e-6)


def test_hello_deadline_is_separate_from_the_idle_timeout(factory: EngineFactory) -> None:
    config = ServerConfig(port=0, hello_timeout_s=0.5, idle_timeout_s=30.0)
    with ServerThread(factory, config) as st:

        async def run() -> None:
            silent = await connect(st.url)
            assert await _closed_with(silent, "hello_timeout", 10) < 3
            async with connect(st.url) as ws:  # a stream idle beyond the hello deadline stays
                await ws.send(_hello())
                assert json.loads(await ws.recv())["type"] == "ready"
                await asyncio.sleep(1.0)
                await ws.send('{"type": "stats"}')
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "stats"
            # a TCP connection that never sends its HTTP upgrade: dropped at the same deadline
            reader, writer = await asyncio.open_connection("127.0.0.1", st.server.port)
            t0 = time.perf_counter()
            assert await asyncio.wait_for(reader.read(), 10) == b""
            assert time.perf_counter() - t0 < 5
            writer.close()

        asyncio.run(run())


def test_server_config_checks_its_deadline_and_cap() -> None:
    for bad in ({"hello_timeout_s": 0.0}, {"hello_timeout_s": math.nan}, {"max_pending": 0}):
        with pytest.raises(ValueError, match="hello_timeout_s"):
            ServerConfig(**bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- item 3: extreme values

EXTREMES = np.array([3e38, -3e38, np.nan, np.inf, -np.inf, 2e4, -1e5], np.float32)


def _with_extremes(x: np.ndarray, every: int = 997) -> tuple[np.ndarray, np.ndarray, int]:
    """``x`` with extreme values sprinkled in, what the engine makes of them, and how many."""
    y = x.copy()
    idx = np.arange(100, len(x), every)
    y[idx] = np.resize(EXTREMES, len(idx))
    clean = np.clip(np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0), -SAMPLE_LIMIT, SAMPLE_LIMIT)
    return y, clean.astype(np.float32), len(idx)


def test_extreme_samples_are_sanitized_and_other_sessions_unaffected(
    server: ServerThread, models: Any
) -> None:
    x = sung(0.8)
    hostile, clean, count = _with_extremes(x)
    loud = np.full(4 * BLOCK, 3e38, np.float32)

    async def run() -> list[Any]:
        return await asyncio.gather(
            stream_array(server.url, hostile, SR, block=BLOCK, fast=True),
            stream_array(server.url, loud, SR, block=BLOCK, fast=True),
            stream_array(server.url, np.stack([loud, -loud], 1), SR, block=BLOCK, fast=True),
            stream_array(server.url, x, SR, block=BLOCK, speaker="tenor"),
        )

    r_hostile, r_loud, r_stereo, r_other = asyncio.run(run())
    assert r_hostile.stats["bad_samples"] == count
    # exactly the conversion of the sanitized signal: NaN/inf -> 0, the rest clipped
    np.testing.assert_allclose(r_hostile.output, reference(models, clean), atol=1e-6)
    for r in (r_loud, r_stereo):
        assert np.isfinite(r.output).all() and r.stats["bad_samples"] == r.output.size
        assert np.abs(r.output).max() <= SAMPLE_LIMIT
    np.testing.assert_allclose(r_other.output, reference(models, x, speaker="tenor"), atol=1e-6)


def test_bypass_returns_the_sanitized_input(server: ServerThread) -> None:
    async def run() -> np.ndarray:
        client = await StreamClient.connect(server.url, sample_rate=SR, block=BLOCK)
        await client.control("set", bypass=True)
        blocks = client.delay_samples // BLOCK + 2
        x = np.resize(EXTREMES, blocks * BLOCK)
        for k in range(blocks):
            await client.send_block(k, x[k * BLOCK : (k + 1) * BLOCK])
        out = []
        while len(out) < blocks:
            reply = await client.recv()
            if not isinstance(reply, dict):
                out.append(reply.samples[:, 0])
        await client.close()
        y = np.concatenate(out)[client.delay_samples :]
        clean = np.clip(np.nan_to_num(x, nan=0, posinf=0, neginf=0), -SAMPLE_LIMIT, SAMPLE_LIMIT)
        np.testing.assert_array_equal(y, clean[: len(y)])
        return y

    assert np.abs(asyncio.run(run())).max() == SAMPLE_LIMIT


def test_engine_sanitizes_input_streamed_and_offline(models: Any) -> None:
    x = sung(0.5)
    hostile, clean, count = _with_extremes(x, every=301)
    for kw in ({"chunk": BLOCK}, {"offline": True}):
        eng = StreamingConverter.from_models(*models, sample_rate=SR, realtime=RT, **kw)
        out = convert_array(eng, hostile)
        ref = convert_array(
            StreamingConverter.from_models(*models, sample_rate=SR, realtime=RT, **kw), clean
        )
        assert eng.stats.bad_samples == count, kw
        np.testing.assert_array_equal(out, ref)
    stereo = StreamingConverter.from_models(*models, sample_rate=48000, realtime=RT, channels=2)
    y = stereo.push(np.full((4096, 2), 3e38, np.float32))
    assert np.isfinite(y).all() and stereo.stats.bad_samples == 8192
    with warnings.catch_warnings():  # float64 beyond float32: inf -> 0, no overflow warning
        warnings.simplefilter("error")
        stereo.push(np.full((64, 2), 1e39))
    assert np.isfinite(stereo.flush()).all() and stereo.stats.bad_samples == 8192 + 128


def test_non_finite_model_output_is_replaced_and_counted(models: Any) -> None:
    eng = StreamingConverter.from_models(
        *models, sample_rate=48000, realtime=RT, chunk=2048, trace=False
    )
    hop = eng.hop

    def broken_step(inputs: dict[str, torch.Tensor], state: Any) -> torch.Tensor:
        k = inputs["mel"].shape[-1]
        y = torch.full((1, k * hop), math.nan)
        y[0, ::3] = math.inf
        y[0, 1::3] = 1e30
        return y

    eng.step_module.step = broken_step  # type: ignore[method-assign]
    outs = [eng.push(sung(2048 / 48000, 48000)) for _ in range(8)]
    outs.append(eng.flush())
    y = np.concatenate(outs)
    assert np.isfinite(y).all() and np.abs(y).max() <= 2 * SAMPLE_LIMIT  # resampler overshoot
    assert eng.stats.bad_output_samples > 0


def test_convert_command_survives_extreme_samples(tmp_path: Path, capsys: Any) -> None:
    ckpt = write_tiny_model(tmp_path / "tiny.ckpt")
    x = sung(0.5)
    x[::50] = 3e38
    x[1::50] = -3e38
    sf.write(tmp_path / "in.wav", x, SR, subtype="FLOAT")
    rc = main(
        ["convert", str(tmp_path / "in.wav"), "-o", str(tmp_path / "out.wav"), "--checkpoint"]
        + [str(ckpt)]
    )
    assert rc == 0, capsys.readouterr().err
    y, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    assert y.shape == x.shape and np.isfinite(y).all()
    assert "Traceback" not in capsys.readouterr().err


# ---------------------------------------------------------------- item 3: mix weights


def test_bad_mix_weights_close_in_hello_and_are_refused_in_set(
    server: ServerThread, models: Any
) -> None:
    x = sung(2.5)
    bad_mixes: list[Any] = [
        {"alto": 1e39},  # overflowed float32 to NaN before
        {"alto": 1e300, "bass": 1e300},
        {"alto": 10**400},  # a JSON integer beyond float range
        {"alto": -1},
        {"alto": 0, "bass": 0},
        {"alto": MAX_MIX_WEIGHT * 2},
        {},
    ]

    async def set_refused(mix: Any) -> None:
        async with connect(server.url) as ws:
            await ws.send(_hello())
            ready = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "set", "speaker": mix}))
            await ws.send(pack_frame(0, 7, np.zeros(BLOCK, np.float32), "f32le"))
            await ws.send(json.dumps({"type": "set", "speaker": {"alto": 1, "bass": 3}}))
            refused = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert refused["code"] == "bad_mix" and refused["close_code"] is None, refused
            audio = await asyncio.wait_for(ws.recv(), 10)
            assert isinstance(audio, bytes) and unpack_frame(audio, "f32le", 1).seq == 0
            state = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert state["type"] == "state" and state["speaker"] == {"alto": 1.0, "bass": 3.0}
            assert ready["speaker"] == "alto"

    async def run() -> Any:
        streaming = asyncio.create_task(stream_array(server.url, x, SR, block=BLOCK))
        await asyncio.sleep(0.2)
        for mix in bad_mixes:
            await expect_error(server.url, [_hello(speaker=mix)], "bad_mix")
            await set_refused(mix)
        await expect_error(server.url, [_hello(speaker={"alto": "1"})], "bad_message")
        assert not streaming.done()
        return await streaming

    r = asyncio.run(run())
    np.testing.assert_allclose(r.output, reference(models, x), atol=1e-6)


def test_one_mix_check_in_conditioner_protocol_and_cli() -> None:
    table = SpeakerTable(["alto", "bass", "tenor"], 8)
    big = table.weights({"alto": MAX_MIX_WEIGHT, "bass": MAX_MIX_WEIGHT})
    assert torch.isfinite(big).all() and torch.allclose(big, torch.tensor([0.5, 0.5, 0.0]))
    for bad in ({"alto": 1e39}, {"alto": math.nan}, {"alto": -1.0}, {"alto": 0.0}, {}):
        with pytest.raises(BadMixError):
            table.weights(bad)
        with pytest.raises(BadMixError):
            check_mix(bad)
        with pytest.raises(ProtocolError) as info:
            parse_set({"type": "set", "speaker": bad})
        assert info.value.code == "bad_mix"
    for text in ("alto:1e39", "alto:nan", "alto:inf", "alto:1,bass:-0.5", "alto:0"):
        with pytest.raises(argparse.ArgumentTypeError):
            speaker_arg(text)
    assert speaker_arg("alto:2,bass:1e6") == {"alto": 2.0, "bass": 1e6}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["convert", "IN", "-o", "OUT", "--speaker", "alto:1e39"])


# ---------------------------------------------------------------- item 7: token and surface


def test_token_comes_from_the_option_a_file_or_the_environment(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("  from-file \nsecond line ignored\n")
    assert resolve_token(None, f, {}) == "from-file"
    assert resolve_token(None, None, {TOKEN_ENV: "from-env\n"}) == "from-env"
    assert resolve_token("opt", None, {TOKEN_ENV: "from-env"}) == "opt"
    assert resolve_token(None, f, {TOKEN_ENV: "from-env"}) == "from-file"
    assert resolve_token(None, None, {}) is None
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "huge").write_bytes(b"x" * 10_000)
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00")
    for args, match in [
        (("opt", f), "not both"),
        ((None, tmp_path / "empty"), "empty"),
        ((None, tmp_path / "missing"), "cannot read"),
        ((None, tmp_path), "cannot read"),
        ((None, tmp_path / "huge"), "not a token"),
        ((None, tmp_path / "binary"), "UTF-8"),
        (("  ", None), "empty"),
    ]:
        with pytest.raises(ValueError, match=match):
            resolve_token(*args, {})
    with pytest.raises(ValueError, match=TOKEN_ENV):
        resolve_token(None, None, {TOKEN_ENV: " "})


def test_serve_takes_the_token_from_a_file_or_the_environment(
    monkeypatch: Any, capsys: Any, tmp_path: Path
) -> None:
    import comostream.models.shipped

    monkeypatch.setattr(comostream.models.shipped, "default_model_path", lambda: None)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 1
    assert "needs a token" in capsys.readouterr().err
    (tmp_path / "tok").write_text("s3cret\n")
    for argv, env in [(["--token-file", str(tmp_path / "tok")], None), ([], "s3cret")]:
        if env is not None:
            monkeypatch.setenv(TOKEN_ENV, env)
        assert main(["serve", "--host", "0.0.0.0", *argv]) == 1
        assert "pass --checkpoint" in capsys.readouterr().err  # past the token check
    assert main(["serve", "--token-file", str(tmp_path / "nope")]) == 1
    assert "cannot read the token file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    helptext = " ".join(capsys.readouterr().out.split())
    assert "--token-file PATH" in helptext and TOKEN_ENV in helptext


def test_client_takes_the_token_from_the_environment_or_a_file(
    factory: EngineFactory, monkeypatch: Any, tmp_path: Path, capsys: Any
) -> None:
    wav = tmp_path / "in.wav"
    sf.write(wav, sung(0.3), SR, subtype="FLOAT")
    with ServerThread(factory, ServerConfig(port=0, token=TOKEN)) as st:
        base = ["client", str(wav), "-o", str(tmp_path / "out.wav"), "--url", st.url, "--fast"]
        monkeypatch.delenv(TOKEN_ENV, raising=False)
        assert main(base) == 1 and "unauthorized" in capsys.readouterr().err
        (tmp_path / "tok").write_text(TOKEN + "\n")
        assert main([*base, "--token-file", str(tmp_path / "tok")]) == 0
        monkeypatch.setenv(TOKEN_ENV, TOKEN)
        assert main(base) == 0
    assert main([*base, "--token-file", str(tmp_path / "nope")]) == 1
    assert "cannot read the token file" in capsys.readouterr().err


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def test_health_shows_counts_only_with_the_token(factory: EngineFactory) -> None:
    with ServerThread(factory, ServerConfig(port=0, token=TOKEN)) as st:
        url = f"http://127.0.0.1:{st.server.port}/health"
        assert _get(url) == (200, {"status": "ok", "version": 1})
        assert _get(url, {"Authorization": "Bearer guess"}) == (200, {"status": "ok", "version": 1})
        assert _get(url + f"?token={TOKEN}") == (200, {"status": "ok", "version": 1})
        status, health = _get(url, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and health == {
            "status": "ok",
            "version": 1,
            "streams": 0,
            "max_streams": 8,
            "pending": 0,
            "max_pending": 16,
        }


def test_origin_check_compares_the_scheme(server: ServerThread) -> None:
    host = f"127.0.0.1:{server.server.port}"
    assert same_origin(f"http://{host}", host) and same_origin(f"https://{host}", host)
    assert same_origin(f"HTTP://{host.upper()}", host)
    for origin in (
        f"ws://{host}",
        f"ftp://{host}",
        f"file://{host}",
        f"evil://{host}",
        f"http://{host}/path",
        f"http://user@{host}",
        "null",
        f"//{host}",
        f"http://{host}.evil.example",
        "http://[::1",
    ):
        assert not same_origin(origin, host), origin

    async def ws_open(origin: str) -> None:
        async with connect(server.url, origin=origin) as ws:  # type: ignore[arg-type]
            await ws.send(_hello())
            assert json.loads(await ws.recv())["type"] == "ready"

    asyncio.run(ws_open(f"http://{host}"))
    for origin in (f"ws://{host}", f"evil://{host}", "null"):
        with pytest.raises(InvalidStatus, match="403"):
            asyncio.run(ws_open(origin))


# ---------------------------------------------------------------- fuzzing the protocol parser

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["alto", "bass", "f32le", "s16le", "hello", "set", TOKEN])
)
JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
HELLO_FIELDS = {
    "version": st.sampled_from([1, 2, 0, -1, 1.0, True, "1", None, 10**30]),
    "sample_rate": st.sampled_from([16000, 24000, 44100, 48000, 96000, 0, -1, 48000.0, "x"]),
    "channels": st.sampled_from([1, 2, 0, 3, True, None, 1.5]),
    "format": st.sampled_from(["f32le", "s16le", "u8", 5, None, [], {}]),
    "block": st.sampled_from([None, 32, 512, 8192, 31, 8193, 0, -5, 10**40, True, 512.0]),
    "speaker": JSON,
    "transpose": JSON_LEAVES,
    "token": JSON_LEAVES,
}


def _documented(exc: ProtocolError) -> None:
    assert exc.code in ERRORS and isinstance(exc.message, str) and exc.message


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(HELLO_FIELDS)), JSON, max_size=8), st.data())
def test_fuzz_hello_is_a_documented_error_or_a_valid_hello(
    fields: dict[str, Any], data: Any
) -> None:
    obj: dict[str, Any] = {"type": "hello"}
    for name, strategy in HELLO_FIELDS.items():  # mostly plausible values, sometimes anything
        if data.draw(st.booleans()):
            obj[name] = data.draw(strategy)
    obj.update({k: v for k, v in fields.items() if data.draw(st.booleans())})
    try:
        h = parse_hello(obj)
    except ProtocolError as exc:
        _documented(exc)
        return
    assert isinstance(h, Hello) and h.version == 1 and h.channels in (1, 2)
    assert h.format in FORMATS and (h.block is None or 32 <= h.block <= 8192)
    auto = h.transpose == "auto"  # the one string taken
    assert auto or (math.isfinite(h.transpose) and abs(h.transpose) <= 48)
    if isinstance(h.speaker, dict):
        assert h.speaker and all(0 <= w <= MAX_MIX_WEIGHT for w in h.speaker.values())
        assert sum(h.speaker.values()) > 0


@FUZZ
@given(st.dictionaries(st.sampled_from(["speaker", "transpose", "bypass", "x"]), JSON, max_size=4))
def test_fuzz_set_is_a_documented_error_or_a_valid_change(fields: dict[str, Any]) -> None:
    try:
        change = parse_set({"type": "set", **fields})
    except ProtocolError as exc:
        _documented(exc)
        return
    assert isinstance(change, SetMessage)
    assert change.bypass in (None, True, False)
    assert change.transpose in (None, "auto") or abs(change.transpose) <= 48


@FUZZ
@given(
    st.one_of(
        st.text(max_size=200),
        JSON.map(json.dumps),
        st.binary(max_size=64),
        st.integers(1, 5000).map(lambda n: "[" * n + "]" * n),
        st.integers(1, 5000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    )
)
def test_fuzz_text_frames_are_a_documented_error_or_a_known_object(text: str | bytes) -> None:
    try:
        obj = parse_text(text)
    except ProtocolError as exc:
        _documented(exc)
        return
    assert isinstance(obj, dict) and obj["type"] in ("hello", "set", "reset", "flush", "stats")
    for parse in (parse_hello, parse_set):  # and whatever it is, the field checks hold too
        try:
            parse(obj)
        except ProtocolError as exc:
            _documented(exc)


def test_deeply_nested_json_is_bad_message() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_text("[" * 100_000 + "]" * 100_000)
    assert info.value.code == "bad_message"


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=80),
        st.tuples(
            st.sampled_from([MAGIC, b"RIFF", b"CMS\0"]),
            st.integers(0, 255),
            st.sampled_from([0, 0, 1, 2, 4, 7, 255]),
            st.sampled_from([0, 0, 1, 65535]),
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**64 - 1),
            st.sampled_from([0, 1, 4, 32, 2**32 - 1]),
            st.binary(max_size=300),
        ).map(lambda t: HEADER.pack(*t[:7]) + t[7]),
    ),
    st.sampled_from(sorted(FORMATS)),
    st.sampled_from([1, 2]),
    st.sampled_from([None, 4, 32]),
    st.booleans(),
)
def test_fuzz_binary_frames_are_a_documented_error_or_a_valid_frame(
    data: bytes, fmt: str, channels: int, block: int | None, from_server: bool
) -> None:
    try:
        f = unpack_frame(data, fmt, channels, block, from_server=from_server)
    except ProtocolError as exc:
        _documented(exc)
        assert exc.code in ("bad_frame", "bad_version")
        return
    assert isinstance(f, Frame) and f.samples.dtype == np.float32
    assert f.samples.shape[1] == channels and (block is None or f.count == block)
    assert f.samples.shape[0] in (0, f.count)
    if f.samples.size:
        again = unpack_frame(pack_frame(f.seq, f.timestamp_us, f.samples, fmt), fmt, channels)
        np.testing.assert_array_equal(again.samples, f.samples)
