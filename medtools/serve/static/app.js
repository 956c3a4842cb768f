// The doctor's page: plain JavaScript, no framework, nothing fetched from elsewhere.
// The session is an HttpOnly cookie set by /v1/login; every call is same-origin.
"use strict";
const $ = (id) => document.getElementById(id);
const COLOURS = { 1: [255, 0, 0], 2: [0, 200, 0], 3: [0, 90, 255], 4: [255, 220, 0] };
// {shape: [Z, rows, cols], image: Uint8Array (the server's percentile window), labels: Uint8Array,
//  values: Uint16Array steps over range [min, max] (raw intensities), auto: [low, high]}
let view = null;
// window/level presets: [window, level] in the image's units (CT: Hounsfield units)
const HEAT = [255, 140, 0]; // the saliency overlay's colour
const timings = {}; // milliseconds, read by the browser test
let lastUpload = null; // {files, model}: what the saliency map is asked for
const PRESETS = { "ct-brain": [80, 40], "ct-soft": [400, 40], "ct-bone": [2000, 500] };

async function api(path, options = {}) {
  // the header marks the page's own requests (the server refuses cookie-authenticated POSTs without it)
  const headers = { "X-Medtools-Request": "page", ...(options.headers || {}) };
  const response = await fetch(path, { credentials: "same-origin", ...options, headers });
  if (response.status === 401 && loggedIn && path !== "/v1/login") sessionEnded();
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
    const error = new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    error.status = response.status;
    throw error;
  }
  return response;
}

function decode(b64) {
  const text = atob(b64);
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

function filenameOf(response, fallback) {
  const match = /filename="([^"]+)"/.exec(response.headers.get("content-disposition") || "");
  return match ? match[1] : fallback;
}

function saveBlob(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
}

// The session's end, shown as a countdown; at the end (or at any 401) the page goes back to the
// log-in form and says why.
let loggedIn = false, sessionEnd = 0, sessionTimer = null;

function showSession() {
  const left = Math.max(0, Math.round((sessionEnd - performance.now()) / 1000));
  $("session").textContent = "session ends in " + Math.floor(left / 60) + ":" + String(left % 60).padStart(2, "0");
  if (left <= 0) sessionEnded();
}

function sessionEnded() {
  if (!loggedIn) return;
  loggedIn = false;
  clearInterval(sessionTimer);
  view = null;
  $("app").hidden = true;
  $("logout").hidden = true;
  $("viewer-box").hidden = true;
  $("who").textContent = "";
  $("session").textContent = "";
  $("login-section").hidden = false;
  $("login-error").textContent = "Your session has ended; log in again.";
}

async function showApp() {
  const me = await (await api("/v1/me")).json();
  const version = await (await api("/v1/version")).json();
  loggedIn = true;
  sessionEnd = performance.now() + 1000 * (me.expires_in !== undefined ? me.expires_in : 900);
  clearInterval(sessionTimer);
  sessionTimer = setInterval(showSession, 1000);
  showSession();
  $("who").textContent = "logged in as " + me.user;
  $("login-section").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  const select = $("model");
  select.innerHTML = "";
  for (const m of version.models.filter((m) => m.kind === "seg")) {
    const option = document.createElement("option");
    option.value = m.name;
    option.textContent = m.name;
    option.dataset.modalities = (m.modalities || ["image"]).join(", ");
    select.appendChild(option);
  }
  showModalities();
  // protection: the reid/cls models as attackers, the seg models as the utility to keep
  const attackers = version.models.filter((m) => m.kind === "reid" || m.kind === "cls");
  $("protect-section").hidden = !(attackers.length && (version.endpoints || []).includes("protect"));
  fillSelect($("protect-attacker"), attackers, false);
  fillSelect($("protect-utility"), version.models.filter((m) => m.kind === "seg"), true);
  // similar cases, when the service searches its encrypted index (--index-secret)
  $("search-section").hidden = !(version.endpoints || []).includes("index/search");
  // the PACS's study list, when the service has one (--pacs)
  $("pacs-section").hidden = !(version.endpoints || []).includes("pacs/series");
  // classification: the cls models the service loaded, when it offers /v1/classify
  const classifiers = version.models.filter((m) => m.kind === "cls");
  $("classify-section").hidden = !(classifiers.length && (version.endpoints || []).includes("classify"));
  $("cls-model").innerHTML = "";
  for (const m of classifiers) {
    const option = document.createElement("option");
    option.value = m.name;
    option.textContent = m.name + (m.class_names ? " (" + m.class_names.join(", ") + ")" : "");
    option.dataset.encryption = m.encryption || "none";
    option.dataset.blockSize = m.block_size || 16;
    option.dataset.keyId = m.key_id || "";
    option.dataset.size = m.image_size || 0;
    $("cls-model").appendChild(option);
  }
  showClsPrivacy();
}

