// mgsv serve: the page. Plain JavaScript, no build step.
// Drop a clip -> upload -> ranked tracks; play the clip with a cut mixed in (the server's
// preview audio, kept in sync with the muted <video>); each track's strip shows why, the
// track's sections, and with a fit (ending/loop) the spans heard and the join, which the
// editor can move to another bar line.
"use strict";

const WINDOW_STEP = 2.5; // seconds between the model's music windows (features/recipe.py)
const DRIFT = 0.12; // seconds of audio/video drift corrected while playing
const JOIN_LEAD = 0.02; // a join's cut lies this long before its bar line (editor/fitting.py)

const $ = (selector, root = document) => root.querySelector(selector);
const video = $("#video");
const audio = $("#audio");

const state = {
  token: null,
  status: null,
  upload: null, // {video, url, name}
  result: null, // SuggestionResult.to_json()
  tracks: new Map(), // track path -> {beats: {beats, downbeats, tempo_bpm}, ...}
  starts: new Map(), // rank -> the cut's start (s), after nudges
  structures: new Map(), // track path -> {bars, sections, end, last_downbeat, ...} (/api/structure)
  edits: new Map(), // rank -> the edit list heard (after the start or the join moved)
  joins: new Map(), // rank -> the bar line (s) the editor moved the first join to
  selected: 0,
  mix: "replace",
  playing: false,
  videoOk: true,
  rows: [],
};

// ------------------------------------------------------------------ server

function readToken() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  let token = fragment.get("token");
  if (token) {
    sessionStorage.setItem("mgsv-token", token);
    history.replaceState(null, "", location.pathname + location.search); // keep it out of the address bar
  } else {
    token = sessionStorage.getItem("mgsv-token");
  }
  return token;
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + state.token }, options.headers || {});
  let body = options.body;
  if (options.json !== undefined) {
    body = JSON.stringify(options.json);
    headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, { method: options.method || (body ? "POST" : "GET"), headers, body });
  let data = null;
  try {
    data = await response.json();
  } catch (ignored) {
    data = null;
  }
  if (!response.ok) {
    throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
  }
  return data;
}

function withToken(url) {
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(state.token);
}

// ------------------------------------------------------------------ small helpers

function say(text, kind = "") {
  for (const message of document.querySelectorAll(".message")) {
    message.textContent = text;
    message.className = "message " + kind;
  }
}

function clock(seconds) {
  if (!isFinite(seconds)) seconds = 0;
  const m = Math.floor(seconds / 60);
  const s = seconds - m * 60;
  return `${m}:${s.toFixed(1).padStart(4, "0")}`;
}

function clamp(value, low, high) {
  return Math.min(high, Math.max(low, value));
}

function busy(on) {
  for (const id of ["render", "export", "another"]) $("#" + id).disabled = on;
}

function suggestion(index = state.selected) {
  return state.result ? state.result.suggestions[index] : null;
}

function startOf(s) {
  return state.starts.has(s.rank) ? state.starts.get(s.rank) : s.start;
}

function trackName(s) {
  if (s.title && s.artist) return `${s.artist} – ${s.title}`;
  return s.title || s.track.split(/[\\/]/).pop();
}

// ------------------------------------------------------------------ start

async function boot() {
  state.token = readToken();
  if (!state.token) {
    $("#server").textContent = "no access token: open the address `mgsv serve` printed (it ends in #token=…)";
    $("#server").classList.add("bad");
    return;
  }
  try {
    state.status = await api("/api/status");
  } catch (error) {
    $("#server").textContent = "cannot reach the server: " + error.message;
    $("#server").classList.add("bad");
    return;
  }
  const s = state.status;
  const model = s.model.untrained ? "untrained model" : `model ${s.model.id}`;
  $("#server").textContent = `${s.index.tracks} tracks · ${s.encoders} encoders · ${model} · ${s.device}`;
  $("#formats").textContent = "video files: " + s.video_extensions.join(" ");
  $("#file").accept = s.video_extensions.join(",");
  for (const mode of s.mix_modes) $("#mix").append(new Option(mode, mode));
  for (const fmt of s.export_formats) $("#format").append(new Option(fmt, fmt));
  for (const mode of s.fit_modes || ["cut"]) $("#fit").append(new Option(mode, mode));
  $("#fit").value = s.defaults.fit || "cut";
  state.mix = s.defaults.mix;
  $("#mix").value = state.mix;
  $("#format").value = s.defaults.export_format;
  $("#snap").checked = s.defaults.snap === "beat";
  const topChoice = String(s.defaults.top_k);
  if (![...$("#top").options].some((o) => o.value === topChoice)) $("#top").append(new Option(topChoice, topChoice));
  $("#top").value = topChoice;
  wire();
}

