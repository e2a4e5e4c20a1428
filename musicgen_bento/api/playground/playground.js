// The playground: one page, talking to this server's own API. No libraries, nothing fetched from
// elsewhere. Continue streams POST /continue/stream and plays the WAV chunks with Web Audio as
// they arrive; Generate runs a job (POST /generate) followed through GET /jobs/{id}/events. Where
// the server asks for an API key, every call carries the one the person gives (kept in this tab).
"use strict";

const $ = (id) => document.getElementById(id);
const FIELDS = ["prompt", "duration_s", "cfg_coef", "temperature", "top_k", "top_p", "seed", "output_format"];
// Where an error about a request field is shown: the control that sets it.
const ERROR_HOME = {
  Authorization: "api_key", audio_path: "source", continue_from: "source", file: "source", prompt_start_s: "source",
  prompt_duration_s: "source", melody_path: "melody", takes: "general", normalization: "general",
};
const LABELS = {
  prompt: "Prompt", source: "Music to continue", melody: "Melody", duration_s: "Length",
  cfg_coef: "Guidance", temperature: "Temperature", top_k: "Top-k", top_p: "Top-p", seed: "Seed",
  output_format: "File format",
};

const state = {
  ready: false, melody: false, limits: { continue: 30, job: 120 },
  source: null, melodyUpload: null, busy: false, jobId: null, events: null, results: [],
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

// ---- the request --------------------------------------------------------------------------------

function options() {
  const body = { prompt: $("prompt").value };
  for (const name of ["duration_s", "cfg_coef", "temperature", "top_p"]) {
    if ($(name).value !== "") body[name] = Number($(name).value);
  }
  for (const name of ["top_k", "seed"]) {
    if ($(name).value !== "") body[name] = Number($(name).value);
  }
  return body;
}

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
  // Finds the data chunk; the header before it holds the format (the server writes 16-bit PCM).
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let offset = 12, channels = 1, sampleRate = 32000;
  while (offset + 8 <= bytes.length) {
    const id = String.fromCharCode(...bytes.subarray(offset, offset + 4));
    const size = view.getUint32(offset + 4, true);
    if (id === "fmt ") {
      channels = view.getUint16(offset + 10, true);
      sampleRate = view.getUint32(offset + 12, true);
    }
    if (id === "data") return { dataStart: offset + 8, channels, sampleRate };
    offset += 8 + size + (size % 2);
  }
  return null;
}

class StreamPlayer {
  // Plays 16-bit PCM chunks back to back as they come, and keeps the samples for the waveform.
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
    const frameBytes = 2 * this.format.channels;
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
        data[i] = view.getInt16((i * this.format.channels + channel) * 2, true) / 32768;
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
  const body = { ...options(), audio_path: state.source.audio_path };
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
  await showResult(blob, { kind: "Continue", seed, timing, name: `continuation-${seed}.wav`, samples: player.all(), rate: header.sampleRate });
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
  const body = { ...options(), output_format: $("output_format").value };
  if (state.melody && state.melodyUpload) body.melody_path = state.melodyUpload.audio_path;
  setBusy(true, "Queueing…");
  $("progress").value = 0;
  const started = performance.now();
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
      const audio = await api(`/jobs/${view.job_id}/audio`);
      const blob = await audio.blob();
      const elapsed = ((performance.now() - started) / 1000).toFixed(1);
      const format = view.request.output_format || "wav";
      const samples = await decodeForPicture(blob);
      await showResult(blob, {
        kind: "Generate", seed: view.result.seed, timing: `complete after ${elapsed} s`,
        name: `generation-${view.result.seed}.${format}`, samples: samples.data, rate: samples.rate,
      });
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
    const context = new OfflineAudioContext(1, 1, 32000);
    const decoded = await context.decodeAudioData(await blob.arrayBuffer());
    return { data: decoded.getChannelData(0), rate: decoded.sampleRate };
  } catch (error) {
    return { data: new Float32Array(0), rate: 32000 };
  }
}

// ---- the result ---------------------------------------------------------------------------------

async function showResult(blob, result) {
  const url = URL.createObjectURL(blob);
  const player = $("player");
  player.src = url;
  $("download").href = url;
  $("download").download = result.name;
  $("download").hidden = false;
  $("download").textContent = `Download ${result.name}`;
  $("result-info").textContent = `${result.kind} · seed ${result.seed} · ${result.timing}`;
  drawWaveform(result.samples);
  drawSpectrogram(result.samples, result.rate);
  state.results.unshift({ ...result, url });
  renderHistory();
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
  if (!samples.length) return;
  const middle = canvas.height / 2;
  const perColumn = Math.max(1, Math.floor(samples.length / canvas.width));
  g.strokeStyle = "#7aa2ff";
  g.beginPath();
  for (let x = 0; x < canvas.width; x++) {
    let low = 0, high = 0;
    const from = x * perColumn;
    if (from >= samples.length) break;
    for (let i = from; i < Math.min(samples.length, from + perColumn); i++) {
      if (samples[i] < low) low = samples[i];
      if (samples[i] > high) high = samples[i];
    }
    g.moveTo(x + 0.5, middle - Math.max(high, 0.004) * middle);
    g.lineTo(x + 0.5, middle - Math.min(low, -0.004) * middle);
  }
  g.stroke();
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
