// songsight page: pick or record a recording, upload it, show the photos the search returns.
// Plain JS, no build step. Everything from the server is written with textContent, never HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_RECORD_S = 120;
const MAX_BUSY_RETRIES = 3;

const state = {
  limitBytes: 20e6,
  file: null,          // the File last searched (re-searched when options change)
  audioUrl: null,      // object URL of that file, for the player
  data: null,          // the last /api/search answer: its records and its headers' facts
  selected: -1,        // index into data.results
  recorder: null,
  following: false,    // a requestAnimationFrame loop is tracking playback
};

// ---- helpers -------------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmtTime(s) {
  if (s < 60) return `${Number.isInteger(s) ? s : s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return `${m}:${String(Math.floor(s - 60 * m)).padStart(2, "0")}`;
}

function setStatus(text, kind = "") {
  const node = $("status");
  node.textContent = text;
  node.className = `status ${kind}`;
}

// The same magic-byte test as the server: what it accepts goes up untouched.
function sniffKind(b) {
  const ascii = (i, n) => String.fromCharCode(...b.slice(i, i + n));
  if (b.length >= 12 && ["RIFF", "RF64", "BW64"].includes(ascii(0, 4)) && ascii(8, 4) === "WAVE") return "wav";
  if (ascii(0, 4) === "fLaC") return "flac";
  if (ascii(0, 4) === "OggS") return "ogg";
  if (ascii(0, 3) === "ID3") return "mp3";
  if (b.length >= 2 && b[0] === 0xff && (b[1] & 0xe0) === 0xe0 && (b[1] & 0x06)) return "mp3";
  return null;
}

// 16-bit PCM mono WAV from a decoded AudioBuffer (channels averaged).
function encodeWav(buffer) {
  const n = buffer.length;
  const rate = buffer.sampleRate;
  const mono = new Float32Array(n);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    const ch = buffer.getChannelData(c);
    for (let i = 0; i < n; i++) mono[i] += ch[i] / buffer.numberOfChannels;
  }
  const view = new DataView(new ArrayBuffer(44 + 2 * n));
  const text = (at, s) => { for (let i = 0; i < s.length; i++) view.setUint8(at + i, s.charCodeAt(i)); };
  text(0, "RIFF"); view.setUint32(4, 36 + 2 * n, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, 2 * rate, true); view.setUint16(32, 2, true); view.setUint16(34, 16, true);
  text(36, "data"); view.setUint32(40, 2 * n, true);
  for (let i = 0; i < n; i++) {
    const x = Math.max(-1, Math.min(1, mono[i]));
    view.setInt16(44 + 2 * i, x < 0 ? x * 0x8000 : x * 0x7fff, true);
  }
  return new Blob([view], { type: "audio/wav" });
}

// WebM/Opus from MediaRecorder, M4A, and the like: decode in the browser, send WAV.
async function toWav(blob, name) {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx) throw new Error("this browser cannot convert audio; use WAV, FLAC, Ogg or MP3");
  const ctx = new Ctx();
  try {
    const buffer = await ctx.decodeAudioData(await blob.arrayBuffer());
    const base = name.replace(/\.[^.]*$/, "") || "recording";
    return new File([encodeWav(buffer)], `${base}.wav`, { type: "audio/wav" });
  } catch (err) {
    throw new Error("this file is not audio the browser can read; use WAV, FLAC, Ogg or MP3");
  } finally {
    ctx.close();
  }
}

async function prepare(file) {
  const head = new Uint8Array(await file.slice(0, 16).arrayBuffer());
  if (sniffKind(head)) return file;
  setStatus("Converting to WAV in the browser…", "busy");
  return toWav(file, file.name);
}

// ---- searching -----------------------------------------------------------------------------

async function search(file, attempt = 0) {
  state.file = file;
  if (file.size > state.limitBytes) {
    setStatus(`This file is ${(file.size / 1e6).toFixed(1)} MB; the server takes up to ${(state.limitBytes / 1e6).toFixed(0)} MB.`, "error");
    return;
  }
  const form = new FormData();
  form.append("audio", file, file.name);
  form.append("k", $("k").value);
  const windowS = $("window-s").value.trim();
  if (windowS) form.append("window_s", windowS);
  setStatus(`Searching with “${file.name}”…`, "busy");
  const t0 = performance.now();
  let response;
  try {
    response = await fetch("/api/search", { method: "POST", body: form });
  } catch (err) {
    setStatus("Could not reach the server.", "error");
    return;
  }
  let body = null;
  try { body = await response.json(); } catch (err) { body = null; }
  if (response.status === 503 && attempt < MAX_BUSY_RETRIES) {
    const wait = Number(response.headers.get("Retry-After")) || 5;
    setStatus(`The server is busy; trying again in ${wait} s…`, "busy");
    setTimeout(() => search(file, attempt + 1), wait * 1000);
    return;
  }
  if (!response.ok || !Array.isArray(body) || !body.length) {
    const message = body && body.message ? body.message : `the server answered ${response.status}`;
    const id = body && body.request_id ? ` (request ${body.request_id})` : "";
    setStatus(`Search failed: ${message}${id}.`, "error");
    return;
  }
  const data = answerOf(response, body, file);
  const n = data.results.filter((r) => !isWhole(r)).length;
  const what = n > 1 ? `the whole recording and ${n} windows` : "one window";
  setStatus(`Done in ${((performance.now() - t0) / 1000).toFixed(1)} s: ${what}.`);
  render(data, file);
}

// The body is the CLI's list of records; the recording's facts come in the headers.
function answerOf(response, records, file) {
  const header = (name) => response.headers.get(name);
  const number = (name) => Number(header(name));
  const link = /<(\/api\/spectrogram\/[^>]*)>\s*;\s*rel="?spectrogram"?/.exec(header("Link") || "");
  return {
    results: records,
    filename: typeof records[0].path === "string" ? records[0].path : file.name,
    duration_s: number("X-Duration-S"),
    sample_rate_hz: number("X-Sample-Rate-Hz"),
    silent: header("X-Silent") === "true",
    answered_by: header("X-Answered-By"),
    k: number("X-K"),
    request_id: header("X-Request-ID"),
    spectrogram: { url: link ? link[1] : "", max_hz: number("X-Spectrogram-Max-Hz") },
  };
}

async function searchFile(file) {
  if (!file) return;
  try {
    await search(await prepare(file));
  } catch (err) {
    setStatus(err.message, "error");
  }
}

// ---- rendering -----------------------------------------------------------------------------

function render(data, file) {
  state.data = data;
  $("results").hidden = false;
  $("rec-name").textContent = data.filename;
  const meta = [fmtTime(Math.round(data.duration_s * 10) / 10), `${(data.sample_rate_hz / 1000).toFixed(1)} kHz`];
  if (data.silent) meta.push("nearly silent: check the microphone");
  else if ((data.results[0].flags || []).includes("too_short")) meta.push("too short to name a bird: record a few seconds");
  $("rec-meta").textContent = meta.join(" · ");

  if (state.audioUrl) URL.revokeObjectURL(state.audioUrl);
  state.audioUrl = URL.createObjectURL(file);
  $("player").src = state.audioUrl;

  if (data.spectrogram.url) $("spectro-img").src = data.spectrogram.url;
  else $("spectro-img").removeAttribute("src");
  $("fmax").textContent = `${(data.spectrogram.max_hz / 1000).toFixed(0)} kHz`;
  renderTicks(data.duration_s);

  const timeline = $("timeline");
  timeline.replaceChildren();
  if (data.results.length > 1) {
    data.results.forEach((result, i) => {
      const chip = el("button", "chip", spanLabel(result));
      chip.type = "button";
      chip.setAttribute("role", "tab");
      chip.setAttribute("aria-selected", "false");
      chip.appendChild(el("small", "", topName(result)));
      chip.addEventListener("click", () => select(i, true));
      timeline.appendChild(chip);
    });
  }
  select(0, false);
}

function renderTicks(duration) {
  const ticks = $("ticks");
  ticks.replaceChildren();
  const steps = [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600];
  const step = steps.find((s) => duration / s <= 8) || 600;
  for (let t = 0; t <= duration + 1e-6; t += step) {
    const tick = el("span", "", fmtTime(t));
    tick.style.left = `${(100 * t) / duration}%`;
    if (t > 0 && duration - t < step * 0.4) break;  // no label crowding the right edge
    ticks.appendChild(tick);
  }
}

// The clip-level result (window null) covers the whole recording; the others are windows.
function isWhole(result) {
  return result.window === null || result.window === undefined;
}

function spanLabel(result) {
  return isWhole(result) ? "Whole recording" : `${fmtTime(result.start_s)} – ${fmtTime(result.end_s)}`;
}

// Species-rank entries of the roll-up (it may also hold genus and family entries).
function speciesOf(result) {
  return (result.species || []).filter((s) => typeof s.rank !== "string" || s.rank === "species");
}

function topName(result) {
  if (result.error) return "error";
  const sp = speciesOf(result)[0];
  if (sp) return sp.common_name || sp.name;
  const hit = result.hits && result.hits[0];
  return hit ? hit.common_name || hit.species || "—" : "—";
}

function select(i, seek) {
  const data = state.data;
  if (!data || i < 0 || i >= data.results.length) return;
  state.selected = i;
  const result = data.results[i];
  [...$("timeline").children].forEach((chip, j) => chip.setAttribute("aria-selected", String(j === i)));
  const chip = $("timeline").children[i];
  if (chip) chip.scrollIntoView({ block: "nearest", inline: "nearest" });

  const box = $("selection");
  const whole = isWhole(result) || (result.start_s <= 0 && result.end_s >= data.duration_s);
  box.style.display = data.results.length > 1 && !whole ? "block" : "none";
  box.style.left = `${(100 * result.start_s) / data.duration_s}%`;
  box.style.width = `${(100 * (Math.min(result.end_s, data.duration_s) - result.start_s)) / data.duration_s}%`;
  if (seek) $("player").currentTime = result.start_s;

  $("window-title").textContent = isWhole(result) || data.results.length === 1
    ? "The whole recording"
    : `Window ${fmtTime(result.start_s)} – ${fmtTime(result.end_s)}`;
  renderSpecies(result);
  renderPhotos(result);
}

function renderSpecies(result) {
  const list = $("species");
  list.replaceChildren();
  const species = speciesOf(result).slice(0, 5);
  if (result.error) { list.appendChild(el("li", "empty", result.error)); return; }
  if (!species.length) { list.appendChild(el("li", "empty", "No species for this window.")); return; }
  const top = Math.max(...species.map((s) => s.score), 1e-9);
  for (const sp of species) {
    const item = el("li");
    const name = el("div", "name");
    name.append(el("span", "", sp.common_name || sp.name), el("span", "score", sp.score.toFixed(3)));
    const bar = el("div", "bar");
    const fill = el("span");
    fill.style.width = `${Math.max(0, Math.min(100, (100 * sp.score) / top))}%`;
    bar.appendChild(fill);
    item.append(name);
    if (sp.common_name && sp.common_name !== sp.name) item.appendChild(el("div", "sci", sp.name));
    item.appendChild(bar);
    list.appendChild(item);
  }
}

function renderPhotos(result) {
  const grid = $("photos");
  grid.replaceChildren();
  const hits = result.hits || [];
  if (!hits.length) { grid.appendChild(el("p", "empty", result.error || "No photos for this window.")); return; }
  hits.forEach((hit, rank) => {
    const fig = el("figure", "photo");
    const img = el("img");
    img.loading = "lazy";
    img.alt = hit.species ? `Photo of ${hit.common_name || hit.species}` : "Gallery photo";
    if (typeof hit.url === "string" && hit.url.startsWith("/api/images/")) img.src = hit.url;
    const cap = el("figcaption");
    const meta = el("span", "meta");
    meta.append(el("span", "", `#${rank + 1}`), el("span", "", `score ${hit.score.toFixed(3)}`));
    cap.appendChild(el("span", "species-name", hit.common_name || hit.species || "unknown species"));
    if (hit.common_name && hit.species && hit.common_name !== hit.species) cap.appendChild(el("span", "sci", hit.species));
    cap.appendChild(meta);
    fig.append(img, cap);
    grid.appendChild(fig);
  });
}