function wire() {
  $("#file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    event.target.value = "";
    handleFile(file);
  });
  for (const target of [document.body]) {
    target.addEventListener("dragover", (event) => {
      event.preventDefault();
      dropZone().classList.add("over");
    });
    target.addEventListener("dragleave", () => dropZone().classList.remove("over"));
    target.addEventListener("drop", (event) => {
      event.preventDefault();
      dropZone().classList.remove("over");
      const file = event.dataTransfer.files[0];
      if (file) handleFile(file);
    });
  }
  $("#play").addEventListener("click", () => toggle());
  $("#mix").addEventListener("change", (event) => {
    state.mix = event.target.value;
    cue();
  });
  $("#render").addEventListener("click", renderVideo);
  $("#export").addEventListener("click", exportTimeline);
  $("#another").addEventListener("click", () => $("#file").click());

  video.addEventListener("error", () => {
    state.videoOk = false;
    $("#novideo").hidden = false;
    video.hidden = true;
  });
  video.addEventListener("seeked", () => {
    if (Math.abs(audio.currentTime - video.currentTime) > 0.02) audio.currentTime = video.currentTime;
  });
  video.addEventListener("ended", () => stop(true));
  // the picture's own controls drive the mix too; its own sound never plays (the preview has it)
  video.addEventListener("play", () => {
    if (!state.playing) play();
  });
  video.addEventListener("pause", () => {
    if (state.playing && !video.ended) stop(false);
  });
  video.addEventListener("volumechange", () => {
    audio.volume = video.volume;
    if (!video.muted) video.muted = true;
  });
  audio.addEventListener("ended", () => {
    if (!state.videoOk) stop(true);
  });
  audio.addEventListener("loadedmetadata", () => {
    audio.currentTime = masterTime();
    if (state.playing) audio.play().catch((error) => say(error.message, "bad"));
  });
  audio.addEventListener("error", () => {
    if (audio.getAttribute("src")) say("the preview could not be made: " + previewError(), "bad");
  });
  document.addEventListener("keydown", onKey);
  window.addEventListener("resize", () => state.rows.forEach((row) => draw(row)));
}

function dropZone() {
  return state.result ? $("#work") : $("#drop");
}

// ------------------------------------------------------------------ a clip in

async function handleFile(file) {
  if (!file) return;
  const dot = file.name.lastIndexOf(".");
  const extension = dot >= 0 ? file.name.slice(dot).toLowerCase() : "";
  if (!state.status.video_extensions.includes(extension)) {
    say(`${file.name}: not a video file (${state.status.video_extensions.join(" ")})`, "bad");
    showDropIfEmpty();
    return;
  }
  if (file.size > state.status.max_upload_bytes) {
    say(`${file.name} is larger than the server takes (${Math.round(state.status.max_upload_bytes / 2 ** 20)} MiB)`, "bad");
    showDropIfEmpty();
    return;
  }
  stop(false);
  busy(true);
  try {
    say(`uploading ${file.name}…`);
    showWork();
    const upload = await api("/api/upload?name=" + encodeURIComponent(file.name), {
      method: "POST",
      body: file,
      headers: { "Content-Type": "application/octet-stream" },
    });
    say(`ranking ${state.status.index.tracks} tracks for ${upload.name}…`);
    const result = await api("/api/suggest", {
      json: { video: upload.video, top: Number($("#top").value), snap: $("#snap").checked ? "beat" : null,
              fit: $("#fit").value },
    });
    state.upload = upload;
    await show(result);
    say(`${result.suggestions.length} tracks for ${upload.name} (${clock(result.duration)})`, "ok");
  } catch (error) {
    say(error.message, "bad");
    showDropIfEmpty();
  } finally {
    busy(false);
  }
}

