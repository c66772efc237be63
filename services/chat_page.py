"""The chat page the ingress serves at `/` and `/chat`: one self-contained HTML document (inline CSS and JS, no
network beyond the endpoint's own /v1 routes), so it works on a cluster with no internet access.

The page loads without an API key (it holds no secret); its calls to /v1/models and /v1/chat/completions send the
key typed into it as `Authorization: Bearer`, so the ingress guard applies to them as to any client. Replies stream:
fetch + ReadableStream over the server-sent events of `stream: true`, appended token by token.

Kept as a Python string rather than a package data file: the ingress version hashes services/*.py, so a change to the
page rolls the ingress replicas like any other code change.
"""

from __future__ import annotations

import json

PATHS = ("/", "/chat")

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>llmctl chat</title>
<style>
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, sans-serif; color: #1d2530; background: #f4f6f9;
         display: flex; flex-direction: column; height: 100vh; }
  header { display: flex; gap: 12px; align-items: center; padding: 10px 16px; background: #20324a; color: #fff;
           flex-wrap: wrap; }
  header h1 { font-size: 17px; margin: 0 12px 0 0; }
  header label { display: flex; gap: 6px; align-items: center; font-size: 13px; }
  header select, header input { padding: 4px 6px; border-radius: 4px; border: 1px solid #8fa3bd; min-width: 160px; }
  #error { display: none; margin: 10px 16px 0; padding: 8px 12px; border-radius: 6px; background: #fde8e8;
           border: 1px solid #e0a4a4; color: #8a1f1f; }
  #error.shown { display: block; }
  #log { flex: 1; overflow-y: auto; padding: 16px; display: flex; flex-direction: column; gap: 10px; }
  .msg { max-width: 78%; padding: 8px 12px; border-radius: 10px; white-space: pre-wrap; word-break: break-word; }
  .user { align-self: flex-end; background: #3b6ea8; color: #fff; }
  .assistant { align-self: flex-start; background: #fff; border: 1px solid #d3dae3; min-height: 2.2em; }
  .assistant.streaming::after { content: "\\25CF"; color: #3b6ea8; margin-left: 4px; }
  form { display: flex; gap: 8px; padding: 12px 16px; background: #fff; border-top: 1px solid #d3dae3; }
  textarea { flex: 1; resize: vertical; min-height: 44px; padding: 8px; font: inherit; border-radius: 6px;
             border: 1px solid #b5c1cf; }
  button { padding: 0 18px; font: inherit; border: 0; border-radius: 6px; background: #3b6ea8; color: #fff;
           cursor: pointer; }
  button:disabled { background: #9aaabd; cursor: default; }
  button.secondary { background: #e4e9ef; color: #1d2530; }
</style>
</head>
<body>
<header>
  <h1>llmctl chat</h1>
  <label>Model <select id="model"><option value="">(loading)</option></select></label>
  <label>API key <input id="key" type="password" autocomplete="off" placeholder="if the endpoint has keys">
  </label>
</header>
<div id="error" role="alert"></div>
<main id="log" aria-live="polite"></main>
<form id="ask">
  <textarea id="prompt" placeholder="Ask something (Enter sends, Shift+Enter for a new line)"></textarea>
  <button id="send" type="submit">Send</button>
  <button id="stop" type="button" class="secondary" disabled>Stop</button>
  <button id="clear" type="button" class="secondary">Clear</button>
</form>
<script>
"use strict";
const BASE = __BASE__;  // the application's route prefix, so the page works under any prefix
const $ = (id) => document.getElementById(id);
const turns = [];
let controller = null;

$("key").value = sessionStorage.getItem("llmctl-key") || "";

function headers() {
  const h = {"Content-Type": "application/json"};
  const key = $("key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function showError(text) {
  $("error").textContent = text;
  $("error").classList.toggle("shown", Boolean(text));
}

// The ingress answers errors in the OpenAI shape {"error": {"message": ...}}; say what to do about a 401.
async function describe(resp) {
  let message = resp.statusText;
  try { message = (await resp.json()).error.message; } catch (e) { /* not JSON: keep the status text */ }
  if (resp.status === 401) {
    const fix = $("key").value.trim() ? "Check the API key above." : "Enter the endpoint's API key above.";
    return `Not authorized (401): ${message} ${fix}`;
  }
  return `Request failed (${resp.status}): ${message}`;
}

async function loadModels() {
  const picker = $("model");
  try {
    const resp = await fetch(BASE + "/v1/models", {headers: headers()});
    if (!resp.ok) { showError(await describe(resp)); return; }
    const ids = (await resp.json()).data.map((m) => m.id);
    const chosen = picker.value;
    picker.replaceChildren(...ids.map((id) => new Option(id, id)));
    if (ids.includes(chosen)) picker.value = chosen;
    showError(ids.length ? "" : "The endpoint serves no model yet.");
  } catch (e) {
    showError("Cannot reach the endpoint: " + e.message);
  }
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("log").append(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

// Server-sent events arrive in arbitrary chunks: keep the unfinished tail, hand back each complete "data:" payload.
function sseParser(onData) {
  let buffer = "";
  return (chunk) => {
    buffer += chunk;
    const events = buffer.split(/\\r?\\n\\r?\\n/);
    buffer = events.pop();
    for (const event of events) {
      const data = event.split(/\\r?\\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim());
      if (data.length) onData(data.join("\\n"));
    }
  };
}

async function stream(out) {
  const body = {model: $("model").value, messages: turns, stream: true};
  const resp = await fetch(BASE + "/v1/chat/completions",
                           {method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal});
  if (!resp.ok) throw new Error(await describe(resp));
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  const feed = sseParser((data) => {
    if (data === "[DONE]") return;
    const event = JSON.parse(data);
    if (event.error) throw new Error("The model stopped with an error: " + event.error.message);
    const delta = (event.choices && event.choices[0] && event.choices[0].delta) || {};
    if (delta.content) {
      text += delta.content;
      out.textContent = text;
      $("log").scrollTop = $("log").scrollHeight;
    }
  });
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    feed(value);
  }
  return text;
}

async function send(event) {
  event.preventDefault();
  const question = $("prompt").value.trim();
  if (!question || controller) return;
  if (!$("model").value) {
    showError("Pick a model first (the list needs a valid API key if the endpoint has keys).");
    return;
  }
  showError("");
  turns.push({role: "user", content: question});
  bubble("user", question);
  $("prompt").value = "";
  const out = bubble("assistant", "");
  out.classList.add("streaming");
  controller = new AbortController();
  $("send").disabled = true; $("stop").disabled = false;
  try {
    turns.push({role: "assistant", content: await stream(out)});
  } catch (e) {
    if (e.name === "AbortError" && out.textContent) {
      turns.push({role: "assistant", content: out.textContent});  // stopped: the partial answer stays in the chat
    } else {
      turns.pop();  // no answer: leave the question out of the next request
      if (e.name !== "AbortError") showError(e.message);
      if (!out.textContent) out.remove();
    }
  } finally {
    out.classList.remove("streaming");
    controller = null;
    $("send").disabled = false; $("stop").disabled = true;
  }
}

$("ask").addEventListener("submit", send);
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("ask").requestSubmit(); }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("clear").addEventListener("click", () => { turns.length = 0; $("log").replaceChildren(); });
$("key").addEventListener("change", () => {
  sessionStorage.setItem("llmctl-key", $("key").value.trim());
  loadModels();
});
loadModels();
</script>
</body>
</html>
"""


def render(root_path: str = "") -> str:
    """The page for an application mounted at root_path ("" or a Serve route prefix such as "/tiny")."""
    return _PAGE.replace("__BASE__", json.dumps(root_path.rstrip("/")).replace("<", "\\u003c"))
