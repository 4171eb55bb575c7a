"""The compiled packed step for real: torch.compile (inductor) of the tiny random Llama.

The rest of the suite runs eagerly (tests/conftest.py sets STREAMHOST_COMPILE=0 for servers; the
default is off on CPU anyway), so these tests are the compiled path's coverage: two cold-then-warm
starts in fresh processes sharing one disk cache, greedy decoding compared token by token with
the eager executor, the bucket guard, and the switch. Compiling costs minutes on a busy 2-core
machine, hence one small bucket.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BUCKETS = (4,)  # one graph keeps the cold compile short; every step here is padded up to it

START = """
import json, logging, sys
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
from streamhost.engine.config import EngineConfig
from streamhost.engine.executors import load_executor
config = EngineConfig(dtype="bf16", compile=True, compile_buckets=(4,), cache_dir=Path(sys.argv[2]))
executor = load_executor(sys.argv[1], config)
report = executor.compiled.report
print(json.dumps({"hits": report.cache_hits, "misses": report.cache_misses, "graphs": report.graphs,
                  "source": report.source, "buckets": list(report.buckets)}))
"""


def _start(model: Path, cache: Path) -> tuple[dict, str]:
    """One server-like start in a fresh interpreter: (its compile report, its log)."""
    done = subprocess.run(
        [sys.executable, "-c", START, str(model), str(cache)],
        capture_output=True,
        text=True,
        timeout=1500,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compile-cache")


@pytest.fixture(scope="module")
def cold_start(tiny_llama_dir: Path, compile_cache: Path) -> tuple[dict, str]:
    return _start(tiny_llama_dir, compile_cache)


def test_first_start_compiles_every_bucket_and_says_so(cold_start: tuple[dict, str]) -> None:
    report, log = cold_start
    assert report["buckets"] == list(BUCKETS)
    assert report["graphs"] == len(BUCKETS)
    assert report["misses"] >= len(BUCKETS) and report["hits"] == 0
    assert "compiled the packed step for token buckets [4]" in log
    assert "compiled afresh" in log
    assert "bucket 1/1 (4 tokens) ready" in log  # progress, bucket by bucket


def test_second_start_reuses_the_disk_cache(
    cold_start: tuple[dict, str], tiny_llama_dir: Path, compile_cache: Path
) -> None:
    report, log = _start(tiny_llama_dir, compile_cache)
    assert report["hits"] >= len(BUCKETS) and report["misses"] == 0
    assert "from the disk cache" in log
    assert str(compile_cache / "compile") in log


def _greedy(executor, prompts: list[list[int]], steps: int) -> list[list[int]]:
    """Greedy tokens of several sequences decoded together (steps of len(prompts) tokens)."""
    from streamhost.engine.kv_cache import Segment

    rows = [executor.alloc_row() for _ in prompts]
    lengths = [len(p) for p in prompts]
    segments = [Segment(r, p, 0, "last") for r, p in zip(rows, prompts)]
    out: list[list[int]] = [[] for _ in prompts]
    for _ in range(steps):
        logits = executor.forward(segments)
        segments = []
        for i, row_logits in enumerate(logits):
            token = int(row_logits.argmax())
            out[i].append(token)
            segments.append(Segment(rows[i], [token], lengths[i]))
            lengths[i] += 1
    for r in rows:
        executor.free_row(r)
    return out


def test_compiled_greedy_decoding_equals_eager_within_the_buckets(
    cold_start: tuple[dict, str], tiny_llama_dir: Path, compile_cache: Path, smollm2_tokenizer
) -> None:
    from streamhost.engine.config import EngineConfig
    from streamhost.engine.executors import load_executor

    compiled = load_executor(
        str(tiny_llama_dir), EngineConfig(dtype="bf16", compile=True, compile_buckets=BUCKETS, cache_dir=compile_cache)
    )
    eager = load_executor(str(tiny_llama_dir), EngineConfig(dtype="bf16", compile=False, cache_dir=compile_cache))
    assert compiled.compiled is not None and eager.compiled is None
    texts = ["The capital of France is", "Once upon a time", "def fibonacci(n):"]
    prompts = [smollm2_tokenizer(t)["input_ids"] for t in texts]
    # One sequence (1-token steps padded to 4), three together (3 tokens padded to 4), and steps
    # too big to compile (prompts prefilled, > 4 tokens, run eagerly) all agree with eager decoding.
    for batch in ([prompts[0]], prompts):
        assert _greedy(compiled, batch, 12) == _greedy(eager, batch, 12)
    assert compiled.compiled.recompiles() == 0  # every step found its bucket's graph


def test_the_switch_turns_compiling_off(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from streamhost.engine.config import EngineConfig
    from streamhost.engine.executors import load_executor
    from streamhost.server.config import add_arguments, load_settings

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flag_off = parser.parse_args(["--no-compile"])
    assert load_settings(flag_off, environ={"STREAMHOST_COMPILE": "1"}).engine.compile is False  # flag wins
    assert load_settings(parser.parse_args(["--compile"]), environ={}).engine.compile is True
    assert load_settings(environ={"STREAMHOST_COMPILE": "0"}).engine.compile is False
    assert load_settings(environ={"STREAMHOST_COMPILE": "1"}).engine.compile is True
    assert load_settings(environ={}).engine.compile is None  # the device's default
    executor = load_executor(str(tiny_llama_dir), EngineConfig(dtype="bf16", compile=False, cache_dir=tmp_path))
    assert executor.compiled is None
    assert not (tmp_path / "compile").exists()
