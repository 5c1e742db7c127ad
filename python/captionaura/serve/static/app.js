// captionaura live captions: camera frames (or uploads) go to the server over one WebSocket; captions come
// back token by token. Protocol: see python/captionaura/serve/app.py.
"use strict";

const KIND = { frame: 1, reference: 2, upload: 3 };
const $ = (id) => document.getElementById(id);
const state = { ws: null, limits: null, timer: null, stream: null, captionId: null, lastId: null, errorTimer: null };

function showError(message) {
  $("error-text").textContent = message;
  $("error").hidden = false;
  clearTimeout(state.errorTimer);
  state.errorTimer = setTimeout(() => { $("error").hidden = true; }, 12000);
}

function setStatus(text, on) {
  $("status").textContent = text;
  $("status").className = "status " + (on ? "on" : "off");
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  ws.onopen = () => setStatus("connected", true);
  ws.onmessage = (event) => handle(JSON.parse(event.data));
  ws.onclose = (event) => {
    setStatus("disconnected", false);
    if (event.code === 1009) showError("the server closed the connection: message too big");
    setTimeout(connect, 2000);
  };
}

function send(message) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(message));
}

async function sendImage(kind, blob) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) { showError("not connected to the server"); return false; }
  const limit = state.limits ? state.limits.max_image_bytes : 10 * 1024 * 1024;
  if (blob.size > limit) {
    showError(`image too large: ${(blob.size / 1e6).toFixed(1)} MB, the limit is ${(limit / 1e6).toFixed(0)} MB`);
    return false;
  }
  const bytes = new Uint8Array(await blob.arrayBuffer());
  const message = new Uint8Array(bytes.length + 1);
  message[0] = kind;
  message.set(bytes, 1);
  state.ws.send(message);
  return true;
}

function handle(msg) {
  switch (msg.type) {
    case "ready":  // a new connection: the server holds no reference image yet
      state.limits = msg.limits;
      $("reference-preview").hidden = $("clear-reference").hidden = true;
      setStatus(`connected · ${msg.model}`, true);
      sendSettings();
      break;
    case "context": showContext(msg); break;
    case "caption_start":
      state.captionId = msg.id;
      $("caption").textContent = "";
      $("caption").classList.add("writing");
      $("caption-meta").textContent = "writing…";
      break;
    case "token":
      if (msg.id === state.captionId) $("caption").textContent += msg.text;
      break;
    case "caption_end":
      $("caption").classList.remove("writing");
      if (msg.failed) { $("caption-meta").textContent = "failed"; break; }
      $("caption").textContent = msg.text;
      state.lastId = msg.id;
      $("caption-meta").textContent = `${msg.latency_ms} ms (first token ${msg.first_token_ms} ms)`;
      for (const id of ["copy", "rate-up", "rate-down"]) { $(id).disabled = false; $(id).classList.remove("active"); }
      addHistory(msg.text);
      break;
    case "rated":
      if (msg.id === state.lastId) $(msg.rating > 0 ? "rate-up" : "rate-down").classList.add("active");
      break;
    case "reference":
      $("clear-reference").hidden = $("reference-preview").hidden = msg.width === 0;
      break;
    case "settings":
      document.body.dataset.live = msg.live;
      $("style-state").textContent = msg.posts ? `style from ${msg.posts} past post${msg.posts > 1 ? "s" : ""}`
                                               : "no past posts: neutral style";
      break;
    case "error": showError(msg.message); break;
  }
}

function showContext(ctx) {
  $("ctx-frames").textContent = `${ctx.frames_kept} / ${ctx.capacity}`;
  $("ctx-seen").textContent = ctx.frames_seen;
  $("ctx-scene").textContent = ctx.frames_seen ? ctx.scene : "–";
  $("ctx-changes").textContent = ctx.scene_changes;
  $("ctx-changes").classList.toggle("flash", ctx.scene_change);
  $("ctx-summary").textContent = ctx.summary || "(nothing captioned yet)";
}

function addHistory(text) {
  const item = document.createElement("li");
  item.textContent = text;
  $("history").prepend(item);
  while ($("history").children.length > 20) $("history").lastChild.remove();
}

function number(id) { return Number($(id).value); }

