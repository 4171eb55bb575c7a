// The chat page: endpoint picker, settings, conversation, streaming, Stop, and per-answer timings.
//
// One turn = POST the whole conversation (system prompt + completed turns + the new message) as
// OpenAI chat messages to the endpoint's streaming API; the endpoint applies its chat template.
// The answer is decoded frame by frame (eventstream.js), then chunk by chunk (chatstream.js), and
// re-rendered as safe Markdown (markdown.js) after every network read. Stop aborts the fetch: the
// platform sees the disconnect and aborts the generation in the model server.

import { ApiError, invokeStream, listInServiceEndpoints } from "./api.js";
import { ChatStreamParser } from "./chatstream.js";
import { EventStreamDecoder } from "./eventstream.js";
import { renderMarkdown } from "./markdown.js";

const EXAMPLES = [
  "Explain in two sentences what response streaming is good for.",
  "Write a Python function that checks whether a string is a palindrome.",
  "Give me three tips for writing clear error messages, as a list.",
  "Translate “good morning” into French, German and Japanese.",
];
const PARAM_IDS = ["max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "stop", "system"];
const STORAGE_KEY = "streamhost.chat.settings";

const $ = (id) => document.getElementById(id);

const state = {
  history: [], // completed turns: {role, content}
  controller: null, // AbortController of the answer in progress
  eulaAccepted: new Set(), // endpoints whose licence the user accepted in this page
};

// ---------------------------------------------------------------- settings

/** The request fields from the parameter panel; empty fields are left out. */
export function readParameters() {
  const params = {};
  const number = (id) => {
    const raw = $(id).value.trim();
    if (raw === "") return null;
    const value = Number(raw);
    if (!Number.isFinite(value)) throw new ApiError(`${id} must be a number, got "${raw}"`);
    return value;
  };
  const maxNew = number("max_new_tokens");
  if (maxNew !== null) {
    if (!Number.isInteger(maxNew) || maxNew < 1) throw new ApiError("max_new_tokens must be a whole number of at least 1");
    params.max_tokens = maxNew;
  }
  const temperature = number("temperature");
  if (temperature !== null) params.temperature = temperature; // 0 means greedy on the server
  // With TGI's rules a top_p or top_k turns sampling back on even at temperature 0, so a greedy
  // request leaves them out.
  const greedy = temperature === 0;
  const topP = number("top_p");
  if (topP !== null && !greedy) params.top_p = topP; // 1 means off on the server
  const topK = number("top_k");
  if (topK !== null && topK !== 0 && !greedy) {
    if (!Number.isInteger(topK) || topK < 0) throw new ApiError("top_k must be a whole number (0 or empty = off)");
    params.top_k = topK;
  }
  const penalty = number("repetition_penalty");
  if (penalty !== null) params.repetition_penalty = penalty;
  const stops = $("stop").value.split("\n").filter((s) => s !== "");
  if (stops.length) params.stop = stops;
  return params;
}

function saveSettings() {
  const values = Object.fromEntries(PARAM_IDS.map((id) => [id, $(id).value]));
  try {
    localStorage.setItem(STORAGE_KEY, JSON.stringify(values));
  } catch {
    /* storage may be off; settings then last for the page */
  }
}

function loadSettings() {
  try {
    const values = JSON.parse(localStorage.getItem(STORAGE_KEY) || "{}");
    for (const id of PARAM_IDS) if (typeof values[id] === "string") $(id).value = values[id];
  } catch {
    /* ignore unreadable settings */
  }
}

// ---------------------------------------------------------------- endpoints

async function refreshEndpoints() {
  const select = $("endpoint");
  const previous = select.value || new URLSearchParams(location.search).get("endpoint") || "";
  $("endpoint-status").textContent = "";
  let names = [];
  try {
    names = await listInServiceEndpoints();
  } catch (err) {
    $("endpoint-status").textContent = err.message;
  }
  select.replaceChildren();
  if (!names.length) {
    select.appendChild(new Option("No endpoint in service", ""));
    if (!$("endpoint-status").textContent) {
      $("endpoint-status").textContent = "Deploy one (streamhost deploy …, or serve --deploy-default), then Refresh.";
    }
  }
  for (const name of names) select.appendChild(new Option(name, name));
  if (names.includes(previous)) select.value = previous;
  document.body.dataset.endpoints = String(names.length);
}

// ---------------------------------------------------------------- conversation view

function removeWelcome() {
  const welcome = $("welcome");
  if (welcome) welcome.hidden = true;
}

function addMessage(role, text) {
  removeWelcome();
  const box = document.createElement("article");
  box.className = `msg ${role}`;
  const who = document.createElement("div");
  who.className = "role";
  who.textContent = role === "user" ? "You" : "Assistant";
  const content = document.createElement("div");
  content.className = "content";
  if (role === "user") content.textContent = text;
  box.append(who, content);
  if (role === "assistant") {
    const notice = document.createElement("div");
    notice.className = "notice";
    const stats = document.createElement("div");
    stats.className = "stats";
    box.append(notice, stats);
  }
  $("messages").appendChild(box);
  scrollDown();
  return box;
}

function scrollDown() {
  const messages = $("messages");
  messages.scrollTop = messages.scrollHeight;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop-btn").disabled = !busy;
  $("endpoint").disabled = busy;
  document.body.classList.toggle("busy", busy);
}

function showNotice(box, kind, text) {
  const notice = box.querySelector(".notice");
  const line = document.createElement("div");
  line.className = kind;
  line.textContent = text;
  notice.appendChild(line);
  return line;
}

function formatStats(s) {
  const parts = [];
  if (s.ttft !== null) parts.push(`TTFT ${Math.round(s.ttft)} ms`);
  if (s.tps !== null) parts.push(`${s.tps.toFixed(1)} tok/s`);
  parts.push(`${s.tokens} token${s.tokens === 1 ? "" : "s"}`);
  if (s.finish === "length") parts.push("stopped at max_new_tokens");
  return parts.join(" · ");
}

function showStats(box, s) {
  const el = box.querySelector(".stats");
  el.textContent = formatStats(s);
  el.dataset.ttftMs = s.ttft === null ? "" : String(Math.round(s.ttft));
  el.dataset.tokens = String(s.tokens);
  el.dataset.tokensPerSecond = s.tps === null ? "" : s.tps.toFixed(2);
}

// ---------------------------------------------------------------- one turn

/** Stream one answer to `userText` into `box`; returns {text, outcome} (ok | stopped | error | eula). */
async function streamAnswer(endpoint, userText, box) {
  const content = box.querySelector(".content");
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.history, { role: "user", content: userText });
  const stats = { ttft: null, tps: null, tokens: 0, usageTokens: null, finish: null };
  let text = "";
  let firstAt = null;
  let lastAt = null;
  const controller = new AbortController();
  state.controller = controller;
  const started = performance.now();
  const render = () => {
    content.replaceChildren(renderMarkdown(text));
    if (firstAt !== null) {
      stats.ttft = firstAt - started;
      const n = stats.usageTokens ?? stats.tokens;
      stats.tps = n > 1 && lastAt > firstAt ? ((n - 1) * 1000) / (lastAt - firstAt) : null;
      stats.tokens = n;
      showStats(box, stats);
    }
    scrollDown();
  };
  box.classList.add("streaming");
  try {
    const payload = { messages, stream: true, stream_options: { include_usage: true }, ...readParameters() };
    const response = await invokeStream(endpoint, payload, {
      signal: controller.signal,
      acceptEula: state.eulaAccepted.has(endpoint),
    });
    const reader = response.body.getReader();
    const frames = new EventStreamDecoder();
    const chunks = new ChatStreamParser();
    const handle = (events) => {
      for (const ev of events) {
        if (ev.type === "content" || ev.type === "token") {
          const now = performance.now();
          if (firstAt === null) firstAt = now;
          lastAt = now;
          stats.tokens += 1;
          if (ev.type === "content") text += ev.text;
        } else if (ev.type === "finish") stats.finish = ev.reason;
        else if (ev.type === "usage" && ev.usage && Number.isInteger(ev.usage.completion_tokens)) {
          stats.usageTokens = ev.usage.completion_tokens;
        } else if (ev.type === "error") throw new ApiError(`The model server reported an error: ${ev.message}`);
      }
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      for (const message of frames.push(value)) {
        const kind = message.headers[":message-type"];
        if (kind === "exception" || kind === "error") throw streamException(message);
        if (message.headers[":event-type"] === "PayloadPart") handle(chunks.push(message.payload));
      }
      render();
    }
    frames.end();
    handle(chunks.end());
    render();
    return { text, outcome: "ok" };
  } catch (err) {
    render();
    if (err && err.name === "AbortError") {
      showNotice(box, "stopped", "Stopped: generation was cancelled.");
      return { text, outcome: "stopped" };
    }
    if (err instanceof ApiError && err.eula) return { text, outcome: "eula", error: err };
    showNotice(box, "error", err instanceof ApiError ? err.message : `Error: ${err && err.message ? err.message : err}`);
    return { text, outcome: "error" };
  } finally {
    box.classList.remove("streaming");
    state.controller = null;
  }
}

