// The comostream browser client: microphone -> AudioWorklet -> WebSocket -> playback.
// Protocol: docs/protocol.md (hello/ready text frames; 24-byte little-endian audio headers).
// GET /singers (with the token when the server has one) fills the singer list before Start.
// window.comostream exposes the live state (the end-to-end test reads it).

const MAGIC = [0x43, 0x4d, 0x53, 0x50]; // "CMSP"
const VERSION = 1;
const HEADER_BYTES = 24;
const FLAG_DROPPED = 1;
const FLAG_FLUSH = 2;
const RATE = 48000;
const MIX = "__mix__"; // the singer list's "mix of singers" entry
const DROP_WINDOW_MS = 3000; // drops this recent show the "dropping" state
const NOTE_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"];

// what a close code means to the person at the page (docs/protocol.md, Errors)
const CLOSE_TEXT = {
  1001: "the server is shutting down",
  1006: "connection lost: the server is unreachable, or (https) its certificate is not " +
    "trusted: open this page's address once and accept the certificate",
  1009: "a frame was too large",
  1011: "the server failed (see its log)",
  4000: "the server refused a message",
  4001: "protocol error (a frame before hello)",
  4002: "this server speaks another protocol version",
  4004: "unknown singer",
  4005: "unsupported audio parameters",
  4006: "unauthorized: this server needs its token (enter it under Server)",
  4007: "server full: it already serves its maximum number of streams; try again later",
  4008: "idle timeout: the server heard nothing for too long",
  4009: "overloaded: too many control messages queued",
  4010: "hello timeout: the server got no valid hello in time",
  4011: "server busy: too many connections are opening at once; try again in a moment",
  4012: "bad mix: the singer weights must be finite with a positive total",
  4013: "auto transposition: the model stores no register for this singer",
};

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = {
  phase: "idle", running: false, ready: null, lastState: null, stats: null,
  errors: [], warnings: [], closeCode: null, serverError: null,
  singers: [], registers: {}, singersLoaded: false, devices: [],
  sent: 0, received: 0, dropped: 0, sumSquares: 0, peak: 0, rtt: [], dropTimes: [],
  auto: null, autoSent: null,
  recording: false, take: [], takeSamples: 0, takeBlob: null, takeSeconds: 0,
  ws: null, ctx: null, node: null, stream: null, dryGain: null, wetGain: null, poll: null,
};
window.comostream = state;

function setPhase(phase) {
  state.phase = phase;
  $("phase").textContent = phase;
  $("phase").className = phase;
}

function status(text, kind = "") {
  $("status").textContent = text;
  $("status").className = kind;
}

function noteName(hz) {
  const midi = Math.round(69 + 12 * Math.log2(hz / 440));
  return `${NOTE_NAMES[((midi % 12) + 12) % 12]}${Math.floor(midi / 12) - 1}`;
}

