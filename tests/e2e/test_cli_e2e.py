"""The CLI end to end, as a user runs it: a real platform, real model servers, the command in subprocesses.

One platform serves the whole module; one endpoint (a tiny random Llama with a real tokenizer) goes
through deploy, list, invoke (streamed and not, argument and stdin), chat and delete.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.util import find_spec

import pytest

pytestmark = pytest.mark.skipif(
    find_spec("streamhost.platform.main") is None,
    reason="the platform (src/streamhost/platform/main.py, `streamhost serve`) is not built yet",
)

ENDPOINT = "cli-e2e"


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> Iterator[dict[str, str]]:
    """`streamhost serve` running real model servers, SigV4 auth on (the CLI signs with $AWS_* keys)."""
    from _platform_fixtures import ACCESS_KEY, REAL_COMMAND, SECRET_KEY, PlatformProcess

    state = tmp_path_factory.mktemp("cli-platform")
    proc = PlatformProcess(state, container_command=REAL_COMMAND).start()
    try:
        yield {"url": proc.url, "state_dir": str(state), "access_key": ACCESS_KEY, "secret_key": SECRET_KEY}
    finally:
        proc.stop()


def streamhost(
    platform: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 180
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "STREAMHOST_URL": platform["url"],
        "STREAMHOST_STATE_DIR": platform["state_dir"],
        "AWS_ACCESS_KEY_ID": platform["access_key"],
        "AWS_SECRET_ACCESS_KEY": platform["secret_key"],
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "streamhost.cli", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"rc={result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def test_deploy_invoke_stream_chat_delete(platform, tiny_llama_dir):
    # deploy a local folder; --json reports the endpoint once it is InService
    deployed = json.loads(
        ok(
            streamhost(
                platform,
                "deploy",
                str(tiny_llama_dir),
                "--name",
                ENDPOINT,
                "--env",
                "MAX_TOTAL_TOKENS=512",
                "--timeout",
                "150",
                "--json",
            )
        ).stdout
    )
    assert deployed["EndpointName"] == ENDPOINT and deployed["EndpointStatus"] == "InService"
    model_name = deployed["ModelName"]

    listed = json.loads(ok(streamhost(platform, "endpoints", "list", "--json")).stdout)
    assert [(e["EndpointName"], e["EndpointStatus"]) for e in listed] == [(ENDPOINT, "InService")]
    assert (
        json.loads(ok(streamhost(platform, "endpoints", "describe", ENDPOINT, "--json")).stdout)["EndpointName"]
        == ENDPOINT
    )
    assert model_name in [
        m["ModelName"] for m in json.loads(ok(streamhost(platform, "models", "list", "--json")).stdout)
    ]

    # the instance's log, read from the platform's state directory
    logs = ok(streamhost(platform, "endpoints", "logs", ENDPOINT, "--tail", "0")).stdout
    assert f"starting {ENDPOINT}/" in logs

    # greedy decoding: the streamed tokens add up to the non-streamed answer
    streamed = ok(
        streamhost(platform, "invoke", ENDPOINT, "The capital of France is", "--stream", "--max-new-tokens", "8")
    ).stdout
    whole = json.loads(
        ok(
            streamhost(platform, "invoke", ENDPOINT, "The capital of France is", "--max-new-tokens", "8", "--json")
        ).stdout
    )
    text = whole[0]["generated_text"] if isinstance(whole, list) else whole["generated_text"]
    assert text.strip(), "the model generated nothing"
    assert streamed == text + ("" if text.endswith("\n") else "\n")

    # the prompt from standard input, parameters as JSON
    piped = ok(
        streamhost(platform, "invoke", ENDPOINT, "--params", '{"max_new_tokens": 8}', stdin="The capital of France is")
    )
    assert piped.stdout.rstrip("\n") == text.rstrip("\n")

    # a bad parameter: the model server's validation error, on one line, non-zero exit
    bad = streamhost(platform, "invoke", ENDPOINT, "hi", "--temperature", "0")
    assert bad.returncode == 1 and bad.stderr.startswith("error: ModelError: ") and bad.stderr.count("\n") == 1
    assert "temperature" in bad.stderr

    # chat: two turns through the server's chat template (two answers, each ending a line), then /exit
    chat = ok(streamhost(platform, "chat", ENDPOINT, "--max-new-tokens", "6", stdin="Hello\nAnd again\n/exit\n"))
    assert chat.stdout.count("\n") >= 2 and "error" not in chat.stderr
    # a named template is rendered client-side: the answer is the one a generate request for that prompt gets
    templated = ok(
        streamhost(platform, "chat", ENDPOINT, "--template", "chatml", "--max-new-tokens", "4", stdin="Hi\n")
    )
    rendered = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    direct = json.loads(
        ok(
            streamhost(
                platform, "invoke", ENDPOINT, rendered, "--max-new-tokens", "4", "--stop", "<|im_end|>", "--json"
            )
        ).stdout
    )
    direct_text = direct[0]["generated_text"] if isinstance(direct, list) else direct["generated_text"]
    assert templated.stdout == direct_text + "\n"

    # delete: the endpoint, its config and its model are gone
    ok(streamhost(platform, "endpoints", "delete", ENDPOINT, "--delete-model"))
    assert json.loads(ok(streamhost(platform, "endpoints", "list", "--json")).stdout) == []
    assert model_name not in [
        m["ModelName"] for m in json.loads(ok(streamhost(platform, "models", "list", "--json")).stdout)
    ]

    missing = streamhost(platform, "invoke", ENDPOINT, "hi")
    assert missing.returncode == 1 and missing.stderr.startswith("error: ValidationError: ")
    assert missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr
