"""The chat page (``/chat``) in a real headless Chromium, driven by Playwright, against a real platform.

One platform process, SigV4 off (the page sends unsigned requests, as it does on a loopback bind),
with three endpoints:
- ``tiny``: the tiny random Llama behind the real model server (streaming, Stop, two turns, errors);
- ``standin``: a stand-in container at an ``http://`` URL, started here, whose chat chunks the test
  chooses (untrusted HTML inside Markdown, UTF-8 split across frames, a stream cut off mid-answer);
- ``gated``: the same stand-in registered as a model whose EULA must be accepted.

The browser is Debian's Chromium at /usr/bin/chromium (installed by the ``chromium`` fixture when
missing); Playwright never downloads one. Screenshots go to tests/artifacts/; set
``STREAMHOST_DOCS_SCREENSHOT=1`` to also rewrite docs/chat.png.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import struct
import subprocess
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from _platform_fixtures import REAL_COMMAND, REPO, PlatformProcess, deploy, unique
from playwright.sync_api import Browser, Page, expect, sync_playwright
from prometheus_client.parser import text_string_to_metric_families

from streamhost.protocols.eventstream import decode_all, encode_message, model_stream_error, payload_part

pytestmark = pytest.mark.timeout(180)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = REPO / "tests" / "artifacts"
TGI_IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:2.4.0-tgi2.4.0-gpu-py311-cu124-ubuntu22.04"
GATED_MODEL_ID = "meta-llama/Llama-2-7b-chat-hf"  # eula_required in the catalog


# --------------------------------------------------------------------------- the stand-in container

XSS_ANSWER = """## Rendering check 🚀

Here is **bold**, *italic* and `inline <code>`.

<img src=x onerror="window.__xss=1">
<script>window.__xss = 2</script>