function authHeaders() {
  const token = $("token").value;
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// ---------------------------------------------------------------- singers, mix, registers

async function loadSingers() {
  let reply;
  try {
    reply = await fetch("singers", { headers: authHeaders(), cache: "no-store" });
  } catch (e) {
    setPhase("error");
    status(`cannot reach the server: ${e}`, "error");
    return;
  }
  if (reply.status === 401) {
    $("speaker").innerHTML = '<option value="">(enter the token)</option>';
    setPhase("unauthorized");
    status("this server needs its token: enter it under Server", "error");
    return;
  }
  if (!reply.ok) {
    status(`GET /singers: HTTP ${reply.status}`, "error");
    return;
  }
  const body = await reply.json();
  state.singers = body.singers.map((s) => s.name);
  state.registers = {};
  for (const s of body.singers) if (s.f0_median_hz) state.registers[s.name] = s.f0_median_hz;
  fillSingers(body.singers, params.get("speaker") || body.default);
  state.singersLoaded = true;
  if (state.phase === "idle" || state.phase === "unauthorized") {
    setPhase("idle");
    status(`${state.singers.length} singers; press Start`);
  }
  const haveRegisters = Object.keys(state.registers).length > 0;
  $("auto").disabled = !haveRegisters;
  $("auto-info").textContent = haveRegisters
    ? "auto: transpose to the singer's register"
    : "auto: this model has no voice prints (export --corpus), so no registers";
}

function fillSingers(singers, selected) {
  const select = $("speaker");
  select.innerHTML = "";
  for (const s of singers) {
    const opt = document.createElement("option");
    opt.value = s.name;
    opt.textContent = s.f0_median_hz
      ? `${s.name} (${noteName(s.f0_median_hz)}, ${Math.round(s.f0_median_hz)} Hz)`
      : s.name;
    opt.selected = s.name === selected;
    select.appendChild(opt);
  }
  const mix = document.createElement("option");
  mix.value = MIX;
  mix.textContent = "mix of singers...";
  select.appendChild(mix);
  const box = $("mix");
  box.innerHTML = "";
  for (const s of singers) {
    const row = document.createElement("div");
    row.className = "row";
    const label = document.createElement("label");
    label.textContent = s.name;
    const range = document.createElement("input");
    Object.assign(range, { type: "range", min: 0, max: 100, step: 1, value: 0 });
    range.dataset.singer = s.name;
    const value = document.createElement("span");
    value.className = "hint";
    value.textContent = "0%";
    range.oninput = () => (value.textContent = `${range.value}%`);
    range.onchange = () => {
      range.oninput();
      speakerChanged();
    };
    row.append(label, range, " ", value);
    box.appendChild(row);
  }
}

function mixWeights() {
  const mix = {};
  for (const r of $("mix").querySelectorAll("input[type=range]")) {
    mix[r.dataset.singer] = Number(r.value) / 100;
  }
  return mix;
}

// the singer to send: a name, a mix {name: weight} or null (the server's default)
function currentSpeaker() {
  const value = $("speaker").value;
  if (value === MIX) return mixWeights();
  return value || null;
}

// the register (Hz) of a singer or a mix (weighted geometric mean), null without voice prints
function targetRegister(spec) {
  if (typeof spec === "string") return state.registers[spec] || null;
  if (!spec) return null;
  let total = 0, logSum = 0;
  for (const [name, w] of Object.entries(spec)) {
    if (w <= 0) continue;
    if (!state.registers[name]) return null;
    total += w;
    logSum += w * Math.log(state.registers[name]);
  }
  return total > 0 ? Math.exp(logSum / total) : null;
}

function speakerChanged() {
  const mixing = $("speaker").value === MIX;
  $("mix").style.display = mixing ? "block" : "none";
  sendSet({ speaker: currentSpeaker() });
  if ($("auto").checked) updateAuto();
}

// ---------------------------------------------------------------- transposition, auto

function setTranspose(semitones, send = true) {
  $("transpose").value = semitones;
  $("transpose-value").textContent = semitones > 0 ? `+${semitones}` : `${semitones}`;
  if (send) sendSet({ transpose: Number(semitones) });
}

// auto: the server chooses the shift (docs/protocol.md, Auto transposition): after about a
// second of voicing, the whole semitones from the input's register to the singer's, kept;
// the page sends "auto" and shows what `state` / `stats` say
function autoTranspose() {
  return $("auto").checked && targetRegister(currentSpeaker()) ? "auto" : null;
}

function updateAuto() {
  const target = targetRegister(currentSpeaker());
  if (!target) {
    $("auto-info").textContent = "auto: no register for this singer";
    return;
  }
  if (state.autoSent !== "auto") {
    state.autoSent = "auto";
    sendSet({ transpose: "auto" });
  }
  showAuto(state.lastState && state.lastState.transpose_auto ? state.lastState : state.stats);
}

// the shift the server chose (a `state` or `stats` reply in auto mode)
function showAuto(msg) {
  if (!$("auto").checked || !msg || !msg.transpose_auto) return;
  const target = targetRegister(msg.speaker);
  const source = msg.source_register_hz;
  if (!source || !target) {
    state.auto = null;
    $("auto-info").textContent = target
      ? `auto: target ${Math.round(target)} Hz; sing for a moment...`
      : "auto: no register for this singer";
    return;
  }
  const semitones = msg.transpose;
  state.auto = { source_hz: source, target_hz: target, semitones };
  $("auto-info").textContent = `auto: you ${Math.round(source)} Hz (${noteName(source)}) -> ` +
    `${Math.round(target)} Hz (${noteName(target)}): ${semitones > 0 ? "+" : ""}${semitones} st`;
  setTranspose(semitones, false);
}

// ---------------------------------------------------------------- input devices

async function listDevices() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
  const all = await navigator.mediaDevices.enumerateDevices();
  const inputs = all.filter((d) => d.kind === "audioinput");
  state.devices = inputs.map((d) => ({ id: d.deviceId, label: d.label }));
  const select = $("device");
  const chosen = select.value;
  select.innerHTML = "";
  const def = document.createElement("option");
  def.value = "";
  def.textContent = "(default microphone)";
  select.appendChild(def);
  inputs.forEach((d, i) => {
    if (!d.deviceId || d.deviceId === "default") return;
    const opt = document.createElement("option");
    opt.value = d.deviceId;
    opt.textContent = d.label || `microphone ${i + 1}`;
    opt.selected = d.deviceId === chosen;
    select.appendChild(opt);
  });
}