function showWork() {
  $("#drop").hidden = true;
  $("#work").hidden = false;
}

function showDropIfEmpty() {
  if (!state.result) {
    $("#drop").hidden = false;
    $("#work").hidden = true;
  }
}

async function show(result) {
  state.result = result;
  state.starts.clear();
  state.edits.clear();
  state.joins.clear();
  state.selected = 0;
  state.videoOk = true;
  video.hidden = false;
  $("#novideo").hidden = true;
  const query = result.suggestions.map((s) => "path=" + encodeURIComponent(s.track)).join("&");
  const info = await api("/api/tracks?beats=true&" + query);
  state.tracks = new Map(info.tracks.map((t) => [t.path, t]));
  state.structures = new Map();
  const paths = [...new Set(result.suggestions.map((s) => s.track))];
  await Promise.all(paths.map(async (path) => {
    try {
      state.structures.set(path, await api("/api/structure?track=" + encodeURIComponent(path)));
    } catch (error) {
      // no sections on the strip for this track; everything else works
    }
  }));
  $("#notes").textContent = (result.notes || []).join(" · ");
  video.src = withToken(state.upload.url);
  audio.removeAttribute("src");
  buildRows();
  select(0);
}

// ------------------------------------------------------------------ the list and its strips

function buildRows() {
  const list = $("#tracks");
  list.replaceChildren();
  state.rows = state.result.suggestions.map((s, index) => {
    const item = document.createElement("li");
    item.className = "track";
    item.dataset.rank = s.rank;
    const head = document.createElement("div");
    head.className = "head";
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = s.rank;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = trackName(s);
    name.title = s.track;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = "score " + s.score.toFixed(3);
    head.append(rank, name, score);
    const canvas = document.createElement("canvas");
    canvas.title = "click to move the cut here";
    const foot = document.createElement("div");
    foot.className = "foot";
    const earlier = document.createElement("button");
    earlier.className = "button nudge";
    earlier.textContent = "◀ beat";
    earlier.title = "cut one beat earlier (←)";
    const why = document.createElement("span");
    why.className = "why";
    const later = document.createElement("button");
    later.className = "button nudge";
    later.textContent = "beat ▶";
    later.title = "cut one beat later (→)";
    const joinEarlier = document.createElement("button");
    joinEarlier.className = "button nudge join";
    joinEarlier.textContent = "◀ join";
    joinEarlier.title = "move the join one bar line earlier ([)";
    const joinLater = document.createElement("button");
    joinLater.className = "button nudge join";
    joinLater.textContent = "join ▶";
    joinLater.title = "move the join one bar line later (])";
    foot.append(earlier, why, joinEarlier, joinLater, later);
    item.append(head, canvas, foot);
    list.append(item);
    const row = { item, canvas, why, index, joinButtons: [joinEarlier, joinLater] };
    joinEarlier.addEventListener("click", (event) => {
      event.stopPropagation();
      select(index);
      moveJoin(-1);
    });
    joinLater.addEventListener("click", (event) => {
      event.stopPropagation();
      select(index);
      moveJoin(1);
    });
    item.addEventListener("click", () => select(index));
    earlier.addEventListener("click", (event) => {
      event.stopPropagation();
      select(index);
      nudge(-1);
    });
    later.addEventListener("click", (event) => {
      event.stopPropagation();
      select(index);
      nudge(1);
    });
    canvas.addEventListener("click", (event) => {
      event.stopPropagation();
      select(index);
      const box = canvas.getBoundingClientRect();
      const at = ((event.clientX - box.left) / box.width) * durationOf(s);
      moveCut(s, at - (s.end - s.start) / 2);
    });
    return row;
  });
  state.rows.forEach((row) => {
    describe(row);
    draw(row);
  });
}

function durationOf(s) {
  const track = state.tracks.get(s.track);
  return s.track_duration || (track && track.duration) || s.end;
}

