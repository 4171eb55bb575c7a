"""The README's five-minute tour, pasted as is: every Python and shell snippet runs against a real
platform serving the default model (SmolLM2-135M-Instruct), and each answer is checked for sense.

The snippets are read from README.md at test time, in order, with only the two ports rewritten
(8080: this test's platform; 8081: a free port for the snippet's own model server). The CLI and
SDK find the platform through ``$STREAMHOST_URL``. A tour snippet without an expectation here fails
the test, so a new README example cannot go untested.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import boto3
import httpx
import pytest
from _platform_fixtures import REPO

from streamhost.launcher import ServerProcess, free_port, streamhost_command

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

README = REPO / "README.md"
BLOCK = re.compile(r"```(python|sh)\n(.*?)```", re.S)
# A unique piece of each tour snippet -> what its output must contain (case-insensitive).
EXPECTED = {
    "invoke_endpoint_with_response_stream": ["Paris"],
    "curl -N": ["cat"],
    "OpenAI(": ["sea"],
    "streamhost deploy": ["smollm2", "Paris", "demo"],
    'Model("smollm2")': ["Paris", "sea"],
    "JumpStartModel(": ["Paris"],
}
CHAT_INPUT = "What is the capital of France? Answer in one word.\n"  # typed into `streamhost chat demo`


def tour_snippets() -> list[tuple[str, str]]:
    text = README.read_text(encoding="utf-8")
    tour = text[text.index("## Five-minute tour") : text.index("\n## ", text.index("## Five-minute tour") + 5)]
    return [(lang, code) for lang, code in BLOCK.findall(tour)]


def expectation(code: str) -> list[str]:
    matches = [words for key, words in EXPECTED.items() if key in code]
    assert len(matches) == 1, f"no single expectation for this README snippet; add one to EXPECTED:\n{code}"
    return matches[0]


def sse_content(output: str) -> str:
    """The chat text inside the curl snippet's server-sent events."""
    text = ""
    for line in output.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[len("data: ") :]).get("choices", []):
                text += choice.get("delta", {}).get("content") or ""
    assert "data: [DONE]" in output, output[-500:]
    return text


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """``streamhost serve --deploy-default`` as ``make run`` starts it (loopback, auth off), on a free port."""
    state = tmp_path_factory.mktemp("readme-platform")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE", "STREAMHOST_STATE_DIR": str(state)}
    argv = streamhost_command("serve", "--deploy-default", "--port", str(port), "--state-dir", str(state))
    server = ServerProcess(argv, port, state / "platform.log", env, cwd=REPO).start(60)
    try:
        sm = boto3.client("sagemaker", endpoint_url=server.url, region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="x")  # fmt: skip
        deadline = time.monotonic() + 600
        status = ""
        while time.monotonic() < deadline and status not in ("InService", "Failed"):
            try:
                status = sm.describe_endpoint(EndpointName="smollm2")["EndpointStatus"]
            except sm.exceptions.ClientError:  # the default endpoint is created once the platform is up
                status = ""
            time.sleep(1)
        assert status == "InService", server.log_tail()
        yield server.url, state
    finally:
        server.stop(60)


def test_every_tour_snippet_answers_sensibly(platform, tmp_path):
    url, state = platform
    container_port = free_port()
    env = {**os.environ, "STREAMHOST_URL": url, "STREAMHOST_STATE_DIR": str(state), "HF_HUB_OFFLINE": "1",
           "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    snippets = tour_snippets()
    assert len(snippets) == len(EXPECTED)
    shells: list[subprocess.Popen] = []
    try:
        for index, (lang, code) in enumerate(snippets):
            code = code.replace("127.0.0.1:8080", url.removeprefix("http://")).replace("8081", str(container_port))
            expected = expectation(code)
            script = tmp_path / f"snippet-{index}.{'py' if lang == 'python' else 'sh'}"
            script.write_text(code)
            argv = [sys.executable, str(script)] if lang == "python" else ["bash", "-e", str(script)]
            stdin = CHAT_INPUT if "streamhost chat" in code else ""
            # Output to files, not pipes: the curl snippet leaves its model server running in the
            # background for the next snippet (holding its copy of the output), and a session of its
            # own, so that the whole group is stopped at the end.
            out_path, err_path = script.with_suffix(".out"), script.with_suffix(".err")
            with open(out_path, "w") as out_file, open(err_path, "w") as err_file:
                proc = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=out_file,
                                        stderr=err_file, text=True, start_new_session=True)  # fmt: skip
                shells.append(proc)
                proc.communicate(stdin, timeout=600)
            out, err = out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
            assert proc.returncode == 0, f"README snippet {index} failed:\n{code}\n--- stderr:\n{err[-3000:]}"
            answer = sse_content(out) if "curl -N" in code else out
            for word in expected:
                assert word.lower() in answer.lower(), (
                    f"README snippet {index} answered:\n{answer}\n(expected {word!r})\n{code}"
                )
            assert len(answer.split()) >= 5, answer
            if stdin:  # `invoke --chat` and `chat` both answered the question
                assert answer.count("Paris") >= 2, answer
    finally:
        for proc in shells:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{container_port}/ping", timeout=1)
            except httpx.HTTPError:
                break
            time.sleep(0.5)


def test_raw_inputs_stay_raw_and_chat_answers(platform):
    """The difference the tour explains: raw text is continued, a question put in the chat format is answered."""
    url, state = platform
    env = {**os.environ, "STREAMHOST_URL": url, "STREAMHOST_STATE_DIR": str(state), "HF_HUB_OFFLINE": "1"}
    cli = [
        sys.executable,
        "-m",
        "streamhost.cli",
        "invoke",
        "smollm2",
        "What is the capital of France? Answer in one word.",
        "--max-new-tokens",
        "24",
    ]
    raw = subprocess.run([*cli, "--json"], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert raw.returncode == 0, raw.stderr
    assert isinstance(json.loads(raw.stdout), list)  # TGI's generate answer: [{"generated_text": ...}]
    chat = subprocess.run([*cli, "--chat", "--json"], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert chat.returncode == 0, chat.stderr
    completion = json.loads(chat.stdout)
    assert completion["object"] == "chat.completion"
    assert "Paris" in completion["choices"][0]["message"]["content"]
    streamed = subprocess.run(
        [*cli, "--chat", "--stream"], env=env, capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert streamed.returncode == 0 and "Paris" in streamed.stdout, streamed.stderr
