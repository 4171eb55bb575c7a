"""Run a seed notebook in a fresh interpreter with a given environment; read back its RESULT line.

Used by tests/e2e/test_sdk_notebooks.py and bench/sdk_notebook.py. ``poll`` rewrites the default
argument of the SDK's ``Session.wait_for_endpoint`` (30 s between DescribeEndpoint calls, and
before the first one), so the SDK's own waiter code runs with a shorter sleep; ``None`` leaves
the SDK untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NOTEBOOKS = Path(__file__).resolve().parent
SDK_DEFAULT_POLL = (30, False)
_MARKS = "x-!<o*?"  # sagemaker.session._deploy_done's status codes  # Session.wait_for_endpoint(poll=DEFAULT_EP_POLL, live_logging=False)


@dataclass
class NotebookRun:
    result: dict[str, Any]
    status_marks: str  # what the SDK's _deploy_done printed: '-' Creating, '!' InService, '*' Failed
    output: str


class NotebookFailed(AssertionError):
    """The notebook exited non-zero or printed no RESULT; the message holds its output's tail."""


def notebook_env(sdk_env: dict[str, str], **extra: str) -> dict[str, str]:
    """This process's environment without AWS/SageMaker settings, then ``sdk_env`` and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_"))}
    env.update(sdk_env)
    env.update(extra)
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def run_notebook(name: str, env: dict[str, str], poll: int | None = None, timeout: float = 480) -> NotebookRun:
    lines = ["import runpy"]
    if poll is not None:
        lines += [
            "import sagemaker.session as s",
            f"assert s.Session.wait_for_endpoint.__defaults__ == {SDK_DEFAULT_POLL!r}, s.Session.wait_for_endpoint.__defaults__",
            f"s.Session.wait_for_endpoint.__defaults__ = ({int(poll)}, False)",
        ]
    lines.append(f"runpy.run_path({str(NOTEBOOKS / (name + '.py'))!r}, run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-u", "-c", "\n".join(lines)], cwd=NOTEBOOKS, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise NotebookFailed(
            f"notebook {name} still running after {timeout:g} s:\n{(stdout + stderr)[-6000:]}"
        ) from None
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise NotebookFailed(f"notebook {name} exited {done.returncode}:\n{output[-6000:]}")
    marker = done.stdout.rfind("\nRESULT ")
    if marker < 0:
        raise NotebookFailed(f"notebook {name} printed no RESULT:\n{output[-4000:]}")
    result = json.loads(done.stdout[marker + len("\nRESULT ") :].splitlines()[0])
    # the waiter prints one mark per DescribeEndpoint on a line of its own (logs end theirs with a newline)
    mark_lines = [line for line in done.stdout[:marker].splitlines() if line and set(line) <= set(_MARKS)]
    return NotebookRun(result, mark_lines[-1] if mark_lines else "", output)
