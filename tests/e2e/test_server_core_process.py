"""The engine core in its own process, seen from outside: real server processes, real sockets.

- a core killed with SIGKILL mid-stream: the stream ends with its protocol's error event, /ping
  answers 503 and the server process exits non-zero (so its supervisor restarts it);
- a client that goes away mid-stream: the core frees the sequence's KV row (``streamhost_kv_rows``);
- ``--engine-cores`` / ``STREAMHOST_ENGINE_CORES`` decide the core process's CPUs (the kernel's
  ``Cpus_allowed_list``), and ``--no-engine-process`` keeps the core in the server process.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import pytest
from test_metrics_truth import open_request, read_until, scrape, value, wait_for

LONG = {"max_new_tokens": 2000, "ignore_eos": True}


def core_processes(server_pid: int) -> list[int]:
    """The engine-core processes the server started (its children running streamhost.engine.core_proc)."""
    found = []
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"streamhost.engine.core_proc" in cmdline:
                found.append(int(pid))
    return found


def assert_generates(url: str) -> None:
    answer = httpx.post(url + "/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 3}}, timeout=60)
    assert answer.status_code == 200 and answer.json()["generated_text"]


def allowed_cpus(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no Cpus_allowed_list for {pid}")


def test_core_killed_mid_stream_ends_the_stream_with_an_error_and_the_server_exits(tiny_llama_dir, containers):
    server = containers.start(["--model-id", str(tiny_llama_dir)])
    assert server.proc is not None
    (core,) = core_processes(server.proc.pid)
    body = {"inputs": "Hello", "parameters": LONG, "stream": True}
    events = []
    with httpx.stream("POST", server.url + "/generate_stream", json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                if len(events) == 3:
                    os.kill(core, signal.SIGKILL)
                    break
        wait_for(lambda: httpx.get(server.url + "/ping", timeout=10).status_code == 503, "/ping says 503", 10)
        for line in lines:
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
    assert all("token" in event for event in events[:3])
    last = events[-1]
    assert "error" in last and "engine core process exited" in last["error"], last
    assert last.get("error_type") == "generation"
    assert len(events) < 2000
    assert server.proc.wait(60) == 1, server.log()[-2000:]
    assert "killed by SIGKILL" in server.log()


def test_client_gone_mid_stream_frees_the_kv_row_in_the_core(tiny_llama_dir, containers):
    server = containers.start(["--model-id", str(tiny_llama_dir)])
    before = scrape(server.url)
    assert value(before, "streamhost_kv_rows") == 0
    sock = open_request(server.url, "/generate_stream", json.dumps({"inputs": "Hello", "parameters": LONG}).encode())
    try:
        read_until(sock, b"data: ")
        wait_for(lambda: value(scrape(server.url), "streamhost_kv_rows") == 1, "the stream holds a KV row")
    finally:
        sock.close()
    wait_for(lambda: value(scrape(server.url), "streamhost_kv_rows") == 0, "the core freed the row")
    after = scrape(server.url)
    assert value(after, "streamhost_engine_aborted_total") == value(before, "streamhost_engine_aborted_total") + 1
    assert value(after, "tgi_batch_current_size") == 0
    # and the server still answers
    assert_generates(server.url)


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--engine-cores", "1"], {}, lambda usable: str(usable[-1])),
        ([], {"STREAMHOST_ENGINE_CORES": "0-0"}, lambda usable: "0"),
    ],
    ids=["flag-count", "env-list"],
)
def test_engine_cores_decide_the_core_process_affinity(tiny_llama_dir, containers, args, env, expected):
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2 or 0 not in usable:
        pytest.skip("needs CPUs 0 and another to tell the placements apart")
    server = containers.start(["--model-id", str(tiny_llama_dir), *args], env)
    assert server.proc is not None
    (core,) = core_processes(server.proc.pid)
    assert allowed_cpus(core) == expected(usable)
    assert_generates(server.url)


def process_env(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(pair.decode().split("=", 1) for pair in pairs if b"=" in pair)


@pytest.mark.parametrize(
    ("args", "env", "spin", "policy"),
    [
        ([], {"OMP_WAIT_POLICY": "PASSIVE"}, "10000", "PASSIVE"),
        (["--omp-spin", "0"], {}, "0", "PASSIVE"),
        ([], {"STREAMHOST_OMP_SPIN": "2500"}, "2500", "PASSIVE"),
        ([], {"OMP_WAIT_POLICY": "ACTIVE"}, None, "ACTIVE"),
    ],
    ids=["default-short-spin", "flag-sleep-at-once", "env-count", "operator-active"],
)
def test_omp_spin_reaches_the_core_process(tiny_llama_dir, containers, args, env, spin, policy):
    """The core's OpenMP threads spin briefly at barriers by default (libgomp's GOMP_SPINCOUNT), even
    when the platform hands the server OMP_WAIT_POLICY=PASSIVE; an operator's ACTIVE is left alone."""
    if "GOMP_SPINCOUNT" in os.environ:
        pytest.skip("GOMP_SPINCOUNT set in this environment: it would win over the setting under test")
    server = containers.start(["--model-id", str(tiny_llama_dir), *args], env)
    assert server.proc is not None
    (core,) = core_processes(server.proc.pid)
    core_env = process_env(core)
    assert core_env.get("GOMP_SPINCOUNT") == spin
    assert core_env.get("OMP_WAIT_POLICY") == policy
    assert_generates(server.url)


def test_no_engine_process_keeps_the_core_in_the_server(tiny_llama_dir, containers):
    server = containers.start(["--model-id", str(tiny_llama_dir), "--no-engine-process"])
    assert server.proc is not None
    assert core_processes(server.proc.pid) == []
    assert_generates(server.url)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine-cores", "two"], "--engine-cores 'two' is not valid"),
        (["--omp-spin", "-1"], "--omp-spin -1 is not valid"),
    ],
    ids=["engine-cores", "omp-spin"],
)
def test_bad_core_setting_is_a_usage_error(tiny_llama_dir, containers, args, message):
    server = containers.start(["--model-id", str(tiny_llama_dir), *args], wait=False)
    assert server.proc is not None
    assert server.proc.wait(60) == 2
    assert message in server.log()


def test_sigterm_drains_with_the_core_in_its_own_process(tiny_llama_dir, containers):
    """SIGTERM to the whole process group (as a terminal's Ctrl+C or a group kill): the core waits for the drain."""
    server = containers.start(["--model-id", str(tiny_llama_dir)])
    assert server.proc is not None
    (core,) = core_processes(server.proc.pid)
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 60, "ignore_eos": True}, "stream": True}
    with httpx.stream("POST", server.url + "/generate_stream", json=body, timeout=60) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        os.killpg(server.proc.pid, signal.SIGTERM)
        rest = [line for line in lines if line.startswith("data:")]
    final = json.loads(rest[-1][5:])
    assert json.loads(first[5:])["token"] and len(rest) == 59 and final["generated_text"] is not None, final
    assert server.proc.wait(30) == 0, server.log()[-2000:]
    wait_for(lambda: not _running(core), "the core process has exited", timeout=15)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"
