// A small Markdown renderer that builds DOM nodes, for untrusted model output.
//
// Safety rule: model text only ever reaches the page through document.createTextNode (or
// textContent); elements are made with createElement from a fixed list, and the only attribute
// taken from the text is a link's href, allowed for http(s) and mailto URLs only. So `<script>`,
// `<img onerror=...>` and friends in an answer are shown as the characters they are.
//
// Supported: ATX headings, paragraphs (single newlines kept as line breaks), bullet and numbered
// lists (nested by indentation), block quotes, horizontal rules, fenced code blocks (``` or ~~~,
// an unclosed fence runs to the end, which is what a half-streamed answer looks like), inline
// code, **bold**, *italic*, ~~strike~~, [links](https://...) and backslash escapes.

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const QUOTE = /^ {0,3}> ?/;
const ITEM = /^( *)([-*+]|\d{1,9}[.)])[ \t]+(.*)$/;
const SAFE_URL = /^(https?:\/\/|mailto:)/i;

function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

function indentOf(line) {
  return line.length - line.replace(/^ +/, "").length;
}

function isBlockStart(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
}

/** Render `text` as Markdown into a new DocumentFragment. */
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  renderBlocks(String(text).replace(/\r\n?/g, "\n").split("\n"), fragment);
  return fragment;
}

function renderBlocks(lines, parent) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i++;
      continue;
    }
    const fence = FENCE.exec(line);
    if (fence) {
      i = renderFence(lines, i, fence, parent);
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      const h = el(`h${heading[1].length}`);
      renderInline(heading[2] || "", h);
      parent.appendChild(h);
      i++;
      continue;
    }
    if (RULE.test(line)) {
      parent.appendChild(el("hr"));
      i++;
      continue;
    }
    if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && QUOTE.test(lines[i])) inner.push(lines[i++].replace(QUOTE, ""));
      const quote = el("blockquote");
      renderBlocks(inner, quote);
      parent.appendChild(quote);
      continue;
    }
    if (ITEM.test(line)) {
      i = renderList(lines, i, parent);
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() && !(para.length && isBlockStart(lines[i]))) para.push(lines[i++].trim());
    const p = el("p");
    para.forEach((text, n) => {
      if (n) p.appendChild(el("br"));
      renderInline(text, p);
    });
    parent.appendChild(p);
  }
}

function renderFence(lines, start, match, parent) {
  const marker = match[1];
  const lang = match[2] || "";
  const body = [];
  let i = start + 1;
  const closing = new RegExp(`^ {0,3}${marker[0] === "`" ? "`" : "~"}{${marker.length},}\\s*$`);
  while (i < lines.length && !closing.test(lines[i])) body.push(lines[i++]);
  const closed = i < lines.length;
  if (!closed && body.length && body[body.length - 1] === "") body.pop(); // mid-stream: no phantom last line
  const block = el("div", "code-block");
  const bar = el("div", "code-bar");
  const label = el("span", "code-lang");
  label.textContent = lang || "code";
  const copy = el("button", "copy");
  copy.type = "button";
  copy.textContent = "Copy";
  const code = el("code");
  code.textContent = body.join("\n");
  copy.addEventListener("click", () => copyText(code.textContent, copy));
  bar.append(label, copy);
  const pre = el("pre");
  if (lang) code.dataset.lang = lang;
  pre.appendChild(code);
  block.append(bar, pre);
  parent.appendChild(block);
  return closed ? i + 1 : i;
}

function copyText(text, button) {
  const done = (label) => {
    button.textContent = label;
    setTimeout(() => (button.textContent = "Copy"), 1200);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(() => done("Copied"), () => done("Copy failed"));
  } else {
    done("Select to copy");
  }
}