function sendSettings() {
  send({
    type: "settings", live: $("live").checked, context_mode: $("context-mode").value,
    posts: $("posts").value, language: $("language").value,
    generation: {
      max_new_tokens: number("max-new-tokens"), do_sample: $("do-sample").checked,
      temperature: number("temperature"), top_p: number("top-p"), top_k: number("top-k"),
      repetition_penalty: number("repetition-penalty"),
    },
  });
}

// -- camera -----------------------------------------------------------------------------------------------
async function startCamera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    noCamera("this browser gives no camera access here (it needs https or localhost)");
    return;
  }
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (err) {
    noCamera(err.message || err.name);
    return;
  }
  $("camera").srcObject = state.stream;
  $("camera").hidden = false;
  $("still").hidden = $("no-camera").hidden = true;
  $("start-camera").disabled = true;
  $("stop-camera").disabled = false;
  restartFrames();
}

function stopCamera() {
  clearInterval(state.timer);
  state.timer = null;
  if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
  state.stream = null;
  $("start-camera").disabled = false;
  $("stop-camera").disabled = true;
}

function noCamera(reason) {
  stopCamera();
  $("camera").hidden = true;
  $("no-camera").hidden = false;
  showError(`no camera (${reason}): upload a photo instead`);
}

function restartFrames() {
  clearInterval(state.timer);
  if (!state.stream) return;
  state.timer = setInterval(grabFrame, 1000 / Number($("fps").value));
}

function grabFrame() {
  const video = $("camera");
  if (!video.videoWidth || !state.ws || state.ws.readyState !== WebSocket.OPEN) return;
  if (state.ws.bufferedAmount > 1 << 20) return;  // the network is behind: skip this frame
  const scale = Math.min(1, 320 / video.videoWidth);
  const canvas = $("grab");
  canvas.width = Math.round(video.videoWidth * scale);
  canvas.height = Math.round(video.videoHeight * scale);
  canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
  canvas.toBlob((blob) => blob && sendImage(KIND.frame, blob), "image/jpeg", 0.8);
}

// -- uploads ----------------------------------------------------------------------------------------------
async function upload(input, kind) {
  const file = input.files[0];
  input.value = "";
  if (!file) return;
  if (!["image/jpeg", "image/png", "image/webp"].includes(file.type)) {
    showError(`unsupported image type ${file.type || "(unknown)"}: use JPEG, PNG or WebP`);
    return;
  }
  const url = URL.createObjectURL(file);
  if (!(await readable(url))) {
    URL.revokeObjectURL(url);
    showError(`${file.name} is not a readable image`);
    return;
  }
  if (!(await sendImage(kind, file))) return;
  const target = kind === KIND.reference ? $("reference-preview") : $("still");
  if (target.src) URL.revokeObjectURL(target.src);
  target.src = url;
  if (kind === KIND.upload) {
    $("still").hidden = false;
    $("camera").hidden = true;
    $("no-camera").hidden = true;
  }
}

function readable(url) {
  return new Promise((resolve) => {
    const probe = new Image();
    probe.onload = () => resolve(true);
    probe.onerror = () => resolve(false);
    probe.src = url;
  });
}

async function copyCaption() {
  const text = $("caption").textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = document.createElement("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  $("caption-meta").textContent = "copied";
}

$("start-camera").onclick = startCamera;
$("stop-camera").onclick = stopCamera;
$("fps").onchange = restartFrames;
$("live").onchange = sendSettings;
$("context-mode").onchange = sendSettings;
$("apply").onclick = sendSettings;
$("posts").onchange = sendSettings;
$("language").onchange = sendSettings;
$("caption-now").onclick = () => send({ type: "caption" });
$("reset-context").onclick = () => send({ type: "reset" });
$("upload").onchange = () => upload($("upload"), KIND.upload);
$("reference").onchange = () => upload($("reference"), KIND.reference);
$("clear-reference").onclick = () => send({ type: "clear_reference" });
$("copy").onclick = copyCaption;
$("rate-up").onclick = () => send({ type: "rate", id: state.lastId, rating: 1 });
$("rate-down").onclick = () => send({ type: "rate", id: state.lastId, rating: -1 });
$("error-close").onclick = () => { $("error").hidden = true; };

connect();
startCamera();