function streamException(message) {
  const type = message.headers[":exception-type"] || message.headers[":error-code"] || "StreamError";
  let detail = message.headers[":error-message"] || "";
  try {
    const body = JSON.parse(new TextDecoder().decode(message.payload));
    detail = body.Message || body.message || detail;
    if (body.ErrorCode) detail += ` (${body.ErrorCode})`;
  } catch {
    detail = detail || new TextDecoder().decode(message.payload);
  }
  return new ApiError(`${type}: ${detail}`, { code: type });
}

async function runTurn(userText, userBox, box) {
  const endpoint = $("endpoint").value;
  setBusy(true);
  try {
    const result = await streamAnswer(endpoint, userText, box);
    if (result.outcome === "eula") {
      askForEula(endpoint, userText, userBox, box, result.error);
      return;
    }
    if (result.outcome === "ok" || (result.outcome === "stopped" && result.text)) {
      state.history.push({ role: "user", content: userText }, { role: "assistant", content: result.text });
    } else {
      // Nothing usable came back: the turn stays on screen but is not part of the conversation.
      userBox.classList.add("failed");
      box.classList.add("failed");
      if (!$("prompt").value) $("prompt").value = userText;
    }
  } finally {
    setBusy(false);
  }
}

function askForEula(endpoint, userText, userBox, box, error) {
  const prompt = showNotice(box, "eula", "");
  const text = document.createElement("p");
  text.textContent = `This endpoint's model is gated by a licence (EULA). ${error.message}`;
  const accept = document.createElement("button");
  accept.type = "button";
  accept.className = "primary accept-eula";
  accept.textContent = "I accept the licence — retry";
  const decline = document.createElement("button");
  decline.type = "button";
  decline.textContent = "Cancel";
  prompt.append(text, accept, decline);
  accept.addEventListener("click", async () => {
    state.eulaAccepted.add(endpoint);
    box.querySelector(".notice").replaceChildren();
    await runTurn(userText, userBox, box);
  });
  decline.addEventListener("click", () => {
    prompt.remove();
    showNotice(box, "error", "Not sent: the licence was not accepted.");
    userBox.classList.add("failed");
    box.classList.add("failed");
    if (!$("prompt").value) $("prompt").value = userText;
  });
}