// Who sees the image: a model trained on plain images gets the image itself; one trained behind
// the block cipher gets the cipher image made here with the doctor's key, which never leaves the
// page; for another cipher the page cannot encrypt, so it says so.
function showClsPrivacy() {
  const option = $("cls-model").selectedOptions[0];
  const method = option ? option.dataset.encryption : "none";
  const inBrowser = method === "block" && MedtoolsCipher.available();
  $("cls-key-label").hidden = !inBrowser;
  let text;
  if (method === "none") {
    text = "The image is sent to the server as it is: the server sees it.";
  } else if (inBrowser) {
    text = "This model was trained on block-encrypted images (key " + option.dataset.keyId + "). Your key file is read by this page and never sent: "
      + "each image is brought to " + option.dataset.size + "×" + option.dataset.size + " grey levels and encrypted in this browser, and the server receives only the cipher image "
      + "(the one `medtools encrypt --method block` makes). The block cipher hides the picture from view, not from someone who also holds one plain image and its cipher (docs/secure.md).";
  } else {
    text = (method === "block" ? "This browser offers no WebCrypto here (the page is not on HTTPS or localhost), so it cannot encrypt. "
      : "The page does not compute this model's cipher (" + method + ") in the browser. ")
      + "Make the cipher images on your own machine (`medtools encrypt --method " + method + " --key KEY`) and upload those; an image uploaded here is sent as it is.";
  }
  $("cls-privacy").textContent = text;
}

// One image file → its cipher image as a PNG: grey levels at the model's size (the browser
// resizes a picture of another size), encrypted with the key.
async function cipherPicture(file, key, size, block) {
  const bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = size;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, 0, 0, size, size);
  const rgba = ctx.getImageData(0, 0, size, size);
  const levels = new Uint8Array(size * size);
  for (let i = 0; i < levels.length; i++) {
    const [r, g, b] = [rgba.data[4 * i], rgba.data[4 * i + 1], rgba.data[4 * i + 2]];
    levels[i] = r === g && g === b ? r : Math.round((r + g + b) / 3);
  }
  const cipher = await MedtoolsCipher.encryptBlock(levels, size, size, key, block);
  for (let i = 0; i < cipher.length; i++) {
    rgba.data[4 * i] = rgba.data[4 * i + 1] = rgba.data[4 * i + 2] = cipher[i];
    rgba.data[4 * i + 3] = 255;
  }
  ctx.putImageData(rgba, 0, 0);
  const blob = await new Promise((done) => canvas.toBlob(done, "image/png"));
  return new File([blob], file.name.replace(/\.[^.]*$/, "") + "_cipher.png", { type: "image/png" });
}

function showModalities() {
  const option = $("model").selectedOptions[0];
  $("modalities").textContent = option ? "files in this order: " + option.dataset.modalities : "no segmentation model loaded";
}

// The three planes of the preview (slices, rows, cols): axial = one slice, coronal = one row
// through every slice, sagittal = one column through every slice. The cursor (the slice slider's
// slice, a row and a column) is shared: a click on one view moves the other two there.
const cursor = { row: 0, col: 0 };

