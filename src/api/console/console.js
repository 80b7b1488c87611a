// The tenant console: one page over the public API, authenticated with the tenant's token
// (kept in sessionStorage, so it goes with the tab). Text from the API is only ever set as
// textContent, never parsed as HTML.
"use strict";

const TOKEN_KEY = "tenantry.token";
const $ = (id) => document.getElementById(id);
let cursor = null;

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/// Calls the API with the token; resolves to the parsed JSON, or throws an Error carrying the
/// API's message and status.
async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${token()}`, ...(options.headers || {}) };
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options = { ...options, body: JSON.stringify(options.json) };
  }
  const response = await fetch(path, { ...options, headers });
  if (response.status === 204) return null;
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const message = body && body.error ? body.error.message : response.statusText;
    const error = new Error(`${response.status}: ${message}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

/// The tenant a JWT names (its `tenant_id` claim), for display only: the server verifies it.
function tenantOf(jwt) {
  try {
    const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part));
    return claims.tenant_id || "?";
  } catch {
    return "?";
  }
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---- sign-in ----

async function signIn(jwt) {
  sessionStorage.setItem(TOKEN_KEY, jwt);
  try {
    await api("/v1/usage");
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("signin-error").textContent = `Token refused (${e.message})`;
    return;
  }
  $("signin-error").textContent = "";
  showApp();
}

function showApp() {
  $("signin").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  $("who").textContent = `tenant ${tenantOf(token())}`;
  refreshUsage();
  refreshDocuments(true);
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
}

/// Offers `/dev/token` when the server has it (`serve --dev`).
async function detectDev() {
  const config = await fetch("/console/config.json")
    .then((r) => r.json())
    .catch(() => ({}));
  $("dev-form").hidden = config.dev !== true;
}

async function devToken(event) {
  event.preventDefault();
  const query = new URLSearchParams({ tenant_id: $("dev-tenant").value.trim(), sub: $("dev-sub").value.trim() });
  const response = await fetch(`/dev/token?${query}`);
  const body = await response.json().catch(() => null);
  if (!response.ok || !body || !body.token) {
    const message = body && body.error ? body.error.message : response.statusText;
    $("signin-error").textContent = `No token: ${message}`;
    return;
  }
  await signIn(body.token);
}

// ---- usage ----

function showNumber(n) {
  return n === null || n === undefined ? "no limit" : Number(n).toLocaleString("en");
}

async function refreshUsage() {
  let u;
  try {
    u = await api("/v1/usage");
  } catch (e) {
    if (e.status === 401) return signOut();
    const row = el("tr");
    row.append(el("td", "error", e.message));
    $("usage").tBodies[0].replaceChildren(row);
    return;
  }
  const rows = [
    ["Tokens today", u.tokens_today, u.limits.daily_tokens],
    ["Requests this minute", u.requests_this_minute, u.limits.requests_per_minute],
    ["Tokens this minute", u.tokens_this_minute, u.limits.tokens_per_minute],
    ["Requests in flight", u.in_flight, u.limits.concurrent_requests],
    ["Documents", u.storage.documents, u.storage.max_documents],
    ["Stored bytes", u.storage.bytes, u.storage.max_stored_bytes],
  ];
  const body = $("usage").tBodies[0];
  body.replaceChildren(
    ...rows.map(([name, used, max]) => {
      const tr = el("tr");
      tr.dataset.usage = name;
      tr.append(el("td", "", name), el("td", "", `${showNumber(used)} / ${showNumber(max)}`));
      return tr;
    }),
  );
}

// ---- documents ----

async function refreshDocuments(reset) {
  if (reset) {
    cursor = null;
    $("docs").replaceChildren();
  }
  const query = new URLSearchParams({ limit: "50" });
  if (cursor) query.set("cursor", cursor);
  let page;
  try {
    page = await api(`/v1/documents?${query}`);
  } catch (e) {
    $("docs-error").textContent = e.message;
    return;
  }
  for (const d of page.documents) {
    const li = el("li");
    li.dataset.id = d.id;
    const when = new Date(d.created_at * 1000).toLocaleString("en");
    li.append(el("span", "", d.title || d.id), el("span", "", `${d.chunks} chunk${d.chunks === 1 ? "" : "s"} · ${when}`));
    $("docs").append(li);
  }
  cursor = page.next_cursor;
  $("docs-more").hidden = !cursor;
  if (reset && page.documents.length === 0) $("docs").append(el("li", "muted", "No documents yet."));
}

