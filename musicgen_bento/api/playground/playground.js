// The playground: one page, talking to this server's own API. No libraries, nothing fetched from
// elsewhere. The source is drawn as a waveform with the audio prompt as a region to drag and
// resize. Continue streams POST /continue/stream and plays the WAV chunks with Web Audio as they
// arrive (one take, WAV, levelled as made); several takes, another format or a level of the whole
// piece run as a job continuing the file. Generate runs a job (POST /generate) followed through
// GET /jobs/{id}/events. Each result is drawn after its source on one timeline, the join marked,
// and every take gets its own player. Where the server asks for an API key, every call carries the
// one the person gives (kept in this tab).
"use strict";

const $ = (id) => document.getElementById(id);
const FIELDS = [
  "prompt", "duration_s", "cfg_coef", "temperature", "top_k", "top_p", "seed", "output_format", "sample_rate",
  "sample_format", "normalization", "loudness_lufs", "takes", "prompt_start_s", "prompt_duration_s",
];
// Where an error about a request field is shown: the control that sets it.
const ERROR_HOME = {
  Authorization: "api_key", audio_path: "source", continue_from: "source", file: "source",
  melody_path: "melody", match_source: "sample_rate",
};
const LABELS = {
  prompt: "Prompt", source: "Music to continue", melody: "Melody", duration_s: "Length",
  cfg_coef: "Guidance", temperature: "Temperature", top_k: "Top-k", top_p: "Top-p", seed: "Seed",
  output_format: "File format", sample_rate: "Sample rate", sample_format: "Bit depth", normalization: "Level",
  loudness_lufs: "Loudness target", takes: "Takes", prompt_start_s: "Prompt starts at",
  prompt_duration_s: "Prompt length",
};
// What a stream carries (render.stream): one take, a WAV file, levelled as it is made.
const STREAMABLE_LEVELS = ["clip", "none"];

const state = {
  ready: false, melody: false, limits: { continue: 30, job: 120, prompt: 29, promptDefault: 10 },
  source: null, melodyUpload: null, busy: false, jobId: null, events: null, results: [],
  sourceAudio: null, region: null, drag: null,
};

// ---- the server ---------------------------------------------------------------------------------

// This server's API, with the person's key where the server asks for one.
function api(url, init = {}) {
  const key = $("api_key").value.trim();
  const headers = new Headers(init.headers || {});
  if (key) headers.set("Authorization", `Bearer ${key}`);
  return fetch(url, { ...init, headers });
}

// A job's Server-Sent Events, read through fetch: EventSource cannot send the Authorization header.
// The format is a few lines (WHATWG "event stream interpretation"), so it is parsed here rather
// than with a library the page would have to carry. `onEvent(name, data)` gets each event.
async function followEvents(url, onEvent, signal) {
  const response = await api(url, { headers: { Accept: "text/event-stream" }, signal });
  if (!response.ok) throw response;
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { name: "message", data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (event.data.length) onEvent(event.name, event.data.join("\n"));
        event = { name: "message", data: [] };
      } else if (!line.startsWith(":")) {
        const at = line.indexOf(":");
        const field = at < 0 ? line : line.slice(0, at);
        const text = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
        if (field === "event") event.name = text;
        else if (field === "data") event.data.push(text);
      }
    }
  }
}

function rememberKey() {
  sessionStorage.setItem("musicgen-api-key", $("api_key").value.trim());
  $("api_key-error").textContent = "";
  $("api_key").classList.remove("invalid");
  readLimits();
}

