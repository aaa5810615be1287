"""The WebSocket server, the Python client and bridge, on a tiny random-weight model.

Servers run in-process (:class:`comostream.realtime.serve.server.ServerThread`) except for the
SIGTERM test, which runs ``comostream serve`` as a subprocess. References are the engine's own
output for the same audio and blocks (:func:`comostream.realtime.engine.convert_array`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from comostream import main
from comostream.models.config import RealtimeConfig
from comostream.realtime.engine import StreamingConverter, convert_array
from comostream.realtime.serve.bridge import Bridge
from comostream.realtime.serve.client import StreamClient, stream_array
from comostream.realtime.serve.config import ServerConfig
from comostream.realtime.serve.engines import EngineFactory
from comostream.realtime.serve.protocol import pack_frame
from comostream.realtime.serve.server import ServerThread
from comostream.realtime.serve.session import Block, DropQueue, Gap

from helpers import FLOAT_BACKEND, expect_error, self_signed_pair, write_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
RT = RealtimeConfig(block_frames=2)
SERVE_RT = RealtimeConfig(block_frames=2, backend=FLOAT_BACKEND)  # held to torch engines
ROOT = Path(__file__).resolve().parents[1]


def sung(seconds: float, sr: int, f0: float = 220.0, seed: int = 0) -> np.ndarray:
    """A voiced test signal: a gliding harmonic tone with a little noise (float32 mono)."""
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * f0 * (t + 0.2 * t**2)
    x = sum(0.2 / k * np.sin(k * phase) for k in range(1, 6))
    x = x + 0.003 * np.random.default_rng(seed).standard_normal(t.shape)
    return (x * np.minimum(1.0, t / 0.05)).astype(np.float32)


@pytest.fixture(scope="module")
def server(models: tuple[Any, Any]) -> Iterator[ServerThread]:
    """A server with generous queues (no drops on a busy CI machine)."""
    config = ServerConfig(port=0, max_streams=8, max_queue_ms=3000.0)
    with ServerThread(EngineFactory(*models, SERVE_RT), config) as st:
        yield st


def reference(models: tuple[Any, Any], x: np.ndarray, sr: int, block: int, **kw: Any) -> np.ndarray:
    engine = StreamingConverter.from_models(*models, sample_rate=sr, realtime=RT, chunk=block, **kw)
    return convert_array(engine, x)


# ---------------------------------------------------------------- streaming results


def test_client_cli_output_equals_engine_output(
    server: ServerThread, models: Any, tmp_path: Path, capsys: Any
) -> None:
    x = sung(0.8, 48000)
    sf.write(tmp_path / "in.wav", x, 48000, subtype="FLOAT")
    rc = main(
        [
            "client",
            str(tmp_path / "in.wav"),
            "-o",
            str(tmp_path / "out.wav"),
            "--url",
            server.url,
            "--speaker",
            "bass",
            "--fast",
        ]
    )
    assert rc == 0
    out, sr = sf.read(tmp_path / "out.wav", dtype="float32")
    ref = reference(models, x, 48000, 1024, speaker="bass")
    assert sr == 48000 and out.shape == x.shape
    assert np.abs(ref).max() > 1e-3  # not trivially silent
    np.testing.assert_allclose(out, ref, atol=1e-6)
    printed = capsys.readouterr().out
    assert "round trip p50" in printed and "dropped 0 samples" in printed


def test_eight_concurrent_clients_each_get_their_offline_conversion(
    server: ServerThread, models: Any
) -> None:
    cases = [
        (48000, "alto", 0.0, "f32le"),
        (24000, "bass", 2.0, "f32le"),
        (44100, "tenor", -3.0, "s16le"),
        (16000, "alto", 0.0, "f32le"),
        (48000, {"alto": 0.5, "bass": 0.5}, 0.0, "f32le"),
        (32000, "bass", 0.0, "s16le"),
        (22050, "tenor", 5.0, "f32le"),
        (48000, "bass", -12.0, "f32le"),
    ]
    signals = [sung(0.5, sr, 180.0 + 15 * i, seed=i) for i, (sr, *_) in enumerate(cases)]

    async def run_all() -> list[Any]:
        return await asyncio.gather(
            *(
                stream_array(server.url, x, sr, fast=True, speaker=spk, transpose=tr, fmt=fmt)
                for x, (sr, spk, tr, fmt) in zip(signals, cases, strict=True)
            )
        )

    t0 = time.perf_counter()
    results = asyncio.run(run_all())
    assert time.perf_counter() - t0 < 30
    for x, r, (sr, spk, tr, fmt) in zip(signals, results, cases, strict=True):
        assert r.dropped_samples == 0 and r.stats["dropped_in_blocks"] == 0
        if fmt == "s16le":  # the server converts what it received: the 16-bit input
            x = (np.clip(np.rint(x * 32768.0), -32768, 32767) / 32768.0).astype(np.float32)
        ref = reference(models, x, sr, r.ready["block"], speaker=spk, transpose=tr)
        tol = 1e-6 if fmt == "f32le" else 1.0 / 32768  # s16le: the output quantised too
        assert r.output.shape == x.shape
        np.testing.assert_allclose(r.output, ref, atol=tol, err_msg=f"{sr} Hz {spk}")


def test_bypass_returns_the_input_delayed_and_set_replies(server: ServerThread) -> None:
    x = sung(0.4, 24000)

    async def run() -> tuple[np.ndarray, list[dict[str, Any]]]:
        client = await StreamClient.connect(server.url, sample_rate=24000, block=512)
        states, out = [], []
        await client.control("set", bypass=True, transpose=2)
        padded = np.concatenate([x, np.zeros(-len(x) % 512, np.float32)])
        for k in range(len(padded) // 512):
            await client.send_block(k, padded[k * 512 : (k + 1) * 512])
        await client.control("flush")
        while True:
            reply = await client.recv()
            if isinstance(reply, dict):
                states.append(reply)
                continue
            out.append(reply.samples[:, 0])
            if reply.flags & 0x02:
                break
        await client.close()
        d = client.delay_samples
        return np.concatenate(out)[d : d + len(x)], states

    y, states = asyncio.run(run())
    assert states == [
        {
            "type": "state",
            "speaker": "alto",
            "transpose": 2.0,
            "transpose_auto": False,
            "source_register_hz": None,
            "bypass": True,
        }
    ]
    np.testing.assert_array_equal(y, x)  # the dry signal, aligned by delay_samples


# ---------------------------------------------------------------- errors and close codes


def _hello(**kw: Any) -> str:
    return json.dumps({"type": "hello", "version": 1, "sample_rate": 48000, "block": 1024, **kw})


def test_malformed_input_gets_documented_errors_while_another_session_streams(
    server: ServerThread, models: Any
) -> None:
    good = np.zeros((1024, 1), np.float32)
    frame = pack_frame(0, 0, good, "f32le")
    cases: list[tuple[list[str | bytes], str]] = [
        (["{not json"], "bad_message"),
        ([_hello(), '{"type": "set", "transpose": "up"}'], "bad_message"),
        ([frame], "not_ready"),
        (['{"type": "stats"}'], "not_ready"),
        ([_hello(), _hello()], "not_ready"),
        ([_hello(version=2)], "bad_version"),
        ([_hello(), frame[:4] + b"\x07" + frame[5:]], "bad_version"),
        ([_hello(), b"RIFF" + frame[4:]], "bad_frame"),
        ([_hello(), frame[:-3]], "bad_frame"),  # odd byte count
        ([_hello(), pack_frame(0, 0, good[:512], "f32le")], "bad_frame"),  # not the block
        ([_hello(), b"\0" * 100_000], "frame_too_large"),
        ([_hello(speaker="soprano")], "unknown_speaker"),
        ([_hello(), '{"type": "set", "speaker": {"alto": 1, "mezzo": 1}}'], "unknown_speaker"),
        ([_hello(sample_rate=96000)], "bad_params"),
    ]
    x = sung(2.0, 48000)

    async def run() -> Any:
        streaming = asyncio.create_task(stream_array(server.url, x, 48000, speaker="tenor"))
        await asyncio.sleep(0.3)
        for frames, code in cases:
            await expect_error(server.url, frames, code)
        assert not streaming.done()  # still streaming at real-time pace meanwhile
        return await streaming

    r = asyncio.run(run())
    np.testing.assert_allclose(
        r.output, reference(models, x, 48000, 1024, speaker="tenor"), atol=1e-6
    )

    async def huge() -> None:  # beyond 4x the limit: the WebSocket layer closes (1009)
        async with connect(server.url, max_size=None) as ws:
            await ws.send(_hello())
            await ws.recv()
            await ws.send(b"\0" * 400_000)
            await asyncio.wait_for(ws.wait_closed(), 10)
            assert ws.close_code == 1009

    asyncio.run(huge())


def test_token_max_streams_and_idle_timeout_refuse_with_their_codes(models: Any) -> None:
    config = ServerConfig(port=0, token="s3cret", max_streams=1, idle_timeout_s=1.0)
    x = sung(1.0, 24000)
    with ServerThread(EngineFactory(*models, RT), config) as st:

        async def run() -> Any:
            await expect_error(st.url, [_hello()], "unauthorized")
            await expect_error(st.url, [_hello(token="guess")], "unauthorized")
            streaming = asyncio.create_task(stream_array(st.url, x, 24000, token="s3cret"))
            await asyncio.sleep(0.3)
            await expect_error(st.url, [], "server_full")  # refused at once, no hello needed
            result = await streaming  # the existing stream is unaffected
            await expect_error(st.url, [_hello(token="s3cret")], "idle_timeout")
            return result

        r = asyncio.run(run())
    assert r.dropped_samples == 0 and r.output.shape == x.shape
    assert np.abs(r.output).max() > 1e-3


def test_drop_queue_drops_oldest_and_merges_gaps() -> None:
    async def run() -> None:
        q = DropQueue(max_samples=300, max_messages=2)
        q.put_block(Block(0, 10, 100, "a"))
        q.put_message("set")
        for seq in range(1, 6):
            q.put_block(Block(seq, 10 + seq, 100, chr(97 + seq)))
        # blocks 0, 1, 2 dropped: block 0 before the message, 1-2 merged after it
        items = [await q.get() for _ in range(len(q))]
        assert isinstance(items[0], Gap) and (items[0].seq, items[0].count) == (0, 100)
        assert items[1] == "set"
        assert isinstance(items[2], Gap) and (
            items[2].seq,
            items[2].count,
            items[2].blocks,
            items[2].ts,
        ) == (2, 200, 2, 12)
        assert [b.payload for b in items[3:]] == ["d", "e", "f"]
        assert (q.dropped_blocks, q.dropped_samples, q.samples) == (3, 300, 0)
        q.put_message("a")
        q.put_message("b")
        with pytest.raises(Exception, match="control frames") as info:
            q.put_message("c")
        assert info.value.code == "overloaded"  # type: ignore[attr-defined]

    asyncio.run(run())


def test_slow_reader_does_not_grow_server_memory(models: Any) -> None:
    """A client that sends 3x faster than real time and never reads: both queues stay within
    their bound, the oldest blocks are dropped and counted, the socket buffer stays small."""
    config = ServerConfig(port=0, max_queue_ms=100.0)
    block, sr = 1024, 48000
    with ServerThread(EngineFactory(*models, RT), config) as st:

        async def run() -> dict[str, Any]:
            import socket

            sock = socket.socket()  # small kernel buffers both ways: backpressure comes soon
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", st.server.port))
            peak = {"in": 0, "out": 0, "buffer": 0}
            async with connect(
                st.url, sock=sock, max_size=None, max_queue=1, close_timeout=1.0
            ) as ws:
                await ws.send(_hello(block=block))
                await ws.recv()
                session = next(iter(st.server.sessions.values()))
                server_sock = session.ws.transport.get_extra_info("socket")
                server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
                frame = pack_frame(0, 0, 0.1 * np.ones(block, np.float32), "f32le")
                for _ in range(240):  # 5 s of audio in ~1.7 s
                    await ws.send(frame)
                    await asyncio.sleep(block / sr / 3)
                    peak["in"] = max(peak["in"], session.inq.samples)
                    peak["out"] = max(peak["out"], session.outq.samples)
                    transport = session.ws.transport
                    peak["buffer"] = max(peak["buffer"], transport.get_write_buffer_size())
                stats = session.stats()
            return {**peak, **stats}

        r = asyncio.run(run())
    budget = round(0.1 * sr)
    assert r["in"] <= budget and r["out"] <= budget
    assert r["dropped_out_blocks"] > 0, r  # replies nobody read were dropped...
    assert r["queue_out_high_water"] <= budget // block + 3  # ...instead of piling up
    assert r["buffer"] <= 2**16 + 2 * (block * 4 + 24), r  # write_limit + a frame


# ---------------------------------------------------------------- HTTP side


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, "", b""


def test_health_page_and_origin_checks(server: ServerThread) -> None:
    base = f"http://127.0.0.1:{server.server.port}"
    status, ctype, body = _get(base + "/health")
    assert status == 200 and ctype == "application/json"
    health = json.loads(body)
    assert health["status"] == "ok" and health["max_streams"] == 8
    status, ctype, body = _get(base + "/")
    assert status == 200 and ctype.startswith("text/html") and b"app.js" in body
    for script in ("/app.js", "/worklet.js"):
        status, ctype, _ = _get(base + script)
        assert status == 200 and ctype.startswith("text/javascript")
    assert _get(base + "/nothing")[0] == 404
    assert _get(base + "/health", {"Host": "evil.example:8765"})[0] == 403  # DNS rebinding

    async def ws_open(origin: str | None) -> None:
        async with connect(server.url, origin=origin) as ws:  # type: ignore[arg-type]
            await ws.send(_hello())
            assert json.loads(await ws.recv())["type"] == "ready"

    asyncio.run(ws_open(base))  # the page's own origin
    asyncio.run(ws_open(None))  # a non-browser client
    with pytest.raises(InvalidStatus, match="403"):
        asyncio.run(ws_open("http://evil.example"))


# ---------------------------------------------------------------- bridge, bench, CLI


def test_bridge_pumps_device_audio_through_the_server(server: ServerThread) -> None:
    sr, seconds = 24000, 1.0
    x = sung(seconds, sr)

    async def run() -> tuple[np.ndarray, Bridge]:
        client = await StreamClient.connect(server.url, sample_rate=sr, block=512)
        bridge = Bridge(client.block, sr)
        stop = asyncio.Event()
        pump = asyncio.create_task(bridge.pump(client, stop))
        played = []
        t0, k = time.perf_counter(), 0
        while (k + 1) * 512 <= len(x):  # a fake sound card: one callback per block
            out = np.zeros((512, 1), np.float32)
            bridge.callback(x[k * 512 : (k + 1) * 512, None], out, 512, None, None)
            played.append(out[:, 0].copy())
            k += 1
            await asyncio.sleep(max(0.0, t0 + k * 512 / sr - time.perf_counter()))
        stop.set()
        await pump
        await client.close()
        return np.concatenate(played), bridge

    y, bridge = asyncio.run(run())
    assert bridge.stats.sent_blocks == len(x) // 512
    assert bridge.stats.overflows == 0 and bridge.stats.dropped == 0
    assert np.abs(y[len(y) // 2 :]).max() > 1e-3  # converted audio plays after the latency
    assert bridge.stats.rtt_ms and np.median(bridge.stats.rtt_ms) < 200


def test_ws_overhead_is_the_round_trip_minus_the_compute(models: Any) -> None:
    from comostream.bench.latency import measure_ws_overhead

    r = measure_ws_overhead(*models, realtime=RT, sample_rate=48000, seconds=1.0)
    assert set(r) >= {"ws_overhead_ms", "ws_rtt_ms_p50", "ws_rtt_ms_p99", "ws_compute_ms_p50"}
    assert r["ws_rtt_ms_p50"] > r["ws_compute_ms_p50"] > 0
    assert 0 < r["ws_overhead_ms"] < 50  # loose: a shared CI machine (measured ~1-2 ms)


def test_serve_and_client_commands_refuse_clearly(
    monkeypatch: Any, capsys: Any, tmp_path: Path
) -> None:
    import comostream.models.shipped

    monkeypatch.setattr(comostream.models.shipped, "default_model_path", lambda: None)
    assert main(["serve", "--host", "0.0.0.0"]) == 1
    assert "needs a token" in capsys.readouterr().err
    assert main(["serve"]) == 1
    assert "pass --checkpoint" in capsys.readouterr().err
    wav = tmp_path / "in.wav"
    sf.write(wav, sung(0.2, 24000), 24000)
    assert (
        main(["client", str(wav), "-o", str(tmp_path / "o.wav"), "--url", "ws://127.0.0.1:9/ws"])
        == 1
    )
    assert "ws://127.0.0.1:9/ws" in capsys.readouterr().err


def test_serve_checks_its_tls_pair_before_loading_the_model(
    monkeypatch: Any, capsys: Any, tmp_path: Path
) -> None:
    import comostream.models.shipped

    monkeypatch.setattr(comostream.models.shipped, "default_model_path", lambda: None)
    assert main(["serve", "--tls-cert", str(tmp_path / "c.pem")]) == 1
    assert "give both --tls-cert and --tls-key" in capsys.readouterr().err
    missing = ["--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "k.pem")]
    assert main(["serve", *missing]) == 1
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    junk = str(tmp_path / "junk.pem")
    assert main(["serve", "--tls-cert", junk, "--tls-key", junk]) == 1
    assert "not a PEM certificate" in capsys.readouterr().err
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = self_signed_pair(tmp_path / "a"), self_signed_pair(tmp_path / "b")
    if a is None or b is None:
        pytest.skip("no openssl command and no cryptography package to make a certificate")
    assert main(["serve", "--tls-cert", str(a[0]), "--tls-key", str(b[1])]) == 1
    assert "does not belong to the certificate" in capsys.readouterr().err


def test_singers_route_lists_registers_and_needs_the_token(models: Any) -> None:
    factory = EngineFactory(*models, RT, registers={"alto": 262.0, "nobody": 100.0})
    with ServerThread(factory, ServerConfig(port=0, token="s3cret")) as st:
        url = f"{st.server.http_url}/singers"
        assert _get(url)[0] == 401
        assert _get(url, {"Authorization": "Bearer guess"})[0] == 401
        status, ctype, body = _get(url, {"Authorization": "Bearer s3cret"})
    assert status == 200 and ctype == "application/json"
    assert json.loads(body) == {
        "singers": [
            {"name": "alto", "f0_median_hz": 262.0},
            {"name": "bass", "f0_median_hz": None},
            {"name": "tenor", "f0_median_hz": None},
        ],
        "default": "alto",
    }


def test_https_and_wss_serve_the_page_and_measure_the_input_register(
    models: Any, tmp_path: Path
) -> None:
    pair = self_signed_pair(tmp_path)
    if pair is None:
        pytest.skip("no openssl command and no cryptography package to make a certificate")
    config = ServerConfig(port=0, tls_cert=str(pair[0]), tls_key=str(pair[1]), max_queue_ms=3000.0)
    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE  # self-signed
    sr = 24000
    t = np.arange(sr) / sr
    tone = sum(0.2 / k * np.sin(2 * np.pi * 220.0 * k * t) for k in range(1, 6)).astype(np.float32)
    with ServerThread(EngineFactory(*models, RT), config) as st:
        assert st.url.startswith("wss://") and st.server.http_url.startswith("https://")
        req = urllib.request.Request(f"{st.server.http_url}/")
        with urllib.request.urlopen(req, timeout=10, context=insecure) as r:
            assert r.status == 200 and b"app.js" in r.read()

        async def run() -> dict[str, Any]:
            async with connect(st.url, ssl=insecure) as ws:
                await ws.send(_hello(sample_rate=sr, block=None))
                ready = json.loads(await ws.recv())
                block = ready["block"]
                for i in range(len(tone) // block):
                    await ws.send(pack_frame(i, 0, tone[i * block : (i + 1) * block], "f32le"))
                    await ws.recv()
                await ws.send('{"type": "stats"}')
                return json.loads(await ws.recv())

        stats = asyncio.run(run())
    assert stats["type"] == "stats"
    assert stats["input_f0_hz"] == pytest.approx(220.0, rel=0.03)  # the singer's register


def test_sigterm_closes_sessions_gracefully(tmp_path: Path) -> None:
    ckpt = write_tiny_model(tmp_path / "tiny.ckpt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "comostream", "serve", "--checkpoint", str(ckpt), "--port", "0"],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "serving on ws://" in line, line + proc.stderr.read()  # type: ignore[union-attr]
        url = line.split()[2]

        async def run() -> tuple[str, int | None]:
            async with connect(url) as ws:
                await ws.send(_hello(sample_rate=24000))
                assert json.loads(await ws.recv())["type"] == "ready"
                proc.send_signal(signal.SIGTERM)
                msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                await asyncio.wait_for(ws.wait_closed(), 10)
                return msg["code"], ws.close_code

        code, close = asyncio.run(run())
        assert (code, close) == ("shutdown", 1001)
        assert proc.wait(15) == 0
    finally:
        proc.kill()
        proc.wait()


def test_serve_hands_the_interpreter_lock_over_every_half_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`comostream serve` (run_server) streams with a 0.5 ms switch interval: its scheduler's
    thread waits that long at most for the event loop at each op; the former one is restored."""
    import comostream.realtime.serve.server as server_module
    from comostream.realtime.gil import SERVE_SWITCH_S

    seen: list[float] = []

    def run(coro: Any) -> None:  # instead of serving: note the interval, drop the coroutine
        seen.append(sys.getswitchinterval())
        coro.close()

    monkeypatch.setattr(server_module.asyncio, "run", run)
    before = sys.getswitchinterval()
    assert before != SERVE_SWITCH_S
    assert server_module.run_server(None, ServerConfig(), announce=lambda _: None) == 0  # type: ignore[arg-type]
    assert seen == [pytest.approx(SERVE_SWITCH_S)]
    assert sys.getswitchinterval() == before