// Which window a time belongs to: the one whose centre is nearest among those containing it.
function windowAt(t) {
  const results = state.data ? state.data.results : [];
  let best = -1;
  let bestDist = Infinity;
  results.forEach((r, i) => {
    if (isWhole(r) && results.length > 1) return;
    const dist = Math.abs((r.start_s + r.end_s) / 2 - t);
    if (t >= r.start_s && t <= r.end_s && dist < bestDist) { best = i; bestDist = dist; }
  });
  return best;
}

function followPlayback() {
  const data = state.data;
  const player = $("player");
  const head = $("playhead");
  if (!data) return;
  head.style.display = player.currentTime > 0 ? "block" : "none";
  head.style.left = `${(100 * player.currentTime) / data.duration_s}%`;
  if (!player.paused && data.results.length > 1) {
    const i = windowAt(player.currentTime);
    if (i >= 0 && i !== state.selected) select(i, false);
  }
  if (!player.paused && !state.following) {  // at most one frame pending
    state.following = true;
    requestAnimationFrame(() => { state.following = false; followPlayback(); });
  }
}

// ---- recording -----------------------------------------------------------------------------

async function toggleRecording() {
  const button = $("record");
  if (state.recorder) { state.recorder.stop(); return; }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    setStatus("No microphone access: allow it in the browser, or choose a file.", "error");
    return;
  }
  const chunks = [];
  const recorder = new MediaRecorder(stream);
  state.recorder = recorder;
  const started = Date.now();
  const tick = setInterval(() => {
    const s = Math.round((Date.now() - started) / 1000);
    button.textContent = `Stop (${s} s)`;
    if (s >= MAX_RECORD_S && recorder.state === "recording") recorder.stop();
  }, 250);
  recorder.addEventListener("dataavailable", (e) => { if (e.data.size) chunks.push(e.data); });
  recorder.addEventListener("stop", async () => {
    clearInterval(tick);
    stream.getTracks().forEach((t) => t.stop());
    state.recorder = null;
    button.textContent = "Record";
    button.classList.remove("recording");
    try {
      setStatus("Converting the recording to WAV…", "busy");
      await search(await toWav(new Blob(chunks, { type: recorder.mimeType }), "recording"));
    } catch (err) {
      setStatus(err.message, "error");
    }
  });
  recorder.start();
  button.textContent = "Stop (0 s)";
  button.classList.add("recording");
  setStatus(`Recording… (up to ${MAX_RECORD_S} s)`);
}