function renderList(lines, start, parent) {
  const first = ITEM.exec(lines[start]);
  const baseIndent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const list = el(ordered ? "ol" : "ul");
  if (ordered) {
    const n = parseInt(first[2], 10);
    if (n !== 1) list.start = n;
  }
  let i = start;
  while (i < lines.length) {
    const item = ITEM.exec(lines[i]);
    if (!item || item[1].length !== baseIndent || /\d/.test(item[2]) !== ordered) break;
    const body = [item[3]];
    i++;
    // The item continues over indented lines (nested lists, code) and lazy continuation lines.
    while (i < lines.length) {
      const next = lines[i];
      if (!next.trim()) {
        const after = lines[i + 1];
        if (after !== undefined && after.trim() && indentOf(after) > baseIndent) {
          body.push("");
          i++;
          continue;
        }
        break;
      }
      const nested = ITEM.exec(next);
      if (indentOf(next) > baseIndent) body.push(next.slice(Math.min(indentOf(next), baseIndent + 2)));
      else if (!nested && !isBlockStart(next)) body.push(next.trim());
      else break;
      i++;
    }
    const li = el("li");
    if (body.length === 1 || !body.slice(1).some((l) => isBlockStart(l) || !l.trim())) {
      body.forEach((text, n) => {
        if (n) li.appendChild(el("br"));
        renderInline(text.trim(), li);
      });
    } else {
      // First line inline (a tight item), the rest as blocks (nested lists, code, paragraphs).
      renderInline(body[0], li);
      renderBlocks(body.slice(1), li);
    }
    list.appendChild(li);
    // A blank line between items of the same list keeps the list going.
    if (i < lines.length && !lines[i].trim()) {
      const after = lines[i + 1];
      const again = after !== undefined && ITEM.exec(after);
      if (again && again[1].length === baseIndent && /\d/.test(again[2]) === ordered) i++;
    }
  }
  parent.appendChild(list);
  return i;
}

const PUNCT = /[!-/:-@[-`{-~]/;

/** Inline Markdown of one line into `parent`, text always through text nodes. */
export function renderInline(text, parent) {
  let buffer = "";
  const flush = () => {
    if (buffer) parent.appendChild(document.createTextNode(buffer));
    buffer = "";
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === "\\" && i + 1 < text.length && PUNCT.test(text[i + 1])) {
      buffer += text[i + 1];
      i += 2;
      continue;
    }
    if (c === "`") {
      let run = 1;
      while (text[i + run] === "`") run++;
      const ticks = "`".repeat(run);
      let close = text.indexOf(ticks, i + run);
      while (close >= 0 && text[close + run] === "`") close = text.indexOf(ticks, close + run + 1);
      if (close >= 0) {
        flush();
        const code = el("code");
        let inner = text.slice(i + run, close);
        if (inner.length > 2 && inner.startsWith(" ") && inner.endsWith(" ") && inner.trim()) inner = inner.slice(1, -1);
        code.textContent = inner;
        parent.appendChild(code);
        i = close + run;
        continue;
      }
      buffer += ticks;
      i += run;
      continue;
    }
    const emphasis = matchEmphasis(text, i);
    if (emphasis) {
      flush();
      const node = el(emphasis.tag);
      renderInline(emphasis.inner, node);
      parent.appendChild(node);
      i = emphasis.end;
      continue;
    }
    if (c === "[") {
      const link = matchLink(text, i);
      if (link) {
        flush();
        const a = el("a");
        a.href = link.url;
        a.target = "_blank";
        a.rel = "noopener noreferrer nofollow";
        renderInline(link.label, a);
        parent.appendChild(a);
        i = link.end;
        continue;
      }
    }
    buffer += c;
    i++;
  }
  flush();
}

function matchEmphasis(text, i) {
  for (const [marker, tag] of [["**", "strong"], ["__", "strong"], ["~~", "del"], ["*", "em"], ["_", "em"]]) {
    if (!text.startsWith(marker, i)) continue;
    const open = i + marker.length;
    if (open >= text.length || /\s/.test(text[open])) continue; // "2 * 3" is not emphasis
    if (marker[0] === "_" && i > 0 && /[\p{L}\p{N}]/u.test(text[i - 1])) continue; // snake_case
    let close = text.indexOf(marker, open + 1);
    while (close >= 0) {
      const before = text[close - 1];
      const after = text[close + marker.length];
      const flanking = !/\s/.test(before);
      const single = marker.length > 1 || text[close + 1] !== marker[0]; // "*" must not be part of "**"
      const wordEnd = marker[0] !== "_" || after === undefined || !/[\p{L}\p{N}]/u.test(after);
      if (flanking && single && wordEnd) break;
      close = text.indexOf(marker, close + 1);
    }
    if (close < 0) continue;
    return { tag, inner: text.slice(open, close), end: close + marker.length };
  }
  return null;
}

function matchLink(text, i) {
  const labelEnd = text.indexOf("](", i + 1);
  if (labelEnd < 0) return null;
  const urlEnd = text.indexOf(")", labelEnd + 2);
  if (urlEnd < 0) return null;
  const label = text.slice(i + 1, labelEnd);
  const url = text.slice(labelEnd + 2, urlEnd).trim();
  if (!label || label.includes("[") || /\s/.test(url) || !SAFE_URL.test(url)) return null;
  return { label, url, end: urlEnd + 1 };
}