function describe(row) {
  const s = suggestion(row.index);
  const start = startOf(s);
  const length = s.end - s.start;
  const track = state.tracks.get(s.track);
  const parts = [`cut ${clock(start)}–${clock(start + length)}`, `model's moment ${clock(s.predicted_start)}–${clock(s.predicted_end)}`];
  if (track && track.tempo_bpm) parts.push(`${track.tempo_bpm.toFixed(0)} BPM`);
  if (state.starts.has(s.rank) && Math.abs(start - s.start) > 1e-3) parts.push(`moved ${(start - s.start >= 0 ? "+" : "") + (start - s.start).toFixed(2)} s`);
  else if (s.snapped_to) parts.push(`on a ${s.snapped_to}`);
  const edit = editOf(s);
  if (edit && edit.mode !== "cut") parts[0] = "plays " + edit.spans.map((p) => `${clock(p.start)}–${clock(p.end)}`).join(" + ");
  if (edit) {
    if (edit.reason) parts.push(`cut (${edit.reason})`);
    else if (edit.joins.length) {
      parts.push(`${edit.mode}: ` + edit.joins.map((j) => `join ${clock(j.out)} → ${clock(j.into)}`).join(", "));
    } else parts.push(`${edit.mode}, no join`);
  }
  const structure = state.structures.get(s.track);
  if (structure && structure.sections && structure.sections.length) parts.push(`${structure.sections.length} sections`);
  row.why.textContent = parts.join(" · ");
  const joinable = Boolean(edit && edit.joins.length && structure && structure.bars && structure.bars.length);
  row.joinButtons.forEach((button) => { button.hidden = !joinable; });
}