function draw() {
  if (!view) return;
  const [depth, rows, cols] = view.shape;
  const z = Math.min(+$("slice").value, depth - 1);
  cursor.row = Math.min(cursor.row, rows - 1);
  cursor.col = Math.min(cursor.col, cols - 1);
  const axial = new Int32Array(rows * cols);
  for (let i = 0; i < rows * cols; i++) axial[i] = z * rows * cols + i;
  const [sz, sr, sc] = view.spacing; // mm between slices, rows, columns
  drawPlane($("viewer"), rows, cols, axial);
  place("viewer", 384, rows * sr / (cols * sc), (cursor.row + 0.5) / rows, (cursor.col + 0.5) / cols);
  $("planes").hidden = depth < 2; // a 2-D image shows the one view
  if (depth > 1) {
    const coronal = new Int32Array(depth * cols), sagittal = new Int32Array(depth * rows);
    for (let k = 0; k < depth; k++) { // the first slice at the top
      for (let c = 0; c < cols; c++) coronal[k * cols + c] = (k * rows + cursor.row) * cols + c;
      for (let r = 0; r < rows; r++) sagittal[k * rows + r] = (k * rows + r) * cols + cursor.col;
    }
    drawPlane($("viewer-coronal"), depth, cols, coronal);
    drawPlane($("viewer-sagittal"), depth, rows, sagittal);
    place("viewer-coronal", 240, depth * sz / (cols * sc), (z + 0.5) / depth, (cursor.col + 0.5) / cols);
    place("viewer-sagittal", 240, depth * sz / (rows * sr), (z + 0.5) / depth, (cursor.row + 0.5) / rows);
  }
  $("slice-label").textContent = (z + 1) + " / " + depth;
  $("cursor").textContent = "Cursor: slice " + (z + 1) + ", row " + (cursor.row + 1) + ", column " + (cursor.col + 1);
}

// A view's size on the page: `width` CSS pixels wide and as high as its millimetres say (the voxel
// spacing, not the voxel count, sets each plane's aspect); its crosshairs at the cursor (fractions
// of the view's height and width).
function place(id, width, aspect, y, x) {
  const canvas = $(id);
  canvas.style.width = width + "px";
  canvas.style.height = Math.max(1, Math.round(width * aspect)) + "px";
  const shown = $("crosshairs").checked;
  $(id + "-h").hidden = $(id + "-v").hidden = !shown;
  $(id + "-h").style.top = (100 * y) + "%";
  $(id + "-v").style.left = (100 * x) + "%";
}

// One view: `index` holds, for each of its height × width pixels, the voxel it shows.
function drawPlane(canvas, height, width, index) {
  const alpha = +$("opacity").value / 100;
  if (canvas.width !== width) canvas.width = width; // (setting it, even unchanged, clears and reallocates)
  if (canvas.height !== height) canvas.height = height;
  const ctx = canvas.getContext("2d");
  const pixels = ctx.createImageData(width, height);
  const grey = windowed(index);
  const saliency = $("overlay-kind").value === "saliency" ? view.saliency : null;
  if (!saliency) { // the segmentation: one table lookup per pixel, (label, grey) → RGBA
    const table = overlayTable(alpha), out = new Uint32Array(pixels.data.buffer), labels = view.labels;
    for (let i = 0; i < index.length; i++) {
      const label = labels[index[i]];
      out[i] = table[(label < 5 ? label : 5) * 256 + grey[i]];
    }
    ctx.putImageData(pixels, 0, 0);
    return;
  }
  for (let i = 0; i < index.length; i++) { // the saliency: a heat colour whose opacity grows with it
    const g = grey[i], p = 4 * i, a = alpha * saliency[index[i]] / 255;
    pixels.data[p] = (1 - a) * g + a * HEAT[0];
    pixels.data[p + 1] = (1 - a) * g + a * HEAT[1];
    pixels.data[p + 2] = (1 - a) * g + a * HEAT[2];
    pixels.data[p + 3] = 255;
  }
  ctx.putImageData(pixels, 0, 0);
}

// RGBA (as one 32-bit word per pixel, in the canvas's byte order) of every (label, grey) pair at this
// opacity: row 0 grey, rows 1–4 the label colours, row 5 any other label (magenta), each the grey
// blended with the colour and rounded as the canvas rounds.
function overlayTable(alpha) {
  const bytes = new Uint8ClampedArray(6 * 256 * 4);
  for (let label = 0; label < 6; label++) {
    const colour = label === 0 ? null : COLOURS[label] || [255, 0, 255];
    for (let g = 0; g < 256; g++) {
      const p = 4 * (label * 256 + g);
      bytes[p] = colour ? (1 - alpha) * g + alpha * colour[0] : g;
      bytes[p + 1] = colour ? (1 - alpha) * g + alpha * colour[1] : g;
      bytes[p + 2] = colour ? (1 - alpha) * g + alpha * colour[2] : g;
      bytes[p + 3] = 255;
    }
  }
  return new Uint32Array(bytes.buffer);
}