async function send(text) {
  const userText = text.trim();
  if (!userText || state.controller) return;
  if (!$("endpoint").value) {
    $("endpoint-status").textContent = "Choose an endpoint in service first.";
    return;
  }
  $("prompt").value = "";
  const userBox = addMessage("user", userText);
  const box = addMessage("assistant", "");
  await runTurn(userText, userBox, box);
}

function clearConversation() {
  if (state.controller) state.controller.abort();
  state.history = [];
  for (const node of [...$("messages").querySelectorAll(".msg")]) node.remove();
  $("welcome").hidden = false;
  $("prompt").focus();
}

// ---------------------------------------------------------------- wiring

function init() {
  loadSettings();
  for (const example of EXAMPLES) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "example";
    button.textContent = example;
    button.addEventListener("click", () => send(example));
    $("examples").appendChild(button);
  }
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send($("prompt").value);
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send($("prompt").value);
    }
  });
  $("stop-btn").addEventListener("click", () => state.controller && state.controller.abort());
  $("clear").addEventListener("click", clearConversation);
  $("refresh").addEventListener("click", refreshEndpoints);
  for (const id of PARAM_IDS) $(id).addEventListener("change", saveSettings);
  refreshEndpoints().finally(() => {
    document.body.dataset.ready = "true";
  });
}

init();
