"""The lean forward's compiled decoder layer (engine/lean_compiled.py) for real, on the tiny Llama.

What a user would check: the same greedy tokens as transformers' own ``generate``, whatever the
step sizes (prompt chunks of the compiled size packed beside decode tokens, which stay eager); no
graph compiled after start-up however those sizes vary (bounded recompiles); a second start
reading the graph from the disk cache and saying so in its log; the switches reaching the engine
config.
Compiling costs tens of seconds on a busy 2-core machine, so one executor serves the module.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_lean_forward import PROMPTS, _greedy_packed, _reference_greedy

from streamhost.engine.executor import TorchExecutor


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lean-compile-cache")


@pytest.fixture(scope="module")
def compiled(tiny_llama_dir: Path, compile_cache: Path) -> TorchExecutor:
    executor = TorchExecutor(
        tiny_llama_dir, dtype="bf16", compile=False, compile_lean=True, compile_cache_dir=compile_cache
    )
    assert executor.lean is not None and executor.lean.compiled is not None
    return executor


def test_compiled_layer_greedy_tokens_equal_transformers_generate(
    compiled: TorchExecutor, tiny_llama_dir: Path
) -> None:
    assert compiled.lean is not None and compiled.lean.compiled is not None
    layer_calls: list[int] = []
    layer = compiled.lean.compiled._layer

    def counting(*args: object) -> object:
        layer_calls.append(1)
        return layer(*args)

    compiled.lean.compiled._layer = counting
    try:
        prompts = [compiled.tokenizer.encode(p) for p in PROMPTS]
        long_prompt = (prompts[1] * 40)[:180]  # chunks of 70 tokens (+ decode tokens): compiled steps
        together = _greedy_packed(compiled, [long_prompt, *prompts], steps=10, chunk=70)
    finally:
        compiled.lean.compiled._layer = layer
    assert layer_calls, "no step ran the compiled layer"
    for prompt, tokens in zip([long_prompt, *prompts], together):
        assert tokens == _reference_greedy(tiny_llama_dir, prompt, 10)


def test_only_prompt_sized_steps_run_compiled_and_no_step_size_adds_a_graph(compiled: TorchExecutor) -> None:
    from streamhost.engine.lean_compiled import MIN_TOKENS

    assert compiled.lean is not None and compiled.lean.compiled is not None
    assert not compiled.lean.compiled.handles(MIN_TOKENS - 1) and compiled.lean.compiled.handles(MIN_TOKENS)
    assert compiled.lean.compiled.report.graphs == 1, compiled.lean.compiled.report.summary()
    prompt = compiled.tokenizer.encode(PROMPTS[2])
    for size in (1, 17, MIN_TOKENS, MIN_TOKENS + 1, 150, 333):  # sizes the warm-up never ran
        _greedy_packed(compiled, [(prompt * 60)[:size]], steps=2)
    assert compiled.lean.compiled.recompiles() == 0


START = """
import json, logging, sys
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
from streamhost.engine.config import EngineConfig
from streamhost.engine.executors import load_executor
executor = load_executor(sys.argv[1], EngineConfig(dtype="bf16", compile_lean=True, cache_dir=Path(sys.argv[2])))
report = executor.lean.compiled.report
print(json.dumps({"hits": report.cache_hits, "misses": report.cache_misses, "graphs": report.graphs}))
"""


def test_a_second_start_reads_the_graphs_from_the_disk_cache(
    compiled: TorchExecutor, tiny_llama_dir: Path, compile_cache: Path
) -> None:
    """``compiled`` filled the cache (TorchExecutor puts it under <cache>/compile/<key>); a fresh
    process pointed at the same cache root loads the graph instead of compiling it."""
    done = subprocess.run(
        [sys.executable, "-c", START, str(tiny_llama_dir), str(compile_cache.parent / compile_cache.name)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["hits"] >= 1 and report["misses"] == 0, report
    assert "compiled the lean decoder layer" in done.stderr and "from the disk cache" in done.stderr


def test_the_start_up_log_says_what_was_compiled(
    tiny_llama_dir: Path, compile_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="streamhost.engine.lean_compiled"):
        TorchExecutor(tiny_llama_dir, dtype="bf16", compile=False, compile_lean=True, compile_cache_dir=compile_cache)
    line = next(r.getMessage() for r in caplog.records if "compiled the lean decoder layer" in r.getMessage())
    assert "all 2 layers" in line and "steps of 64+ tokens" in line and str(compile_cache) in line


def test_the_switches_reach_the_engine_config() -> None:
    from streamhost.server.config import SettingsError, add_arguments, load_settings

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    plain = load_settings(parser.parse_args([]), {}).engine
    assert plain.compile_lean is None and plain.prefill_chunk is None
    env = {"STREAMHOST_COMPILE_LEAN": "1", "STREAMHOST_PREFILL_CHUNK": "512"}
    from_env = load_settings(parser.parse_args([]), env).engine
    assert from_env.compile_lean is True and from_env.prefill_chunk == 512
    flags = load_settings(parser.parse_args(["--no-compile-lean", "--prefill-chunk", "256"]), env).engine
    assert flags.compile_lean is False and flags.prefill_chunk == 256
    with pytest.raises(SettingsError, match="STREAMHOST_PREFILL_CHUNK"):
        load_settings(parser.parse_args([]), {"STREAMHOST_PREFILL_CHUNK": "0"})