async function watchHealth() {
  for (;;) {
    let health = null;
    try {
      const response = await fetch("/health", { cache: "no-store" });
      health = await response.json();
    } catch (error) {
      showServer("error", "The server does not answer; retrying…");
    }
    if (health) {
      $("key-field").hidden = !health.keys_required;
      const where = [health.model, health.device, health.licence && `licence: ${health.licence}`]
        .filter(Boolean).join(" · ");
      if (health.status === "ready") {
        state.ready = true;
        state.melody = Boolean(health.melody);
        $("melody-field").hidden = !state.melody;
        showServer("ready", `Ready: ${where}`);
        updateButtons();
        return;
      }
      if (health.status === "error") {
        showServer("error", `The model could not be loaded: ${health.detail || "unknown reason"}. ${where}`);
      } else {
        showServer("loading", `Loading the model (${health.detail || "starting"})… ${where}`);
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function showServer(kind, text) {
  $("server").dataset.state = kind;
  $("server").textContent = text;
}

async function readLimits() {
  // The server's own limits, from its OpenAPI document.
  try {
    const schemas = (await (await api("/docs.json")).json()).components.schemas;
    const maximum = (schema) => (schema.properties.duration_s.anyOf || [schema.properties.duration_s])
      .map((branch) => branch.maximum).find((value) => value !== undefined);
    state.limits.continue = maximum(schemas.ContinueRequest) ?? state.limits.continue;
    state.limits.job = maximum(schemas.GenerateRequest) ?? state.limits.job;
    const prompt = schemas.ContinueRequest.properties.prompt_duration_s;
    state.limits.prompt = (prompt.anyOf || [prompt]).map((branch) => branch.maximum)
      .find((value) => value !== undefined) ?? state.limits.prompt;
    if (typeof prompt.default === "number") state.limits.promptDefault = prompt.default;
    // What an omitted duration means on this server (the default, or the limit where it is lower).
    const omitted = schemas.ContinueRequest.properties.duration_s.default;
    if (typeof omitted === "number") $("duration_s").value = String(omitted);
  } catch (error) { /* the defaults above stand */ }
  $("duration_s").max = Math.max(state.limits.continue, state.limits.job);
  $("duration-hint").textContent =
    `Up to ${state.limits.continue} s with Continue, ${state.limits.job} s with Generate.`;
}

// ---- errors next to their fields ----------------------------------------------------------------

function clearErrors() {
  document.querySelectorAll(".error").forEach((node) => { node.textContent = ""; });
  document.querySelectorAll(".invalid").forEach((node) => node.classList.remove("invalid"));
}

function showError(field, message) {
  const home = ERROR_HOME[field] || (FIELDS.includes(field) ? field : "general");
  const target = $(`${home}-error`) || $("general-error");
  // The server says "field: what to change"; the page says it under the control, in its words.
  let text = message.startsWith(`${field}: `) ? message.slice(field.length + 2) : message;
  text = text.charAt(0).toUpperCase() + text.slice(1);
  target.textContent = home === "general" && LABELS[field] ? `${LABELS[field]}: ${text}` : text;
  const control = $(home);
  if (control && home !== "general") {
    control.classList.add("invalid");
    control.setAttribute("aria-describedby", `${home}-error`);
  }
}

async function refusal(response) {
  let body = {};
  try { body = await response.json(); } catch (error) { body = { error: `the server answered ${response.status}` }; }
  if (response.status === 503) {
    body.error = `the server is busy or still loading (${body.error || "retry shortly"})`;
  }
  showError(body.field || "general", body.error || `the server answered ${response.status}`);
}

// ---- uploads ------------------------------------------------------------------------------------

async function upload(file, role) {
  const info = $(`${role}-info`);
  $(`${role}-error`).textContent = "";
  $(role).classList.remove("invalid");
  info.textContent = `Uploading ${file.name}…`;
  const form = new FormData();
  form.append("file", file, file.name);
  const response = await api("/uploads", { method: "POST", body: form });
  if (response.status !== 201) {
    info.textContent = "";
    const body = await response.json().catch(() => ({}));
    showError(role === "source" ? "file" : "melody_path", body.error || `upload failed (${response.status})`);
    state[role === "source" ? "source" : "melodyUpload"] = null;
    updateButtons();
    return;
  }
  const stored = await response.json();
  state[role === "source" ? "source" : "melodyUpload"] = stored;
  if (role === "source") await showSource(file, stored);
  const channels = stored.channels === 1 ? "mono" : stored.channels === 2 ? "stereo" : `${stored.channels} channels`;
  info.textContent = `${file.name}: ${stored.duration_s.toFixed(1)} s, ${stored.sample_rate} Hz, ${channels}`;
  updateButtons();
}

function acceptDrops(zone, input, role) {
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files.length) upload(event.dataTransfer.files[0], role);
  });
  input.addEventListener("change", () => { if (input.files.length) upload(input.files[0], role); });
}

// ---- the source, and the audio prompt as a region on it ------------------------------------------

// Decodes the chosen file here for its picture (the server has its own copy), and puts the prompt
// region where the server would take it: the last prompt_duration_s seconds.
async function showSource(file, stored) {
  let samples = new Float32Array(0), rate = stored.sample_rate;
  try {
    const decoded = await decodeAudio(await file.arrayBuffer(), stored.sample_rate);
    samples = decoded.data;
    rate = decoded.rate;
  } catch (error) { /* the browser cannot decode it: the region still works on the numbers */ }
  const duration = stored.duration_s;
  state.sourceAudio = { samples, rate, duration };
  const length = Math.min(state.limits.promptDefault, state.limits.prompt, duration);
  setRegion(duration - length, length);
  $("prompt_start_s").max = String(duration);
  $("prompt_duration_s").max = String(Math.min(state.limits.prompt, duration));
  $("source-view").hidden = false;
}

// Keeps the region inside the source and the prompt's limits, shows it in the two fields, draws it.
function setRegion(start, length) {
  const audio = state.sourceAudio;
  const longest = Math.min(state.limits.prompt, audio.duration);
  length = Math.min(Math.max(length, 0.02), longest);
  start = Math.min(Math.max(start, 0), audio.duration - length);
  state.region = { start, length };
  $("prompt_start_s").value = round2(start).toFixed(2);
  $("prompt_duration_s").value = round2(length).toFixed(2);
  drawSource();
}

function drawSource() {
  const canvas = $("source-wave");
  const g = canvas.getContext("2d");
  const audio = state.sourceAudio;
  g.fillStyle = "#0f1220";
  g.fillRect(0, 0, canvas.width, canvas.height);
  if (!audio) return;
  drawEnvelope(g, audio.samples, 0, canvas.width, canvas.height, "#9aa3b5");
  const { start, length } = state.region;
  const x0 = (start / audio.duration) * canvas.width, x1 = ((start + length) / audio.duration) * canvas.width;
  g.fillStyle = "rgba(122, 162, 255, 0.35)";
  g.fillRect(x0, 0, x1 - x0, canvas.height);
  g.fillStyle = "#7aa2ff";
  g.fillRect(x0 - 1, 0, 3, canvas.height);
  g.fillRect(x1 - 2, 0, 3, canvas.height);
}

// Dragging inside the region moves it; dragging one of its edges resizes it; anywhere else moves it there.
function regionPointer(event) {
  const audio = state.sourceAudio;
  if (!audio || !state.region) return;
  const box = $("source-wave").getBoundingClientRect();
  const at = ((event.clientX - box.left) / box.width) * audio.duration;
  const reach = (8 / box.width) * audio.duration;  // 8 px either side of an edge grabs it
  const { start, length } = state.region;
  if (event.type === "pointerdown") {
    let mode = "move";
    if (Math.abs(at - start) <= reach) mode = "start";
    else if (Math.abs(at - (start + length)) <= reach) mode = "end";
    else if (at < start || at > start + length) setRegion(at - length / 2, length);
    state.drag = { mode, from: at, start: state.region.start, length: state.region.length };
    $("source-wave").setPointerCapture(event.pointerId);
    $("source-wave").classList.add("dragging");
    return;
  }
  if (!state.drag) return;
  if (event.type === "pointerup" || event.type === "pointercancel") {
    state.drag = null;
    $("source-wave").classList.remove("dragging");
    return;
  }
  const drag = state.drag, moved = at - drag.from;
  if (drag.mode === "move") setRegion(drag.start + moved, drag.length);
  else if (drag.mode === "start") {
    const end = drag.start + drag.length;
    const newStart = Math.min(drag.start + moved, end - 0.02);
    setRegion(newStart, end - newStart);
  } else setRegion(drag.start, drag.length + moved);
}

function regionTyped() {
  if (!state.sourceAudio) return;
  const start = Number($("prompt_start_s").value), length = Number($("prompt_duration_s").value);
  if (Number.isFinite(start) && Number.isFinite(length) && length > 0) {
    state.region = { start, length };  // shown as typed; the server judges it (its error lands here)
    drawSource();
  }
}

// ---- the request --------------------------------------------------------------------------------

function options() {
  const body = { prompt: $("prompt").value };
  for (const name of ["duration_s", "cfg_coef", "temperature", "top_p", "top_k", "seed", "takes"]) {
    if ($(name).value !== "") body[name] = Number($(name).value);
  }
  body.output_format = $("output_format").value;
  body.sample_format = $("sample_format").value;
  body.normalization = $("normalization").value;
  if (body.normalization === "loudness" && $("loudness_lufs").value !== "") {
    body.loudness_lufs = Number($("loudness_lufs").value);
  }
  const rate = $("sample_rate").value;
  if (rate === "match") body.match_source = true;
  else if (rate !== "") body.sample_rate = Number(rate);
  return body;
}

// The audio prompt: the region of the source, as the request says it.
function promptFields() {
  if (!state.region) return {};
  return { prompt_start_s: round2(state.region.start), prompt_duration_s: round2(state.region.length) };
}

function round2(value) { return Math.round(value * 100) / 100; }

function updateButtons() {
  $("continue").disabled = !state.ready || state.busy;
  $("generate").disabled = !state.ready || state.busy;
  $("cancel").disabled = !state.jobId;
}

function setBusy(busy, activity) {
  state.busy = busy;
  $("activity").textContent = activity || "";
  updateButtons();
}

// ---- Continue: streamed -------------------------------------------------------------------------

function parseWavHeader(bytes) {
  // Finds the data chunk; the header before it holds the format: PCM (16 or 24 bits) or IEEE float.
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let offset = 12, channels = 1, sampleRate = 32000, float = false, bytesPerSample = 2;
  while (offset + 8 <= bytes.length) {
    const id = String.fromCharCode(...bytes.subarray(offset, offset + 4));
    const size = view.getUint32(offset + 4, true);
    if (id === "fmt ") {
      float = view.getUint16(offset + 8, true) === 3;
      channels = view.getUint16(offset + 10, true);
      sampleRate = view.getUint32(offset + 12, true);
      bytesPerSample = view.getUint16(offset + 22, true) / 8;
    }
    if (id === "data") return { dataStart: offset + 8, channels, sampleRate, float, bytesPerSample };
    offset += 8 + size + (size % 2);
  }
  return null;
}

function readSample(view, at, format) {
  if (format.float) return view.getFloat32(at, true);
  if (format.bytesPerSample === 3) {
    const value = view.getUint8(at) | (view.getUint8(at + 1) << 8) | (view.getInt8(at + 2) << 16);
    return value / 8388608;
  }
  return view.getInt16(at, true) / 32768;
}

class StreamPlayer {
  // Plays the stream's chunks back to back as they come, and keeps the samples for the waveform.
  constructor(format) {
    this.format = format;
    this.context = new AudioContext({ sampleRate: format.sampleRate });
    this.next = 0;
    this.samples = [];
    this.leftover = new Uint8Array(0);
  }

  feed(bytes) {
    const joined = new Uint8Array(this.leftover.length + bytes.length);
    joined.set(this.leftover);
    joined.set(bytes, this.leftover.length);
    const width = this.format.bytesPerSample;
    const frameBytes = width * this.format.channels;
    const usable = joined.length - (joined.length % frameBytes);
    this.leftover = joined.slice(usable);
    const frames = usable / frameBytes;
    if (!frames) return;
    const view = new DataView(joined.buffer, 0, usable);
    const buffer = this.context.createBuffer(this.format.channels, frames, this.format.sampleRate);
    const mono = new Float32Array(frames);
    for (let channel = 0; channel < this.format.channels; channel++) {
      const data = buffer.getChannelData(channel);
      for (let i = 0; i < frames; i++) {
        data[i] = readSample(view, (i * this.format.channels + channel) * width, this.format);
        mono[i] += data[i] / this.format.channels;
      }
    }
    this.samples.push(mono);
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    this.next = Math.max(this.next, this.context.currentTime + 0.05);
    source.start(this.next);
    this.next += buffer.duration;
  }

  all() {
    const length = this.samples.reduce((sum, part) => sum + part.length, 0);
    const out = new Float32Array(length);
    let at = 0;
    for (const part of this.samples) { out.set(part, at); at += part.length; }
    return out;
  }
}

async function continueStreamed() {
  clearErrors();
  if (!state.source) {
    showError("file", "choose the music to continue first (a wav, flac, ogg or mp3 file)");
    return;
  }
  const body = { ...options(), ...promptFields() };
  if ((body.takes || 1) > 1 || body.output_format !== "wav" || !STREAMABLE_LEVELS.includes(body.normalization)) {
    await runJob({ ...body, continue_from: state.source.audio_path }, "Continue");
    return;
  }
  body.audio_path = state.source.audio_path;
  setBusy(true, "Starting…");
  $("progress").value = 0;
  const started = performance.now();
  let response;
  try {
    response = await api("/continue/stream", {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
    });
  } catch (error) {
    showError("general", "the server could not be reached");
    setBusy(false);
    return;
  }
  if (!response.ok) {
    await refusal(response);
    setBusy(false);
    return;
  }
  const total = Number(response.headers.get("content-length"));
  const seed = response.headers.get("x-seed");
  const reader = response.body.getReader();
  const chunks = [];
  let received = 0, header = null, player = null, firstAudio = null;
  setBusy(true, "Generating… (playing as it comes)");
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      received += value.length;
      $("progress").value = total ? received / total : 0;
      if (!header) {
        const head = concat(chunks);
        header = parseWavHeader(head);
        if (!header) continue;
        player = new StreamPlayer(header);
        if (head.length > header.dataStart) player.feed(head.subarray(header.dataStart));
      } else {
        player.feed(value);
      }
      if (player && firstAudio === null && received > header.dataStart) {
        firstAudio = (performance.now() - started) / 1000;
      }
      if (player) drawWaveform(player.all());
    }
  } catch (error) {
    showError("general", "the stream was interrupted; nothing was kept");
    setBusy(false);
    return;
  }
  if (received < total) {
    showError("general", "the server stopped before the music was complete; nothing was kept");
    setBusy(false);
    return;
  }
  const blob = new Blob(chunks, { type: "audio/wav" });
  const elapsed = (performance.now() - started) / 1000;
  const timing = `first sound after ${firstAudio !== null ? firstAudio.toFixed(2) : "?"} s, complete after ${elapsed.toFixed(1)} s`;
  const take = { blob, seed, name: `continuation-${seed}.wav`, samples: player.all(), rate: header.sampleRate };
  await showResult({ kind: "Continue", timing, takes: [take], joinS: state.region && state.region.start + state.region.length });
  setBusy(false, "Done.");
}

