// The comostream browser client: microphone -> AudioWorklet -> WebSocket -> playback.
// Protocol: docs/protocol.md (hello/ready text frames; 24-byte little-endian audio headers).
// window.comostream exposes the live state (the end-to-end test reads it).

const MAGIC = [0x43, 0x4d, 0x53, 0x50]; // "CMSP"
const VERSION = 1;
const HEADER_BYTES = 24;
const FLAG_DROPPED = 1;
const FLAG_FLUSH = 2;
const RATE = 48000;

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = {
  running: false, ready: null, lastState: null, errors: [], closeCode: null,
  sent: 0, received: 0, dropped: 0, sumSquares: 0, peak: 0, rtt: [],
  ws: null, ctx: null, node: null, stream: null,
};
window.comostream = state;

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function packFrame(seq, samples) {
  const buf = new ArrayBuffer(HEADER_BYTES + samples.length * 4);
  const view = new DataView(buf);
  MAGIC.forEach((b, i) => view.setUint8(i, b));
  view.setUint8(4, VERSION);
  view.setUint8(5, 0);
  view.setUint16(6, 0, true);
  view.setUint32(8, seq >>> 0, true);
  view.setBigUint64(12, BigInt(Math.round(performance.now() * 1000)), true);
  view.setUint32(20, samples.length, true);
  new Float32Array(buf, HEADER_BYTES).set(samples);
  return buf;
}

function onAudio(buf) {
  const view = new DataView(buf);
  const flags = view.getUint8(5);
  const ts = Number(view.getBigUint64(12, true));
  const count = view.getUint32(20, true);
  let samples;
  if (flags & FLAG_DROPPED) {
    samples = new Float32Array(count);
    state.dropped += count;
  } else {
    samples = new Float32Array(buf.slice(HEADER_BYTES));
    state.received += samples.length;
    for (const v of samples) {
      state.sumSquares += v * v;
      state.peak = Math.max(state.peak, Math.abs(v));
    }
    if (!(flags & FLAG_FLUSH)) state.rtt.push(performance.now() - ts / 1000);
    if (state.rtt.length > 200) state.rtt.shift();
  }
  if (state.node) state.node.port.postMessage(samples, [samples.buffer]);
}

function median(values) {
  if (!values.length) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function showLatency() {
  if (!state.ready || !state.ctx) return;
  const algo = state.ready.latency_ms;
  const rtt = median(state.rtt);
  const prefill = (1000 * 2 * state.ready.block) / RATE;
  const buffers = prefill + 1000 * ((state.ctx.baseLatency || 0) + (state.ctx.outputLatency || 0));
  const fmt = (v) => (Number.isFinite(v) ? `${v.toFixed(1)} ms` : "-");
  $("lat-algo").textContent = fmt(algo);
  $("lat-rtt").textContent = fmt(rtt);
  $("lat-buf").textContent = fmt(buffers);
  $("lat-total").textContent = fmt(algo + (Number.isFinite(rtt) ? rtt : 0) + buffers);
  $("counts").textContent = `${(state.received / RATE).toFixed(1)} s / ${state.dropped} samples`;
  const rms = state.received ? Math.sqrt(state.sumSquares / state.received) : 0;
  $("level").value = Math.min(1, rms * 4);
}

function sendSet(fields) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN && state.ready) {
    state.ws.send(JSON.stringify({ type: "set", ...fields }));
  }
}

function onText(text) {
  const msg = JSON.parse(text);
  if (msg.type === "ready") {
    state.ready = msg;
    const select = $("speaker");
    select.innerHTML = "";
    for (const name of msg.speakers) {
      const opt = document.createElement("option");
      opt.value = opt.textContent = name;
      opt.selected = name === msg.speaker;
      select.appendChild(opt);
    }
    startAudio(msg).catch((e) => fail(`audio: ${e}`));
  } else if (msg.type === "state") {
    state.lastState = msg;
  } else if (msg.type === "error") {
    fail(`server error ${msg.code}: ${msg.message}`);
  }
}

async function startAudio(ready) {
  const ctx = state.ctx;
  const node = new AudioWorkletNode(ctx, "comostream-processor", {
    numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
    processorOptions: { block: ready.block, prefill: 2 * ready.block, maxQueued: 6 * ready.block },
  });
  let seq = 0;
  node.port.onmessage = (e) => {
    if (state.ws.readyState === WebSocket.OPEN) {
      state.ws.send(packFrame(seq++, e.data));
      state.sent++;
    }
  };
  ctx.createMediaStreamSource(state.stream).connect(node);
  node.connect(ctx.destination);
  state.node = node;
  status(`streaming as ${ready.speaker} (session ${ready.session})`);
}

function fail(text) {
  state.errors.push(text);
  status(text, true);
  stop();
}

async function start() {
  if (state.running) return;
  state.running = true;
  $("start").textContent = "Stop";
  $("start").className = "stop";
  status("starting microphone...");
  state.ctx = new AudioContext({ sampleRate: RATE, latencyHint: "interactive" });
  await state.ctx.audioWorklet.addModule("worklet.js");
  state.stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false,
             autoGainControl: false },
  });
  await state.ctx.resume();
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  ws.onopen = () => {
    const speaker = params.get("speaker") || $("speaker").value || null;
    ws.send(JSON.stringify({
      type: "hello", version: VERSION, sample_rate: RATE, channels: 1, format: "f32le",
      block: null, speaker, transpose: Number($("transpose").value),
      token: params.get("token"),
    }));
    status("connected; waiting for the server...");
  };
  ws.onmessage = (e) => (typeof e.data === "string" ? onText(e.data) : onAudio(e.data));
  ws.onclose = (e) => {
    state.closeCode = e.code;
    if (state.running) fail(`connection closed (${e.code} ${e.reason})`);
  };
}

function stop() {
  state.running = false;
  $("start").textContent = "Start";
  $("start").className = "";
  if (state.ws) state.ws.close(1000);
  if (state.node) state.node.disconnect();
  if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
  if (state.ctx) state.ctx.close();
  state.ws = state.node = state.stream = state.ctx = null;
}

$("start").onclick = () => (state.running ? stop() : start().catch((e) => fail(`${e}`)));
$("speaker").onchange = () => sendSet({ speaker: $("speaker").value });
$("transpose").oninput = () => {
  $("transpose-value").textContent = $("transpose").value;
  sendSet({ transpose: Number($("transpose").value) });
};
$("bypass").onchange = () => sendSet({ bypass: $("bypass").checked });
setInterval(showLatency, 250);
if (params.get("transpose")) {
  $("transpose").value = params.get("transpose");
  $("transpose-value").textContent = params.get("transpose");
}
if (params.get("autostart")) start().catch((e) => fail(`${e}`));