// The grey values of the voxels `index` under the current window/level: the server's own 8-bit
// rendering for the automatic window, else computed from the raw intensities.
function windowed(index) {
  const preset = $("wl-preset").value;
  const out = new Uint8ClampedArray(index.length);
  if (preset === "auto" || !view.values) {
    for (let i = 0; i < index.length; i++) out[i] = view.image[index[i]];
    return out;
  }
  const w = Math.max(+$("window").value, 1e-6), low = +$("level").value - w / 2;
  const [min, max] = view.range, step = (max - min) / 65535;
  for (let i = 0; i < index.length; i++) out[i] = Math.round(((min + step * view.values[index[i]]) - low) / w * 255);
  return out;
}

// A click (no drag) on a view moves the cursor there: the view's pixel → (slice, row, column).
function pick(event, canvas, plane) {
  const box = canvas.getBoundingClientRect();
  const x = Math.floor((event.clientX - box.left) / box.width * canvas.width);
  const y = Math.floor((event.clientY - box.top) / box.height * canvas.height);
  if (x < 0 || y < 0 || x >= canvas.width || y >= canvas.height) return;
  if (plane === "axial") { cursor.row = y; cursor.col = x; }
  if (plane === "coronal") { $("slice").value = y; cursor.col = x; }
  if (plane === "sagittal") { $("slice").value = y; cursor.row = x; }
  draw();
}

function showWindow(low, high) {
  $("window").value = +(high - low).toPrecision(4);
  $("level").value = +((low + high) / 2).toPrecision(4);
}

function applyPreset() {
  if (!view) return;
  const preset = $("wl-preset").value;
  if (preset === "auto") showWindow(view.auto[0], view.auto[1]);
  else if (preset === "full") showWindow(view.range[0], view.range[1]);
  else if (PRESETS[preset]) { $("window").value = PRESETS[preset][0]; $("level").value = PRESETS[preset][1]; }
  draw();
}

function customWindow() { $("wl-preset").value = "custom"; draw(); }

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-error").textContent = "";
  try {
    await api("/v1/login", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ user: $("user").value, password: $("password").value }) });
    $("password").value = "";
    await showApp();
  } catch (e) {
    $("login-error").textContent = e.status === 429 ? "Too many failed attempts; wait a few minutes." : "Log-in failed.";
  }
});

$("logout").addEventListener("click", async () => {
  await api("/v1/logout", { method: "POST" });
  location.reload();
});

$("model").addEventListener("change", showModalities);
$("opacity").addEventListener("input", draw);
$("wl-preset").addEventListener("change", applyPreset);
$("window").addEventListener("input", customWindow);
$("level").addEventListener("input", customWindow);
let drag = null; // dragging on a view changes window (x) and level (y); a click moves the cursor
for (const [id, plane] of [["viewer", "axial"], ["viewer-coronal", "coronal"], ["viewer-sagittal", "sagittal"]]) {
  $(id).addEventListener("mousedown", (event) => {
    if (!view) return;
    event.preventDefault();
    drag = { x: event.clientX, y: event.clientY, window: +$("window").value, level: +$("level").value, moved: false, plane, canvas: $(id) };
  });
}
document.addEventListener("mouseup", (event) => {
  if (drag && !drag.moved) pick(event, drag.canvas, drag.plane);
  drag = null;
});
document.addEventListener("mousemove", (event) => {
  if (!drag || !view.values) return;
  if (Math.abs(event.clientX - drag.x) + Math.abs(event.clientY - drag.y) < 3) return;
  drag.moved = true;
  const unit = Math.max(view.range[1] - view.range[0], 1e-6) / 400; // 400 px of drag: the whole range
  $("window").value = +Math.max(drag.window + (event.clientX - drag.x) * unit, unit).toPrecision(4);
  $("level").value = +(drag.level - (event.clientY - drag.y) * unit).toPrecision(4);
  customWindow();
});
$("slice").addEventListener("input", draw);
$("viewer").addEventListener("keydown", (event) => { // keyboard slice scrolling on the focused view
  const step = { ArrowUp: -1, ArrowLeft: -1, PageUp: -10, ArrowDown: 1, ArrowRight: 1, PageDown: 10 }[event.key];
  if (!view || step === undefined) return;
  event.preventDefault();
  const slider = $("slice");
  slider.value = Math.max(0, Math.min(+slider.max, +slider.value + step));
  draw();
});
// the coronal view's keys move its row, the sagittal view's its column (the other views follow)
for (const [id, axis] of [["viewer-coronal", "row"], ["viewer-sagittal", "col"]]) {
  $(id).addEventListener("keydown", (event) => {
    const step = { ArrowUp: -1, ArrowLeft: -1, PageUp: -10, ArrowDown: 1, ArrowRight: 1, PageDown: 10 }[event.key];
    if (!view || step === undefined) return;
    event.preventDefault();
    const last = view.shape[axis === "row" ? 1 : 2] - 1;
    cursor[axis] = Math.max(0, Math.min(last, cursor[axis] + step));
    draw();
  });
}
$("crosshairs").addEventListener("change", draw);
$("viewer").addEventListener("wheel", (event) => { // scroll through the slices of a volume
  if (!view) return;
  event.preventDefault();
  const slider = $("slice");
  slider.value = Math.max(0, Math.min(+slider.max, +slider.value + (event.deltaY > 0 ? 1 : -1)));
  draw();
}, { passive: false });