function heat(value) {
  // dark blue -> teal -> yellow -> orange
  const stops = [[45, 58, 140], [31, 163, 154], [245, 197, 66], [255, 107, 61]];
  const x = clamp(value, 0, 1) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const f = x - i;
  const c = stops[i].map((v, k) => Math.round(v + (stops[i + 1][k] - v) * f));
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

function draw(row) {
  const s = suggestion(row.index);
  const canvas = row.canvas;
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(50, canvas.clientWidth);
  const height = Math.max(20, canvas.clientHeight);
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const duration = durationOf(s);
  const x = (t) => (clamp(t, 0, duration) / duration) * width;
  const top = 12;
  const barHeight = height - top - 3;
  g.fillStyle = "#0d1119";
  g.fillRect(0, 0, width, height);

  // why this track: relevance of each 2.5 s window (flat when the server sends none)
  const relevance = Array.isArray(s.relevance) ? s.relevance : null;
  if (relevance && relevance.length) {
    relevance.forEach((value, i) => {
      const centre = i * WINDOW_STEP;
      const x0 = x(centre - WINDOW_STEP / 2);
      const x1 = x(centre + WINDOW_STEP / 2);
      const v = clamp(Number(value) || 0, 0, 1);
      const h = Math.max(2, v * barHeight);
      g.fillStyle = heat(v);
      g.fillRect(x0, top + barHeight - h, Math.max(1, x1 - x0 - 0.6), h);
    });
  } else {
    g.fillStyle = "#303a4d";
    g.fillRect(0, top + barHeight * 0.55, width, barHeight * 0.45);
  }

  // sections: alternate shades along the bottom, a line at each start
  const structure = state.structures.get(s.track);
  if (structure && structure.sections && structure.sections.length) {
    const starts = structure.sections;
    starts.forEach((begin, i) => {
      const finish = i + 1 < starts.length ? starts[i + 1] : duration;
      g.fillStyle = i % 2 ? "rgba(200, 160, 255, 0.22)" : "rgba(200, 160, 255, 0.08)";
      g.fillRect(x(begin), height - 4, Math.max(1, x(finish) - x(begin)), 4);
      g.fillStyle = "rgba(200, 160, 255, 0.7)";
      g.fillRect(x(begin), top, 1, height - top);
    });
  }

  // beats along the top (downbeats taller)
  const track = state.tracks.get(s.track);
  const grid = track && track.beats;
  if (grid && grid.beats) {
    const downbeats = new Set((grid.downbeats || []).map((b) => b.toFixed(3)));
    g.fillStyle = "#aab4c6";
    for (const beat of grid.beats) {
      const tall = downbeats.has(beat.toFixed(3));
      g.fillRect(x(beat), tall ? 0 : 5, 1, tall ? 10 : 5);
    }
  }

  // why here: the model's moment (dashed) and the cut (filled)
  g.setLineDash([4, 3]);
  g.strokeStyle = "#f5c542";
  g.lineWidth = 1.5;
  g.strokeRect(x(s.predicted_start), top - 1, Math.max(2, x(s.predicted_end) - x(s.predicted_start)), barHeight + 2);
  g.setLineDash([]);
  const start = startOf(s);
  const end = start + (s.end - s.start);
  const edit = editOf(s);
  const spans = edit && edit.mode !== "cut" ? edit.spans : [{ start, end }];
  for (const span of spans) {  // what is heard: the cut, or each span of an edit
    g.fillStyle = "rgba(79, 195, 247, 0.28)";
    g.fillRect(x(span.start), 0, Math.max(2, x(span.end) - x(span.start)), height);
    g.fillStyle = "#4fc3f7";
    g.fillRect(x(span.start) - 1, 0, 2, height);
    g.fillRect(x(span.end) - 1, 0, 2, height);
  }
  if (edit && edit.mode !== "cut") {  // each join: where the music leaves (out) and resumes (into)
    g.fillStyle = "#ff5fd2";
    for (const j of edit.joins) {
      g.fillRect(x(j.out) - 1.5, 0, 3, height);
      g.fillRect(x(j.into) - 1.5, 0, 3, height);
      g.beginPath();
      g.moveTo(x(j.out), 3);
      g.lineTo(x(j.into), 3);
      g.strokeStyle = "#ff5fd2";
      g.lineWidth = 1.5;
      g.stroke();
    }
  }

  // where playback is (in the track: through the spans of an edit)
  if (row.index === state.selected && (state.playing || masterTime() > 0)) {
    g.fillStyle = "#ffffff";
    g.fillRect(x(trackTime(spans, masterTime())) - 0.5, 0, 1.5, height);
  }
}

function select(index) {
  if (!state.result) return;
  index = clamp(index, 0, state.result.suggestions.length - 1);
  const previous = state.selected;
  state.selected = index;
  state.rows.forEach((row) => row.item.classList.toggle("selected", row.index === index));
  state.rows[index].item.scrollIntoView({ block: "nearest" });
  if (previous !== index) draw(state.rows[previous]);
  draw(state.rows[index]);
  const s = suggestion();
  const now = $("#now");
  now.replaceChildren("♪ ", Object.assign(document.createElement("b"), { textContent: trackName(s) }), ` #${s.rank}`);
  cue();
}

function editOf(s) {
  // the edit list heard for this suggestion: as suggested, or as the last preview made it
  return state.edits.get(s.rank) || s.edit || null;
}

function fitted(s) {
  return Boolean(s.edit && s.edit.requested && s.edit.requested !== "cut");
}

function trackTime(spans, t) {
  // where in the track the clip's second ``t`` is heard
  let left = t;
  for (const span of spans) {
    const length = span.end - span.start;
    if (left <= length) return span.start + left;
    left -= length;
  }
  const last = spans[spans.length - 1];
  return last.end;
}

// ------------------------------------------------------------------ moving the cut

function moveCut(s, start) {
  const length = s.end - s.start;
  const latest = Math.max(0, durationOf(s) - length);
  state.starts.set(s.rank, clamp(start, 0, latest));
  state.joins.delete(s.rank); // a new start: the server plans the edit again
  const row = state.rows[state.result.suggestions.indexOf(s)];
  describe(row);
  draw(row);
  cue();
}

function nudge(direction) {
  const s = suggestion();
  if (!s) return;
  const current = startOf(s);
  const latest = Math.max(0, durationOf(s) - (s.end - s.start));
  const track = state.tracks.get(s.track);
  const beats = (track && track.beats && track.beats.beats) || [];
  let next;
  if (beats.length) {
    next = direction > 0
      ? beats.find((b) => b > current + 1e-3 && b <= latest + 1e-6)
      : [...beats].reverse().find((b) => b < current - 1e-3);
    if (next === undefined) {
      say(direction > 0 ? "no later beat keeps the cut inside the track" : "no earlier beat", "");
      return;
    }
  } else {
    next = current + direction * 0.5;
    say("no beat grid for this track (indexed with --no-beats?): moved by 0.5 s");
  }
  moveCut(s, next);
}

async function moveJoin(direction) {
  // The first join to the previous/next bar line of the track; the server plans the edit with
  // the join there (or says why it cannot), and the preview plays it.
  const s = suggestion();
  const edit = s && editOf(s);
  const structure = s && state.structures.get(s.track);
  if (!edit || !edit.joins.length || !structure || !structure.bars) {
    say("no join to move: suggest with fit ending or loop", "");
    return;
  }
  const current = state.joins.has(s.rank) ? state.joins.get(s.rank) : edit.joins[0].out + JOIN_LEAD;
  const bars = structure.bars;
  const next = direction > 0
    ? bars.find((b) => b > current + 1e-3)
    : [...bars].reverse().find((b) => b < current - 1e-3);
  if (next === undefined) {
    say(direction > 0 ? "no later bar line" : "no earlier bar line", "");
    return;
  }
  const previous = state.joins.get(s.rank);
  state.joins.set(s.rank, next);
  const url = previewUrl(s);
  try {
    const reply = await fetch(url);
    if (!reply.ok) {
      let message = `HTTP ${reply.status}`;
      try {
        message = (await reply.json()).error || message;
      } catch (error) {
        // not JSON: keep the status
      }
      throw new Error(message);
    }
    const made = reply.headers.get("x-mgsv-edit");
    if (made) state.edits.set(s.rank, JSON.parse(made));
    say(`join moved to the bar line at ${clock(next)}`, "ok");
  } catch (error) {
    if (previous === undefined) state.joins.delete(s.rank);
    else state.joins.set(s.rank, previous);
    say("cannot join there: " + error.message, "bad");
    return;
  }
  const row = state.rows[state.selected];
  describe(row);
  draw(row);
  cue();
}

// ------------------------------------------------------------------ playing

function previewUrl(s) {
  if (fitted(s)) {  // the remembered suggestion, fitted again where the start or the join moved
    const params = new URLSearchParams({ video: state.upload.video, rank: s.rank, start: startOf(s).toFixed(3),
                                         mix: state.mix });
    if (state.joins.has(s.rank)) params.set("join", state.joins.get(s.rank).toFixed(3));
    return withToken("/api/preview?" + params.toString());
  }
  const params = new URLSearchParams({
    video: state.upload.video,
    track: s.track,
    start: startOf(s).toFixed(3),
    mix: state.mix,
  });
  return withToken("/api/preview?" + params.toString());
}

let previewTimer = null;

function cue() {
  // Load the preview of the selected cut; while playing, it takes over at the same moment.
  const s = suggestion();
  if (!s || !state.upload) return;
  const url = previewUrl(s);
  if (audio.dataset.src === url) return;
  clearTimeout(previewTimer);
  const load = async () => {
    audio.dataset.src = url;
    if (fitted(s)) await learnEdit(s, url); // made once: the audio below gets the server's cached file
    if (audio.dataset.src !== url) return; // another cue came meanwhile
    audio.src = url;
    audio.load();
  };
  if (state.playing) previewTimer = setTimeout(load, 120); // a burst of nudges loads only the last
  else load();
}

async function learnEdit(s, url) {
  // the edit list the preview plays (the start moved: the server planned it again), for the strip
  try {
    const reply = await fetch(url);
    const made = reply.ok && reply.headers.get("x-mgsv-edit");
    if (made && audio.dataset.src === url) {
      state.edits.set(s.rank, JSON.parse(made));
      const row = state.rows[state.result.suggestions.indexOf(s)];
      describe(row);
      draw(row);
    }
  } catch (error) {
    // the audio element reports a failed preview itself
  }
}

function previewError() {
  return audio.error ? `media error ${audio.error.code}` : "unknown";
}

function masterTime() {
  return state.videoOk ? video.currentTime : audio.currentTime;
}

async function play() {
  if (!state.result) return;
  cue();
  state.playing = true;
  $("#play").textContent = "❚❚ Pause";
  if (state.videoOk && video.ended) video.currentTime = 0;
  if (audio.readyState >= 1) audio.currentTime = masterTime();
  try {
    const started = [audio.play()];
    if (state.videoOk) started.push(video.play());
    await Promise.all(started);
  } catch (error) {
    if (error.name !== "AbortError") say("cannot play: " + error.message, "bad");
  }
  requestAnimationFrame(tick);
}

function stop(rewind) {
  state.playing = false;
  $("#play").textContent = "▶ Play";
  video.pause();
  audio.pause();
  if (rewind) {
    video.currentTime = 0;
    audio.currentTime = 0;
  }
  if (state.result) draw(state.rows[state.selected]);
}

function toggle() {
  if (state.playing) stop(false);
  else play();
}

function tick() {
  if (!state.result) return;
  const t = masterTime();
  const total = state.result.duration;
  $("#clock").textContent = `${clock(t)} / ${clock(total)}`;
  if (state.playing && state.videoOk && audio.readyState >= 2 && Math.abs(audio.currentTime - video.currentTime) > DRIFT) {
    audio.currentTime = video.currentTime;
  }
  draw(state.rows[state.selected]);
  if (state.playing) requestAnimationFrame(tick);
}

// ------------------------------------------------------------------ render / export

function download(url) {
  const link = document.createElement("a");
  link.href = withToken(url);
  link.download = "";
  document.body.append(link);
  link.click();
  link.remove();
}

async function renderVideo() {
  const s = suggestion();
  if (!s) return;
  busy(true);
  say(`rendering ${state.upload.name} with ${trackName(s)} (${state.mix})…`);
  try {
    const body = { video: state.upload.video, track: s.track, start: startOf(s), mix: state.mix, snap: "off" };
    if (fitted(s)) {
      const moved = Math.abs(startOf(s) - s.start) > 1e-3;
      Object.assign(body, moved ? { fit: s.edit.requested } : { track: null, start: null, pick: s.rank });
      if (state.joins.has(s.rank)) body.join = state.joins.get(s.rank);
    }
    const reply = await api("/api/render", { json: body });
    const r = reply.result;
    const loud = r.loudness === null ? "silent" : `${r.loudness.toFixed(1)} LUFS`;
    say(`rendered ${r.out_path.split(/[\\/]/).pop()}: ${r.mix}, ${loud}` + (r.warnings.length ? " — " + r.warnings.join("; ") : ""), "ok");
    if (reply.download_url) download(reply.download_url);
  } catch (error) {
    say("render failed: " + error.message, "bad");
  } finally {
    busy(false);
  }
}

async function exportTimeline() {
  const s = suggestion();
  if (!s) return;
  busy(true);
  const fmt = $("#format").value;
  say(`writing the ${fmt} timeline…`);
  try {
    const reply = await api("/api/export", {
      json: { video: state.upload.video, pick: s.rank, start: startOf(s), format: fmt, snap: "off",
              ...(fitted(s) && state.joins.has(s.rank) ? { join: state.joins.get(s.rank) } : {}) },
    });
    say(`timeline ${reply.out.split(/[\\/]/).pop()} (${fmt})`, "ok");
    if (reply.download_url) download(reply.download_url);
  } catch (error) {
    say("export failed: " + error.message, "bad");
  } finally {
    busy(false);
  }
}

// ------------------------------------------------------------------ keyboard

function onKey(event) {
  if (event.altKey || event.ctrlKey || event.metaKey) return;
  const target = event.target;
  if (target && target.matches && target.matches("input, select, textarea")) return;
  if (!state.result) return;
  const actions = {
    " ": () => toggle(),
    ArrowUp: () => select(state.selected - 1),
    ArrowDown: () => select(state.selected + 1),
    ArrowLeft: () => nudge(-1),
    ArrowRight: () => nudge(1),
    "[": () => moveJoin(-1),
    "]": () => moveJoin(1),
  };
  const action = actions[event.key];
  if (!action) return;
  event.preventDefault(); // no scrolling, and no "click" of a focused button on space
  if (target && target.blur && target.matches && target.matches("button")) target.blur();
  action();
}

boot();