function concat(chunks) {
  const out = new Uint8Array(chunks.reduce((sum, part) => sum + part.length, 0));
  let at = 0;
  for (const part of chunks) { out.set(part, at); at += part.length; }
  return out;
}

// ---- Generate: a job ----------------------------------------------------------------------------

async function generateJob() {
  clearErrors();
  const body = options();
  if (state.melody && state.melodyUpload) body.melody_path = state.melodyUpload.audio_path;
  delete body.match_source;  // no source to match here
  await runJob(body, "Generate");
}

// A job (POST /generate), followed through its events; then every take is downloaded and shown.
async function runJob(body, kind) {
  setBusy(true, "Queueing…");
  $("progress").value = 0;
  const started = performance.now();
  const joinS = kind === "Continue" && state.region ? state.region.start + state.region.length : null;
  const response = await api("/generate", {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  }).catch(() => null);
  if (!response) {
    showError("general", "the server could not be reached");
    setBusy(false);
    return;
  }
  if (response.status !== 202) {
    await refusal(response);
    setBusy(false);
    return;
  }
  const accepted = await response.json();
  state.jobId = accepted.job_id;
  updateButtons();
  const events = new AbortController();
  state.events = events;
  const onStatus = (view) => {
    const words = { queued: `Waiting in line (${view.queue_position ?? 0} ahead)…`, running: "Generating…" };
    if (words[view.status]) $("activity").textContent = words[view.status];
  };
  const onResult = async (view) => {
    events.abort();
    state.events = null;
    state.jobId = null;
    if (view.status === "succeeded") {
      $("progress").value = 1;
      const format = view.request.output_format || "wav";
      const prefix = kind === "Continue" ? "continuation" : "generation";
      const takes = [];
      for (let index = 0; index < view.result.takes.length; index++) {
        const audio = await api(`/jobs/${view.job_id}/audio${index ? `?take=${index}` : ""}`);
        const blob = await audio.blob();
        const seed = view.result.takes[index].seed;
        const picture = await decodeForPicture(blob);
        takes.push({ blob, seed, name: `${prefix}-${seed}.${format}`, samples: picture.data, rate: picture.rate });
      }
      const elapsed = ((performance.now() - started) / 1000).toFixed(1);
      await showResult({ kind, timing: `complete after ${elapsed} s`, takes, joinS });
      setBusy(false, "Done.");
    } else if (view.status === "canceled") {
      setBusy(false, "Canceled.");
    } else {
      showError("general", `the job failed: ${view.error || "unknown reason"}`);
      setBusy(false);
    }
  };
  const handlers = {
    status: onStatus,
    progress: (data) => { $("progress").value = data.progress; },
    result: onResult,
  };
  followEvents(`/jobs/${accepted.job_id}/events`, (name, data) => handlers[name]?.(JSON.parse(data)), events.signal)
    .catch(async (error) => {
      if (error instanceof Response) await refusal(error);
      else if (error.name !== "AbortError") showError("general", "the job's events stopped coming; it may still run");
      if (state.jobId) setBusy(false);
    });
}