// ---------------------------------------------------------------- wire

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
    state.dropTimes.push(performance.now());
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
  if (state.recording) {
    state.take.push(samples.slice(0));
    state.takeSamples += samples.length;
  }
  if (state.node) state.node.port.postMessage(samples, [samples.buffer]);
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
    startAudio(msg).catch((e) => fail(`audio: ${e}`));
  } else if (msg.type === "state") {
    state.lastState = msg;
    if (state.phase === "streaming") status(`streaming as ${describe(msg.speaker)}`);
    showAuto(msg);
  } else if (msg.type === "stats") {
    state.stats = msg;
    showAuto(msg);
  } else if (msg.type === "error") {
    const text = `${msg.code}: ${msg.message}`;
    if (msg.close_code === null) {
      state.warnings.push(text); // a refused set (bad_mix, no_register): the session goes on
      const what = CLOSE_TEXT[msg.code === "no_register" ? 4013 : 4012];
      status(`refused: ${what} (${msg.message})`, "warn");
    } else {
      state.serverError = msg;
    }
  }
}

// ---------------------------------------------------------------- audio graph, recording

async function startAudio(ready) {
  const ctx = state.ctx;
  const node = new AudioWorkletNode(ctx, "comostream-processor", {
    numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
    processorOptions: { block: ready.block, prefill: 2 * ready.block, maxQueued: 6 * ready.block },
  });
  let seq = 0;
  node.port.onmessage = (e) => {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) {
      state.ws.send(packFrame(seq++, e.data));
      state.sent++;
    }
  };
  const source = ctx.createMediaStreamSource(state.stream);
  state.wetGain = ctx.createGain();
  state.dryGain = ctx.createGain();
  source.connect(node);
  source.connect(state.dryGain); // the monitor's dry share: the microphone, undelayed
  node.connect(state.wetGain);
  state.wetGain.connect(ctx.destination);
  state.dryGain.connect(ctx.destination);
  applyDryWet();
  state.node = node;
  state.poll = setInterval(() => {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send('{"type": "stats"}');
  }, 1000);
  $("record").disabled = false;
  setPhase("streaming");
  status(`streaming as ${describe(ready.speaker)} (session ${ready.session})`);
  listDevices().catch(() => {}); // labels are known once the microphone is granted
}

function describe(spec) {
  if (typeof spec === "string") return spec;
  return Object.entries(spec || {}).map(([n, w]) => `${n}:${+w.toFixed(2)}`).join(",");
}

function applyDryWet() {
  const wet = Number($("drywet").value) / 100;
  $("drywet-value").textContent = `${Math.round(wet * 100)}%`;
  if (state.wetGain) state.wetGain.gain.value = wet;
  if (state.dryGain) state.dryGain.gain.value = 1 - wet;
}

function startRecording() {
  state.take = [];
  state.takeSamples = 0;
  state.takeBlob = null;
  state.recording = true;
  $("record").textContent = "Stop recording";
  $("record").classList.add("on");
  $("download").hidden = true;
  $("take").textContent = "recording the converted take...";
}

function stopRecording() {
  if (!state.recording) return;
  state.recording = false;
  $("record").textContent = "Record";
  $("record").classList.remove("on");
  state.takeBlob = wavBlob(state.take, state.takeSamples, RATE);
  state.takeSeconds = state.takeSamples / RATE;
  state.take = [];
  const link = $("download");
  if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(state.takeBlob);
  const stamp = new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-");
  link.download = `comostream-take-${stamp}.wav`;
  link.hidden = false;
  $("take").textContent = `${state.takeSeconds.toFixed(1)} s WAV`;
}

// a mono 16-bit PCM WAV file of the recorded chunks
function wavBlob(chunks, total, rate) {
  const buf = new ArrayBuffer(44 + 2 * total);
  const v = new DataView(buf);
  const ascii = (at, s) => [...s].forEach((c, i) => v.setUint8(at + i, c.charCodeAt(0)));
  ascii(0, "RIFF");
  v.setUint32(4, 36 + 2 * total, true);
  ascii(8, "WAVEfmt ");
  v.setUint32(16, 16, true);
  v.setUint16(20, 1, true); // PCM
  v.setUint16(22, 1, true); // mono
  v.setUint32(24, rate, true);
  v.setUint32(28, 2 * rate, true);
  v.setUint16(32, 2, true);
  v.setUint16(34, 16, true);
  ascii(36, "data");
  v.setUint32(40, 2 * total, true);
  let at = 44;
  for (const chunk of chunks) {
    for (const x of chunk) {
      v.setInt16(at, Math.max(-32768, Math.min(32767, Math.round(x * 32767))), true);
      at += 2;
    }
  }
  return new Blob([buf], { type: "audio/wav" });
}

// ---------------------------------------------------------------- readouts

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
  const now = performance.now();
  state.dropTimes = state.dropTimes.filter((t) => now - t < DROP_WINDOW_MS);
  if (state.phase === "streaming" && state.dropTimes.length) {
    setPhase("dropping");
    status("overloaded: audio is being dropped (the server or the network cannot keep " +
      "up; try fewer streams, a larger block or a wired network)", "warn");
  } else if (state.phase === "dropping" && !state.dropTimes.length) {
    setPhase("streaming");
    status(`streaming as ${describe((state.lastState || state.ready).speaker)}`);
  }
}