// The saliency map of the shown case (POST /v1/explain), asked for when the overlay is switched to it.
async function showOverlay() {
  if (!view) return;
  const method = $("explain-method").value;
  if ($("overlay-kind").value === "saliency" && !lastUpload) $("explain-status").textContent = "The saliency map is computed for an uploaded file.";
  if ($("overlay-kind").value === "saliency" && lastUpload && view.saliencyMethod !== method) {
    const form = new FormData();
    for (const file of lastUpload.files) form.append("file", file);
    $("explain-status").textContent = "Computing the saliency map…";
    try {
      const params = new URLSearchParams({ model: lastUpload.model, method });
      const result = await (await api("/v1/explain?" + params, { method: "POST", body: form })).json();
      if (!result.preview) throw new Error("no preview for this image");
      view.saliency = decode(result.preview.saliency);
      view.saliencyMethod = method;
      const flags = result.targets.flatMap((t) => t.flags || []);
      $("explain-status").textContent = "Saliency (" + method + ") of " + result.targets.map((t) => t.target).join(", ") + (flags.length ? "; " + flags.join("; ") : "");
    } catch (e) {
      $("explain-status").textContent = "Failed: " + e.message;
      return;
    }
  }
  draw();
}

$("overlay-kind").addEventListener("change", showOverlay);
$("explain-method").addEventListener("change", showOverlay);

$("segment-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData();
  for (const file of $("segment-files").files) form.append("file", file);
  lastUpload = { files: Array.from($("segment-files").files), model: $("model").value };
  const params = new URLSearchParams({ response: "binary", model: $("model").value });
  await segmentAndShow("/v1/segment?" + params, { method: "POST", body: form });
});

// A binary segment answer (?response=binary): a 4-byte little-endian length, the JSON head, then the
// preview's arrays at the [offset, length] the head gives: views on the one buffer, nothing to
// parse or decode (the 16-bit values start at an even byte).
async function readBinary(response) {
  const buffer = await response.arrayBuffer();
  const length = new DataView(buffer).getUint32(0, true);
  const head = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
  const p = head.preview;
  if (p) {
    const at = (key) => 4 + length + p.parts[key][0];
    p.image = new Uint8Array(buffer, at("image"), p.parts.image[1]);
    p.labels = new Uint8Array(buffer, at("labels"), p.parts.labels[1]);
    p.values = new Uint16Array(buffer, at("values"), p.parts.values[1] / 2);
  }
  return head;
}