async function cancelJob() {
  if (!state.jobId) return;
  $("activity").textContent = "Canceling…";
  await api(`/jobs/${state.jobId}`, { method: "DELETE" }).catch(() => null);
}

async function decodeForPicture(blob) {
  try {
    return await decodeAudio(await blob.arrayBuffer(), 32000);
  } catch (error) {
    return { data: new Float32Array(0), rate: 32000 };
  }
}

// Audio bytes as one channel of samples (the channels averaged) at `rate`.
async function decodeAudio(bytes, rate) {
  const context = new OfflineAudioContext(1, 1, rate);
  const decoded = await context.decodeAudioData(bytes);
  const mono = new Float32Array(decoded.length);
  for (let channel = 0; channel < decoded.numberOfChannels; channel++) {
    const data = decoded.getChannelData(channel);
    for (let i = 0; i < data.length; i++) mono[i] += data[i] / decoded.numberOfChannels;
  }
  return { data: mono, rate: decoded.sampleRate };
}

// ---- the result ---------------------------------------------------------------------------------

async function showResult(result) {
  // result: { kind, timing, takes: [{ blob, seed, name, samples, rate }], joinS (Continue only) }
  for (const take of result.takes) take.url = URL.createObjectURL(take.blob);
  const first = result.takes[0];
  $("player").src = first.url;
  $("download").href = first.url;
  $("download").download = first.name;
  $("download").hidden = false;
  $("download").textContent = `Download ${first.name}`;
  const seeds = result.takes.map((take) => take.seed).join(", ");
  $("result-info").textContent = `${result.kind} · seed ${seeds} · ${result.timing}`;
  drawWaveform(first.samples);
  drawSpectrogram(first.samples, first.rate);
  drawTimeline(first, result.joinS);
  renderTakes(result.takes);
  state.results.unshift({ ...result, seed: seeds, url: first.url, name: first.name, samples: first.samples, rate: first.rate });
  renderHistory();
}