// ---------------------------------------------------------------- start / stop

function fail(text) {
  state.errors.push(text);
  stop();
  setPhase("error");
  status(text, "error");
}

async function start() {
  if (state.running) return;
  if (!window.isSecureContext || !navigator.mediaDevices) {
    fail("the microphone needs a secure page: open it over https (serve --tls-cert FILE " +
      "--tls-key FILE) or as http://localhost on the server's machine");
    return;
  }
  state.running = true;
  state.ready = state.serverError = state.lastState = state.stats = state.auto = null;
  state.autoSent = null;
  $("start").textContent = "Stop";
  $("start").className = "stop";
  setPhase("connecting");
  status("starting the microphone...");
  state.ctx = new AudioContext({ sampleRate: RATE, latencyHint: "interactive" });
  await state.ctx.audioWorklet.addModule("worklet.js");
  const device = $("device").value;
  state.stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false,
             autoGainControl: false, ...(device ? { deviceId: { exact: device } } : {}) },
  });
  await state.ctx.resume();
  if (!state.running) return; // stopped meanwhile
  status("connecting...");
  const scheme = location.protocol === "https:" ? "wss" : "ws"; // https pages need wss
  const ws = new WebSocket(`${scheme}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  ws.onopen = () => {
    state.autoSent = autoTranspose(); // "auto" in hello: the server chooses from the start
    ws.send(JSON.stringify({
      type: "hello", version: VERSION, sample_rate: RATE, channels: 1, format: "f32le",
      block: null, speaker: currentSpeaker(),
      transpose: autoTranspose() || Number($("transpose").value),
      token: $("token").value || null,
    }));
    status("connected; waiting for the server...");
  };
  ws.onmessage = (e) => (typeof e.data === "string" ? onText(e.data) : onAudio(e.data));
  ws.onclose = (e) => {
    state.closeCode = e.code;
    if (!state.running || state.ws !== ws) return;
    const err = state.serverError;
    const meaning = CLOSE_TEXT[e.code] || `connection closed (${e.code})`;
    fail(err ? `${meaning} [${err.code}: ${err.message}]` : meaning);
  };
}

function stop() {
  stopRecording();
  state.running = false;
  $("start").textContent = "Start";
  $("start").className = "";
  $("record").disabled = true;
  if (state.poll) clearInterval(state.poll);
  if (state.ws) state.ws.close(1000);
  if (state.node) state.node.disconnect();
  if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
  if (state.ctx) state.ctx.close();
  state.ws = state.node = state.stream = state.ctx = state.poll = null;
  state.wetGain = state.dryGain = null;
  if (state.phase !== "error") {
    setPhase("idle");
    status("stopped");
  }
}

$("start").onclick = () => {
  if (state.running) {
    setPhase("idle");
    stop();
  } else {
    start().catch((e) => fail(`${e}`));
  }
};
$("record").onclick = () => (state.recording ? stopRecording() : startRecording());
$("speaker").onchange = () => {
  if ($("speaker").value === MIX && !Object.values(mixWeights()).some((w) => w > 0)) {
    const first = $("mix").querySelector("input[type=range]"); // start from 100% of one
    const prev = state.lastState ? state.lastState.speaker : null;
    const seed = $("mix").querySelector(`input[data-singer="${CSS.escape(String(prev))}"]`);
    const r = seed || first;
    if (r) {
      r.value = 100;
      r.oninput();
    }
  }
  speakerChanged();
};
$("transpose").oninput = () => {
  $("auto").checked = false; // a hand on the slider takes over from auto
  state.autoSent = null;
  setTranspose(Number($("transpose").value)); // a number ends the server's auto mode
};
$("auto").onchange = () => {
  if ($("auto").checked) updateAuto();
  else {
    state.autoSent = state.auto = null;
    $("auto-info").textContent = "auto: transpose to the singer's register";
    setTranspose(Number($("transpose").value));
  }
};
$("bypass").onchange = () => sendSet({ bypass: $("bypass").checked });
$("drywet").oninput = applyDryWet;
$("token").onchange = () => loadSingers();
if (navigator.mediaDevices) navigator.mediaDevices.ondevicechange = () => listDevices();
setInterval(showLatency, 250);
if (params.get("token")) $("token").value = params.get("token");
if (params.get("transpose")) setTranspose(Number(params.get("transpose")), false);
if (params.get("auto")) $("auto").checked = true;
listDevices().catch(() => {});
loadSingers().then(() => {
  if (params.get("autostart")) start().catch((e) => fail(`${e}`));
});