// A segment answer (an upload's, or a PACS series') in the viewer, the legend and the download link.
async function segmentAndShow(path, options) {
  $("segment-status").textContent = "Segmenting…";
  try {
    const response = await api(path, options);
    const arrived = performance.now();
    const result = await readBinary(response);
    const stats = result.stats;
    $("segment-status").textContent = "Done: " + result.filename;
    $("volume").textContent = stats.tumour_ml !== undefined
      ? "Tumour volume: " + stats.tumour_ml.toFixed(2) + " mL (" + stats.tumour_voxels + " voxels)"
      : "Tumour area: " + stats.tumour_voxels + " pixels";
    showLegend(stats);
    const link = $("download");
    link.href = URL.createObjectURL(new Blob([decode(result.label_map)]));
    link.download = result.filename;
    if (result.preview) {
      const p = result.preview;
      view = { shape: p.shape, image: p.image, labels: p.labels, values: p.values, range: p.value_range, auto: p.window, spacing: p.spacing || [1, 1, 1] };
      $("wl-preset").value = "auto";
      $("overlay-kind").value = "labels";
      $("explain-status").textContent = "";
      if (view.auto) showWindow(view.auto[0], view.auto[1]);
      const depth = view.shape[0];
      $("slice").max = depth - 1;
      // start on the slice with the most tumour
      let best = 0, bestCount = -1;
      const area = view.shape[1] * view.shape[2];
      for (let z = 0; z < depth; z++) {
        let count = 0;
        for (let i = z * area; i < (z + 1) * area; i++) if (view.labels[i]) count++;
        if (count > bestCount) { best = z; bestCount = count; }
      }
      $("slice").value = best;
      // the cursor starts in the middle of that slice's tumour (of the slice without one)
      let r0 = view.shape[1], r1 = -1, c0 = view.shape[2], c1 = -1;
      for (let i = 0; i < area; i++) {
        if (!view.labels[best * area + i]) continue;
        const r = Math.floor(i / view.shape[2]), c = i % view.shape[2];
        r0 = Math.min(r0, r); r1 = Math.max(r1, r); c0 = Math.min(c0, c); c1 = Math.max(c1, c);
      }
      cursor.row = r1 >= 0 ? Math.floor((r0 + r1) / 2) : Math.floor(view.shape[1] / 2);
      cursor.col = c1 >= 0 ? Math.floor((c0 + c1) / 2) : Math.floor(view.shape[2] / 2);
      $("viewer-box").hidden = false;
      draw();
      timings.firstView = performance.now() - arrived; // the answer's headers → the three views drawn
    }
  } catch (e) {
    $("segment-status").textContent = "Failed: " + e.message;
  }
}

// The PACS's series (GET /v1/pacs/series), one row each with a button that pulls and segments it.
$("pacs-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("pacs-status").textContent = "Asking the PACS…";
  $("pacs-results").hidden = true;
  try {
    const params = new URLSearchParams({ patient: $("pacs-patient").value, modality: $("pacs-modality").value });
    const result = await (await api("/v1/pacs/series?" + params)).json();
    const rows = $("pacs-rows");
    rows.innerHTML = "";
    for (const s of result.series) {
      const tr = document.createElement("tr");
      for (const text of [s.patient_id, s.date, s.modality, s.description, String(s.instances)]) cell(tr, text || "");
      const td = document.createElement("td"), button = document.createElement("button");
      button.type = "button";
      button.textContent = "Open";
      button.setAttribute("aria-label", "Open and segment the " + (s.modality || "") + " series " + (s.description || s.series_uid) + " of patient " + (s.patient_id || ""));
      button.addEventListener("click", () => {
        lastUpload = null; // no file for the saliency map: it asks for an upload
        const params = new URLSearchParams({ study_uid: s.study_uid, series_uid: s.series_uid, model: $("model").value, response: "binary" });
        segmentAndShow("/v1/pacs/segment?" + params, { method: "POST" });
      });
      td.appendChild(button);
      tr.appendChild(td);
      rows.appendChild(tr);
    }
    $("pacs-results").hidden = false;
    $("pacs-status").textContent = result.series.length + " series in the PACS";
  } catch (e) {
    $("pacs-status").textContent = "Failed: " + e.message;
  }
});

// One row per label of the answer: its colour, voxel count and, with a known spacing, mL.
function showLegend(stats) {
  const legend = $("legend");
  legend.innerHTML = "";
  for (const [value, count] of Object.entries(stats.labels || {})) {
    if (+value === 0) continue;
    const tr = document.createElement("tr");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    const colour = COLOURS[+value] || [255, 0, 255];
    swatch.style.background = "rgb(" + colour.join(",") + ")";
    const td = document.createElement("td");
    td.appendChild(swatch);
    tr.appendChild(td);
    cell(tr, "label " + value);
    cell(tr, String(count));
    cell(tr, stats.voxel_ml !== undefined ? (count * stats.voxel_ml).toFixed(2) + " mL" : count + " pixels");
    legend.appendChild(tr);
  }
}

function fillSelect(select, models, withNone) {
  select.innerHTML = "";
  const entries = (withNone ? [{ name: "", label: "(no model)" }] : []).concat(models.map((m) => ({ name: m.name, label: m.name + " (" + m.kind + ")" })));
  for (const entry of entries) {
    const option = document.createElement("option");
    option.value = entry.name;
    option.textContent = entry.label;
    select.appendChild(option);
  }
}

function cell(tr, text, header) {
  const td = document.createElement(header ? "th" : "td");
  if (header) td.scope = "row";
  td.textContent = text;
  tr.appendChild(td);
}