// Several takes side by side: each its own player and download, its pictures drawn when it plays.
function renderTakes(takes) {
  const list = $("take-list");
  list.replaceChildren();
  if (takes.length < 2) return;  // one take: the player and the download link above are it
  takes.forEach((take, index) => {
    const item = document.createElement("li");
    const label = document.createElement("p");
    label.className = "label";
    label.id = `take-${index + 1}-label`;
    label.textContent = `Take ${index + 1} · seed ${take.seed}`;
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.preload = "metadata";
    audio.src = take.url;
    audio.setAttribute("aria-labelledby", label.id);
    audio.addEventListener("play", () => {
      drawWaveform(take.samples);
      drawSpectrogram(take.samples, take.rate);
    });
    const link = document.createElement("a");
    link.href = take.url;
    link.download = take.name;
    link.textContent = `Download ${take.name}`;
    item.append(label, audio, link);
    list.append(item);
  });
}

function renderHistory() {
  const list = $("history");
  list.replaceChildren();
  state.results.forEach((result, index) => {
    const item = document.createElement("li");
    item.textContent = `${result.kind} · seed ${result.seed} · ${result.timing}`;
    const play = document.createElement("button");
    play.type = "button";
    play.textContent = "Play";
    play.setAttribute("aria-label", `Play result ${state.results.length - index}`);
    play.addEventListener("click", () => {
      $("player").src = result.url;
      $("player").play();
      drawWaveform(result.samples);
      drawSpectrogram(result.samples, result.rate);
    });
    const link = document.createElement("a");
    link.href = result.url;
    link.download = result.name;
    link.textContent = "Download";
    link.style.marginLeft = ".5rem";
    item.append(play, link);
    list.append(item);
  });
}

