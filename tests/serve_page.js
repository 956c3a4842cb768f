// Drives medtools/serve/static/app.js in Node with a minimal DOM and canned API answers
// (recorded from the real app by tests/test_serve.py), then prints the viewer's pixels.
//   node tests/serve_page.js app.js answers.json  → JSON {width, height, rgba (base64), ...}
"use strict";
const fs = require("fs");
const vm = require("vm");

const [appPath, answersPath] = process.argv.slice(2);
const answers = JSON.parse(fs.readFileSync(answersPath, "utf8"));
const calls = [];

class Element {
  constructor(id) {
    this.id = id; this.textContent = ""; this.hidden = false; this.value = ""; this.files = [];
    this.dataset = {}; this.children = []; this.listeners = {}; this.max = "0"; this.href = ""; this.download = "";
    this.width = 0; this.height = 0; this.pixels = null; this.style = {}; this.className = "";
  }
  set innerHTML(v) { this.children = []; }
  get selectedOptions() { return this.children.filter((c) => c.value === this.value).concat(this.children).slice(0, 1); }
  appendChild(child) { this.children.push(child); if (!this.value) this.value = child.value; return child; }
  addEventListener(type, fn) { (this.listeners[type] = this.listeners[type] || []).push(fn); }
  async fire(type) { for (const fn of this.listeners[type] || []) await fn({ preventDefault() {} }); }
  click() {} remove() {}
  getContext() {
    const self = this;
    return {
      createImageData: (w, h) => ({ width: w, height: h, data: new Uint8ClampedArray(4 * w * h) }),
      putImageData: (img) => { self.pixels = img; },
    };
  }
}

const elements = {};
const document = {
  getElementById: (id) => (elements[id] = elements[id] || new Element(id)),
  createElement: (tag) => new Element(tag),
  body: { appendChild() {} },
  addEventListener() {},
};

// ?response=binary: the JSON answer as the server's binary body (length, head, raw arrays)
function binary(body) {
  const head = JSON.parse(JSON.stringify(body)), arrays = [];
  let total = 0;
  if (head.preview) {
    const parts = {};
    for (const key of ["image", "labels", "values"]) {
      const bytes = Buffer.from(head.preview[key], "base64");
      total += total % 2;
      parts[key] = [total, bytes.length];
      arrays.push([total, bytes]);
      total += bytes.length;
      delete head.preview[key];
    }
    head.preview.parts = parts;
  }
  let text = Buffer.from(JSON.stringify(head));
  if ((4 + text.length) % 2) text = Buffer.concat([text, Buffer.from(" ")]);
  const out = Buffer.alloc(4 + text.length + total);
  out.writeUInt32LE(text.length, 0);
  text.copy(out, 4);
  for (const [offset, bytes] of arrays) bytes.copy(out, 4 + text.length + offset);
  return out.buffer.slice(out.byteOffset, out.byteOffset + out.length);
}

function reply(status, body) {
  return {
    ok: status < 400, status, statusText: String(status),
    headers: { get: () => null },
    json: async () => body,
    arrayBuffer: async () => binary(body),
    blob: async () => new Blob([JSON.stringify(body)]),
  };
}

let loggedIn = false;
async function fetch(path, options = {}) {
  calls.push({ path, method: options.method || "GET" });
  if (path === "/v1/me") return loggedIn ? reply(200, { user: "alice" }) : reply(401, { detail: "not logged in" });
  if (path === "/v1/login") {
    const body = JSON.parse(options.body);
    loggedIn = body.password === answers.password;
    return loggedIn ? reply(200, { token: "t", token_type: "bearer", user: body.user }) : reply(401, { detail: "login failed" });
  }
  if (path === "/v1/version") return reply(200, answers.version);
  if (path.startsWith("/v1/segment")) return reply(200, answers.segment);
  return reply(404, { detail: "not found" });
}

const context = { document, fetch, FormData, Blob, URLSearchParams, atob, TextDecoder, URL: { createObjectURL: () => "blob:x" }, location: { reload() {} }, console, performance, setInterval: () => 0, clearInterval: () => {} };
vm.createContext(context);
vm.runInContext(fs.readFileSync(appPath, "utf8"), context);

(async () => {
  const $ = document.getElementById;
  await new Promise((r) => setTimeout(r, 10));
  const shownBefore = !$("login-section").hidden;
  $("user").value = "alice"; $("password").value = "wrong";
  await $("login-form").fire("submit");
  const wrongError = $("login-error").textContent;
  $("password").value = answers.password;
  await $("login-form").fire("submit");
  $("segment-files").files = [new Blob(["x"])];
  $("opacity").value = "50";
  await $("segment-form").fire("submit");
  const wheel = (deltaY) => $("viewer").listeners.wheel[0]({ deltaY, preventDefault() {} });
  wheel(1); wheel(1); const afterDown = Number($("slice").value);
  wheel(-1); wheel(-1); const afterUp = Number($("slice").value);
  wheel(1);
  const px = $("viewer").pixels;
  console.log(JSON.stringify({
    login_shown_first: shownBefore, wrong_password_message: wrongError, app_shown: !$("app").hidden,
    who: $("who").textContent, model: $("model").value, status: $("segment-status").textContent,
    volume: $("volume").textContent, slice: Number($("slice").value), wheel: [afterDown, afterUp], slice_max: Number($("slice").max),
    width: px ? px.width : 0, height: px ? px.height : 0, rgba: px ? Buffer.from(px.data).toString("base64") : "",
    calls,
  }));
})();
