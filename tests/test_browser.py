"""The browser page end to end in headless Chromium: a fake microphone (a WAV file) -> the
AudioWorklet -> the WebSocket server (tiny model) -> converted audio back into the page, over
HTTP and over HTTPS/WSS (a self-signed pair made here; skipped without openssl or cryptography).

Chromium is driven over the Chrome DevTools Protocol with the ``websockets`` client (no
selenium): open the page, poll ``window.comostream`` (the page's live state) and use the
controls as a person would: the singer list (with registers) before Start, the token field, a
singer mix, auto transposition, recording and downloading the converted take. The HTTP run saves
a screenshot of the page to ``docs/img/browser.png`` (the README's picture).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from comostream.models.audio import load_audio, save_wav
from comostream.models.config import RealtimeConfig
from comostream.realtime.serve.config import ServerConfig
from comostream.realtime.serve.engines import EngineFactory
from comostream.realtime.serve.server import ServerThread

from helpers import self_signed_pair, tiny_models

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "models/assets/examples/alto_line2.wav"
SCREENSHOT = ROOT / "docs/img/browser.png"  # the README's picture of the page
REGISTERS = {"alto": 262.0, "bass": 131.0, "tenor": 196.0}  # voice prints' F0 medians (Hz)
TOKEN = "page-s3cret"
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
            "--ignore-certificate-errors",  # the HTTPS run's self-signed certificate
            "--window-size=900,600",
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
  sumSquares: comostream.sumSquares, errors: comostream.errors, warnings: comostream.warnings,
  ready: comostream.ready, lastState: comostream.lastState, phase: comostream.phase,
  auto: comostream.auto, takeSamples: comostream.takeSamples, takeSeconds: comostream.takeSeconds,
  singersLoaded: comostream.singersLoaded, devices: comostream.devices.length,
  stats: comostream.stats, status: document.getElementById('status').textContent,
  options: [...document.getElementById('speaker').options].map(o => [o.value, o.textContent]),
  total: document.getElementById('lat-total').textContent})"""


class Page:
    """The page under test: JavaScript in its context, its state, waits and clicks."""

    def __init__(self, cdp: DevTools, session: str) -> None:
        self.cdp, self.session = cdp, session

    async def js(self, expression: str) -> Any:
        return await self.cdp.evaluate(self.session, expression)

    async def state(self) -> dict[str, Any]:
        return json.loads(await self.js(STATE_JS) or "null") or {}

    async def until(self, condition: str, what: str, timeout: float = 20.0) -> dict[str, Any]:
        """Poll until ``condition`` (JavaScript) holds; the page's state then. Fails on a page
        error or at the timeout, showing the state."""
        deadline = time.monotonic() + timeout
        while True:
            ok = await self.js(f"window.comostream !== undefined && !!({condition})")
            state = await self.state()
            if ok:
                return state
            assert not state.get("errors"), f"{what}: the page failed: {state['errors']}"
            assert time.monotonic() < deadline, f"{what}: timed out; page state {state}"
            await asyncio.sleep(0.2)

    async def set_value(self, selector: str, value: Any, event: str = "change") -> None:
        """Set a control's value and fire ``event``, as a person's click or drag would."""
        await self.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            f" e.value = {json.dumps(value)}; e.dispatchEvent(new Event({json.dumps(event)}));"
            " })()"
        )

    async def check(self, selector: str) -> None:
        await self.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.checked = true; e.dispatchEvent(new Event('change')); })()"
        )

    async def click(self, selector: str) -> None:
        await self.js(f"document.querySelector({json.dumps(selector)}).click()")


async def _control_panel(
    devtools_url: str,
    page_url: str,
    ws_url: str,
    downloads: Path,
    token: str | None,
    shot: Path | None,
) -> dict[str, Any]:
    """Use the page as a person would; what was seen on the way (for the asserts)."""
    seen: dict[str, Any] = {}
    async with connect(devtools_url, max_size=2**25) as ws:
        cdp = DevTools(ws)
        await cdp.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
        target = (await cdp.call("Target.createTarget", url=page_url))["targetId"]
        session = (await cdp.call("Target.attachToTarget", targetId=target, flatten=True))[
            "sessionId"
        ]
        await cdp.call(
            "Emulation.setDeviceMetricsOverride",
            session,
            width=900,
            height=600,
            deviceScaleFactor=1,
            mobile=False,
        )
        page = Page(cdp, session)
        if token:  # the server needs its token: the page says so, then gets it typed in
            seen["unauthorized"] = await page.until("comostream.phase === 'unauthorized'", "401")
            await page.set_value("#token", token)
        # 1. the singers and their registers, before Start
        seen["loaded"] = await page.until(
            "comostream.singersLoaded && comostream.devices.length > 0", "the singers and inputs"
        )
        # 2. stream
        await page.click("#start")
        seen["streaming"] = await page.until(
            "comostream.phase === 'streaming' && comostream.received >= 24000", "streaming"
        )
        # 3. a mix with no weight: refused (4012 without closing), the stream goes on
        await page.set_value("#speaker", "__mix__")
        for name in REGISTERS:
            await page.set_value(f'#mix input[data-singer="{name}"]', "0")
        seen["bad_mix"] = await page.until("comostream.warnings.length > 0", "bad_mix")
        # 4. a mix of two singers
        await page.set_value('#mix input[data-singer="alto"]', "50", "input")
        await page.set_value('#mix input[data-singer="tenor"]', "50")
        seen["mix"] = await page.until(
            "comostream.lastState && comostream.lastState.speaker.tenor === 0.5"
            " && comostream.lastState.speaker.alto === 0.5",
            "the mix",
        )
        # 5. auto transposition to the mix's register (the server's, shown from state/stats)
        await page.check("#auto")
        seen["auto"] = await page.until(
            "comostream.auto && comostream.stats && comostream.stats.transpose_auto"
            " && comostream.stats.transpose === comostream.auto.semitones"
            " && Number(document.getElementById('transpose').value) === comostream.auto.semitones",
            "auto transposition",
        )
        # 6. record the converted take, then download it
        await page.click("#record")
        t0 = time.monotonic()
        await page.until(f"comostream.takeSamples >= {int(1.5 * 48000)}", "recording")
        await page.click("#record")
        seen["record_wall_s"] = time.monotonic() - t0
        seen["recorded"] = await page.until("comostream.takeBlob !== null", "the take")
        await page.click("#download")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            files = [f for f in downloads.glob("*.wav") if f.stat().st_size > 44]
            if files and not list(downloads.glob("*.crdownload")):
                seen["download"] = files[0]
                break
            await asyncio.sleep(0.2)
        if shot is not None:
            png = await cdp.call("Page.captureScreenshot", session, format="png")
            shot.parent.mkdir(parents=True, exist_ok=True)
            shot.write_bytes(base64.b64decode(png["data"]))
        await page.click("#start")  # Stop
        seen["stopped"] = await page.until("comostream.phase === 'idle'", "stop")
        # 7. the one stream slot taken by another client: the page says the server is full
        hello = {"type": "hello", "version": 1, "sample_rate": 48000, "token": token}
        async with connect(ws_url, ssl=_insecure() if ws_url.startswith("wss") else None) as other:
            await other.send(json.dumps(hello))
            assert json.loads(await other.recv())["type"] == "ready"
            await page.click("#start")
            await page.until("comostream.closeCode === 4007", "server full", timeout=10)
            seen["full"] = await page.state()
    return seen