function drawWaveform(samples) {
  const canvas = $("waveform");
  const g = canvas.getContext("2d");
  g.fillStyle = "#0f1220";
  g.fillRect(0, 0, canvas.width, canvas.height);
  drawEnvelope(g, samples, 0, canvas.width, canvas.height, "#7aa2ff");
}

// The samples' highs and lows, one column per pixel, from x = `left` over `width` pixels.
function drawEnvelope(g, samples, left, width, height, colour) {
  if (!samples.length || width < 1) return;
  const middle = height / 2;
  const perColumn = samples.length / width;
  g.strokeStyle = colour;
  g.beginPath();
  for (let x = 0; x < Math.floor(width); x++) {
    let low = 0, high = 0;
    const from = Math.floor(x * perColumn), to = Math.max(from + 1, Math.floor((x + 1) * perColumn));
    for (let i = from; i < Math.min(samples.length, to); i++) {
      if (samples[i] < low) low = samples[i];
      if (samples[i] > high) high = samples[i];
    }
    g.moveTo(left + x + 0.5, middle - Math.max(high, 0.004) * middle);
    g.lineTo(left + x + 0.5, middle - Math.min(low, -0.004) * middle);
  }
  g.stroke();
}

// The source up to the join (grey), then the new music (blue), on one time axis; the join in yellow.
// A result without a source (Generate) is the new music alone.
function drawTimeline(take, joinS) {
  const canvas = $("timeline");
  const g = canvas.getContext("2d");
  g.fillStyle = "#0f1220";
  g.fillRect(0, 0, canvas.width, canvas.height);
  const newS = take.samples.length / take.rate;
  const source = joinS != null && state.sourceAudio ? state.sourceAudio : null;
  const beforeS = source ? joinS : 0;
  const total = beforeS + newS;
  if (!total) return;
  const joinX = Math.round((beforeS / total) * canvas.width);
  if (source) {
    const upTo = source.samples.subarray(0, Math.round(joinS * source.rate));
    drawEnvelope(g, upTo, 0, joinX, canvas.height, "#9aa3b5");
  }
  drawEnvelope(g, take.samples, joinX, canvas.width - joinX, canvas.height, "#7aa2ff");
  canvas.dataset.joinS = source ? String(round2(joinS)) : "";
  canvas.dataset.joinX = source ? String(joinX) : "";
  if (source) {
    g.fillStyle = "#ffd166";
    g.fillRect(joinX - 1, 0, 2, canvas.height);
  }
  $("timeline-info").textContent = source
    ? `The source up to ${joinS.toFixed(2)} s, then ${newS.toFixed(2)} s of new music (the join is marked).`
    : `${newS.toFixed(2)} s of new music.`;
}

