// Side by side: one prompt streamed from two endpoints at once (a base model and its fine-tuned
// version, say). With "instruction template" the prompt is rendered the way the trainer renders
// instruction-tuning data (training/data.py, DEFAULT_TEMPLATE without context) and sent as TGI
// `inputs`, greedy, so the tuned model sees the format it learned; otherwise it is one chat turn.
// Model text only ever goes into textContent.

import { ApiError, invokeStream, listInServiceEndpoints } from "./api.js";
import { ChatStreamParser } from "./chatstream.js";
import { EventStreamDecoder } from "./eventstream.js";

const $ = (id) => document.getElementById(id);

export function instructionPrompt(text) {
  return (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n" +
    `### Instruction:\n${text}\n\n### Response:\n`
  );
}

export function comparePayload(text, instruction, maxNewTokens) {
  if (instruction) {
    return { inputs: instructionPrompt(text), parameters: { max_new_tokens: maxNewTokens, do_sample: false }, stream: true };
  }
  return { messages: [{ role: "user", content: text }], stream: true, max_tokens: maxNewTokens, temperature: 0 };
}

async function streamInto(endpoint, payload, side) {
  const answer = $(`${side}-answer`);
  const stats = $(`${side}-stats`);
  $(`${side}-name`).textContent = endpoint;
  answer.textContent = "";
  answer.classList.remove("error");
  stats.textContent = "…";
  const started = performance.now();
  let first = null;
  let tokens = 0;
  try {
    const response = await invokeStream(endpoint, payload);
    const reader = response.body.getReader();
    const frames = new EventStreamDecoder();
    const parser = new ChatStreamParser();
    const handle = (events) => {
      for (const ev of events) {
        if (ev.type === "content") {
          if (first === null) first = performance.now();
          tokens += 1;
          answer.textContent += ev.text;
        } else if (ev.type === "error") throw new ApiError(ev.message);
      }
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      for (const message of frames.push(value)) {
        if (message.headers[":message-type"] !== "event") throw new ApiError("the stream ended with an error");
        if (message.headers[":event-type"] === "PayloadPart") handle(parser.push(message.payload));
      }
    }
    handle(parser.end());
    const ttft = first === null ? "-" : `${Math.round(first - started)} ms`;
    stats.textContent = `${tokens} tokens, first after ${ttft}, ${Math.round(performance.now() - started)} ms in all`;
  } catch (err) {
    answer.classList.add("error");
    answer.textContent += `\n${err && err.message ? err.message : err}`;
    stats.textContent = "failed";
  }
}

async function loadEndpoints() {
  const status = $("compare-status");
  try {
    const names = await listInServiceEndpoints();
    for (const [id, pick] of [["left", 0], ["right", 1]]) {
      const select = $(id);
      select.replaceChildren(...names.map((n) => new Option(n, n)));
      if (names.length > pick) select.value = names[pick];
    }
    status.textContent = names.length ? `${names.length} endpoints in service` : "no endpoint is in service";
  } catch (err) {
    status.textContent = err.message;
  }
}

function init() {
  loadEndpoints();
  $("compare-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = $("compare-prompt").value.trim();
    if (!text || !$("left").value || !$("right").value) return;
    const payload = comparePayload(text, $("instruction").checked, Number($("compare-max").value) || 128);
    $("compare-send").disabled = true;
    try {
      await Promise.all([streamInto($("left").value, payload, "left"), streamInto($("right").value, payload, "right")]);
    } finally {
      $("compare-send").disabled = false;
    }
  });
}

if (typeof document !== "undefined") init();