// ---- start ---------------------------------------------------------------------------------

async function loadHealth() {
  const node = $("health");
  try {
    const response = await fetch("/api/health");
    const h = await response.json();
    state.limitBytes = h.limits.max_upload_mb * 1e6;
    $("limit-mb").textContent = String(h.limits.max_upload_mb);
    const parts = [`${h.gallery_size.toLocaleString()} photos in the gallery`];
    if (h.answered_by) parts.push(`answered by ${h.answered_by}`);
    node.textContent = parts.join(" · ");
  } catch (err) {
    node.textContent = "Server unreachable";
    node.classList.add("bad");
  }
}

function init() {
  loadHealth();
  $("file").addEventListener("change", (e) => searchFile(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    searchFile(e.dataTransfer.files[0]);
  });
  const record = $("record");
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    record.disabled = true;
    record.title = "Recording needs a secure page (https or localhost) and a browser with MediaRecorder";
  } else {
    record.addEventListener("click", toggleRecording);
  }
  for (const id of ["k", "window-s"]) {
    $(id).addEventListener("change", () => { if (state.file) search(state.file); });
  }
  const player = $("player");
  player.addEventListener("play", followPlayback);
  player.addEventListener("seeked", followPlayback);
  $("spectro").addEventListener("click", (e) => {
    if (!state.data) return;
    const rect = e.currentTarget.getBoundingClientRect();
    const t = ((e.clientX - rect.left) / rect.width) * state.data.duration_s;
    const i = windowAt(t);
    if (i >= 0) select(i, false);
    player.currentTime = t;
  });
}

document.addEventListener("DOMContentLoaded", init);