- first item with <b>tag</b>
- second item [bad link](javascript:window.__xss=3) and [safe link](https://example.org/)

1. one
2. two

```html
<script>window.__xss = 4</script>
```
Ünïcödé ✓ 日本語 — done."""

DOCS_ANSWER = """Stream it with the **response-streaming** API and print each token as it arrives:

```python
import boto3
from streamhost.client import TokenIterator

rt = boto3.client("sagemaker-runtime", endpoint_url="http://127.0.0.1:8080")
response = rt.invoke_endpoint_with_response_stream(
    EndpointName="smollm2", ContentType="application/json",
    Body=b'{"inputs": "Hello", "parameters": {"max_new_tokens": 64}, "stream": true}',
)
for token in TokenIterator(response["Body"]):
    print(token, end="", flush=True)
```

Things to know:
- Each `PayloadPart` carries bytes as the model server sent them, so a line can be split.
- Closing the stream early *cancels* the generation on the server."""


SHORT_ANSWER = (
    "Streaming shows the answer **as it is written**, so the first words appear after the time to the "
    "first token instead of after the whole generation. It also lets you *stop* a long answer early, "
    "which frees the model server for the next request."
)


def sse_bytes(answer: str, tokens: int | None = None) -> bytes:
    """The answer as OpenAI chat chunks, framed as older TGI images wrote them (``data:{...}\\n\\n`` ...
    ``data:[DONE]``, no space; the tiny model's real server writes ``data: ``), UTF-8 unescaped."""
    pieces = re.findall(r"\S+\s*|\s+", answer)
    events = []
    for piece in pieces:
        chunk = {"object": "chat.completion.chunk", "id": "chatcmpl-standin", "created": 0, "model": "stand-in",
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": piece}, "logprobs": None,
                              "finish_reason": None}]}  # fmt: skip
        events.append(chunk)
    events.append({**events[-1], "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                               "logprobs": None, "finish_reason": "stop"}]})  # fmt: skip
    body = "".join("data:" + json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n\n" for e in events)
    return (body + "data:[DONE]\n\n").encode("utf-8")


def split_bytes(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


class StandIn:
    """A container-contract server (``GET /ping``, ``POST /invocations``) in a thread.

    The last user message picks the answer: ``xss`` -> XSS_ANSWER, ``explain`` -> SHORT_ANSWER,
    ``cut`` -> a few chunks and then the connection drops mid-body, anything else -> DOCS_ANSWER. Answers go out in 29-byte
    chunks 25 ms apart, so frames split lines, JSON and multi-byte characters. Every request's
    body and headers are recorded in ``requests``.
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                status = 200 if self.path == "/ping" else 404
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                owner.requests.append({"body": body, "headers": {k.lower(): v for k, v in self.headers.items()}})
                last = body["messages"][-1]["content"].lower()
                answer = XSS_ANSWER if "xss" in last else SHORT_ANSWER if "explain" in last else DOCS_ANSWER
                pieces = split_bytes(sse_bytes(answer), 29)
                cut = "cut" in last
                if cut:
                    pieces = pieces[:40]
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for piece in pieces:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        self.wfile.flush()
                        time.sleep(0.025)
                    if cut:
                        self.close_connection = True
                        return
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except OSError:
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_stand_in_splits_multibyte_characters():
    """The XSS answer's 29-byte chunks really cut UTF-8 characters in half (else that check is void)."""
    pieces = split_bytes(sse_bytes(XSS_ANSWER), 29)
    broken = 0
    for piece in pieces:
        try:
            piece.decode("utf-8")
        except UnicodeDecodeError:
            broken += 1
    assert broken >= 2


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium; installed with apt-get when missing (tests run as root, CI too)."""
    if not CHROMIUM.exists():
        if shutil.which("apt-get") is None:
            pytest.fail(f"{CHROMIUM} is missing and apt-get is not available to install Debian's chromium")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium", "chromium-driver"]):
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                pytest.fail(f"{' '.join(argv)} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium: Path):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    proc = PlatformProcess(
        tmp_path_factory.mktemp("platform-chat"), container_command=REAL_COMMAND, extra_args=["--no-auth"]
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def stand_in():
    server = StandIn()
    yield server
    server.close()


@pytest.fixture(scope="module")
def endpoints(platform, stand_in, tiny_llama_dir) -> dict[str, str]:
    sm = platform.sagemaker()
    names = {"tiny": unique("tiny"), "standin": unique("standin"), "gated": unique("gated")}
    env = {"HF_MODEL_ID": str(tiny_llama_dir), "MAX_TOTAL_TOKENS": "2048", "MAX_INPUT_TOKENS": "512"}
    deploy(sm, names["tiny"], image=TGI_IMAGE, env=env, wait=False, startup_timeout=120)
    deploy(sm, names["standin"], image=stand_in.url)
    deploy(sm, names["gated"], image=stand_in.url, env={"HF_MODEL_ID": GATED_MODEL_ID})
    sm.get_waiter("endpoint_in_service").wait(EndpointName=names["tiny"], WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    return names


# --------------------------------------------------------------------------- page helpers


# Waits use locators, not wait_for_function: the page's CSP forbids eval, which that polls with.
expect.set_options(timeout=30_000)


def open_chat(page: Page, platform: PlatformProcess, endpoint: str) -> None:
    page.goto(f"{platform.url}/chat")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    page.select_option("#endpoint", endpoint)


def set_params(page: Page, **values: Any) -> None:
    for name, value in values.items():
        page.fill(f"#{name}", str(value))


def send(page: Page, text: str) -> None:
    page.fill("#prompt", text)
    page.click("#send")


def wait_idle(page: Page, answers: int) -> None:
    """Wait until the page shows ``answers`` answers and none is streaming."""
    expect(page.locator(".msg.assistant")).to_have_count(answers)
    expect(page.locator("body")).not_to_have_class(re.compile(r"\bbusy\b"))


def watch_growth(page: Page) -> None:
    """Record every distinct length of the newest answer's text as the DOM changes."""
    page.evaluate("""() => {
        window.__growth = [];
        new MutationObserver(() => {
            const all = document.querySelectorAll('.msg.assistant .content');
            const n = all.length ? all[all.length - 1].textContent.length : 0;
            if (n && window.__growth[window.__growth.length - 1] !== n) window.__growth.push(n);
        }).observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true});
    }""")


def last_answer(page: Page):
    return page.locator(".msg.assistant").last


def chat_requests(page: Page) -> list[dict[str, Any]]:
    """Record the page's streaming invocations: request body and headers, and the response once it ends."""
    seen: list[dict[str, Any]] = []

    def on_request(request) -> None:
        if request.url.endswith("/invocations-response-stream"):
            seen.append({"body": json.loads(request.post_data or "{}"), "headers": request.headers, "request": request})

    page.on("request", on_request)
    return seen


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=False)
    return path


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def wait_metric(url: str, name: str, above: float, timeout: float = 15.0, **labels: str) -> float:
    deadline = time.monotonic() + timeout
    value = 0.0
    while time.monotonic() < deadline:
        value = metric(httpx.get(f"{url}/metrics", timeout=5).text, name, **labels)
        if value > above:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{name}{labels} at {url} stayed at {value} (expected more than {above})")


def streamed_pieces(response) -> list[str]:
    """The content deltas inside a finished streaming response the page received (frames -> SSE -> content)."""
    pieces: list[str] = []
    for message in decode_all(response.body()):
        for line in message.payload.decode("utf-8").splitlines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                for choice in json.loads(line[5:]).get("choices", []):
                    if piece := choice.get("delta", {}).get("content"):
                        pieces.append(piece)
    return pieces


def streamed_text(response) -> str:
    """The answer text inside a finished streaming response the page received."""
    return "".join(streamed_pieces(response))


# --------------------------------------------------------------------------- tests


def test_page_and_assets_are_served_safely(platform):
    page = httpx.get(f"{platform.url}/chat", timeout=5)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/chat/chat.js">' in page.text
    script = httpx.get(f"{platform.url}/chat/eventstream.js", timeout=5)
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{platform.url}/chat/", timeout=5).text == page.text
    for path in ("/chat/../../etc/passwd", "/chat/%2e%2e/app.py", "/chat/static/chat.js", "/chat/nope.js"):
        assert httpx.get(f"{platform.url}{path}", timeout=5).status_code == 404, path
    assert httpx.post(f"{platform.url}/chat", timeout=5).status_code == 405


def test_event_stream_decoder_in_the_browser(page, platform):
    """The page's decoder reads the platform's own frames, split at every kind of boundary."""
    page.goto(f"{platform.url}/chat")
    typed = bytearray()
    for name, kind, value in ((b"t", 0, b""), (b"f", 1, b""), (b"i8", 2, struct.pack(">b", -5)),
                              (b"i16", 3, struct.pack(">h", -300)), (b"i32", 4, struct.pack(">i", 70000)),
                              (b"i64", 5, struct.pack(">q", 2**40)), (b"raw", 6, struct.pack(">H", 3) + b"\x00\xff\x10"),
                              (b"ts", 8, struct.pack(">q", 1_700_000_000_000)), (b"id", 9, bytes(range(16)))):  # fmt: skip
        typed += bytes([len(name)]) + name + bytes([kind]) + value
    prelude = struct.pack(">II", 12 + len(typed) + 4 + 4, len(typed))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    all_types = prelude + bytes(typed) + b"body" + struct.pack(">I", zlib.crc32(prelude + bytes(typed) + b"body"))
    stream = payload_part("héllo ✓\n".encode()) + payload_part(b"") + all_types + model_stream_error("boom")
    stream += encode_message({":message-type": "event", ":event-type": "PayloadPart"}, b"x" * 70000)
    rng = random.Random(7)
    splits = [[stream], [stream[i : i + 1] for i in range(200)] + [stream[200:]]]
    for _ in range(5):
        cuts = sorted(rng.sample(range(1, len(stream)), 12))
        splits.append([stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])])
    decode = """async (splits) => {
        const m = await import('/chat/eventstream.js');
        const show = (v) => v instanceof Uint8Array ? Array.from(v).join(',') : v instanceof Date ? v.getTime() : String(v);
        return splits.map((pieces) => {
            const d = new m.EventStreamDecoder();
            const out = [];
            for (const p of pieces) for (const msg of d.push(new Uint8Array(p))) {
                out.push({headers: Object.fromEntries(Object.entries(msg.headers).map(([k, v]) => [k, show(v)])),
                          payload: new TextDecoder().decode(msg.payload)});
            }
            d.end();
            return out;
        });
    }"""
    results = page.evaluate(decode, [[list(p) for p in pieces] for pieces in splits])
    expected_types = {"t": "true", "f": "false", "i8": "-5", "i16": "-300", "i32": "70000", "i64": str(2**40),
                      "raw": "0,255,16", "ts": 1_700_000_000_000, "id": bytes(range(16)).hex()}  # fmt: skip
    for messages in results:
        assert [m["payload"] for m in messages[:3]] == ["héllo ✓\n", "", "body"]
        assert messages[0]["headers"] == {":event-type": "PayloadPart", ":content-type": "application/octet-stream",
                                          ":message-type": "event"}  # fmt: skip
        assert messages[2]["headers"] == expected_types
        assert messages[3]["headers"][":exception-type"] == "ModelStreamError"
        assert json.loads(messages[3]["payload"]) == {"Message": "boom", "ErrorCode": "StreamBroken"}
        assert messages[4]["payload"] == "x" * 70000 and len(messages) == 5
    corrupt = bytearray(payload_part(b"abc"))
    corrupt[-6] ^= 1
    message = page.evaluate("""async (bytes) => {
        const m = await import('/chat/eventstream.js');
        try { new m.EventStreamDecoder().push(new Uint8Array(bytes)); return 'accepted'; } catch (e) { return e.message; }
    }""", list(corrupt))  # fmt: skip
    assert "checksum" in message


def test_chat_stream_parser_reads_data_with_and_without_the_space(page, platform):
    """``data: {..}``/``data: [DONE]`` (TGI 2.1+, vLLM, OpenAI, us) and ``data:{..}``/``data:[DONE]`` (older
    TGI images) give the same events, whatever the split of the bytes."""
    page.goto(f"{platform.url}/chat")
    bare = sse_bytes("Bonjour à tous 🦙 !")
    spaced = bare.replace(b"data:", b"data: ")
    assert bare != spaced and b"data: [DONE]" in spaced
    parse = """async ([streams, size]) => {
        const m = await import('/chat/chatstream.js');
        return streams.map((bytes) => {
            const parser = new m.ChatStreamParser();
            const events = [];
            for (let i = 0; i < bytes.length; i += size) events.push(...parser.push(new Uint8Array(bytes.slice(i, i + size))));
            events.push(...parser.end());
            return events;
        });
    }"""
    for size in (1, 7, 4096):
        with_space, without = page.evaluate(parse, [[list(spaced), list(bare)], size])
        assert with_space == without
        assert "".join(e["text"] for e in with_space if e["type"] == "content") == "Bonjour à tous 🦙 !"
        assert with_space[-1] == {"type": "done"}


MARKDOWN_CASES = [
    ("# Title\ntext", "<h1>Title</h1><p>text</p>"),
    ("a\nb\n\nc", "<p>a<br>b</p><p>c</p>"),
    ("snake_case_name and 2 * 3 * 4", "<p>snake_case_name and 2 * 3 * 4</p>"),
    ("**bold *inner* text** and ~~gone~~", "<p><strong>bold <em>inner</em> text</strong> and <del>gone</del></p>"),
    ("`a <b>` and ``x ` y``", "<p><code>a &lt;b&gt;</code> and <code>x ` y</code></p>"),
    (r"\*not em\* <i>x</i>", "<p>*not em* &lt;i&gt;x&lt;/i&gt;</p>"),
    ("- a\n  - nested\n- b", "<ul><li>a<ul><li>nested</li></ul></li><li>b</li></ul>"),
    ("3. three\n4. four", '<ol start="3"><li>three</li><li>four</li></ol>'),
    ("> quoted **bold**", "<blockquote><p>quoted <strong>bold</strong></p></blockquote>"),
    ("[x](javascript:alert(1)) [y](https://a.b/c)",
     '<p>[x](javascript:alert(1)) <a href="https://a.b/c" target="_blank" rel="noopener noreferrer nofollow">y</a></p>'),
    ("[x](data:text/html,<script>alert(1)</script>)", "<p>[x](data:text/html,&lt;script&gt;alert(1)&lt;/script&gt;)</p>"),
    ("---", "<hr>"),
]  # fmt: skip


def test_markdown_renderer_in_the_browser(page, platform):
    """The renderer's shapes, and that markup in the text only ever becomes text."""
    page.goto(f"{platform.url}/chat")
    rendered = page.evaluate("""async (cases) => {
        const m = await import('/chat/markdown.js');
        return cases.map((text) => { const div = document.createElement('div'); div.appendChild(m.renderMarkdown(text)); return div.innerHTML; });
    }""", [text for text, _ in MARKDOWN_CASES])  # fmt: skip
    assert rendered == [html for _, html in MARKDOWN_CASES]
    code = page.evaluate("""async () => {
        const m = await import('/chat/markdown.js');
        const div = document.createElement('div');
        div.appendChild(m.renderMarkdown('```js\\nlet a = "<b>";\\n  indented\\n'));  // unclosed, as mid-stream
        return [div.querySelector('.code-lang').textContent, div.querySelector('pre code').textContent];
    }""")  # fmt: skip
    assert code == ["js", 'let a = "<b>";\n  indented']


def test_answer_streams_then_second_turn_carries_the_first(page, platform, endpoints):
    tiny = endpoints["tiny"]
    requests = chat_requests(page)
    open_chat(page, platform, tiny)
    page.fill("#system", "You are a terse assistant.")
    # Greedy with a strong repetition penalty: the tiny random model otherwise mostly emits newlines.
    set_params(page, max_new_tokens=48, temperature=0, top_p=0.5, top_k=3, repetition_penalty=2)
    page.fill("#stop", "@@@@\n####")
    watch_growth(page)
    send(page, "Tell me about streams.")
    wait_idle(page, 1)

    growth = page.evaluate("window.__growth")
    answer = last_answer(page)
    final = answer.locator(".content").inner_text()
    assert final.strip(), "the model answered nothing"
    # The endpoint streamed the answer token by token; how many of those frames one network read of the
    # browser carries depends on load, so the page's rendering steps are only required to grow (the
    # stand-in test paces its frames and checks the steps).
    pieces = streamed_pieces(requests[0]["request"].response())
    assert len(pieces) >= 4, f"the answer did not stream token by token: {pieces}"
    assert growth and growth == sorted(growth), f"the answer did not grow: {growth}"
    stats = answer.locator(".stats")
    assert re.fullmatch(r"TTFT \d+ ms · \d+\.\d tok/s · \d+ tokens( · .*)?", stats.inner_text()), stats.inner_text()
    assert 1 < int(stats.get_attribute("data-tokens")) <= 48
    assert float(stats.get_attribute("data-tokens-per-second")) > 0

    first = requests[0]["body"]
    assert first["messages"] == [{"role": "system", "content": "You are a terse assistant."},
                                 {"role": "user", "content": "Tell me about streams."}]  # fmt: skip
    assert first["stream"] is True
    assert {k: first[k] for k in ("max_tokens", "temperature", "repetition_penalty", "stop")} == {
        "max_tokens": 48, "temperature": 0, "repetition_penalty": 2, "stop": ["@@@@", "####"]}  # fmt: skip
    assert "top_p" not in first and "top_k" not in first  # they would turn sampling back on (TGI's rule)

    send(page, "Now say it again, shorter.")
    wait_idle(page, 2)
    second = requests[1]["body"]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[3]["content"] == "Now say it again, shorter."
    # The assistant turn sent back is exactly what the model streamed to the page in turn one.
    assert second[2]["content"] == streamed_text(requests[0]["request"].response())
    assert second[2]["content"].strip()
    assert page.locator(".msg.assistant .notice .error").count() == 0
    screenshot(page, "chat-tiny-two-turns.png")

    page.click("#clear")
    assert page.locator(".msg").count() == 0 and page.locator("#welcome").is_visible()
    send(page, "Fresh start.")
    wait_idle(page, 1)
    assert [m["role"] for m in requests[2]["body"]["messages"]] == ["system", "user"]


def test_stop_cancels_generation_on_the_server(page, platform, endpoints):
    tiny = endpoints["tiny"]
    instance = platform.instances(tiny)["variants"][0]["instances"][0]["url"]
    instance_metrics = httpx.get(f"{instance}/metrics", timeout=5).text
    aborted_before = metric(instance_metrics, "streamhost_engine_aborted_total")
    gone_before = metric(instance_metrics, "streamhost_client_disconnects_total")
    platform_before = metric(httpx.get(f"{platform.url}/metrics", timeout=5).text,
                             "streamhost_endpoint_invocations_total", endpoint=tiny, outcome="client_disconnected")  # fmt: skip

    requests = chat_requests(page)
    open_chat(page, platform, tiny)
    set_params(page, max_new_tokens=1500, temperature=1, top_p=0.99, top_k=200, repetition_penalty="", stop="")
    send(page, "Write a very long story.")
    expect(last_answer(page).locator(".content")).to_have_text(re.compile(r".{40}", re.S))
    page.click("#stop-btn")
    wait_idle(page, 1)
    answer = last_answer(page)
    expect(answer.locator(".notice .stopped")).to_contain_text("Stopped")
    shown = int(answer.locator(".stats").get_attribute("data-tokens"))
    assert 0 < shown < 1500

    # The platform saw the browser go away and the model server aborted the generation.
    wait_metric(platform.url, "streamhost_endpoint_invocations_total", platform_before,
                endpoint=tiny, outcome="client_disconnected")  # fmt: skip
    wait_metric(instance, "streamhost_client_disconnects_total", gone_before)
    wait_metric(instance, "streamhost_engine_aborted_total", aborted_before)
    text = httpx.get(f"{instance}/metrics", timeout=5).text
    assert metric(text, "streamhost_engine_in_flight") == 0
    generated = metric(text, "streamhost_generated_tokens_total")
    time.sleep(0.5)
    assert metric(httpx.get(f"{instance}/metrics", timeout=5).text, "streamhost_generated_tokens_total") == generated

    body = requests[0]["body"]
    assert (body["max_tokens"], body["top_k"], body["top_p"]) == (1500, 200, 0.99) and "repetition_penalty" not in body

    # The stopped answer stays in the conversation, so the next turn still has it.
    set_params(page, max_new_tokens=4)
    send(page, "Go on.")
    wait_idle(page, 2)
    assert [m["role"] for m in requests[1]["body"]["messages"]] == ["user", "assistant", "user"]


def test_model_errors_show_inline(page, platform, endpoints):
    open_chat(page, platform, endpoints["tiny"])
    set_params(page, temperature=-1)
    send(page, "Hello")
    wait_idle(page, 1)
    error = last_answer(page).locator(".notice .error")
    expect(error).to_contain_text("ModelError")
    expect(error).to_contain_text("temperature")
    # The failed turn is left out of the conversation and its text is back in the box for another try.
    assert page.locator(".msg.user.failed").count() == 1
    assert page.input_value("#prompt") == "Hello"


def test_untrusted_model_output_is_rendered_inert(page, platform, endpoints, stand_in):
    page.add_init_script("window.__violations = []; document.addEventListener('securitypolicyviolation', "
                         "e => window.__violations.push(e.violatedDirective));")  # fmt: skip
    open_chat(page, platform, endpoints["standin"])
    watch_growth(page)
    send(page, "Show me the xss check")
    wait_idle(page, 1)
    content = last_answer(page).locator(".content")
    text = content.inner_text()
    # Markup from the model is shown as text; none of it became an element, none of it ran.
    assert '<img src=x onerror="window.__xss=1">' in text
    assert "<script>window.__xss = 2</script>" in text
    assert "<script>window.__xss = 4</script>" in content.locator(".code-block code").inner_text()
    assert page.locator("#messages img, #messages script, #messages iframe").count() == 0
    assert page.locator("script").count() == 1  # the page's own module
    assert page.evaluate("window.__xss") is None
    assert page.evaluate("window.__violations") == []
    # The Markdown itself rendered, and UTF-8 split across frames came out whole.
    assert content.locator("h2").inner_text() == "Rendering check 🚀"
    assert content.locator("strong").first.inner_text() == "bold"
    assert content.locator("em").first.inner_text() == "italic"
    assert content.locator("p code").first.inner_text() == "inline <code>"
    assert content.locator("ul > li").count() == 2 and content.locator("ol > li").count() == 2
    assert content.locator("ul > li").first.inner_text() == "first item with <b>tag</b>"
    links = content.locator("a")
    assert links.count() == 1 and links.get_attribute("href") == "https://example.org/"
    assert links.get_attribute("rel") == "noopener noreferrer nofollow"
    assert "[bad link](javascript:window.__xss=3)" in text
    assert "Ünïcödé ✓ 日本語 — done." in text and "\ufffd" not in text
    assert len(page.evaluate("window.__growth")) >= 5
    screenshot(page, "chat-untrusted-output.png")


def test_stream_cut_off_mid_answer_shows_the_error_inline(page, platform, endpoints):
    open_chat(page, platform, endpoints["standin"])
    send(page, "Please cut this one short")
    wait_idle(page, 1)
    answer = last_answer(page)
    expect(answer.locator(".notice .error")).to_contain_text("ModelStreamError")
    assert answer.locator(".content").inner_text().startswith("Stream it with the")


def test_gated_endpoint_asks_to_accept_the_licence(page, platform, endpoints, stand_in):
    requests = chat_requests(page)
    open_chat(page, platform, endpoints["gated"])
    send(page, "Hello gated model")
    wait_idle(page, 1)
    prompt = last_answer(page).locator(".notice .eula")
    expect(prompt).to_contain_text("licence")
    assert not any(r["body"]["messages"][-1]["content"] == "Hello gated model" for r in stand_in.requests)
    page.click(".accept-eula")
    wait_idle(page, 1)
    expect(last_answer(page).locator(".content")).to_contain_text("Stream it with the")
    assert "x-amzn-sagemaker-custom-attributes" not in requests[0]["headers"]
    assert requests[1]["headers"]["x-amzn-sagemaker-custom-attributes"] == "accept_eula=true"
    reached = [r for r in stand_in.requests if r["body"]["messages"][-1]["content"] == "Hello gated model"]
    assert len(reached) == 1 and reached[0]["headers"]["x-amzn-sagemaker-custom-attributes"] == "accept_eula=true"


def test_screenshot_for_the_readme(page, platform, endpoints, request):
    """A conversation worth showing, saved under tests/artifacts/.

    With STREAMHOST_DOCS_SCREENSHOT=1 it also rewrites docs/chat.png from a real conversation with
    the default model (SmolLM2-135M-Instruct), so the README shows real answers and timings.
    """
    open_chat(page, platform, endpoints["standin"])
    page.fill("#system", "You are a concise assistant for developers.")
    page.click(".example >> nth=0")  # example prompts send at once
    wait_idle(page, 1)
    send(page, "How do I stream an answer from an endpoint with boto3?")
    wait_idle(page, 2)
    path = screenshot(page, "chat.png")
    assert path.stat().st_size > 10_000
    if os.environ.get("STREAMHOST_DOCS_SCREENSHOT") != "1":
        return
    smollm2 = request.getfixturevalue("smollm2_dir")
    name = deploy(platform.sagemaker(), unique("smollm2"), image=TGI_IMAGE, env={"HF_MODEL_ID": str(smollm2)},
                  startup_timeout=180)  # fmt: skip
    page.click("#clear")
    open_chat(page, platform, name)
    page.fill("#system", "You are a concise, friendly assistant.")
    set_params(page, max_new_tokens=160, temperature=0)  # greedy: the same picture on every run
    for turn, question in enumerate(("What is the capital of France? Answer in one sentence.",
                                     "Show me how to read a file in Python."), start=1):  # fmt: skip
        send(page, question)
        wait_idle(page, turn)
    page.screenshot(path=str(REPO / "docs" / "chat.png"))
