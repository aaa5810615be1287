"""The browser page end to end in headless Chromium: a fake microphone (a WAV file) -> the
AudioWorklet -> the WebSocket server (tiny model) -> converted audio back into the page.

Chromium is driven over the Chrome DevTools Protocol with the ``websockets`` client (no
selenium): open the page, poll ``window.comostream`` (the page's live state), change the singer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect

from comostream.models.audio import load_audio, save_wav
from comostream.models.config import RealtimeConfig
from comostream.realtime.serve.config import ServerConfig
from comostream.realtime.serve.engines import EngineFactory
from comostream.realtime.serve.server import ServerThread

from helpers import tiny_models

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EXAMPLE = Path(__file__).resolve().parents[1] / "models/assets/examples/alto_line2.wav"
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="chromium is not installed (`make test` installs "
        "the Debian package as root; or: apt-get install chromium)",
    ),
]


class DevTools:
    """A minimal CDP client over the browser's WebSocket (flattened target sessions)."""

    def __init__(self, ws: Any) -> None:
        self.ws, self.next_id = ws, 0

    async def call(self, method: str, session: str | None = None, **params: Any) -> Any:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        await self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(await self.ws.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    async def evaluate(self, session: str, expression: str) -> Any:
        r = await self.call(
            "Runtime.evaluate",
            session,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")


def _launch(mic: Path, profile: Path) -> tuple[subprocess.Popen[str], str]:
    """Headless Chromium with a fake microphone; returns the process and its DevTools URL."""
    assert CHROMIUM is not None
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={mic}",
            "--autoplay-policy=no-user-gesture-required",
            "about:blank",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        found = re.search(r"DevTools listening on (ws://\S+)", line)
        if found:
            return proc, found.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("chromium did not start its DevTools endpoint")


STATE_JS = """window.comostream === undefined ? null : JSON.stringify({
  received: comostream.received, dropped: comostream.dropped, sent: comostream.sent,
  sumSquares: comostream.sumSquares, errors: comostream.errors,
  ready: comostream.ready, lastState: comostream.lastState,
  total: document.getElementById('lat-total').textContent})"""


async def _drive(devtools_url: str, page: str, shot: Path) -> tuple[dict[str, Any], dict]:
    async with connect(devtools_url, max_size=2**25) as ws:
        cdp = DevTools(ws)
        target = (await cdp.call("Target.createTarget", url=page))["targetId"]
        session = (await cdp.call("Target.attachToTarget", targetId=target, flatten=True))[
            "sessionId"
        ]
        state: dict[str, Any] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            state = json.loads(await cdp.evaluate(session, STATE_JS) or "null") or {}
            if state.get("errors") or state.get("received", 0) >= 48000:  # 1 s converted
                break
        before = dict(state)
        await cdp.evaluate(
            session,
            "(() => { const s = document.getElementById('speaker');"
            " s.value = 'tenor'; s.dispatchEvent(new Event('change'));"
            " })()",
        )
        while time.monotonic() < deadline and not state["errors"]:
            await asyncio.sleep(0.3)
            state = json.loads(await cdp.evaluate(session, STATE_JS))
            if (state["lastState"] or {}).get("speaker") == "tenor":
                break
        png = await cdp.call("Page.captureScreenshot", session)
        shot.write_bytes(base64.b64decode(png["data"]))
        return before, state


def test_browser_page_streams_converted_audio(tmp_path: Path) -> None:
    mic = tmp_path / "mic.wav"
    voice = load_audio(EXAMPLE, 48000)[: 48000 * 3]
    save_wav(mic, voice, 48000)  # 16-bit PCM: what Chromium's fake capture reads
    model, vocoder = tiny_models()
    factory = EngineFactory(model, vocoder, RealtimeConfig(block_frames=2))
    with ServerThread(factory, ServerConfig(port=0)) as st:
        page = f"http://127.0.0.1:{st.server.port}/?autostart=1&speaker=bass"
        proc, devtools = _launch(mic, tmp_path / "profile")
        try:
            before, after = asyncio.run(_drive(devtools, page, tmp_path / "page.png"))
        finally:
            proc.kill()
            proc.wait(10)
    assert not before["errors"], before["errors"]
    assert before["ready"]["speaker"] == "bass" and before["ready"]["sample_rate"] == 48000
    assert before["received"] >= 48000, f"only {before['received']} samples came back"
    rms = np.sqrt(before["sumSquares"] / before["received"])
    assert rms > 1e-3, f"converted audio is silent (rms {rms:.2e})"
    assert before["total"].endswith("ms")  # the latency readout is filled in
    assert (after["lastState"] or {}).get("speaker") == "tenor", after
    assert not after["errors"], after["errors"]