function drawSpectrogram(samples, rate) {
  // Magnitudes of a 512-point DFT per column (Hann window), in dB, 0 Hz at the bottom to rate / 2
  // at the top, in 128 bands.
  const canvas = $("spectrogram");
  const g = canvas.getContext("2d");
  g.fillStyle = "#0f1220";
  g.fillRect(0, 0, canvas.width, canvas.height);
  const size = 512, bins = 128;
  if (samples.length < size) return;
  const window = new Float32Array(size).map((_, i) => 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / size));
  // The DFT's cosines and sines, once: bin b is frequency k = b * size / (2 * bins).
  const cosines = new Float32Array(bins * size), sines = new Float32Array(bins * size);
  for (let bin = 0; bin < bins; bin++) {
    const k = (bin * size) / 2 / bins;
    for (let i = 0; i < size; i++) {
      cosines[bin * size + i] = Math.cos((2 * Math.PI * k * i) / size);
      sines[bin * size + i] = Math.sin((2 * Math.PI * k * i) / size);
    }
  }
  const image = g.createImageData(canvas.width, canvas.height);
  const hop = (samples.length - size) / canvas.width;
  for (let x = 0; x < canvas.width; x++) {
    const start = Math.floor(x * hop);
    const frame = new Float32Array(size);
    for (let i = 0; i < size; i++) frame[i] = samples[start + i] * window[i];
    for (let bin = 0; bin < bins; bin++) {
      let re = 0, im = 0;
      for (let i = 0, at = bin * size; i < size; i++, at++) {
        re += frame[i] * cosines[at];
        im -= frame[i] * sines[at];
      }
      const level = Math.max(0, Math.min(1, (20 * Math.log10(Math.hypot(re, im) + 1e-9) + 60) / 70));
      const top = Math.floor(canvas.height * (1 - (bin + 1) / bins));
      const bottom = Math.floor(canvas.height * (1 - bin / bins));
      for (let y = top; y < bottom; y++) {
        const at = (y * canvas.width + x) * 4;
        image.data[at] = 40 + 215 * level;
        image.data[at + 1] = 30 + 160 * level * level;
        image.data[at + 2] = 90 + 60 * (1 - level);
        image.data[at + 3] = 255;
      }
    }
  }
  g.putImageData(image, 0, 0);
}

// ---- wiring -------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  acceptDrops($("source-drop"), $("source"), "source");
  acceptDrops($("melody-field"), $("melody"), "melody");
  for (const type of ["pointerdown", "pointermove", "pointerup", "pointercancel"]) {
    $("source-wave").addEventListener(type, regionPointer);
  }
  $("prompt_start_s").addEventListener("change", regionTyped);
  $("prompt_duration_s").addEventListener("change", regionTyped);
  $("normalization").addEventListener("change", () => {
    $("loudness_lufs").disabled = $("normalization").value !== "loudness";
  });
  $("continue").addEventListener("click", continueStreamed);
  $("generate").addEventListener("click", generateJob);
  $("cancel").addEventListener("click", cancelJob);
  for (const name of FIELDS) {
    $(name).addEventListener("input", () => {
      $(`${name}-error`).textContent = "";
      $(name).classList.remove("invalid");
    });
  }
  drawWaveform(new Float32Array(0));
  drawSpectrogram(new Float32Array(0), 32000);
  $("api_key").value = sessionStorage.getItem("musicgen-api-key") || "";
  $("api_key").addEventListener("change", rememberKey);
  readLimits();
  watchHealth();
});
