"""``comostream serve --processes N``: one port, several server processes. Sessions spread over
them, each converts exactly as a lone server does, the stream cap holds across them, SIGTERM
stops them all, and a dead one is given no more connections (on a tiny random-weight model)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect

from comostream import main
from comostream.bench.serve import serve_child
from comostream.realtime.serve.client import ServerError, StreamClient, stream_array
from comostream.realtime.serve.config import ServerConfig
from comostream.realtime.serve.processes import _bind, auto_processes, process_config
from comostream.realtime.serve.protocol import PROTOCOL_VERSION, pack_frame

from helpers import self_signed_pair, sung, write_tiny_model

RATE = 24000


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("processes") / "tiny.ckpt", singers=["a", "b"])


@contextmanager
def serving(
    ckpt: Path, tmp: Path, processes: int, *extra: str
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``comostream serve --processes N`` on a free port: its URL and process, stopped after."""
    cmd = [sys.executable, "-m", "comostream", "serve", "--port", "0", "--max-streams", "4"]
    cmd += ["--checkpoint", str(ckpt), "--threads", "1", "--processes", str(processes), *extra]
    with serve_child(cmd, dict(os.environ), tmp / f"serve{processes}.log", 120.0) as server:
        assert server.popen is not None and server.processes == processes
        yield server.url, server.popen


def children(pid: int) -> list[int]:
    """The server processes ``pid`` started (multiprocessing's own helper left out)."""
    out = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid and b"spawn_main" in cmdline:
            out.append(int(entry.name))
    return out


def signals() -> list[np.ndarray]:
    x = sung(RATE, 0.8)
    return [np.roll(x, 1000 * i) for i in range(4)]


async def convert_all(url: str, n: int = 4) -> list:
    """``n`` sessions at once (different singers and transpositions), converted."""
    hellos = [{"speaker": "a"}, {"speaker": "b"}, {"speaker": "a", "transpose": 3.0}, {}]
    pairs = list(zip(signals(), hellos, strict=True))[:n]
    return await asyncio.gather(*(stream_array(url, x, RATE, fast=True, **h) for x, h in pairs))


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the processes")
def test_sessions_spread_over_the_processes_and_convert_as_one_server(
    ckpt: Path, tmp_path: Path
) -> None:
    with serving(ckpt, tmp_path, 1) as (url, _):
        alone = asyncio.run(convert_all(url))
    with serving(ckpt, tmp_path, 2) as (url, proc):
        assert len(children(proc.pid)) == 1  # the second server process
        spread = asyncio.run(convert_all(url))

        def health() -> dict:
            page = url.removeprefix("ws://").removesuffix("/ws")
            with urllib.request.urlopen(f"http://{page}/health", timeout=10) as r:
                return json.loads(r.read())

        async def full() -> tuple[str, dict]:
            held = [await StreamClient.connect(url, sample_rate=RATE) for _ in range(4)]
            try:
                with pytest.raises(ServerError) as refused:
                    await StreamClient.connect(url, sample_rate=RATE)
                await asyncio.sleep(0.6)  # the processes publish their counts every 0.25 s
                return refused.value.code, await asyncio.to_thread(health)
            finally:
                await asyncio.gather(*(c.close() for c in held))

        code, counts = asyncio.run(full())
        assert code == "server_full"  # 2 + 2: the cap of 4 holds across them
        assert counts["streams"] == counts["max_streams"] == 4  # the totals of both processes
        assert counts["processes"] == 2 and counts["process"] in (0, 1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30.0) == 0
    assert sorted(r.stats["process"] for r in spread) == [0, 0, 1, 1]
    assert all("process" not in r.stats for r in alone)
    for a, b in zip(alone, spread, strict=True):
        assert a.dropped_samples == b.dropped_samples == 0
        assert np.abs(a.output - b.output).max() <= 1e-4 * np.abs(a.output).max()
    assert not children(proc.pid)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the processes")
def test_a_dead_process_gets_no_more_connections(ckpt: Path, tmp_path: Path) -> None:
    private = Path(tempfile.gettempdir()).glob  # the processes' listening folders
    before = set(private("comostream-serve-*"))
    with serving(ckpt, tmp_path, 2) as (url, proc):
        (child,) = children(proc.pid)
        os.kill(child, signal.SIGKILL)
        log = tmp_path / "serve2.log"
        deadline = time.monotonic() + 10.0
        while "server process 1 exited" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        results = asyncio.run(convert_all(url, 2))  # its share of the cap: 2
        assert [r.stats["process"] for r in results] == [0, 0]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30.0) == 1  # one of them died: a failure to report
    assert "server process 1 exited" in log.read_text()
    assert set(private("comostream-serve-*")) <= before  # the killed one left none behind


def test_each_process_admits_its_share_and_one_port_is_bound() -> None:
    cfg = ServerConfig(max_streams=9, max_pending=16)
    shares = [process_config(cfg, 4, i) for i in range(4)]
    assert [(c.max_streams, c.max_pending, c.process) for c in shares] == [
        (3, 4, i) for i in range(4)
    ]
    sockets = _bind("localhost", 0)
    try:
        assert len({s.getsockname()[1] for s in sockets}) == 1  # every address, one port
    finally:
        for s in sockets:
            s.close()


def test_processes_need_the_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--processes", "2", "--device", "cuda", "--port", "0"])
    assert code != 0
    assert "--processes" in capsys.readouterr().err


def test_auto_is_a_process_per_four_streams_up_to_the_cores() -> None:
    cores = len(os.sched_getaffinity(0))
    assert auto_processes(1, "cpu") == 1
    assert auto_processes(8, "cpu") == min(cores, 2)
    assert auto_processes(64, "cpu") == min(cores, 16)
    assert auto_processes(64, "cuda") == 1  # one process drives a GPU


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the processes")
def test_tls_sessions_and_the_page_in_both_processes(ckpt: Path, tmp_path: Path) -> None:
    pair = self_signed_pair(tmp_path)
    if pair is None:
        pytest.skip("no openssl command and no cryptography package to make a certificate")
    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE  # self-signed
    tls = ("--tls-cert", str(pair[0]), "--tls-key", str(pair[1]))
    with serving(ckpt, tmp_path, 2, *tls) as (url, _):
        assert url.startswith("wss://")
        page = url.removeprefix("wss://").removesuffix("/ws")
        with urllib.request.urlopen(f"https://{page}/", timeout=10, context=insecure) as r:
            assert r.status == 200 and b"app.js" in r.read()

        async def session(ws: object) -> dict:
            hello = {"type": "hello", "version": PROTOCOL_VERSION, "sample_rate": RATE}
            await ws.send(json.dumps({**hello, "channels": 1, "format": "f32le"}))
            block = json.loads(await ws.recv())["block"]
            x = sung(RATE, 0.2)
            for i in range(len(x) // block):
                await ws.send(pack_frame(i, 0, x[i * block : (i + 1) * block], "f32le"))
                await ws.recv()
            await ws.send('{"type": "stats"}')
            return json.loads(await ws.recv())

        async def two() -> list[dict]:
            async with connect(url, ssl=insecure) as a, connect(url, ssl=insecure) as b:
                return await asyncio.gather(session(a), session(b))

        stats = asyncio.run(two())
    assert sorted(s["process"] for s in stats) == [0, 1]
    assert all(s["blocks_out"] > 0 and s["dropped_in_samples"] == 0 for s in stats)