function picture(src, caption) {
  const figure = document.createElement("figure");
  const img = document.createElement("img");
  img.src = src;
  img.alt = caption;
  const text = document.createElement("figcaption");
  text.textContent = caption;
  figure.appendChild(img);
  figure.appendChild(text);
  return figure;
}

// The protected volume's slice: raw, protected (both in the raw image's percentile window) and
// their difference ten times amplified.
let protectView = null;

function drawProtect() {
  if (!protectView) return;
  const [depth, rows, cols] = protectView.shape;
  const z = Math.min(+$("protect-slice").value, depth - 1), area = rows * cols;
  const raw = protectView.raw.subarray(z * area, (z + 1) * area), protectedSlice = protectView.protected.subarray(z * area, (z + 1) * area);
  const diff = new Uint8Array(area);
  for (let i = 0; i < area; i++) diff[i] = Math.min(255, 10 * Math.abs(protectedSlice[i] - raw[i]));
  for (const [id, grey] of [["protect-raw", raw], ["protect-protected", protectedSlice], ["protect-diff", diff]]) {
    const canvas = $(id);
    canvas.width = cols;
    canvas.height = rows;
    const ctx = canvas.getContext("2d"), pixels = ctx.createImageData(cols, rows);
    for (let i = 0; i < area; i++) {
      pixels.data[4 * i] = pixels.data[4 * i + 1] = pixels.data[4 * i + 2] = grey[i];
      pixels.data[4 * i + 3] = 255;
    }
    ctx.putImageData(pixels, 0, 0);
  }
  $("protect-slice-label").textContent = (z + 1) + " / " + depth;
}

$("protect-slice").addEventListener("input", drawProtect);

$("protect-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const files = Array.from($("protect-files").files);
  const form = new FormData();
  for (const file of files) form.append("file", file);
  $("protect-status").textContent = "Protecting…";
  $("protect-result").hidden = true;
  try {
    const params = new URLSearchParams({ attacker: $("protect-attacker").value, eps: $("protect-eps").value, steps: $("protect-steps").value });
    if ($("protect-utility").value) params.set("utility", $("protect-utility").value);
    const result = await (await api("/v1/protect?" + params, { method: "POST", body: form })).json();
    const rows = $("protect-metrics");
    rows.innerHTML = "";
    for (const [key, value] of Object.entries(result.metrics)) {
      if (value === null || value === "") continue;
      const tr = document.createElement("tr");
      cell(tr, key, true);
      cell(tr, typeof value === "number" ? +value.toPrecision(4) + "" : typeof value === "string" ? value : JSON.stringify(value));
      rows.appendChild(tr);
    }
    const said = $("protect-said");
    said.innerHTML = "";
    for (const a of result.attackers_say || []) {
      const tr = document.createElement("tr");
      cell(tr, a.attacker, true);
      for (const top of [a.raw, a.protected]) cell(tr, top.length ? top[0].identity + " (" + top[0].probability.toFixed(3) + ")" : "");
      said.appendChild(tr);
    }
    const pictures = $("protect-pictures"), downloads = $("protect-downloads");
    pictures.innerHTML = "";
    downloads.innerHTML = "";
    protectView = null;
    $("protect-volume").hidden = true;
    result.files.forEach((f, i) => {
      const url = URL.createObjectURL(new Blob([decode(f.data)]));
      if (["png", "jpeg", "tiff"].includes(f.format) && files[i]) { // pictures: raw and protected side by side
        pictures.appendChild(picture(URL.createObjectURL(files[i]), "Raw: " + files[i].name));
        pictures.appendChild(picture(url, "Protected: " + f.filename));
      } else if (i === 0 && result.preview) { // a volume: the same slice before and after, and the difference
        const p = result.preview;
        protectView = { shape: p.shape, window: p.window, raw: decode(p.raw), protected: decode(p.protected), file: f }; // file: the answer's protected file (base64)
        $("protect-slice").max = p.shape[0] - 1;
        $("protect-slice").value = Math.floor(p.shape[0] / 2);
        $("protect-volume").hidden = false;
        drawProtect();
      }
      const li = document.createElement("li"), a = document.createElement("a");
      a.href = url;
      a.download = f.filename;
      a.textContent = "Download " + f.filename;
      li.appendChild(a);
      downloads.appendChild(li);
    });
    $("protect-result").hidden = false;
    $("protect-status").textContent = "Done: " + result.files.length + " file(s) protected";
  } catch (e) {
    $("protect-status").textContent = "Failed: " + e.message;
  }
});