def _insecure() -> ssl.SSLContext:
    """A client TLS context that accepts the test's self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_control_panel_lists_mixes_transposes_and_records(scheme: str, tmp_path: Path) -> None:
    settings: dict[str, Any] = {}
    if scheme == "https":
        pair = self_signed_pair(tmp_path)
        if pair is None:
            pytest.skip("no openssl command and no cryptography package to make a certificate")
        settings = {"tls_cert": str(pair[0]), "tls_key": str(pair[1]), "token": TOKEN}
    mic = tmp_path / "mic.wav"
    save_wav(mic, load_audio(EXAMPLE, 48000)[: 48000 * 3], 48000)
    model, vocoder = tiny_models()
    factory = EngineFactory(model, vocoder, RealtimeConfig(block_frames=2), REGISTERS)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with ServerThread(factory, ServerConfig(port=0, max_streams=1, **settings)) as st:
        assert st.server.http_url.startswith(f"{scheme}://") and st.url.startswith(
            "wss://" if scheme == "https" else "ws://"
        )
        proc, devtools = _launch(mic, tmp_path / "profile")
        try:
            seen = asyncio.run(
                _control_panel(
                    devtools,
                    f"{st.server.http_url}/",
                    st.url,
                    downloads,
                    settings.get("token"),
                    SCREENSHOT if scheme == "http" else None,
                )
            )
        finally:
            proc.kill()
            proc.wait(10)
    if scheme == "https":
        assert "token" in seen["unauthorized"]["status"]
    # the singers with their registers, listed before Start
    loaded = seen["loaded"]
    assert loaded["ready"] is None and loaded["phase"] == "idle"
    labels = dict(loaded["options"])
    assert labels["alto"] == "alto (C4, 262 Hz)" and labels["bass"] == "bass (C3, 131 Hz)"
    assert "__mix__" in labels and loaded["devices"] >= 1  # the fake microphone is listed
    streaming = seen["streaming"]
    assert streaming["ready"]["sample_rate"] == 48000 and not streaming["errors"]
    # auto: the input's median F0 moved to the mix's register (geometric mean of its singers)
    auto = seen["auto"]["auto"]
    target = float(np.sqrt(REGISTERS["alto"] * REGISTERS["tenor"]))
    assert auto["target_hz"] == pytest.approx(target, rel=1e-6)
    assert 80 < auto["source_hz"] < 1000
    assert auto["semitones"] == round(12 * np.log2(target / auto["source_hz"]))
    assert seen["auto"]["stats"]["transpose"] == auto["semitones"]  # chosen by the server
    assert seen["auto"]["lastState"]["transpose_auto"] is True  # the page sent "auto"
    assert seen["auto"]["stats"]["source_register_hz"] == auto["source_hz"]
    assert seen["bad_mix"]["warnings"][0].startswith("bad_mix")
    assert seen["bad_mix"]["phase"] in ("streaming", "dropping")
    # the take: downloaded as a WAV file, as long as the recording, converted (not silent)
    take, rate = sf.read(seen["download"], dtype="float32")
    recorded = seen["recorded"]
    assert rate == 48000 and take.ndim == 1 and len(take) == recorded["takeSamples"]
    assert len(take) >= 1.5 * rate  # recorded until 1.5 s had come back
    assert abs(len(take) / rate - seen["record_wall_s"]) < 1.0, (len(take), seen["record_wall_s"])
    rms = float(np.sqrt(np.mean(take**2)))
    assert rms > 1e-3, f"the recorded take is silent (rms {rms:.2e})"
    assert seen["download"].name.startswith("comostream-take-")
    assert not seen["stopped"]["errors"], seen["stopped"]["errors"]
    full = seen["full"]
    assert full["phase"] == "error" and full["status"].startswith("server full"), full["status"]
    if scheme == "http":
        assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
