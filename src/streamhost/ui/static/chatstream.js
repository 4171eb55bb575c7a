// Turns the container's own stream (the PayloadPart bytes) into chat events.
//
// The bytes are server-sent events, `data: {chat.completion.chunk}\n\n` ... `data: [DONE]\n\n`
// (docs/protocols.md §3; older TGI images wrote `data:` without the space, read alike). PayloadPart
// boundaries fall anywhere, even inside a multi-byte UTF-8
// character, so text is decoded with TextDecoder's stream mode and only complete lines are parsed.
// Also read: TGI token events (`{"token": {...}}`) and bare JSON lines (jsonlines), so an endpoint
// that answers in those shapes still streams.

export class ChatStreamParser {
  constructor() {
    this.decoder = new TextDecoder("utf-8");
    this.pending = "";
    this.done = false;
  }

  /** Feed payload bytes; returns the events completed by them. */
  push(bytes) {
    this.pending += this.decoder.decode(bytes, { stream: true });
    return this._lines(false);
  }

  /** End of stream: flush the decoder and parse a last line that had no newline. */
  end() {
    this.pending += this.decoder.decode();
    return this._lines(true);
  }

  _lines(final) {
    const events = [];
    let newline;
    while ((newline = this.pending.indexOf("\n")) >= 0) {
      const line = this.pending.slice(0, newline);
      this.pending = this.pending.slice(newline + 1);
      this._line(line, events);
    }
    if (final && this.pending) {
      const line = this.pending;
      this.pending = "";
      this._line(line, events);
    }
    return events;
  }

  _line(raw, events) {
    const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    let data;
    if (line.startsWith("data:")) data = line.slice(5).trim();
    else if (line.startsWith("{")) data = line;
    else return; // blank separators, comments (":..."), event:/id: fields
    if (!data) return;
    if (data === "[DONE]") {
      this.done = true;
      events.push({ type: "done" });
      return;
    }
    let obj;
    try {
      obj = JSON.parse(data);
    } catch {
      events.push({ type: "error", message: `The endpoint sent a line that is not JSON: ${data.slice(0, 200)}` });
      return;
    }
    chunkEvents(obj, events);
  }
}

function errorText(error) {
  if (typeof error === "string") return error;
  if (error && typeof error.message === "string") return error.message;
  return JSON.stringify(error);
}

/** The events one parsed JSON object carries (OpenAI chunk, TGI token event, or an error). */
export function chunkEvents(obj, events = []) {
  if (obj === null || typeof obj !== "object") return events;
  if (obj.error !== undefined && obj.error !== null) {
    events.push({ type: "error", message: errorText(obj.error) });
    return events;
  }
  if (Array.isArray(obj.choices)) {
    for (const choice of obj.choices) {
      const delta = choice.delta || {};
      const text = typeof delta.content === "string" ? delta.content : typeof choice.text === "string" ? choice.text : "";
      if (text) events.push({ type: "content", text }); // empty deltas (role only, EOS) are not tokens shown
      if (choice.finish_reason) events.push({ type: "finish", reason: choice.finish_reason });
    }
    if (obj.usage) events.push({ type: "usage", usage: obj.usage });
    return events;
  }
  if (obj.token && typeof obj.token === "object") {
    if (!obj.token.special && obj.token.text) events.push({ type: "content", text: obj.token.text });
    else events.push({ type: "token" });
    const reason = obj.details && obj.details.finish_reason;
    if (reason) events.push({ type: "finish", reason });
  }
  return events;
}