$("cls-model").addEventListener("change", showClsPrivacy);

$("classify-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData();
  const option = $("cls-model").selectedOptions[0];
  $("classify-results").hidden = true;
  $("cls-ciphers").innerHTML = "";
  try {
    if (option && option.dataset.encryption === "block" && MedtoolsCipher.available()) {
      // encrypted here: the key is checked against the model's fingerprint before anything is sent
      if (!$("cls-key").files.length) throw new Error("choose your key file (it stays in this page)");
      const key = MedtoolsCipher.parseKey(new Uint8Array(await $("cls-key").files[0].arrayBuffer()));
      const id = await MedtoolsCipher.keyId(key);
      if (id !== option.dataset.keyId) throw new Error("the key's fingerprint " + id + " is not the model's (" + option.dataset.keyId + "): wrong key; nothing was sent");
      $("classify-status").textContent = "Encrypting in this browser…";
      for (const file of $("classify-files").files) {
        const cipher = await cipherPicture(file, key, +option.dataset.size, +option.dataset.blockSize);
        form.append("file", cipher);
        $("cls-ciphers").appendChild(picture(URL.createObjectURL(cipher), "Sent: " + cipher.name));
      }
    } else {
      for (const file of $("classify-files").files) form.append("file", file);
    }
    $("classify-status").textContent = "Classifying…";
    const params = new URLSearchParams({ model: $("cls-model").value });
    const result = await (await api("/v1/classify?" + params, { method: "POST", body: form })).json();
    const rows = $("classify-rows");
    rows.innerHTML = "";
    for (const r of result.results) {
      const tr = document.createElement("tr");
      const cells = r.error ? [r.file, "error: " + r.error, ""] : [r.file, r.label, r.probability.toFixed(3)];
      for (const text of cells) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      rows.appendChild(tr);
    }
    $("classify-results").hidden = false;
    $("classify-status").textContent = "Done: model " + result.model + " (SHA-256 " + result.model_sha256.slice(0, 12) + "…)";
  } catch (e) {
    $("classify-status").textContent = "Failed: " + e.message;
  }
});

// Similar cases (POST /v1/index/search): rank, case, cosine similarity and each hit's proof.
$("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData();
  form.append("file", $("search-file").files[0]);
  $("search-status").textContent = "Searching the encrypted index…";
  $("search-results").hidden = true;
  try {
    const params = new URLSearchParams({ k: $("search-k").value });
    const result = await (await api("/v1/index/search?" + params, { method: "POST", body: form })).json();
    const rows = $("search-rows");
    rows.innerHTML = "";
    for (const hit of result.hits) {
      const tr = document.createElement("tr");
      const status = hit.verified ? "verified: inclusion proof (" + hit.proof_hashes + " hashes) leads to root " + hit.checked_against.slice(0, 12) + "…" : "NOT verified: " + hit.reason;
      for (const text of [String(hit.rank), hit.id, hit.score.toFixed(4), status]) cell(tr, text);
      tr.className = hit.verified ? "verified" : "unverified";
      rows.appendChild(tr);
    }
    $("search-caption").textContent = "Index of " + result.entries + " cases, root " + result.root.slice(0, 12) + "…" + (result.trusted_root ? " (" + result.trusted_root + ")" : "") + ", verified before ranking";
    $("search-results").hidden = false;
    $("search-status").textContent = "Done: " + result.hits.length + " hit(s) for " + result.query;
  } catch (e) {
    $("search-status").textContent = "Failed: " + e.message;
  }
});

async function transform(path, input, status) {
  const form = new FormData();
  form.append("file", $(input).files[0]);
  $(status).textContent = "Working…";
  try {
    const response = await api(path, { method: "POST", body: form });
    const name = filenameOf(response, "download");
    saveBlob(await response.blob(), name);
    $(status).textContent = "Saved " + name;
  } catch (e) {
    $(status).textContent = "Failed: " + e.message;
  }
}

$("encrypt-form").addEventListener("submit", (event) => { event.preventDefault(); transform("/v1/encrypt", "encrypt-file", "encrypt-status"); });
$("decrypt-form").addEventListener("submit", (event) => { event.preventDefault(); transform("/v1/decrypt", "decrypt-file", "decrypt-status"); });

api("/v1/me").then(showApp).catch(() => { /* not logged in: the form shows */ });