/// Content-derived document id, as `tenantry ingest` makes it (a UUIDv5 of the SHA-256 of the
/// file), so uploading the same file again replaces it; none where WebCrypto is unavailable
/// (plain HTTP to a remote host), and the server picks one.
async function contentId(bytes) {
  if (!window.crypto || !crypto.subtle) return undefined;
  const namespace = "6d1c1f7e3b8a4c2e9a517f0e2d4b8c13".match(/../g).map((h) => parseInt(h, 16));
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  const hash = new Uint8Array(await crypto.subtle.digest("SHA-1", new Uint8Array([...namespace, ...digest])));
  hash[6] = (hash[6] & 0x0f) | 0x50;
  hash[8] = (hash[8] & 0x3f) | 0x80;
  const hex = [...hash.slice(0, 16)].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

async function upload(files) {
  const accepted = [...files].filter((f) => /\.(txt|md|markdown)$/i.test(f.name));
  const refused = files.length - accepted.length;
  $("docs-error").textContent = refused ? `${refused} file(s) skipped: only .txt and .md are accepted` : "";
  if (!accepted.length) return;
  const progress = $("upload-progress");
  progress.max = accepted.length;
  progress.value = 0;
  $("upload").hidden = false;
  const failures = [];
  for (const [i, file] of accepted.entries()) {
    $("upload-status").textContent = `Uploading ${i + 1}/${accepted.length}: ${file.name}`;
    try {
      const bytes = await file.arrayBuffer();
      const text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
      const kind = /\.txt$/i.test(file.name) ? "text" : "markdown";
      await api("/v1/documents", {
        method: "POST",
        json: { id: await contentId(bytes), title: file.name, text, metadata: { source: file.name, kind } },
      });
    } catch (e) {
      failures.push(`${file.name}: ${e instanceof TypeError ? "not UTF-8 text" : e.message}`);
    }
    progress.value = i + 1;
  }
  $("upload-status").textContent = `Uploaded ${accepted.length - failures.length}/${accepted.length}`;
  if (failures.length) $("docs-error").textContent = failures.join("; ");
  await refreshDocuments(true);
  await refreshUsage();
}

// ---- chat ----

/// Reads a server-sent event stream, calling `onData` with each event's data.
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const data = event
        .split(/\r?\n/)
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data) onData(data);
    }
  }
}

function showSources(message, sources) {
  const old = message.querySelector(".sources");
  if (old) old.remove();
  if (!sources.length) return;
  const list = el("ol", "sources");
  for (const s of sources) {
    const item = el("li", "", `${s.title || s.document_id} (chunk ${s.chunk}, score ${s.score.toFixed(2)})`);
    item.title = s.text;
    list.append(item);
  }
  message.append(list);
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  $("question").value = "";
  $("ask").disabled = true;
  $("messages").append(el("div", "msg user", question));
  const message = el("div", "msg assistant");
  const answer = el("span", "answer");
  message.append(answer);
  $("messages").append(message);
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { Authorization: `Bearer ${token()}`, "Content-Type": "application/json" },
      body: JSON.stringify({
        messages: [{ role: "user", content: question }],
        stream: true,
        tenantry: { rag: true },
      }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      throw new Error(`${response.status}: ${body && body.error ? body.error.message : response.statusText}`);
    }
    await readEvents(response, (data) => {
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.tenantry) showSources(message, chunk.tenantry.sources || []);
      for (const choice of chunk.choices || []) {
        if (choice.delta && choice.delta.content) answer.textContent += choice.delta.content;
      }
    });
    message.dataset.done = "true";
  } catch (e) {
    message.classList.add("error");
    answer.textContent = e.message;
  } finally {
    $("ask").disabled = false;
    refreshUsage();
  }
}

// ---- wiring ----

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const jwt = $("token").value.trim();
    if (jwt) signIn(jwt);
  });
  $("dev-form").addEventListener("submit", devToken);
  $("signout").addEventListener("click", signOut);
  $("usage-refresh").addEventListener("click", refreshUsage);
  $("docs-more").addEventListener("click", () => refreshDocuments(false));
  $("file").addEventListener("change", (e) => upload(e.target.files));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    upload(e.dataTransfer.files);
  });
  $("ask-form").addEventListener("submit", ask);
  detectDev();
  if (token()) showApp();
});
